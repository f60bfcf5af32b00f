//! The main loop: load plan and journal, take each step that is not complete,
//! record its outcome durably, and carry out the one planned reboot.
//!
//! Order of writes for every step: status (running) → journal (started) →
//! the step's work → journal (outcome). The journal is on disk before any
//! side effect that can reboot or kill the process, so a run killed at any
//! point repeats at most the step it was in (steps are idempotent).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::host::Host;
use super::journal::{facts, Journal, StepState};
use super::preflight::PreflightConfig;
use super::status::Status;
use super::webhook::Webhook;
use super::{cube, fetch, kernel, preflight, report, Ctx, Outcome, StepFailure, StepId};
use crate::digest::Sha256Digest;
use crate::plan::{Plan, PLAN_PATH};
use crate::transport::FetchConfig;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step complete.
    Done,
    /// A reboot was requested; the unit runs the helper again after it.
    Rebooting,
    /// Stopped with this terminal status (`failed: …`).
    Failed(String),
    /// `Scope::StopAfter` reached its step; the run is resumable.
    Stopped(StepId),
}

/// Which steps a run may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Only the kernel stage, without rebooting (for image builds).
    KernelOnly,
    /// Stop after this step (tests: kill at every step boundary).
    StopAfter(StepId),
}

/// Settings of one run (the CLI fills them; tests shorten timeouts).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scope: Scope,
    pub fetch: FetchConfig,
    pub preflight: PreflightConfig,
    /// Re-enter a run that ended `failed`: the failed step runs again.
    pub retry_failed: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            scope: Scope::All,
            fetch: FetchConfig::default(),
            preflight: PreflightConfig::default(),
            retry_failed: false,
        }
    }
}

/// A step's function, as the kernel and Cube teams write them.
pub type StepFn = Arc<dyn Fn(&mut Ctx) -> Result<Outcome> + Send + Sync>;

/// Which function runs for which step. Production uses [`Steps::standard`];
/// tests replace entries to drive the whole loop with stand-ins.
#[derive(Clone)]
pub struct Steps {
    table: BTreeMap<StepId, StepFn>,
}

impl Steps {
    pub fn standard(opts: &RunOptions) -> Self {
        let fetch_cfg = opts.fetch.clone();
        let preflight_cfg = opts.preflight.clone();
        let mut table: BTreeMap<StepId, StepFn> = BTreeMap::new();
        table.insert(
            StepId::Preflight,
            Arc::new(move |ctx: &mut Ctx| preflight::run_with(ctx, &preflight_cfg)),
        );
        table.insert(
            StepId::Fetch,
            Arc::new(move |ctx: &mut Ctx| fetch::run_with(ctx, &fetch_cfg)),
        );
        table.insert(StepId::CubePrereqs, Arc::new(cube::prereqs));
        table.insert(StepId::KernelInstall, Arc::new(kernel::install));
        table.insert(StepId::KernelBoot, Arc::new(kernel::boot));
        table.insert(StepId::KernelVerify, Arc::new(kernel::verify));
        table.insert(StepId::KvmLoad, Arc::new(kernel::load_kvm));
        table.insert(StepId::DataDisk, Arc::new(cube::data_disk));
        table.insert(StepId::CubeInstall, Arc::new(cube::install));
        table.insert(StepId::CubeVerify, Arc::new(cube::verify));
        table.insert(StepId::Harden, Arc::new(cube::harden));
        table.insert(StepId::Report, Arc::new(report::run));
        Self { table }
    }

    /// Replace one step's function (the reboot step belongs to the runner).
    pub fn with<F>(mut self, step: StepId, f: F) -> Self
    where
        F: Fn(&mut Ctx) -> Result<Outcome> + Send + Sync + 'static,
    {
        self.table.insert(step, Arc::new(f));
        self
    }
}

/// Read and parse the plan from the target.
pub fn load_plan(host: &dyn Host) -> Result<(Plan, Sha256Digest)> {
    let text = host
        .read_string(PLAN_PATH)
        .with_context(|| format!("loading plan {PLAN_PATH}"))?;
    let plan = Plan::from_json(&text).with_context(|| format!("loading plan {PLAN_PATH}"))?;
    Ok((plan, Sha256Digest::of(text.as_bytes())))
}

/// Run the state machine with default settings and the standard steps.
pub fn run(
    host: &dyn Host,
    plan: &Plan,
    plan_digest: &Sha256Digest,
    scope: Scope,
) -> Result<RunEnd> {
    let opts = RunOptions {
        scope,
        ..RunOptions::default()
    };
    run_with(host, plan, plan_digest, &opts, &Steps::standard(&opts))
}

/// Run the state machine until done, a reboot, a stop or a failure.
pub fn run_with(
    host: &dyn Host,
    plan: &Plan,
    plan_digest: &Sha256Digest,
    opts: &RunOptions,
    steps: &Steps,
) -> Result<RunEnd> {
    let mut journal = Journal::load(host, &plan_digest.to_hex())?;
    let reporter = Reporter::new(host, plan);

    // A finished run: rebuild the status (it lives in /run, which a reboot
    // empties) and stop, unless asked to retry a failure.
    if let Some(done) = journal.finished.clone() {
        let retry = opts.retry_failed && done != "done";
        if !retry {
            host.say(&format!(
                "nothing to do: this plan already finished ({done})"
            ));
            let mut status = reporter.status(&journal, &done, None);
            status.message = finished_message(&journal, &done);
            reporter.write(&mut status)?;
            return Ok(if done == "done" {
                RunEnd::Done
            } else {
                RunEnd::Failed(done)
            });
        }
        host.say(&format!("retrying a run that ended {done}"));
        journal.finished = None;
        journal.last_error = None;
        journal.hints.clear();
        journal.steps.retain(|_, r| r.state != StepState::Failed);
        // Fetch again too: it keeps every cached file that still matches and
        // replaces one a crash tore or a person deleted, which is often why
        // a later step failed.
        journal.steps.remove(&StepId::Fetch);
        journal.save(host)?;
    }

    for step in StepId::ALL {
        if opts.scope == Scope::KernelOnly
            && !matches!(step, StepId::KernelInstall | StepId::KernelBoot)
        {
            continue;
        }
        if step == StepId::Reboot && journal.state(step) == Some(StepState::RebootRequested) {
            if reboot_pending(host, &journal) {
                // Killed between saving the request and rebooting, or the
                // reboot was refused: the same boot is still running.
                host.say("the requested reboot has not happened yet; asking again");
                return reboot_now(host, &reporter, &journal);
            }
            journal.mark(host, step, StepState::Done, "rebooted");
            journal.save(host)?;
            if opts.scope == Scope::StopAfter(step) {
                return stop_after(&reporter, &journal, step);
            }
            continue;
        }
        if journal.is_complete(step) {
            continue;
        }

        let mut status = reporter.status(&journal, "running", Some(step));
        status.message = format!("running step {step}");
        reporter.write(&mut status)?;
        reporter.post(&status);
        host.say(&format!("step {step}: starting"));
        journal.mark(host, step, StepState::Started, "");
        journal.save(host)?;

        let outcome = if step == StepId::Reboot {
            reboot_step(plan, &journal, opts.scope)
        } else {
            match steps.table.get(&step) {
                Some(f) => {
                    let mut ctx = Ctx {
                        host,
                        plan,
                        journal: &mut journal,
                    };
                    f(&mut ctx)
                }
                None => Err(anyhow::anyhow!("no function for step {step}")),
            }
        };

        match outcome {
            Ok(Outcome::Done(detail)) => {
                host.say(&format!("step {step}: done{}", suffix(&detail)));
                journal.mark(host, step, StepState::Done, &detail);
            }
            Ok(Outcome::Skipped(why)) => {
                host.say(&format!("step {step}: skipped ({why})"));
                journal.mark(host, step, StepState::Skipped, &why);
            }
            Ok(Outcome::RebootRequested(detail)) => {
                host.say(&format!("step {step}: {detail}"));
                if step == StepId::Reboot {
                    journal.reboots += 1;
                    if let Some(id) = host.boot_id() {
                        journal.set_fact(facts::REBOOT_BOOT_ID, id);
                    }
                }
                journal.mark(host, step, StepState::RebootRequested, &detail);
            }
            Err(err) => return fail(host, &reporter, &mut journal, step, &err),
        }
        // Durable before anything else happens (a reboot, the next step).
        journal.save(host)?;

        if step == StepId::Reboot && journal.state(step) == Some(StepState::RebootRequested) {
            return reboot_now(host, &reporter, &journal);
        }
        if opts.scope == Scope::StopAfter(step) {
            return stop_after(&reporter, &journal, step);
        }
    }

    if opts.scope == Scope::KernelOnly {
        return Ok(RunEnd::Done);
    }
    journal.finished = Some("done".into());
    let message = final_message(host, plan, &journal);
    journal.set_fact(facts::FINAL_MESSAGE, message.clone());
    journal.save(host)?;
    let mut status = reporter.status(&journal, "done", None);
    status.message = message;
    reporter.write(&mut status)?;
    reporter.post(&status);
    // The one line a cloud console's "get console output" should show.
    host.say(&status.message);
    Ok(RunEnd::Done)
}

/// Record a failure everywhere a person might look, and stop.
fn fail(
    host: &dyn Host,
    reporter: &Reporter,
    journal: &mut Journal,
    step: StepId,
    err: &anyhow::Error,
) -> Result<RunEnd> {
    let failure = err.chain().find_map(|e| e.downcast_ref::<StepFailure>());
    let terminal = failure
        .and_then(|f| f.status_override.clone())
        .unwrap_or_else(|| format!("failed: {step}"));
    let message = format!("{err:#}");
    let hint = failure
        .and_then(|f| f.hint.clone())
        .unwrap_or_else(|| generic_hint(err));
    journal.mark(host, step, StepState::Failed, &message);
    journal.finished = Some(terminal.clone());
    journal.last_error = Some(message.clone());
    journal.hints = vec![hint.clone()];
    journal.save(host)?;

    let mut status = reporter.status(journal, &terminal, Some(step));
    status.message = format!("{terminal}: {}", message.lines().next().unwrap_or_default());
    reporter.write(&mut status)?;
    reporter.post(&status);
    // Console: the step, every line of the reason, the hint.
    let shown = status.last_error.clone().unwrap_or_default();
    host.say(&format!("step {step}: FAILED"));
    for line in shown.lines() {
        host.say(&format!("  {line}"));
    }
    for h in &status.hints {
        host.say(&format!("hint: {h}"));
    }
    host.say(&format!(
        "{terminal}; details in {} and `cube-firstboot status`",
        super::STATUS_PATH
    ));
    Ok(RunEnd::Failed(terminal))
}

fn stop_after(reporter: &Reporter, journal: &Journal, step: StepId) -> Result<RunEnd> {
    let mut status = reporter.status(journal, "stopped", None);
    status.message = format!("stopped after step {step} as asked");
    reporter.write(&mut status)?;
    Ok(RunEnd::Stopped(step))
}

/// The one-line message of a run that ended, as it was first written.
pub fn finished_message(journal: &Journal, terminal: &str) -> String {
    if let Some(m) = journal.fact(facts::FINAL_MESSAGE) {
        return m.to_string();
    }
    let first = journal
        .last_error
        .as_deref()
        .and_then(|e| e.lines().next())
        .unwrap_or("");
    if first.is_empty() {
        terminal.to_string()
    } else {
        format!("{terminal}: {first}")
    }
}

fn reboot_now(host: &dyn Host, reporter: &Reporter, journal: &Journal) -> Result<RunEnd> {
    let mut status = reporter.status(journal, "rebooting", Some(StepId::Reboot));
    status.message = "rebooting into the PVM kernel; the helper continues after the reboot".into();
    reporter.write(&mut status)?;
    reporter.post(&status);
    host.request_reboot()?;
    Ok(RunEnd::Rebooting)
}

/// Whether the reboot recorded in the journal is still to come: the boot id
/// when it was requested equals this boot's. Without a readable boot id the
/// reboot is taken as done (the kernel stage verifies the running kernel).
fn reboot_pending(host: &dyn Host, journal: &Journal) -> bool {
    match (journal.fact(facts::REBOOT_BOOT_ID), host.boot_id()) {
        (Some(then), Some(now)) => then == now,
        _ => false,
    }
}

/// The reboot happens only when the kernel stage armed a trial boot, and never
/// more often than the plan allows.
fn reboot_step(plan: &Plan, journal: &Journal, scope: Scope) -> Result<Outcome> {
    if journal.state(StepId::KernelBoot) != Some(StepState::RebootRequested) {
        return Ok(Outcome::Skipped("no reboot needed".into()));
    }
    if scope == Scope::KernelOnly {
        return Ok(Outcome::Skipped(
            "image build: the new instance boots it".into(),
        ));
    }
    if journal.reboots >= plan.max_reboots {
        return Err(StepFailure::new(format!(
            "reboot cap reached ({} of {} planned reboots used)",
            journal.reboots, plan.max_reboots
        ))
        .hint("the machine did not come back on the PVM kernel; see the serial console")
        .into());
    }
    Ok(Outcome::RebootRequested(
        "trial boot of the PVM kernel".into(),
    ))
}

fn generic_hint(err: &anyhow::Error) -> String {
    let io_kind = err
        .chain()
        .find_map(|e| e.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match io_kind {
        Some(std::io::ErrorKind::StorageFull) => {
            "a filesystem is full: free space, then `cube-firstboot run --retry`".into()
        }
        Some(std::io::ErrorKind::ReadOnlyFilesystem) => {
            "a filesystem is read-only: check the disk, then `cube-firstboot run --retry`".into()
        }
        _ => "see `journalctl -u cube-firstboot` and /var/log/cubeboot/; fix the cause, then `cube-firstboot run --retry`".into(),
    }
}

fn final_message(host: &dyn Host, plan: &Plan, journal: &Journal) -> String {
    let started = journal.steps.get(&StepId::Preflight).map(|r| r.at);
    let took = started
        .map(|t| super::host::unix_secs(host.now()).saturating_sub(t))
        .map(|s| format!(" in {}m{:02}s", s / 60, s % 60))
        .unwrap_or_default();
    format!(
        "cube-firstboot finished: {} is a Cube Sandbox node{took} ({}; reboots: {})",
        plan.role_label(),
        plan.generator,
        journal.reboots
    )
}

fn suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// Status building, redaction and the webhook, in one place.
struct Reporter<'a> {
    host: &'a dyn Host,
    plan: &'a Plan,
    webhook: Option<Webhook>,
    secrets: Vec<String>,
}

impl<'a> Reporter<'a> {
    fn new(host: &'a dyn Host, plan: &'a Plan) -> Self {
        Self {
            host,
            plan,
            webhook: Webhook::from_plan(plan),
            secrets: plan_secrets(plan),
        }
    }

    fn status(&self, journal: &Journal, state: &str, step: Option<StepId>) -> Status {
        Status::from_journal(self.host, Some(self.plan), journal, state, step)
    }

    fn write(&self, status: &mut Status) -> Result<()> {
        status.redact(&self.secrets);
        status.write(self.host)
    }

    /// The status must already be redacted (`write` does it).
    fn post(&self, status: &Status) {
        if let Some(w) = &self.webhook {
            w.post(self.host, status);
        }
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
