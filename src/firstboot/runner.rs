//! The main loop: load plan and journal, take each step that is not complete,
//! record its outcome durably, and carry out the one planned reboot.

use anyhow::{Context, Result};

use super::host::Host;
use super::journal::{Journal, StepState};
use super::status::Status;
use super::{cube, fetch, kernel, preflight, Ctx, Outcome, StepFailure, StepId};
use crate::digest::Sha256Digest;
use crate::plan::{Plan, PLAN_PATH};

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step complete.
    Done,
    /// A reboot was requested; the unit runs the helper again after it.
    Rebooting,
    /// Stopped with this terminal status (`failed: …`).
    Failed(String),
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

/// Read and parse the plan from the target.
pub fn load_plan(host: &dyn Host) -> Result<(Plan, Sha256Digest)> {
    let text = host
        .read_string(PLAN_PATH)
        .with_context(|| format!("loading plan {PLAN_PATH}"))?;
    let plan = Plan::from_json(&text).with_context(|| format!("loading plan {PLAN_PATH}"))?;
    Ok((plan, Sha256Digest::of(text.as_bytes())))
}

/// Run the state machine until done, a reboot, or a failure.
pub fn run(
    host: &dyn Host,
    plan: &Plan,
    plan_digest: &Sha256Digest,
    scope: Scope,
) -> Result<RunEnd> {
    let mut journal = Journal::load(host, &plan_digest.to_hex())?;
    let mut status = Status {
        generator: plan.generator.clone(),
        profile: plan.target.profile.clone(),
        ..Status::default()
    };
    if let Some(done) = &journal.finished {
        host.say(&format!(
            "nothing to do: this plan already finished ({done})"
        ));
        return Ok(if done == "done" {
            RunEnd::Done
        } else {
            RunEnd::Failed(done.clone())
        });
    }

    for step in StepId::ALL {
        if scope == Scope::KernelOnly && !matches!(step, StepId::KernelInstall | StepId::KernelBoot)
        {
            continue;
        }
        // A reboot that was requested and happened: the reboot step is complete now.
        if step == StepId::Reboot && journal.state(step) == Some(StepState::RebootRequested) {
            journal.mark(host, step, StepState::Done, "rebooted");
            journal.save(host)?;
            continue;
        }
        if journal.is_complete(step) {
            continue;
        }

        status.state = "running".into();
        status.step = step.name().into();
        status.progress.done = StepId::ALL
            .iter()
            .filter(|s| journal.is_complete(**s))
            .count();
        status.progress.total = StepId::ALL.len();
        status.write(host)?;
        host.say(&format!("step {step}: starting"));
        journal.mark(host, step, StepState::Started, "");
        journal.save(host)?;

        let outcome = if step == StepId::Reboot {
            reboot_step(host, plan, &journal, scope)
        } else {
            let mut ctx = Ctx {
                host,
                plan,
                journal: &mut journal,
            };
            dispatch(step, &mut ctx)
        };

        match outcome {
            Ok(Outcome::Done(detail)) => {
                host.say(&format!("step {step}: done {detail}"));
                journal.mark(host, step, StepState::Done, &detail);
            }
            Ok(Outcome::Skipped(why)) => {
                host.say(&format!("step {step}: skipped ({why})"));
                journal.mark(host, step, StepState::Skipped, &why);
            }
            Ok(Outcome::RebootRequested(detail)) => {
                if step == StepId::Reboot {
                    journal.reboots += 1;
                }
                journal.mark(host, step, StepState::RebootRequested, &detail);
            }
            Err(err) => {
                let failure = err.downcast_ref::<StepFailure>();
                let terminal = failure
                    .and_then(|f| f.status_override.clone())
                    .unwrap_or_else(|| format!("failed: {step}"));
                let message = format!("{err:#}");
                host.say(&format!("step {step}: FAILED: {message}"));
                journal.mark(host, step, StepState::Failed, &message);
                journal.finished = Some(terminal.clone());
                journal.save(host)?;
                status.state = terminal.clone();
                status.last_error = Some(message);
                if let Some(h) = failure.and_then(|f| f.hint.clone()) {
                    status.hints.push(h);
                }
                status.write(host)?;
                return Ok(RunEnd::Failed(terminal));
            }
        }
        // Durable before anything else happens (a reboot, the next step).
        journal.save(host)?;

        if step == StepId::Reboot && journal.state(step) == Some(StepState::RebootRequested) {
            status.state = "rebooting".into();
            status.write(host)?;
            host.request_reboot()?;
            return Ok(RunEnd::Rebooting);
        }
        if let Scope::StopAfter(last) = scope {
            if last == step {
                return Ok(RunEnd::Rebooting);
            }
        }
    }

    if scope == Scope::KernelOnly {
        return Ok(RunEnd::Done);
    }
    journal.finished = Some("done".into());
    journal.save(host)?;
    status.state = "done".into();
    status.step = String::new();
    status.progress.done = StepId::ALL.len();
    status.progress.total = StepId::ALL.len();
    status.write(host)?;
    host.say(&format!(
        "finished: {} is a Cube Sandbox node",
        plan.role_label()
    ));
    Ok(RunEnd::Done)
}

fn dispatch(step: StepId, ctx: &mut Ctx) -> Result<Outcome> {
    match step {
        StepId::Preflight => preflight::run(ctx),
        StepId::Fetch => fetch::run(ctx),
        StepId::CubePrereqs => cube::prereqs(ctx),
        StepId::KernelInstall => kernel::install(ctx),
        StepId::KernelBoot => kernel::boot(ctx),
        StepId::KernelVerify => kernel::verify(ctx),
        StepId::KvmLoad => kernel::load_kvm(ctx),
        StepId::DataDisk => cube::data_disk(ctx),
        StepId::CubeInstall => cube::install(ctx),
        StepId::CubeVerify => cube::verify(ctx),
        StepId::Harden => cube::harden(ctx),
        StepId::Report => Ok(Outcome::Done(String::new())),
        StepId::Reboot => unreachable_step(step),
    }
}

fn unreachable_step(step: StepId) -> Result<Outcome> {
    anyhow::bail!("step {step} is handled by the runner")
}

/// The reboot happens only when the kernel stage armed a trial boot, and never
/// more often than the plan allows.
fn reboot_step(host: &dyn Host, plan: &Plan, journal: &Journal, scope: Scope) -> Result<Outcome> {
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
    let _ = host;
    Ok(Outcome::RebootRequested(
        "trial boot of the PVM kernel".into(),
    ))
}
