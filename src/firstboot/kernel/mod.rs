//! The kernel stage: install the verified PVM host kernel package, give it its
//! boot parameters, arm a one-shot trial boot of the entry chosen by identity,
//! and after the reboot commit it as the default or roll back; then load
//! kvm_pvm. Every effect goes through the host seam: files under its root,
//! commands recorded (and only printed under `--dry-run`).
//!
//! Why a trial boot (docs/bootloader.md, "Trial boot, commit, rollback"):
//! the saved default stays on the running kernel and GRUB boots the PVM
//! entry once (`grub-reboot` / `grub2-reboot`) with `panic=N`, so a kernel
//! that panics reboots into the old one by itself. Only a verified boot commits the new default.
//!
//! Layout: this file is the steps; what differs per bootloader sits behind
//! the [`Bootloader`] trait, in `grub.rs` (grub.cfg, Debian family) and
//! `bls.rs` (BLS entries and grubby, RPM family); `grubenv.rs` is the GRUB
//! environment block both use. `apply --stage kernel` (image.rs) calls the
//! same back ends.

pub mod bls;
mod grub;
pub mod grub_default;
pub mod grubcfg;
pub(crate) mod grubenv;
mod initramfs;
pub mod kexec;
mod kvm;
mod package;
mod undo;

use anyhow::{bail, Context, Result};

use super::host::Host;
pub(crate) use super::host::{is_live_root, on_target};
use super::journal::{KvmInUse, StepState};
use super::run_state::Failure;
use super::{Ctx, Outcome, StepFailure, StepId};
use crate::arch::Arch;
use crate::cmdline::{self, TrialPanic};
use crate::plan::{BootloaderKind, Plan};

use kvm::{aarch64_kvm, native_in_use};
pub(crate) use kvm::{aarch64_without_kvm, kvm_device_answers};
pub use kvm::{decide_kvm, load_kvm};

/// Where the running kernel tells its release and command line.
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const PROC_CMDLINE: &str = "/proc/cmdline";
const PROC_MODULES: &str = "/proc/modules";
const DEV_KVM: &str = "/dev/kvm";
const DEFAULT_GRUB: &str = "/etc/default/grub";
/// Suffix of the one backup kept of a file this stage edits in place.
const BACKUP_SUFFIX: &str = ".cubeboot.bak";

/// Debug arguments for a kernel that dies early (docs/pvm-kernel.md, #1722).
const CONSOLE_HINT: &str = "the PVM kernel did not come up with its parameters; boot it by hand \
     with `earlyprintk=serial,ttyS0,115200 console=ttyS0,115200` added and read the serial \
     console (CubeSandbox #1722, #439)";

/// What the steps need from a bootloader: one implementation per
/// [`BootloaderKind`] (GRUB with grub.cfg in `grub.rs`, BLS with grubby in
/// `bls.rs`). Each keeps what it changed in the journal's facts, so a re-run
/// after a crash finds the same old default.
pub(crate) trait Bootloader {
    /// Before the package goes in: keep the running kernel the default while
    /// the package's own scripts run. Returns what it did, for the status.
    fn pin_old_default(&self, ctx: &mut Ctx) -> Result<String>;

    /// After the package's scripts ran: undo a default they changed anyway.
    fn after_package(&self, _ctx: &mut Ctx) -> Result<()> {
        Ok(())
    }

    /// Give the PVM entry `params` and arm a one-shot boot of it, the old
    /// default staying the default; refuse (error) rather than arm an entry
    /// that cannot be verified.
    fn arm_trial_boot(&self, ctx: &mut Ctx, params: &[String]) -> Result<Outcome>;

    /// Make the PVM entry the default after its trial boot was verified.
    fn commit(&self, ctx: &mut Ctx) -> Result<String>;

    /// Put the old default back (the trial boot failed).
    fn roll_back(&self, ctx: &mut Ctx) -> Result<()>;

    /// Whether an image already boots the PVM kernel by default.
    fn is_image_default(&self, host: &dyn Host, plan: &Plan) -> Result<bool>;

    /// Make the PVM entry an image's default directly: an image has no boot
    /// after which to commit. `pvm_entry` is the entry the stage armed, if any.
    fn make_image_default(
        &self,
        host: &dyn Host,
        plan: &Plan,
        pvm_entry: Option<&str>,
    ) -> Result<String>;
}

/// The back end for a plan's bootloader kind.
pub(crate) fn bootloader(kind: BootloaderKind) -> &'static dyn Bootloader {
    match kind {
        BootloaderKind::GrubMkconfig => &grub::Grub,
        BootloaderKind::BlsGrubby => &bls::Bls,
    }
}

/// The configured parameters the running kernel lacks, when it is the
/// plan's kernel; `None` when another kernel runs. (`panic=` is only for the
/// trial boot; the Helm chart's check is the same.)
pub fn planned_kernel_lacks(host: &dyn Host, plan: &Plan) -> Result<Option<Vec<String>>> {
    if running_kernel(host)?.as_deref() != Some(plan.kernel.kver.as_str()) {
        return Ok(None);
    }
    Ok(Some(cmdline::missing(
        &proc_cmdline(host)?,
        &plan.kernel.boot_params,
    )))
}

/// Install the verified PVM kernel package and hold it.
pub fn install(ctx: &mut Ctx) -> Result<Outcome> {
    if ctx.plan.target.arch == Arch::Aarch64 {
        // Native KVM is the only KVM on aarch64 (docs/arm64.md): no kernel
        // package, no trial boot, no reboot.
        let kvm = aarch64_kvm(ctx.host)?;
        ctx.journal.facts.kvm_mode = Some(KvmInUse::Native);
        return Ok(Outcome::Skipped(format!(
            "aarch64: {DEV_KVM} from {kvm} answers API version 12; the PVM kernel is x86_64 \
             only and not needed (Cube installs with CUBE_PVM_ENABLE=0)"
        )));
    }
    let kver = ctx.plan.kernel.kver.clone();

    // Already there: the PVM kernel runs with every configured parameter.
    if let Some(missing) = planned_kernel_lacks(ctx.host, ctx.plan)? {
        if missing.is_empty() {
            ctx.journal.facts.kvm_mode = Some(KvmInUse::Pvm);
            ctx.journal.facts.already_running = Some(kver.clone());
            return Ok(Outcome::Skipped(format!(
                "already running {kver} with its boot parameters"
            )));
        }
        ctx.say(&format!(
            "running {kver} but without {}: the parameters will be set and the kernel trial-booted again",
            missing.join(" ")
        ));
    } else if let Some(vendor) = native_in_use(ctx.host, ctx.plan)? {
        ctx.journal.facts.kvm_mode = Some(KvmInUse::Native);
        return Ok(Outcome::Skipped(format!(
            "native /dev/kvm from {vendor} works and the plan says kvm: auto; PVM is not \
             needed (Cube installs with CUBE_PVM_ENABLE=0)"
        )));
    }
    ctx.journal.facts.kvm_mode = Some(KvmInUse::Pvm);
    ctx.journal.facts.already_running = None;
    record_old_kernel(ctx)?;

    let k = &ctx.plan.kernel;
    let installed = if package::is_installed(ctx)? {
        format!("{} {} already installed", k.package, k.package_version)
    } else {
        // Keep the old kernel the default while the package's own scripts
        // run (update-grub, kernel-install): nothing is verified yet.
        let loader = bootloader(ctx.plan.target.bootloader.kind);
        let guarded = loader.pin_old_default(ctx)?;
        package::install_package(ctx)?;
        loader.after_package(ctx)?;
        let k = &ctx.plan.kernel;
        format!("installed {} {} ({guarded})", k.package, k.package_version)
    };
    let held = package::hold(ctx)?;
    Ok(Outcome::Done(format!("{installed}; {held}")))
}

/// Record the kernel to come back to, once: a re-run (after a crash) must not
/// mistake anything else for it.
fn record_old_kernel(ctx: &mut Ctx) -> Result<()> {
    if ctx.journal.facts.old_kernel.is_none() {
        let old = old_kernel(ctx.host, &ctx.plan.kernel.kver)?;
        ctx.journal.facts.old_kernel = Some(old);
    }
    Ok(())
}

/// Boot parameters, entry by identity, one-shot trial boot armed.
pub fn boot(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(why) = skip_reason(ctx) {
        return Ok(Outcome::Skipped(why));
    }
    let (params, panic) = trial_boot_params(ctx)?;
    let warnings = cmdline::warnings(&params);
    for w in &warnings {
        ctx.say(&format!("warning: {w}"));
        ctx.journal.warn(w.as_str());
    }
    record_old_kernel(ctx)?;
    let armed = bootloader(ctx.plan.target.bootloader.kind).arm_trial_boot(ctx, &params)?;
    // The panic value and the warnings go into the step detail, which the
    // status shows.
    Ok(match armed {
        Outcome::RebootRequested(d) => {
            let mut d = format!("{d}; {panic}");
            if !warnings.is_empty() {
                d = format!("{d}; warning: {}", warnings.join("; "));
            }
            Outcome::RebootRequested(d)
        }
        other => other,
    })
}

/// After the reboot: the PVM kernel runs with its parameters, or roll back to
/// the old kernel and fail without rebooting again. Nothing is committed yet:
/// Why a step inside the trial boot has nothing to do: the kernel stage is
/// skipped, or no trial boot was armed.
fn trial_skip_reason(ctx: &Ctx) -> Option<String> {
    skip_reason(ctx).or_else(|| {
        (ctx.journal.state(StepId::KernelBoot) == Some(StepState::Skipped))
            .then(|| "no trial boot was armed".to_string())
    })
}

/// kvm-load proves /dev/kvm first, still inside the trial boot.
pub fn verify(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(why) = trial_skip_reason(ctx) {
        return Ok(Outcome::Skipped(why));
    }
    let kver = ctx.plan.kernel.kver.clone();
    let (params, panic) = trial_boot_params(ctx)?;
    let running = running_kernel(ctx.host)?.unwrap_or_else(|| "an unknown kernel".into());
    // First, before anything can crash the trial kernel (kexec.rs).
    let spent = if running == kver {
        kexec::spend_one_shot(ctx)?.map(|s| format!("; {s}"))
    } else {
        None
    };
    let missing = cmdline::missing(&proc_cmdline(ctx.host)?, &params);
    if running == kver && missing.is_empty() {
        return Ok(Outcome::Done(format!(
            "running {kver} with its boot parameters ({panic}); the old default stays until \
             kvm_pvm is proven{}",
            spent.unwrap_or_default()
        )));
    }
    let why = if running != kver {
        format!("the trial boot came back on {running}, not {kver}")
    } else {
        format!("{kver} is running without {}", missing.join(" "))
    };
    Err(roll_back_trial(ctx, &why, CONSOLE_HINT))
}

/// Last step of the trial boot: the PVM entry becomes the default, now that
/// the kernel runs with its parameters and /dev/kvm answers.
pub fn commit(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(why) = trial_skip_reason(ctx) {
        return Ok(Outcome::Skipped(why));
    }
    let kver = ctx.plan.kernel.kver.clone();
    if let Some(why) = not_on_trial_kernel(ctx)? {
        return Err(roll_back_trial(ctx, &why, CONSOLE_HINT));
    }
    let how = bootloader(ctx.plan.target.bootloader.kind).commit(ctx)?;
    Ok(Outcome::Done(format!(
        "{how}: {kver} booted with its parameters and kvm_pvm answered on /dev/kvm"
    )))
}

/// Whether this run is inside an armed trial boot that is not committed yet:
/// a failure now must put the old default back.
fn in_trial(ctx: &Ctx) -> bool {
    skip_reason(ctx).is_none()
        && matches!(
            ctx.journal.state(StepId::KernelBoot),
            Some(StepState::RebootRequested | StepState::Done)
        )
        && ctx.journal.state(StepId::KernelCommit) != Some(StepState::Done)
}

/// Why the running kernel is not the trial boot's, if it is not: the machine
/// restarted in the middle (a crash, `panic=N`) and GRUB chose the old default.
fn not_on_trial_kernel(ctx: &Ctx) -> Result<Option<String>> {
    let kver = &ctx.plan.kernel.kver;
    let running = running_kernel(ctx.host)?.unwrap_or_else(|| "an unknown kernel".into());
    Ok((running != *kver).then(|| {
        format!(
            "the machine restarted during the trial boot and came back on {running}, not {kver} \
             (the journal says: {})",
            undo::trial_crash_point(ctx)
        )
    }))
}

/// Put the old default back after a failed trial boot; the error ends the
/// run as `failed: rolled back to <old>`, with one reboot into it when the
/// trial kernel still runs (docs/bootloader.md, "After a rollback").
fn roll_back_trial(ctx: &mut Ctx, why: &str, hint: &str) -> anyhow::Error {
    let old = ctx
        .journal
        .facts
        .old_kernel
        .as_deref()
        .unwrap_or("the previous kernel")
        .to_string();
    ctx.say(&format!("{why}; rolling back to {old}"));
    let rolled = bootloader(ctx.plan.target.bootloader.kind).roll_back(ctx);
    let (ending, message, reboot) = match rolled {
        Ok(()) => {
            let released = undo::release_failed_kernel(ctx, &old);
            (
                Failure::RolledBack { to: old.clone() },
                format!(
                    "{why}; {old} is the default boot entry again; {}",
                    released.what
                ),
                released.reboot,
            )
        }
        Err(e) => (
            Failure::RollBackFailed { to: old.clone() },
            format!("{why}; rolling back to {old} failed: {e:#}"),
            false,
        ),
    };
    StepFailure::new(message)
        .ends_as(ending)
        .hint(hint)
        .reboot_after(reboot)
        .into()
}

/// Refuse, before anything is armed, a command line the kernel would not
/// honour (docs/pvm-kernel.md, "What the kernel honours"): `args` is what
/// the bootloader puts after the PVM kernel's image, merged with the node's
/// own parameters; GRUB hands the kernel `BOOT_IMAGE=<image>` before it.
fn refuse_unhonoured(ctx: &Ctx, args: &str, params: &[String]) -> Result<()> {
    let kver = &ctx.plan.kernel.kver;
    let running = proc_cmdline(ctx.host)?;
    // The running kernel's BOOT_IMAGE, for the PVM kernel: same device and
    // directory, as the old entry and the new one sit side by side.
    let image = cmdline::split(&running)
        .into_iter()
        .find_map(|p| p.strip_prefix("BOOT_IMAGE=").map(str::to_string))
        .zip(ctx.journal.facts.old_kernel.as_deref())
        .filter(|(image, old)| image.ends_with(&format!("vmlinuz-{old}")))
        .map(|(image, old)| format!("{}{kver}", image.strip_suffix(old).unwrap_or_default()))
        .unwrap_or_else(|| format!("/boot/vmlinuz-{kver}"));
    let line = format!("BOOT_IMAGE={image} {args}");
    let Some(why) = cmdline::refusal(&line, params) else {
        return Ok(());
    };
    let old = ctx
        .journal
        .facts
        .old_kernel
        .as_deref()
        .unwrap_or("the previous kernel");
    Err(StepFailure::new(format!(
        "refusing to arm the trial boot of {kver}: {why}; {old} stays the default"
    ))
    .hint(
        "the PVM kernel would not run as configured: change the node's own command line \
         (/etc/default/grub and its drop-ins, or the BLS entry's options) or the payload's \
         --boot-params, then run cube-firstboot again",
    )
    .into())
}

/// `root=` and `ro`/`rw` of the running command line: what grub-mkconfig's
/// 10_linux puts before GRUB_CMDLINE_LINUX for every kernel on this root.
fn root_args(host: &dyn Host) -> Result<String> {
    Ok(cmdline::split(&proc_cmdline(host)?)
        .into_iter()
        .filter(|p| cmdline::key(p) == "root" || p == "ro" || p == "rw")
        .collect::<Vec<_>>()
        .join(" "))
}

/// Why the boot/verify steps have nothing to do, if they have not.
fn skip_reason(ctx: &Ctx) -> Option<String> {
    if ctx.journal.facts.kvm_mode == Some(KvmInUse::Native) {
        return Some("native KVM in use; the PVM kernel is not needed".into());
    }
    ctx.journal
        .facts
        .already_running
        .as_deref()
        .map(|k| format!("already running {k} with its boot parameters"))
}

/// The parameters the trial boot is armed with ([`crate::plan::KernelPlan::trial_params`]),
/// and which `panic=` is in force (for the status): the plan's own
/// `panic=`, else the operator's `panic=N` (N > 0) from the running command
/// line, else the plan's default. Decided once, at kernel-boot, and
/// recorded, so later steps check what was armed.
fn trial_boot_params(ctx: &mut Ctx) -> Result<(Vec<String>, String)> {
    let kernel = &ctx.plan.kernel;
    if let Some(p) = kernel
        .boot_params
        .iter()
        .find(|p| cmdline::key(p) == "panic")
    {
        return Ok((
            kernel.boot_params.clone(),
            format!("{p} in force (the plan's)"),
        ));
    }
    let panic = match ctx.journal.facts.trial_panic {
        Some(p) => p,
        None => {
            let p = TrialPanic::decide(&proc_cmdline(ctx.host)?, kernel.panic_seconds);
            ctx.journal.facts.trial_panic = Some(p);
            p
        }
    };
    Ok((kernel.trial_params(panic), panic.to_string()))
}

fn running_kernel(host: &dyn Host) -> Result<Option<String>> {
    Ok(host
        .read_optional(OSRELEASE)?
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

fn proc_cmdline(host: &dyn Host) -> Result<String> {
    Ok(host.read_optional(PROC_CMDLINE)?.unwrap_or_default())
}

/// Names of loaded modules (first column of /proc/modules).
fn loaded_modules(host: &dyn Host) -> Result<Vec<String>> {
    Ok(host
        .read_optional(PROC_MODULES)?
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// The kernel to fall back to: the running one, or (image builds, or the PVM
/// kernel running without its parameters) the newest other kernel in /boot.
fn old_kernel(host: &dyn Host, kver: &str) -> Result<String> {
    if let Some(r) = running_kernel(host)? {
        if r != kver {
            return Ok(r);
        }
    }
    let mut others: Vec<String> = host
        .list_dir("/boot")?
        .into_iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .filter(|k| k != kver && !k.starts_with("0-rescue"))
        .collect();
    others.sort_by(|a, b| version_cmp(a, b));
    match others.pop() {
        Some(k) => Ok(k),
        None => bail!("no kernel other than {kver} in /boot to fall back to"),
    }
}

/// Compare release strings by their numeric runs (6.10 > 6.9), like `sort -V`.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut num = String::new();
        let mut txt = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                if !txt.is_empty() {
                    out.push((0, std::mem::take(&mut txt)));
                }
                num.push(c);
            } else {
                if !num.is_empty() {
                    out.push((num.parse().unwrap_or(u64::MAX), String::new()));
                    num.clear();
                }
                txt.push(c);
            }
        }
        if !num.is_empty() {
            out.push((num.parse().unwrap_or(u64::MAX), String::new()));
        }
        if !txt.is_empty() {
            out.push((0, txt));
        }
        out
    }
    parts(a).cmp(&parts(b))
}

/// Keep one backup of a file before its first in-place edit.
fn backup_once(host: &dyn Host, target: &str) -> Result<()> {
    let backup = format!("{target}{BACKUP_SUFFIX}");
    if host.exists(target) && !host.exists(&backup) {
        let bytes = host.read(target)?;
        host.write_atomic(&backup, &bytes, 0o644)
            .with_context(|| format!("backing up {target}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn version_order_is_numeric() {
        let mut v = vec!["6.10.0-1", "6.9.3-2", "6.1.0-28-amd64", "6.1.0-9-amd64"];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            vec!["6.1.0-9-amd64", "6.1.0-28-amd64", "6.9.3-2", "6.10.0-1"]
        );
    }
}
