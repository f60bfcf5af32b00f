//! The trial boot by kexec (plan `reboot: kexec`; docs/bootloader.md,
//! "Trial boot by kexec"): just before the trial reboot, the kernel,
//! initramfs and merged command line of the PVM entry this stage made are
//! loaded with `kexec --load`, and the runner reboots with `systemctl kexec`,
//! which skips the firmware and GRUB.
//!
//! The trial boot stays armed in grubenv behind it: when the kexec'd kernel
//! dies before its userspace (or kexec never happens), the firmware reboot
//! boots the PVM entry once through GRUB, as with `reboot: firmware`, and a
//! panic there ends on the old default. Once the trial kernel runs, its
//! kernel-verify spends that one-shot ([`spend_one_shot`]), so a panic later
//! in the trial boot (kvm_pvm) restarts straight into the old default: the
//! rollback is the firmware path's.
//!
//! kexec missing, or a load it refuses (Secure Boot lockdown refuses
//! `kexec_load`, an initramfs too large for the crash-kernel-less layout):
//! the firmware reboot, and the status says why.

use anyhow::{bail, Context, Result};

use super::{bls, grubcfg, grubenv, Ctx};
use crate::firstboot::host::on_target;
use crate::plan::{BootloaderKind, RebootMode};

/// Where kexec-tools puts `kexec` (Debian and Ubuntu: /usr/sbin, older
/// layouts /sbin; the RPM family: /usr/sbin, also reachable as /sbin).
const KEXEC_PATHS: [&str; 3] = ["/usr/sbin/kexec", "/sbin/kexec", "/usr/bin/kexec"];
/// `1` once a kernel is staged for kexec (Documentation/ABI/testing/sysfs-kernel-kexec).
const KEXEC_LOADED: &str = "/sys/kernel/kexec_loaded";
/// Reading a kernel and an initramfs of tens of MB takes seconds.
const LOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// What the entry hands the kernel: target paths of the image and
/// initramfs, and the command line GRUB would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrialEntry {
    kernel: String,
    initrd: Option<String>,
    cmdline: String,
}

/// Called by the reboot step right before the trial reboot: with
/// `reboot: kexec`, stage the PVM entry for `systemctl kexec` and record it
/// (journal fact `kernel.trial-kexec`), else leave the firmware reboot.
/// Returns how the machine reboots, for the status; a kexec that cannot be
/// used is a warning, never a failure.
pub fn stage_trial_kernel(ctx: &mut Ctx) -> Result<String> {
    ctx.journal.facts.trial_kexec = None;
    if ctx.plan.reboot_mode() != RebootMode::Kexec {
        return Ok("through the firmware".into());
    }
    match load(ctx) {
        Ok(loaded) => {
            ctx.journal.facts.trial_kexec = Some(loaded.clone());
            Ok(format!("by kexec ({loaded})"))
        }
        Err(why) => {
            let w = format!("kexec not used: {why:#}; the trial boot goes through the firmware");
            ctx.say(&format!("warning: {w}"));
            ctx.journal.warn(w.as_str());
            Ok(format!("through the firmware (kexec not used: {why:#})"))
        }
    }
}

/// In the trial kernel, before anything that could crash it: a one-shot
/// still armed means the trial kernel came by kexec, not GRUB; spend it, so
/// a panic from here on restarts into the old default. Returns what it did.
pub(super) fn spend_one_shot(ctx: &mut Ctx) -> Result<Option<String>> {
    if ctx.journal.facts.trial_kexec.is_none() {
        return Ok(None);
    }
    let bl = &ctx.plan.target.bootloader;
    let env = grubenv::read(ctx.host, &bl.grubenv)?;
    if env.get("next_entry").is_none_or(|v| v.is_empty()) {
        return Ok(None);
    }
    grubenv::unset(ctx.host, bl, "next_entry")?;
    Ok(Some(format!(
        "booted by kexec; the trial entry's one-shot in {} is spent",
        bl.grubenv
    )))
}

fn load(ctx: &Ctx) -> Result<String> {
    let host = ctx.host;
    let Some(kexec) = KEXEC_PATHS.into_iter().find(|p| host.exists(p)) else {
        bail!("kexec-tools is not installed (no kexec in /usr/sbin, /sbin or /usr/bin)");
    };
    let entry = trial_entry(ctx)?;
    // --no-checks: purgatory does not hash the staged segments again before
    // it jumps. Its check, on a mismatch, loops forever (kexec-tools:
    // purgatory/purgatory.c), a hang that panic=N cannot end, where a
    // corrupted image crashes and the firmware trial boot follows.
    let mut cmd = on_target(host, kexec)
        .args(["--load", "--no-checks"])
        .arg(&entry.kernel)
        .timeout(LOAD_TIMEOUT)
        .allow_failure();
    if let Some(initrd) = &entry.initrd {
        cmd = cmd.arg(format!("--initrd={initrd}"));
    }
    cmd = cmd.arg(format!("--command-line={}", entry.cmdline));
    let out = host.run(&cmd)?;
    if !out.success() {
        bail!(
            "`kexec --load {}` failed ({}): {}",
            entry.kernel,
            crate::firstboot::host::describe_exit(&out),
            crate::firstboot::host::tail(out.stderr.trim(), 3)
        );
    }
    host.check_change(&format!("{KEXEC_LOADED} after kexec --load"), &mut || {
        let loaded = host.read_optional(KEXEC_LOADED)?.unwrap_or_default();
        if loaded.trim() != "1" {
            bail!(
                "kexec --load exited 0 but {KEXEC_LOADED} says {:?}",
                loaded.trim()
            );
        }
        Ok(())
    })?;
    Ok(format!(
        "{}{} loaded",
        entry.kernel,
        entry
            .initrd
            .as_deref()
            .map(|i| format!(" with {i}"))
            .unwrap_or_default()
    ))
}

/// The PVM entry as the bootloader holds it now (its parameters were
/// checked when the trial boot was armed).
fn trial_entry(ctx: &Ctx) -> Result<TrialEntry> {
    let kver = &ctx.plan.kernel.kver;
    let bl = &ctx.plan.target.bootloader;
    let (kernel, initrd, args) = match bl.kind {
        BootloaderKind::GrubMkconfig => {
            let cfg = ctx.host.read_string(&bl.grub_cfg)?;
            let e = grubcfg::find_kernel_entry(&cfg, kver)
                .with_context(|| format!("the {kver} entry in {}", bl.grub_cfg))?;
            let kernel = e.kernel.with_context(|| {
                format!("the {kver} entry in {} has no linux line", bl.grub_cfg)
            })?;
            (kernel, e.initrd.first().cloned(), e.args.join(" "))
        }
        BootloaderKind::BlsGrubby => {
            let entries = bls::entries(ctx.host)?;
            let e = bls::find_by_kernel(&entries, kver)?;
            let mut options = e.options().to_string();
            if options.contains("$kernelopts") {
                let env = grubenv::read(ctx.host, &bl.grubenv)?;
                let opts = env.get("kernelopts").cloned().unwrap_or_default();
                options = options.replace("$kernelopts", &opts);
            }
            let initrd = e
                .get("initrd")
                .and_then(|i| i.split_whitespace().next())
                .map(str::to_string);
            (e.linux().unwrap_or_default().to_string(), initrd, options)
        }
    };
    // GRUB names files on the filesystem holding /boot (`/vmlinuz-…` when
    // /boot is its own); on the running system both are under /boot.
    let on_boot = |grub_path: &str| -> Result<String> {
        let name = grub_path.rsplit('/').next().unwrap_or_default();
        let path = format!("/boot/{name}");
        if name.is_empty() || !ctx.host.exists(&path) {
            bail!("{path} (the entry's {grub_path}) is missing");
        }
        Ok(path)
    };
    Ok(TrialEntry {
        kernel: on_boot(&kernel)?,
        initrd: initrd.as_deref().map(on_boot).transpose()?,
        // GRUB passes the image it loaded first; kexec passes exactly this.
        cmdline: format!("BOOT_IMAGE={kernel} {}", args.trim()),
    })
}
