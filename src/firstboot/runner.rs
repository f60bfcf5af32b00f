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

use super::fetch::beside::{self, BundleBeside};
use super::fetch::FetchError;
use super::host::Host;
use super::journal::{Journal, StepState};
use super::live;
use super::preflight::PreflightConfig;
use super::report::Reporter;
use super::run_state::{Failure, RunState};
use super::status::finished_message;
use super::{
    cube, fetch, kernel, preflight, units, Ctx, Outcome, StepFailure, StepId, STATUS_PATH,
};
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
    /// Ended failed (the status says `failed: …`).
    Failed(Failure),
    /// `Scope::StopAfter` reached its step; the run is resumable.
    Stopped(StepId),
}

/// Which steps a run may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Only the kernel stage, without rebooting (for image builds).
    KernelOnly,
    /// Stop after this step, whether it runs now or was done before (tests:
    /// kill at every step boundary; `run --stop-after`).
    StopAfter(StepId),
}

impl Scope {
    /// Whether a run in this scope takes `step`. A scope that includes the
    /// last step finishes the run (records `done`); the others only stop.
    pub fn includes(self, step: StepId) -> bool {
        match self {
            Self::All | Self::StopAfter(_) => true,
            Self::KernelOnly => matches!(step, StepId::KernelInstall | StepId::KernelBoot),
        }
    }
}

/// Settings of one run (the CLI fills them; tests shorten timeouts).
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scope: Scope,
    pub fetch: FetchConfig,
    pub preflight: PreflightConfig,
    /// Re-enter a run that ended `failed`: the failed step runs again.
    pub retry_failed: bool,
    /// About how long a reboot takes: a bundle download with less time
    /// than this left is waited for before the reboot, a longer one is cut
    /// by it and resumed after.
    pub reboot_estimate: std::time::Duration,
    /// How the bundle's download beside the kernel stage measures whether
    /// it slows the kernel's (`link.rs`).
    pub link: live::Rules,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            scope: Scope::All,
            fetch: FetchConfig::default(),
            preflight: PreflightConfig::default(),
            retry_failed: false,
            reboot_estimate: REBOOT_ESTIMATE,
            link: live::Rules::default(),
        }
    }
}

/// A step's function, as the kernel and Cube teams write them.
pub type StepFn = Arc<dyn Fn(&mut Ctx) -> Result<Outcome> + Send + Sync>;

/// Which function runs for which step. Production uses [`Steps::standard`]:
/// the `match` in [`Steps::call`], which names every step, so a step added
/// to `StepId` without its function does not compile. Tests replace
/// entries with [`Steps::with`] to drive the whole loop with stand-ins.
#[derive(Clone)]
pub struct Steps {
    fetch: FetchConfig,
    preflight: PreflightConfig,
    replaced: BTreeMap<StepId, StepFn>,
}

impl Steps {
    pub fn standard(opts: &RunOptions) -> Self {
        Self {
            fetch: opts.fetch.clone(),
            preflight: opts.preflight.clone(),
            replaced: BTreeMap::new(),
        }
    }

    /// Replace one step's function.
    pub fn with<F>(mut self, step: StepId, f: F) -> Self
    where
        F: Fn(&mut Ctx) -> Result<Outcome> + Send + Sync + 'static,
    {
        self.replaced.insert(step, Arc::new(f));
        self
    }

    /// Run `step`'s function.
    fn call(&self, step: StepId, ctx: &mut Ctx) -> Result<Outcome> {
        if let Some(f) = self.replaced.get(&step) {
            return f(ctx);
        }
        match step {
            StepId::Preflight => preflight::run_with(ctx, &self.preflight),
            StepId::Fetch => {
                // Native KVM or PVM, decided before the first byte (the
                // kernel stage's call): fetch only what that path needs.
                ctx.journal.facts.kvm_mode = Some(kernel::decide_kvm(ctx.host, ctx.plan)?);
                fetch::run_without_bundle(ctx, &self.fetch)
            }
            StepId::CubePrereqs => cube::prereqs(ctx),
            StepId::DataDisk => cube::data_disk(ctx),
            StepId::KernelInstall => kernel::install(ctx),
            StepId::KernelBoot => kernel::boot(ctx),
            StepId::Reboot => reboot(ctx),
            StepId::KernelVerify => kernel::verify(ctx),
            StepId::KvmLoad => kernel::load_kvm(ctx),
            StepId::KernelCommit => kernel::commit(ctx),
            StepId::Bundle => fetch::bundle_step(ctx, &self.fetch),
            StepId::CubeInstall => cube::install(ctx),
            StepId::CubeVerify => cube::verify(ctx),
            StepId::Harden => cube::harden(ctx),
            StepId::Report => units::disable_all(ctx),
        }
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
    let journal = Journal::load(host, &plan_digest.to_hex())?;
    let reporter = Reporter::new(host, plan, live::Relay::new(opts.link));
    let mut run = Run {
        host,
        plan,
        opts,
        steps,
        reporter,
        journal,
    };
    if let Some(ended) = run.reenter()? {
        return Ok(ended);
    }

    // The bundle downloads beside the steps that do not need it; the scope
    // ends only when that download has ended too (a reboot or a kill ends
    // it sooner, and the `bundle` step resumes it by Range).
    std::thread::scope(|s| {
        let settings = beside::Settings {
            fetch: opts.fetch.clone(),
            wanted: opts.scope.includes(StepId::Bundle),
            reboot_takes: opts.reboot_estimate,
        };
        let relay = run.reporter.relay().clone();
        let mut bundle = BundleBeside::new(s, host, plan, settings, relay);
        let end = run.take_steps(&mut bundle);
        // Stopped or failed with the download still going: what it brought
        // is recorded. A reboot that did not wait for it ends it (here the
        // scope still joins it); the next boot resumes it by Range.
        if !matches!(end, Ok(RunEnd::Rebooting)) {
            bundle.wait(&mut run.journal)?;
        }
        end
    })
}

/// About how long a reboot takes, boot to network (the VM tier's figure
/// was under a minute).
pub const REBOOT_ESTIMATE: std::time::Duration = std::time::Duration::from_secs(60);

/// One run: what it works on, how, and where it reports; the journal is
/// its record, written by this thread alone.
struct Run<'a> {
    host: &'a dyn Host,
    plan: &'a Plan,
    opts: &'a RunOptions,
    steps: &'a Steps,
    reporter: Reporter<'a>,
    journal: Journal,
}

impl Run<'_> {
    /// A finished run: rebuild the status (it lives in /run, which a reboot
    /// empties) and end here, unless asked to retry a failure; then the
    /// failed step and the downloads run again.
    fn reenter(&mut self) -> Result<Option<RunEnd>> {
        let (host, journal) = (self.host, &mut self.journal);
        let Some(done) = journal.finished.clone() else {
            return Ok(None);
        };
        if !(self.opts.retry_failed && done.failure().is_some()) {
            host.say(&format!(
                "nothing to do: this plan already finished ({done})"
            ));
            let message = finished_message(journal, &done);
            let ended = match &done {
                RunState::Failed(f) => RunEnd::Failed(f.clone()),
                _ => RunEnd::Done,
            };
            let reporter = &self.reporter;
            reporter.write(&mut reporter.status(journal, done, None, message))?;
            return Ok(Some(ended));
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
        journal.steps.remove(&StepId::Bundle);
        journal.save(host)?;
        Ok(None)
    }

    fn take_steps(&mut self, bundle: &mut BundleBeside) -> Result<RunEnd> {
        let (host, scope) = (self.host, self.opts.scope);
        for step in StepId::ALL {
            if !scope.includes(step) {
                continue;
            }
            // A step that asked for a reboot: the boot id tells whether it came.
            if let Some(then) = self.journal.reboot_requested_in(step) {
                if host.boot_id().as_deref() == Some(then) {
                    // Killed between saving the request and rebooting, or the
                    // reboot was refused: the same boot is still running.
                    host.say("the requested reboot has not happened yet; asking again");
                    return self.reboot_now(None);
                }
                self.journal.mark(host, step, StepState::Done, "rebooted");
                self.journal.save(host)?;
            }
            let note = bundle.at_step(&mut self.journal, step)?;
            if !self.journal.is_complete(step) {
                if let Some(end) = self.take(step, note)? {
                    return Ok(end);
                }
            }
            if scope == Scope::StopAfter(step) {
                let message = format!("stopped after step {step} as asked");
                let stopped = RunState::Stopped;
                let mut status = self.reporter.status(&self.journal, stopped, None, message);
                self.reporter.write(&mut status)?;
                return Ok(RunEnd::Stopped(step));
            }
        }

        if !scope.includes(StepId::Report) {
            return Ok(RunEnd::Done);
        }
        let journal = &mut self.journal;
        journal.finished = Some(RunState::Done);
        let message = final_message(host, self.plan, journal);
        journal.facts.final_message = Some(message.clone());
        journal.save(host)?;
        let mut status = self.reporter.status(journal, RunState::Done, None, message);
        self.reporter.publish(&mut status)?;
        // The one line a cloud console's "get console output" should show.
        host.say(&status.message);
        Ok(RunEnd::Done)
    }

    /// Take one step: status, journal `started`, the work, journal outcome.
    /// Returns how the run ends when it ends here (a reboot or a failure).
    fn take(&mut self, step: StepId, reboot_note: Option<String>) -> Result<Option<RunEnd>> {
        let host = self.host;
        // What an earlier step or the installer wrote may hold new secrets.
        learn_installed_secrets(host);
        if let Some(refused) = crash_loop(host, &self.journal, step) {
            return self.fail(step, &refused.into()).map(Some);
        }
        let running = format!("running step {step}");
        let mut status =
            self.reporter
                .status(&self.journal, RunState::Running, Some(step), running);
        self.reporter.publish(&mut status)?;
        host.say(&format!("step {step}: starting"));
        self.journal.start(host, step);
        self.journal.save(host)?;

        // Phases and download counts the step reports reach the status
        // file and the webhook while it runs.
        let (plan, steps, journal) = (self.plan, self.steps, &mut self.journal);
        let outcome = self.reporter.during(&status, |progress| {
            let progress = progress.clone();
            let mut ctx = Ctx {
                host,
                plan,
                journal,
                progress,
            };
            steps.call(step, &mut ctx)
        });

        let journal = &mut self.journal;
        let reboot = match outcome {
            Ok(Outcome::Done(detail)) => {
                host.say(&format!("step {step}: done{}", suffix(&detail)));
                journal.mark(host, step, StepState::Done, &detail);
                false
            }
            Ok(Outcome::Skipped(why)) => {
                host.say(&format!("step {step}: skipped ({why})"));
                journal.mark(host, step, StepState::Skipped, &why);
                false
            }
            Ok(Outcome::RebootRequested(detail)) => {
                host.say(&format!("step {step}: {detail}"));
                journal.mark(host, step, StepState::RebootRequested, &detail);
                false
            }
            Ok(Outcome::Reboot(detail)) => {
                host.say(&format!("step {step}: {detail}"));
                journal.reboots += 1;
                journal.mark_rebooting(host, step, &detail);
                true
            }
            Err(err) => return self.fail(step, &err).map(Some),
        };
        // Durable before anything else happens (a reboot, the next step).
        journal.save(host)?;
        if reboot {
            return self.reboot_now(reboot_note).map(Some);
        }
        Ok(None)
    }

    /// Record a failure everywhere a person might look, and stop.
    fn fail(&mut self, step: StepId, err: &anyhow::Error) -> Result<RunEnd> {
        let (host, reporter, journal) = (self.host, &self.reporter, &mut self.journal);
        learn_installed_secrets(host);
        let failure = err.chain().find_map(|e| e.downcast_ref::<StepFailure>());
        let ending = failure
            .and_then(|f| f.ends_as.clone())
            .unwrap_or(Failure::Step(step));
        let terminal = RunState::Failed(ending.clone());
        let message = format!("{err:#}");
        let hint = failure
            .and_then(|f| {
                f.hint
                    .clone()
                    .or_else(|| f.cause::<FetchError>().map(FetchError::hint))
            })
            .unwrap_or_else(|| hint_for(err));
        journal.mark(host, step, StepState::Failed, &message);
        journal.finished = Some(terminal.clone());
        journal.last_error = Some(message.clone());
        journal.hints = vec![hint];
        journal.save(host)?;

        let first = message.lines().next().unwrap_or_default();
        let line = format!("{terminal}: {first}");
        let mut status = reporter.status(journal, terminal.clone(), Some(step), line);
        reporter.publish(&mut status)?;
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
            "{terminal}; details in {STATUS_PATH} and `cube-firstboot status`"
        ));
        // A rollback that left the trial kernel running: one reboot into the
        // old default, journaled first. Bounded: the run is finished before
        // it is asked for, so the next boot does nothing (docs/bootloader.md).
        if failure.is_some_and(|f| f.reboot_after) {
            journal.reboots += 1;
            journal.save(host)?;
            host.request_reboot()?;
        }
        Ok(RunEnd::Failed(ending))
    }

    fn reboot_now(&self, note: Option<String>) -> Result<RunEnd> {
        let host = self.host;
        let mut message =
            "rebooting into the PVM kernel; the helper continues after the reboot".to_string();
        if let Some(note) = note {
            host.say(&note);
            message = format!("{message} ({note})");
        }
        let state = RunState::Rebooting;
        let mut status = self
            .reporter
            .status(&self.journal, state, Some(StepId::Reboot), message);
        self.reporter.publish(&mut status)?;
        // The reboot step staged the trial kernel with kexec (kernel/kexec.rs).
        if self.journal.facts.trial_kexec.is_some() {
            host.request_kexec()?;
        } else {
            host.request_reboot()?;
        }
        Ok(RunEnd::Rebooting)
    }
}

/// Teach the host's secret set what the target holds now: every value in
/// the generated credentials file, and the credential-named values of the
/// installer's runtime env (an earlier start or the installer wrote them).
fn learn_installed_secrets(host: &dyn Host) {
    // Unreadable files teach nothing; the step that needs them says why.
    let read = |path: &str| {
        let text = host.read_optional(path).ok().flatten();
        cube::envfile::parse(&text.unwrap_or_default())
    };
    let secrets = host.secrets();
    read(cube::CREDENTIALS_PATH)
        .values()
        .for_each(|v| secrets.add(v));
    // The installer's runtime env (upstream `deploy/one-click/install.sh`
    // writes it from the bundle's .env).
    let installed = read(&format!("{}/.one-click.env", cube::INSTALL_ROOT));
    secrets.add_env(installed.iter().map(|(k, v)| (k.as_str(), v.as_str())));
}

/// The crash-loop guard: a step started in two earlier boots that never
/// finished reset the machine each time (a kernel panic, a hung module
/// load). Starting it a third time would loop forever, so the run ends here,
/// before anything is committed: the old kernel stays the default. The
/// downloads (fetch, bundle) are exempt; a download resumes where it stopped.
fn crash_loop(host: &dyn Host, journal: &Journal, step: StepId) -> Option<StepFailure> {
    if matches!(step, StepId::Fetch | StepId::Bundle) {
        return None;
    }
    let now = host.boot_id()?;
    let earlier = journal.interrupted_boots(step, &now);
    if earlier.len() < 2 {
        return None;
    }
    let boots = match earlier.split_last() {
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    };
    Some(
        StepFailure::new(format!(
            "{step} was started in boots {boots} and never finished: the machine reset while it ran; not starting it a third time"
        ))
        .hint(
            "look for a panic or a hang in the previous boots (`journalctl -b -1`, the serial console); \
             the old kernel stays the default. Fix the cause, then `cube-firstboot run --retry`",
        )
        .ends_as(Failure::Interrupted(step)),
    )
}

/// The reboot step: it reboots only when the kernel stage armed a trial
/// boot, and never more often than the plan allows.
fn reboot(ctx: &mut Ctx) -> Result<Outcome> {
    if ctx.journal.state(StepId::KernelBoot) != Some(StepState::RebootRequested) {
        return Ok(Outcome::Skipped("no reboot needed".into()));
    }
    if ctx.journal.reboots >= ctx.plan.max_reboots {
        return Err(StepFailure::new(format!(
            "reboot cap reached ({} of {} planned reboots used)",
            ctx.journal.reboots, ctx.plan.max_reboots
        ))
        .hint("the machine did not come back on the PVM kernel; see the serial console")
        .into());
    }
    // After the reboot the helper starts as soon as the network is up.
    units::hand_over_to_resume(ctx.host)?;
    let how = kernel::kexec::stage_trial_kernel(ctx)?;
    Ok(Outcome::Reboot(format!(
        "trial boot of the PVM kernel {how}"
    )))
}

/// The hint for an error no step explained: a typed download failure
/// carries its own; otherwise the kind of I/O error, if any, decides.
fn hint_for(err: &anyhow::Error) -> String {
    if let Some(fetch) = err.chain().find_map(|e| e.downcast_ref::<FetchError>()) {
        return fetch.hint();
    }
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
