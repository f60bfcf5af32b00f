//! What the helper tells the world about a run: the status file and the
//! webhook POST, built from the journal, with the secrets scrubbed out. The runner reports through [`Reporter`]; the
//! `report` step's own effect (disabling the units) is in `units`.

use anyhow::Result;

use super::host::Host;
use super::journal::Journal;
use super::live;
use super::run_state::RunState;
use super::status::{DownloadProgress, Status};
use super::webhook::Webhook;
use super::StepId;
use crate::plan::Plan;

/// Status file and webhook, in one place, scrubbed of every secret value
/// the host knows (the status file and the webhook do it themselves).
pub struct Reporter<'a> {
    host: &'a dyn Host,
    plan: &'a Plan,
    webhook: Option<Webhook>,
    beside: live::Relay,
}

impl<'a> Reporter<'a> {
    /// `beside`: what the work beside the steps reports through (its
    /// download's link rules: `link.rs`).
    pub fn new(host: &'a dyn Host, plan: &'a Plan, beside: live::Relay) -> Self {
        plan_secrets(plan)
            .iter()
            .for_each(|v| host.secrets().add(v));
        Self {
            host,
            plan,
            webhook: Webhook::from_plan(plan),
            beside,
        }
    }

    /// What work beside the steps reports through: its download counts
    /// join the status of whichever step runs.
    pub fn relay(&self) -> &live::Relay {
        &self.beside
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
        status
    }

    /// Write the status file.
    pub fn write(&self, status: &mut Status) -> Result<()> {
        status.write(self.host)
    }

    /// Run a step (`f`) with its progress channel open, which it gets
    /// (src/firstboot/live.rs):
    /// phases and download counts it reports go onto `base`, the status
    /// published as it started, into the status file and to the webhook.
    pub fn during<R>(&self, base: &Status, f: impl FnOnce(&live::Handle) -> R) -> R {
        // Stays: every progress phase would be one more status write in the listing.
        if self.host.is_dry_run() {
            return f(&live::Handle::none());
        }
        let host = self.host;
        let webhook = self.webhook.as_ref();
        let clock = || host.now();
        let mut publish = |overlay: live::Overlay| {
            let mut status = base.clone();
            status.phase = overlay.phase;
            status.download = overlay.download.map(|d| DownloadProgress {
                asset: d.asset,
                bytes: d.bytes,
                total: d.total,
            });
            if let Err(e) = status.write(host) {
                host.say(&format!("writing the status file: {e:#}"));
            }
            if let Some(w) = webhook {
                w.post_progress(host, &status);
            }
        };
        live::during(&clock, &mut publish, &self.beside, f)
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

pub use super::secrets::plan_secrets;
