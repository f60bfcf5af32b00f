//! Everything the helper tells the world about a run: the status file, the
//! webhook POST and the console lines, built from the journal, with the
//! secrets scrubbed out. The runner reports through [`Reporter`]; the last
//! step (`report`) also disables the unit that starts the helper each boot.

use anyhow::Result;

use super::host::{CommandSpec, Host};
use super::journal::Journal;
use super::run_state::RunState;
use super::status::Status;
use super::webhook::Webhook;
use super::{Ctx, Outcome, StepId, UNIT_NAME};
use crate::plan::Plan;

/// Status file and webhook, in one place, always redacted.
pub struct Reporter<'a> {
    host: &'a dyn Host,
    plan: &'a Plan,
    webhook: Option<Webhook>,
    secrets: Vec<String>,
}

impl<'a> Reporter<'a> {
    pub fn new(host: &'a dyn Host, plan: &'a Plan) -> Self {
        Self {
            host,
            plan,
            webhook: Webhook::from_plan(plan),
            secrets: plan_secrets(plan),
        }
    }

    /// The status the journal implies, with this state, step and message.
    pub fn status(
        &self,
        journal: &Journal,
        state: RunState,
        step: Option<StepId>,
        message: impl Into<String>,
    ) -> Status {
        let mut status = Status::from_journal(self.host, Some(self.plan), journal, state, step);
        status.message = message.into();
        status.redact(&self.secrets);
        status
    }

    /// Write the status file.
    pub fn write(&self, status: &mut Status) -> Result<()> {
        status.write(self.host)
    }

    /// Write the status file and POST it to the webhook.
    pub fn publish(&self, status: &mut Status) -> Result<()> {
        self.write(status)?;
        if let Some(w) = &self.webhook {
            w.post(self.host, status);
        }
        Ok(())
    }
}

/// Values from the plan that must never appear in the status file or the
/// webhook: installer environment whose name says it is a credential.
pub fn plan_secrets(plan: &Plan) -> Vec<String> {
    const MARKERS: &[&str] = &[
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "AUTH",
        "DATABASE_URL",
    ];
    plan.cube
        .extra_env
        .iter()
        .filter(|(k, v)| {
            let k = k.to_ascii_uppercase();
            v.len() >= 3 && MARKERS.iter().any(|m| k.contains(m))
        })
        .map(|(_, v)| v.clone())
        // The compute node's copy of the control node's object storage key.
        .chain(plan.cube.s3.iter().map(|s| s.secret_access_key.clone()))
        .collect()
}

/// The `report` step's own effect: the run is complete, so the unit that
/// starts the helper on every boot is disabled. The final message, status
/// and webhook POST follow from the runner right after it.
pub fn disable_unit(ctx: &mut Ctx) -> Result<Outcome> {
    let host = ctx.host;
    let mut cmd = CommandSpec::new("systemctl");
    // Acting on an image mounted elsewhere, not on this machine's units.
    let root = host.root().to_string_lossy().into_owned();
    if root != "/" {
        cmd = cmd.arg(format!("--root={root}"));
    }
    let cmd = cmd.args(["disable", UNIT_NAME]).allow_failure();
    let out = host.run(&cmd)?;
    if out.success() {
        return Ok(Outcome::Done(format!("{UNIT_NAME} disabled")));
    }
    // Provisioning succeeded; a unit left enabled only costs a quick no-op
    // start per boot, so this is a warning, not a failure.
    let why = out.stderr.trim().lines().last().unwrap_or("").to_string();
    ctx.journal
        .warn(format!("could not disable {UNIT_NAME}: {why}"));
    Ok(Outcome::Done(format!("{UNIT_NAME} left enabled ({why})")))
}
