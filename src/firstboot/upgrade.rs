//! `cube-firstboot upgrade --to PLAN [--helper FILE#SHA256]`: roll a node
//! whose run is done onto a new plan (docs/upgrades.md). It compares what
//! the node runs with the new plan and leaves only what changed to do:
//!
//! - the helper: the verified binary replaces the one the units start,
//!   atomically, first (the resume unit after a kernel reboot starts it);
//! - the PVM kernel: the runner's own kernel stage (install, trial boot,
//!   verify, kvm-load, commit; a failure rolls back as on first boot);
//! - the Cube bundle: the runner's bundle and cube-install steps, the
//!   installer in upgrade mode (journal fact `upgrade.from-plan`);
//!
//! then cube-verify, harden and report, always. It does this by seeding the
//! new plan's journal: what did not change is recorded as skipped, so the
//! runner walks its one step table and takes only the rest. The same plan
//! a second time does nothing and says so.

use std::str::FromStr;

use anyhow::{bail, Context, Result};

use super::host::Host;
use super::journal::{Facts, Journal, KvmInUse, StepState};
use super::report::Reporter;
use super::run_state::RunState;
use super::runner::{self, RunEnd, RunOptions, Steps};
use super::{kernel, live, StepFailure, StepId};
use crate::digest::Sha256Digest;
use crate::layout::HELPER_PATH;
use crate::plan::{Plan, PLAN_PATH};

/// Where the upgrade payload (`upgrade.sh`) puts the new plan and the new
/// helper: the helper's own state directory, root-only.
pub const NEXT_PLAN_PATH: &str = "/var/lib/cubeboot/plan.next.json";
pub const NEXT_HELPER_PATH: &str = "/var/lib/cubeboot/cube-firstboot.upgrade";
/// The plan the node ran before its last upgrade, kept for the operator.
pub const PREVIOUS_PLAN_PATH: &str = "/etc/cubeboot/plan.previous.json";
/// The transient unit `upgrade.sh` starts the helper in (`systemd-run`), so
/// a dropped ssh session does not end the upgrade.
pub const UNIT: &str = "cube-firstboot-upgrade";
/// Bound on a helper binary read whole: the release helper is ~2.8 MB, a
/// debug build of it ~110 MB (the payload tests run one).
pub const HELPER_LIMIT: u64 = 256 << 20;

/// The new helper on this node, pinned by the lock's SHA-256: `FILE#SHA256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedHelper {
    pub path: String,
    pub sha256: Sha256Digest,
}

impl FromStr for PinnedHelper {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some((path, digest)) = s.rsplit_once('#') else {
            bail!("expected FILE#SHA256 (the helper's SHA-256 after a '#'), got {s:?}");
        };
        if !path.starts_with('/') {
            bail!("{path:?} is not an absolute path");
        }
        let sha256 = digest
            .parse()
            .map_err(|e| anyhow::anyhow!("{s:?}: the part after '#' is not a SHA-256: {e}"))?;
        Ok(Self {
            path: path.to_string(),
            sha256,
        })
    }
}

/// What differs between the node and the new plan, each with what it says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub helper: Option<String>,
    pub kernel: Option<String>,
    pub bundle: Option<String>,
}

impl Changes {
    /// One line: what changes, and what stays.
    pub fn describe(&self) -> String {
        let parts = [
            ("helper", &self.helper),
            ("kernel", &self.kernel),
            ("bundle", &self.bundle),
        ];
        let changed: Vec<String> = parts
            .iter()
            .filter_map(|(what, c)| c.as_ref().map(|c| format!("{what} {c}")))
            .collect();
        let kept: Vec<&str> = parts
            .iter()
            .filter(|(_, c)| c.is_none())
            .map(|(what, _)| *what)
            .collect();
        match (changed.is_empty(), kept.is_empty()) {
            (true, _) => "helper, kernel and bundle unchanged".into(),
            (false, true) => changed.join("; "),
            (false, false) => format!("{}; {} unchanged", changed.join("; "), kept.join(", ")),
        }
    }
}

/// How an upgrade ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgraded {
    /// The node already runs this plan; nothing was done.
    NothingToDo(String),
    /// The runner took the new plan's steps and ended so.
    Ran(RunEnd),
}

/// Upgrade this node to the plan `plan_text` (the new plan's bytes: its
/// SHA-256 names the journal), with the standard steps.
pub fn run(
    host: &dyn Host,
    plan_text: &str,
    helper: Option<&PinnedHelper>,
    opts: &RunOptions,
) -> Result<Upgraded> {
    run_with(host, plan_text, helper, opts, &Steps::standard(opts))
}

/// [`run`] with the step functions given (tests stand in for the Cube
/// stage's).
pub fn run_with(
    host: &dyn Host,
    plan_text: &str,
    helper: Option<&PinnedHelper>,
    opts: &RunOptions,
    steps: &Steps,
) -> Result<Upgraded> {
    let plan = Plan::from_json(plan_text).context("reading the new plan")?;
    let digest = Sha256Digest::of(plan_text.as_bytes());
    let (journal, changes) = match decide(host, &plan, &digest, helper)? {
        Decision::Again(journal) => {
            return again(
                host, &plan, &digest, plan_text, journal, helper, opts, steps,
            )
        }
        Decision::New { journal, changes } => (journal, changes),
    };
    host.say(&format!(
        "upgrading from plan {} to plan {}: {}",
        short(&journal.plan_sha256),
        short(&digest.to_hex()),
        changes.describe()
    ));
    if let Some(h) = helper {
        install_helper(host, h)?;
    }
    // The journal first, then the plan: the resume unit after a kernel
    // reboot finds the new plan and its journal together.
    let seeded = seed(host, &journal, &digest, &changes);
    seeded.save(host)?;
    host.write_atomic(PREVIOUS_PLAN_PATH, &plan_bytes(host)?, 0o600)?;
    host.write_atomic(PLAN_PATH, plan_text.as_bytes(), 0o600)?;
    Ok(Upgraded::Ran(runner::run_with(
        host, &plan, &digest, opts, steps,
    )?))
}

/// `upgrade --check`: what [`run`] would do, changing nothing; the same
/// refusals. upgrade.sh runs it before it starts the upgrade, so a refusal
/// reaches the operator's terminal.
pub fn check(host: &dyn Host, plan_text: &str, helper: Option<&PinnedHelper>) -> Result<String> {
    let plan = Plan::from_json(plan_text).context("reading the new plan")?;
    let digest = Sha256Digest::of(plan_text.as_bytes());
    if let Some(h) = helper {
        verified_helper(host, h)?;
    }
    Ok(match decide(host, &plan, &digest, helper)? {
        Decision::Again(journal) => match journal.finished {
            Some(RunState::Done) => format!(
                "this node already runs plan {}: {}",
                short(&digest.to_hex()),
                match helper
                    .map(|h| helper_change(host, h))
                    .transpose()?
                    .flatten()
                {
                    Some(c) => format!("only the helper changes ({c})"),
                    None => "nothing to do".to_string(),
                }
            ),
            Some(failed) => return Err(failed_before(&digest, &failed)),
            None => format!("the upgrade to plan {} resumes", short(&digest.to_hex())),
        },
        Decision::New { journal, changes } => format!(
            "from plan {} to plan {}: {}",
            short(&journal.plan_sha256),
            short(&digest.to_hex()),
            changes.describe()
        ),
    })
}

/// What an upgrade to `plan` means on this node, or why it is refused.
enum Decision {
    /// The node's journal belongs to this plan already.
    Again(Journal),
    /// A new plan over a finished run.
    New { journal: Journal, changes: Changes },
}

fn decide(
    host: &dyn Host,
    plan: &Plan,
    digest: &Sha256Digest,
    helper: Option<&PinnedHelper>,
) -> Result<Decision> {
    let Some(journal) = Journal::read(host)? else {
        return Err(StepFailure::new(
            "no run on this node yet: an upgrade starts from a node whose first run is done",
        )
        .hint("provision the node with the user-data payload first (docs/upgrades.md)")
        .into());
    };
    if journal.plan_sha256 == digest.to_hex() {
        return Ok(Decision::Again(journal));
    }
    if journal.finished != Some(RunState::Done) {
        let state = journal
            .finished
            .as_ref()
            .map_or("still running".to_string(), ToString::to_string);
        return Err(StepFailure::new(format!(
            "this node's run has not finished well ({state}): an upgrade starts from a node whose run is done"
        ))
        .hint("see `cube-firstboot status`; finish or retry that run (`cube-firstboot run --retry`) first")
        .into());
    }
    let old_plan = running_plan(host, &journal)?;
    let changes = compare(host, &old_plan, &journal, plan, helper)?;
    Ok(Decision::New { journal, changes })
}

fn failed_before(digest: &Sha256Digest, failed: &RunState) -> anyhow::Error {
    StepFailure::new(format!(
        "the upgrade to plan {} ended {failed}",
        short(&digest.to_hex())
    ))
    .hint("see `cube-firstboot status`; fix the cause, then `cube-firstboot run --retry`, or roll the next plan")
    .into()
}

/// The same plan again: done is a no-op (said on the console, in the status
/// and to the webhook, so `cubeboot watch` hears it); an upgrade that was
/// cut short resumes; a failed one is said again the same ways and is the
/// operator's to retry.
#[allow(clippy::too_many_arguments)]
fn again(
    host: &dyn Host,
    plan: &Plan,
    digest: &Sha256Digest,
    plan_text: &str,
    journal: Journal,
    helper: Option<&PinnedHelper>,
    opts: &RunOptions,
    steps: &Steps,
) -> Result<Upgraded> {
    let Some(finished) = journal.finished.clone() else {
        host.say(&format!(
            "resuming the upgrade to plan {}",
            short(&digest.to_hex())
        ));
        if let Some(h) = helper {
            install_helper(host, h)?;
        }
        host.write_atomic(PLAN_PATH, plan_text.as_bytes(), 0o600)?;
        return Ok(Upgraded::Ran(runner::run_with(
            host, plan, digest, opts, steps,
        )?));
    };
    let reporter = Reporter::new(host, plan, live::Relay::new(opts.link));
    if finished != RunState::Done {
        let err = failed_before(digest, &finished);
        let message = format!("{err}");
        host.say(&message);
        reporter.publish(&mut reporter.status(&journal, finished, None, message))?;
        return Err(err);
    }
    let helper_replaced = match helper {
        Some(h) if helper_change(host, h)?.is_some() => {
            install_helper(host, h)?;
            true
        }
        _ => false,
    };
    let message = if helper_replaced {
        format!(
            "this node already runs plan {}; only the helper changed, and was replaced",
            short(&digest.to_hex())
        )
    } else {
        format!(
            "nothing to do: this node already runs plan {} (kernel, bundle and helper unchanged)",
            short(&digest.to_hex())
        )
    };
    host.say(&message);
    reporter.publish(&mut reporter.status(&journal, RunState::Done, None, message.clone()))?;
    Ok(Upgraded::NothingToDo(message))
}

/// The plan the node runs: the file the finished journal belongs to.
fn running_plan(host: &dyn Host, journal: &Journal) -> Result<Plan> {
    let bytes = plan_bytes(host)?;
    let found = Sha256Digest::of(&bytes).to_hex();
    if found != journal.plan_sha256 {
        return Err(StepFailure::new(format!(
            "{PLAN_PATH} (SHA-256 {}) is not the plan this node's run finished ({}): cannot tell what the node runs",
            short(&found),
            short(&journal.plan_sha256)
        ))
        .hint("put back the plan the node was provisioned with, or re-provision the node")
        .into());
    }
    let text = String::from_utf8(bytes).with_context(|| format!("reading {PLAN_PATH}"))?;
    Plan::from_json(&text).with_context(|| format!("reading {PLAN_PATH}"))
}

fn plan_bytes(host: &dyn Host) -> Result<Vec<u8>> {
    let file = host
        .open(PLAN_PATH)
        .with_context(|| format!("reading {PLAN_PATH}"))?;
    crate::bounded_read::read_limited(file, crate::bounded_read::PLAN_LIMIT)
        .with_context(|| format!("reading {PLAN_PATH}"))
}

/// What the node runs against what `new` says.
pub fn compare(
    host: &dyn Host,
    old: &Plan,
    journal: &Journal,
    new: &Plan,
    helper: Option<&PinnedHelper>,
) -> Result<Changes> {
    let helper = match helper {
        Some(h) => helper_change(host, h)?,
        None => None,
    };
    // A node on native KVM needs no PVM kernel; otherwise the kernel it
    // runs, with the new plan's parameters, is what counts.
    let kernel = if journal.facts.kvm_mode == Some(KvmInUse::Native) {
        None
    } else {
        match kernel::planned_kernel_lacks(host, new)? {
            Some(missing) if missing.is_empty() => None,
            Some(missing) => Some(format!(
                "{} gets boot parameters {}",
                new.kernel.kver,
                missing.join(" ")
            )),
            None => Some(format!(
                "{} -> {}",
                host.read_optional("/proc/sys/kernel/osrelease")?
                    .map_or("an unknown kernel".into(), |s| s.trim().to_string()),
                new.kernel.kver
            )),
        }
    };
    // The bundle a `upgrade --bundle` installed last, else the old plan's.
    let running_bundle = journal
        .facts
        .bundle_sha256
        .clone()
        .unwrap_or_else(|| old.assets.bundle.sha256.to_hex());
    let bundle = (running_bundle != new.assets.bundle.sha256.to_hex()).then(|| {
        let from = if journal.facts.bundle_sha256.is_some() {
            journal
                .facts
                .bundle_url
                .as_deref()
                .and_then(|u| u.rsplit('/').next())
                .unwrap_or("the bundle installed last")
        } else {
            old.assets.bundle.name.as_str()
        };
        format!("{from} -> {}", new.assets.bundle.name)
    });
    Ok(Changes {
        helper,
        kernel,
        bundle,
    })
}

/// Whether the helper the units start differs from the pinned one.
fn helper_change(host: &dyn Host, pin: &PinnedHelper) -> Result<Option<String>> {
    let installed = match host.open(HELPER_PATH) {
        Ok(f) => Some(Sha256Digest::of(
            &crate::bounded_read::read_limited(f, HELPER_LIMIT)
                .with_context(|| format!("reading {HELPER_PATH}"))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {HELPER_PATH}")),
    };
    Ok((installed != Some(pin.sha256)).then(|| {
        format!(
            "{} -> {}",
            installed.map_or("none".to_string(), |d| short(&d.to_hex()).to_string()),
            short(&pin.sha256.to_hex())
        )
    }))
}

/// Replace the helper the units start with the pinned one, atomically,
/// once its bytes match the pin. Nothing is written from other bytes.
pub fn install_helper(host: &dyn Host, pin: &PinnedHelper) -> Result<()> {
    let bytes = verified_helper(host, pin)?;
    if helper_change(host, pin)?.is_none() {
        return Ok(());
    }
    host.write_atomic(HELPER_PATH, &bytes, 0o755)?;
    host.say(&format!(
        "helper replaced: {HELPER_PATH} is now {}",
        short(&pin.sha256.to_hex())
    ));
    Ok(())
}

/// The pinned helper's bytes, once they match the pin.
fn verified_helper(host: &dyn Host, pin: &PinnedHelper) -> Result<Vec<u8>> {
    let file = host
        .open(&pin.path)
        .with_context(|| format!("reading the new helper {}", pin.path))?;
    let bytes = crate::bounded_read::read_limited(file, HELPER_LIMIT)
        .with_context(|| format!("reading the new helper {}", pin.path))?;
    let found = Sha256Digest::of(&bytes);
    if found != pin.sha256 {
        return Err(StepFailure::new(format!(
            "refusing to install {}: its SHA-256 is {found}, the lock pins {}",
            pin.path, pin.sha256
        ))
        .hint("run the upgrade payload again: it fetches the helper and checks it first")
        .into());
    }
    Ok(bytes)
}

/// The new plan's journal: the facts that still hold carried over, and
/// every step whose effect did not change recorded as skipped, so the
/// runner takes only the rest.
fn seed(host: &dyn Host, old: &Journal, digest: &Sha256Digest, changes: &Changes) -> Journal {
    let mut journal = Journal::new(&digest.to_hex());
    journal.facts = Facts {
        final_message: None,
        diagnostics: None,
        upgrade_from: Some(old.plan_sha256.clone()),
        ..old.facts.clone()
    };
    if changes.kernel.is_some() {
        // The kernel stage records its own again, from the running kernel.
        let f = &mut journal.facts;
        f.old_kernel = None;
        f.old_default_entry = None;
        f.pvm_entry = None;
        f.direct_default = None;
        f.already_running = None;
        f.trial_panic = None;
        f.bls_options_before = None;
        f.grub_dropin_before = None;
    }
    if changes.bundle.is_some() {
        // The new plan's bundle is the one installed from now on.
        journal.facts.bundle_url = None;
        journal.facts.bundle_sha256 = None;
    }
    let from = format!("kept from plan {}", short(&old.plan_sha256));
    let mut keep = |step: StepId, why: String| {
        journal.mark(host, step, StepState::Skipped, &why);
    };
    keep(StepId::Preflight, format!("upgrade: {from}"));
    keep(StepId::CubePrereqs, format!("upgrade: {from}"));
    keep(StepId::DataDisk, format!("upgrade: {from}"));
    if changes.kernel.is_none() {
        let why = "upgrade: kernel unchanged".to_string();
        for step in [
            StepId::Fetch,
            StepId::KernelInstall,
            StepId::KernelBoot,
            StepId::Reboot,
            StepId::KernelVerify,
            StepId::KvmLoad,
            StepId::KernelCommit,
        ] {
            keep(step, why.clone());
        }
    }
    if changes.bundle.is_none() {
        keep(StepId::Bundle, "upgrade: bundle unchanged".into());
        keep(StepId::CubeInstall, "upgrade: bundle unchanged".into());
    }
    journal
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_pins_parse_and_bad_ones_say_why() {
        let sha = "b".repeat(64);
        let p: PinnedHelper = format!("{NEXT_HELPER_PATH}#{sha}").parse().unwrap();
        assert_eq!(p.path, NEXT_HELPER_PATH);
        assert_eq!(p.sha256.to_hex(), sha);
        let err = |s: &str| s.parse::<PinnedHelper>().unwrap_err().to_string();
        assert_eq!(
            err("/x"),
            "expected FILE#SHA256 (the helper's SHA-256 after a '#'), got \"/x\""
        );
        assert_eq!(err(&format!("x#{sha}")), "\"x\" is not an absolute path");
        assert!(err("/x#abc").contains("not a SHA-256"));
    }

    #[test]
    fn changes_say_what_changes_and_what_stays() {
        let mut c = Changes::default();
        assert_eq!(c.describe(), "helper, kernel and bundle unchanged");
        c.kernel = Some("a -> b".into());
        assert_eq!(c.describe(), "kernel a -> b; helper, bundle unchanged");
        c.helper = Some("1 -> 2".into());
        c.bundle = Some("x -> y".into());
        assert_eq!(c.describe(), "helper 1 -> 2; kernel a -> b; bundle x -> y");
    }
}
