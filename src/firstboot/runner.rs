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
            Arc::new(move |ctx: &mut Ctx| {
                // Decided before the first byte: fetch only what that path needs.
                ctx.journal.facts.kvm_mode = Some(kernel::decide_kvm(ctx.host, ctx.plan)?);
                fetch::run_without_bundle(ctx, &fetch_cfg)
            }),
        );
        let bundle_cfg = opts.fetch.clone();
        table.insert(
            StepId::Bundle,
            Arc::new(move |ctx: &mut Ctx| fetch::bundle_step(ctx, &bundle_cfg)),
        );
        table.insert(StepId::CubePrereqs, Arc::new(cube::prereqs));
        table.insert(StepId::KernelInstall, Arc::new(kernel::install));
        table.insert(StepId::KernelBoot, Arc::new(kernel::boot));
        table.insert(StepId::Reboot, Arc::new(reboot));
        table.insert(StepId::KernelVerify, Arc::new(kernel::verify));
        table.insert(StepId::KvmLoad, Arc::new(kernel::load_kvm));
        table.insert(StepId::KernelCommit, Arc::new(kernel::commit));
        table.insert(StepId::DataDisk, Arc::new(cube::data_disk));
        table.insert(StepId::CubeInstall, Arc::new(cube::install));
        table.insert(StepId::CubeVerify, Arc::new(cube::verify));
        table.insert(StepId::Harden, Arc::new(cube::harden));
        table.insert(StepId::Report, Arc::new(units::disable_all));
        Self { table }
    }

    /// Replace one step's function.
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
    let reporter = Reporter::new(host, plan, live::Relay::new(opts.link));

    // A finished run: rebuild the status (it lives in /run, which a reboot
    // empties) and stop, unless asked to retry a failure.
    if let Some(done) = journal.finished.clone() {
        if !(opts.retry_failed && done.failure().is_some()) {
            host.say(&format!(
                "nothing to do: this plan already finished ({done})"
            ));
            let message = finished_message(&journal, &done);
            let ended = match &done {
                RunState::Failed(f) => RunEnd::Failed(f.clone()),
                _ => RunEnd::Done,
            };
            reporter.write(&mut reporter.status(&journal, done, None, message))?;
            return Ok(ended);
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
    }

    // The bundle downloads beside the steps that do not need it; the scope
    // ends only when that download has ended too (a reboot or a kill ends
    // it sooner, and the `bundle` step resumes it by Range).
    std::thread::scope(|s| {
        let mut beside = Beside {
            worker: None,
            started: None,
            relay: reporter.relay().clone(),
        };
        let end = take_steps(
            host,
            plan,
            opts,
            steps,
            &reporter,
            &mut journal,
            s,
            &mut beside,
        );
        // Stopped or failed with the download still going: what it brought
        // is recorded. A reboot that did not wait for it ends it (here the
        // scope still joins it); the next boot resumes it by Range.
        if !matches!(end, Ok(RunEnd::Rebooting)) {
            beside.wait(host, &mut journal)?;
        }
        end
    })
}

/// The bundle's download beside the steps: started with the fetch step (or
/// at the first step of a later start, after a reboot or a kill), waited
/// for before the `bundle` step and, when it is nearly done, before the
/// reboot.
struct Beside<'scope> {
    worker: Option<std::thread::ScopedJoinHandle<'scope, Result<String>>>,
    started: Option<(std::time::Instant, u64)>,
    /// The download reports and takes its turn on the link through it.
    relay: live::Relay,
}

/// About how long a reboot takes, boot to network (the VM tier's figure
/// was under a minute).
pub const REBOOT_ESTIMATE: std::time::Duration = std::time::Duration::from_secs(60);

impl<'scope> Beside<'scope> {
    fn start_if_due<'env>(
        &mut self,
        s: &'scope std::thread::Scope<'scope, 'env>,
        host: &'env dyn Host,
        plan: &'env Plan,
        opts: &RunOptions,
        journal: &Journal,
        step: StepId,
    ) {
        let due = self.worker.is_none()
            && opts.scope.includes(StepId::Bundle)
            && !journal.is_complete(StepId::Bundle)
            && journal.is_complete(StepId::Preflight)
            && (step == StepId::Fetch || journal.is_complete(StepId::Fetch))
            && step != StepId::Bundle
            // Already whole: the bundle step verifies it, once.
            && !host.exists(&super::cache_path(&plan.assets.bundle))
            // One file for both: the fetch step downloads it.
            && plan.assets.bundle.sha256 != plan.assets.kernel.sha256;
        if !due {
            return;
        }
        self.started = Some((std::time::Instant::now(), bundle_bytes(host, plan)));
        let cfg = opts.fetch.clone();
        if step == StepId::Fetch && !journal.is_complete(StepId::Fetch) {
            // The kernel package comes first: the bundle waits for its rate
            // and gives way on a shared link (`link.rs`).
            self.relay.expect_foreground();
        }
        let channel = self.relay.handle();
        self.worker = Some(s.spawn(move || {
            let fetched = channel.enter(|| fetch::bundle_beside(host, plan, &cfg))?;
            Ok(format!(
                "bundle {}, beside the kernel stage",
                fetched.describe(&plan.assets.bundle)
            ))
        }));
    }

    /// Wait for the download to end and record a verified bundle in the
    /// journal (this thread is the journal's only writer). A failure is the
    /// `bundle` step's to report: it runs the same download again, with its
    /// retries and its hint.
    fn wait(&mut self, host: &dyn Host, journal: &mut Journal) -> Result<()> {
        let Some(w) = self.worker.take() else {
            return Ok(());
        };
        let joined = w.join();
        self.relay.finished("bundle");
        match joined {
            Ok(Ok(detail)) => {
                journal.start(host, StepId::Bundle);
                journal.mark(host, StepId::Bundle, StepState::Done, &detail);
                journal.save(host)?;
            }
            Ok(Err(e)) => host.say(&format!("fetch bundle: {e:#}; the bundle step tries again")),
            Err(_) => {
                host.say("fetch bundle: the download thread panicked; the bundle step tries again")
            }
        }
        Ok(())
    }

    /// Before the reboot: wait for the bundle when less of it is left than
    /// a reboot takes; otherwise reboot and resume it after. Says which.
    fn before_reboot(
        &mut self,
        host: &dyn Host,
        plan: &Plan,
        journal: &mut Journal,
        reboot_takes: std::time::Duration,
    ) -> Result<Option<String>> {
        let Some(worker) = self.worker.as_ref() else {
            return Ok(None);
        };
        if worker.is_finished() {
            self.wait(host, journal)?;
            return Ok(None);
        }
        let size = plan.assets.bundle.size;
        let have = bundle_bytes(host, plan);
        let left = size.saturating_sub(have);
        let eta = self.started.and_then(|(at, from)| {
            let rate = have.saturating_sub(from) as f64 / at.elapsed().as_secs_f64().max(1e-3);
            (rate > 0.0).then(|| std::time::Duration::from_secs_f64(left as f64 / rate))
        });
        match eta {
            Some(eta) if eta > reboot_takes => Ok(Some(format!(
                "rebooting with {} of the bundle left (about {}s at the current rate, longer than a reboot); its download resumes after the reboot",
                fetch::human_bytes(left),
                eta.as_secs()
            ))),
            // Unknown (no bytes yet, or a dry run): wait, the download has
            // its own timeouts.
            _ => {
                host.say(&format!(
                    "waiting for the last {} of the bundle before rebooting (less than a reboot takes)",
                    fetch::human_bytes(left)
                ));
                self.wait(host, journal)?;
                Ok(None)
            }
        }
    }
}

/// Bytes of the bundle on disk: all of it once verified, else the partial.
fn bundle_bytes(host: &dyn Host, plan: &Plan) -> u64 {
    let path = super::cache_path(&plan.assets.bundle);
    if host.exists(&path) {
        return plan.assets.bundle.size;
    }
    host.metadata(&format!("{path}.partial"))
        .ok()
        .flatten()
        .map_or(0, |m| m.len)
}

#[allow(clippy::too_many_arguments)]
fn take_steps<'scope, 'env>(
    host: &'env dyn Host,
    plan: &'env Plan,
    opts: &RunOptions,
    steps: &Steps,
    reporter: &Reporter,
    journal: &mut Journal,
    s: &'scope std::thread::Scope<'scope, 'env>,
    beside: &mut Beside<'scope>,
) -> Result<RunEnd> {
    for step in StepId::ALL {
        if !opts.scope.includes(step) {
            continue;
        }
        // A step that asked for a reboot: the boot id tells whether it came.
        if let Some(then) = journal.reboot_requested_in(step) {
            if host.boot_id().as_deref() == Some(then) {
                // Killed between saving the request and rebooting, or the
                // reboot was refused: the same boot is still running.
                host.say("the requested reboot has not happened yet; asking again");
                return reboot_now(host, reporter, journal, None);
            }
            journal.mark(host, step, StepState::Done, "rebooted");
            journal.save(host)?;
        }
        beside.start_if_due(s, host, plan, opts, journal, step);
        let mut note = None;
        if step == StepId::Bundle {
            beside.wait(host, journal)?;
        }
        if step == StepId::Reboot
            && !journal.is_complete(step)
            && journal.state(StepId::KernelBoot) == Some(StepState::RebootRequested)
        {
            note = beside.before_reboot(host, plan, journal, opts.reboot_estimate)?;
        }
        if !journal.is_complete(step) {
            if let Some(end) = take(host, plan, reporter, steps, journal, step, note)? {
                return Ok(end);
            }
        }
        if opts.scope == Scope::StopAfter(step) {
            let message = format!("stopped after step {step} as asked");
            reporter.write(&mut reporter.status(journal, RunState::Stopped, None, message))?;
            return Ok(RunEnd::Stopped(step));
        }
    }

    if !opts.scope.includes(StepId::Report) {
        return Ok(RunEnd::Done);
    }
    journal.finished = Some(RunState::Done);
    let message = final_message(host, plan, journal);
    journal.facts.final_message = Some(message.clone());
    journal.save(host)?;
    let mut status = reporter.status(journal, RunState::Done, None, message);
    reporter.publish(&mut status)?;
    // The one line a cloud console's "get console output" should show.
    host.say(&status.message);
    Ok(RunEnd::Done)
}

/// Take one step: status, journal `started`, the work, journal outcome.
/// Returns how the run ends when it ends here (a reboot or a failure).
fn take(
    host: &dyn Host,
    plan: &Plan,
    reporter: &Reporter,
    steps: &Steps,
    journal: &mut Journal,
    step: StepId,
    reboot_note: Option<String>,
) -> Result<Option<RunEnd>> {
    // What an earlier step or the installer wrote may hold new secrets.
    learn_installed_secrets(host);
    if let Some(refused) = crash_loop(host, journal, step) {
        return fail(host, reporter, journal, step, &refused.into()).map(Some);
    }
    let running = format!("running step {step}");
    let mut status = reporter.status(journal, RunState::Running, Some(step), running);
    reporter.publish(&mut status)?;
    host.say(&format!("step {step}: starting"));
    journal.start(host, step);
    journal.save(host)?;

    let outcome = match steps.table.get(&step) {
        // Phases and download counts the step reports reach the status
        // file and the webhook while it runs.
        Some(f) => reporter.during(&status, || {
            f(&mut Ctx {
                host,
                plan,
                journal: &mut *journal,
            })
        }),
        None => Err(anyhow::anyhow!("no function for step {step}")),
    };

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
        Err(err) => return fail(host, reporter, journal, step, &err).map(Some),
    };
    // Durable before anything else happens (a reboot, the next step).
    journal.save(host)?;
    if reboot {
        return reboot_now(host, reporter, journal, reboot_note).map(Some);
    }
    Ok(None)
}

/// Record a failure everywhere a person might look, and stop.
fn fail(
    host: &dyn Host,
    reporter: &Reporter,
    journal: &mut Journal,
    step: StepId,
    err: &anyhow::Error,
) -> Result<RunEnd> {
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
    // A rollback that left the trial kernel running: one reboot into the old
    // default, journaled first. Bounded: the run is finished before it is
    // asked for, so the next boot does nothing (docs/bootloader.md).
    if failure.is_some_and(|f| f.reboot_after) {
        journal.reboots += 1;
        journal.save(host)?;
        host.request_reboot()?;
    }
    Ok(RunEnd::Failed(ending))
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

fn reboot_now(
    host: &dyn Host,
    reporter: &Reporter,
    journal: &Journal,
    note: Option<String>,
) -> Result<RunEnd> {
    let mut message =
        "rebooting into the PVM kernel; the helper continues after the reboot".to_string();
    if let Some(note) = note {
        host.say(&note);
        message = format!("{message} ({note})");
    }
    let mut status = reporter.status(journal, RunState::Rebooting, Some(StepId::Reboot), message);
    reporter.publish(&mut status)?;
    host.request_reboot()?;
    Ok(RunEnd::Rebooting)
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
    Ok(Outcome::Reboot("trial boot of the PVM kernel".into()))
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
