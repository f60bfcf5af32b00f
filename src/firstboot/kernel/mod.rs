//! The kernel stage: install the verified PVM host kernel package, give it its
//! boot parameters, arm a one-shot trial boot of the entry chosen by identity,
//! and after the reboot commit it as the default or roll back; then load
//! kvm_pvm. Every effect goes through the host seam: files under its root,
//! commands recorded (and only printed under `--dry-run`).
//!
//! Why a trial boot (prior-art.md §6.1): the saved default stays on the
//! running kernel and GRUB boots the PVM entry once (`grub-reboot` /
//! `grub2-reboot`) with `panic=N`, so a kernel that panics reboots into the
//! old one by itself. Only a verified boot commits the new default.

pub mod bls;
pub mod grub_default;
pub mod grubcfg;
mod kvm;
mod package;

use std::path::Path;

use anyhow::{bail, Context, Result};

pub(crate) use super::host::{is_live_root, on_target};
use super::host::{CommandSpec, Host};
use super::journal::{facts, StepState};
use super::{Ctx, Outcome, StepFailure, StepId};
use crate::cmdline;
use crate::plan::{BootloaderKind, KvmMode, Plan};

pub use kvm::load_kvm;

/// Where the running kernel tells its release and command line.
const OSRELEASE: &str = "/proc/sys/kernel/osrelease";
const PROC_CMDLINE: &str = "/proc/cmdline";
const PROC_MODULES: &str = "/proc/modules";
const DEV_KVM: &str = "/dev/kvm";
const BLS_DIR: &str = "/boot/loader/entries";
const DEFAULT_GRUB: &str = "/etc/default/grub";
/// Suffix of the one backup kept of a file this stage edits in place.
const BACKUP_SUFFIX: &str = ".cubeboot.bak";

/// Stage-local journal facts.
const FACT_ALREADY: &str = "kernel.already-running";
/// The PVM BLS entry's `options` before grubby edited them (undo record).
const FACT_BLS_OPTIONS: &str = "kernel.bls-options-before";

/// Debug arguments for a kernel that dies early (cube-sandbox-facts.md §16, #1722).
const CONSOLE_HINT: &str = "the PVM kernel did not come up with its parameters; boot it by hand \
     with `earlyprintk=serial,ttyS0,115200 console=ttyS0,115200` added and read the serial \
     console (CubeSandbox #1722, #439)";

/// Install the verified PVM kernel package and hold it.
pub fn install(ctx: &mut Ctx) -> Result<Outcome> {
    let kver = ctx.plan.kernel.kver.clone();
    let running = running_kernel(ctx.host)?;

    // Already there: the PVM kernel runs with every configured parameter
    // (`panic=` is only for the trial boot; the Helm chart's check is the same).
    if running.as_deref() == Some(kver.as_str()) {
        let missing = cmdline::missing(&proc_cmdline(ctx.host)?, &ctx.plan.kernel.boot_params);
        if missing.is_empty() {
            ctx.journal.set_fact(facts::KVM_MODE, "pvm");
            ctx.journal.set_fact(FACT_ALREADY, kver.as_str());
            return Ok(Outcome::Skipped(format!(
                "already running {kver} with its boot parameters"
            )));
        }
        ctx.say(&format!(
            "running {kver} but without {}: the parameters will be set and the kernel trial-booted again",
            missing.join(" ")
        ));
    } else if ctx.plan.kernel.kvm == KvmMode::Auto {
        if let Some(vendor) = native_kvm(ctx.host)? {
            ctx.journal.set_fact(facts::KVM_MODE, "native");
            return Ok(Outcome::Skipped(format!(
                "native /dev/kvm from {vendor} works and the plan says kvm: auto; PVM is not \
                 needed (Cube installs with CUBE_PVM_ENABLE=0)"
            )));
        }
    }
    ctx.journal.set_fact(facts::KVM_MODE, "pvm");
    ctx.journal.facts.remove(FACT_ALREADY);
    record_old_kernel(ctx)?;

    let k = &ctx.plan.kernel;
    let installed = if package::is_installed(ctx)? {
        format!("{} {} already installed", k.package, k.package_version)
    } else {
        // Keep the old kernel the default while the package's own scripts
        // run (update-grub, kernel-install): nothing is verified yet.
        let guarded = match ctx.plan.target.bootloader.kind {
            BootloaderKind::GrubMkconfig => grub::pin_old_default(ctx)?,
            BootloaderKind::BlsGrubby => bls_boot::record_old_default(ctx)?,
        };
        package::install_package(ctx)?;
        if ctx.plan.target.bootloader.kind == BootloaderKind::BlsGrubby {
            bls_boot::restore_old_default(ctx)?;
        }
        let k = &ctx.plan.kernel;
        format!("installed {} {} ({guarded})", k.package, k.package_version)
    };
    let held = package::hold(ctx)?;
    Ok(Outcome::Done(format!("{installed}; {held}")))
}

/// Record the kernel to come back to, once: a re-run (after a crash) must not
/// mistake anything else for it.
fn record_old_kernel(ctx: &mut Ctx) -> Result<()> {
    if ctx.journal.fact(facts::OLD_KERNEL).is_none() {
        let old = old_kernel(ctx.host, &ctx.plan.kernel.kver)?;
        ctx.journal.set_fact(facts::OLD_KERNEL, old);
    }
    Ok(())
}

/// Boot parameters, entry by identity, one-shot trial boot armed.
pub fn boot(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(why) = skip_reason(ctx) {
        return Ok(Outcome::Skipped(why));
    }
    let params = required_params(ctx.plan);
    let warnings = cmdline::warnings(&params);
    for w in &warnings {
        ctx.say(&format!("warning: {w}"));
        ctx.journal.warn(w.as_str());
    }
    record_old_kernel(ctx)?;
    let armed = match ctx.plan.target.bootloader.kind {
        BootloaderKind::GrubMkconfig => grub::arm(ctx, &params)?,
        BootloaderKind::BlsGrubby => bls_boot::arm(ctx, &params)?,
    };
    // The warnings also go into the step detail, which the status shows.
    Ok(match armed {
        Outcome::RebootRequested(d) if !warnings.is_empty() => {
            Outcome::RebootRequested(format!("{d}; warning: {}", warnings.join("; ")))
        }
        other => other,
    })
}

/// After the reboot: commit the PVM entry as the default, or roll back to the
/// old kernel and fail without rebooting again.
pub fn verify(ctx: &mut Ctx) -> Result<Outcome> {
    if let Some(why) = skip_reason(ctx) {
        return Ok(Outcome::Skipped(why));
    }
    if ctx.journal.state(StepId::KernelBoot) == Some(StepState::Skipped) {
        return Ok(Outcome::Skipped("no trial boot was armed".into()));
    }
    let kver = ctx.plan.kernel.kver.clone();
    let params = required_params(ctx.plan);
    let running = running_kernel(ctx.host)?.unwrap_or_else(|| "an unknown kernel".into());
    let missing = cmdline::missing(&proc_cmdline(ctx.host)?, &params);
    let old = ctx
        .journal
        .fact(facts::OLD_KERNEL)
        .unwrap_or("the previous kernel")
        .to_string();

    if running == kver && missing.is_empty() {
        let how = match ctx.plan.target.bootloader.kind {
            BootloaderKind::GrubMkconfig => grub::commit(ctx)?,
            BootloaderKind::BlsGrubby => bls_boot::commit(ctx)?,
        };
        return Ok(Outcome::Done(format!(
            "running {kver} with its boot parameters; {how}"
        )));
    }

    let why = if running != kver {
        format!("the trial boot came back on {running}, not {kver}")
    } else {
        format!("{kver} is running without {}", missing.join(" "))
    };
    ctx.say(&format!("{why}; rolling back to {old}"));
    let rolled = match ctx.plan.target.bootloader.kind {
        BootloaderKind::GrubMkconfig => grub::roll_back(ctx),
        BootloaderKind::BlsGrubby => bls_boot::roll_back(ctx),
    };
    let (status, message) = match rolled {
        Ok(()) => (
            format!("failed: rolled back to {old}"),
            format!("{why}; {old} is the default boot entry again (no further reboot)"),
        ),
        Err(e) => (
            format!("failed: could not roll back to {old}"),
            format!("{why}; rolling back to {old} failed: {e:#}"),
        ),
    };
    Err(StepFailure::new(message)
        .status(status)
        .hint(CONSOLE_HINT)
        .into())
}

/// Why the boot/verify steps have nothing to do, if they have not.
fn skip_reason(ctx: &Ctx) -> Option<String> {
    if ctx.journal.fact(facts::KVM_MODE) == Some("native") {
        return Some("native KVM in use; the PVM kernel is not needed".into());
    }
    ctx.journal
        .fact(FACT_ALREADY)
        .map(|k| format!("already running {k} with its boot parameters"))
}

/// The configured parameters plus `panic=N`, unless the plan sets `panic=`
/// itself. It stays after the commit: a host that panics later reboots
/// instead of hanging.
pub fn required_params(plan: &Plan) -> Vec<String> {
    let mut params = plan.kernel.boot_params.clone();
    if !params.iter().any(|p| cmdline::key(p) == "panic") {
        params.push(format!("panic={}", plan.kernel.panic_seconds));
    }
    params
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

/// `Some(module)` when a hardware KVM module is loaded and /dev/kvm exists.
fn native_kvm(host: &dyn Host) -> Result<Option<String>> {
    let loaded = loaded_modules(host)?;
    let vendor = ["kvm_intel", "kvm_amd"]
        .into_iter()
        .find(|m| loaded.iter().any(|l| l == m));
    Ok(vendor.filter(|_| host.exists(DEV_KVM)).map(str::to_string))
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

/// Read grubenv (absent → empty).
fn read_grubenv(
    host: &dyn Host,
    grubenv: &str,
) -> Result<std::collections::BTreeMap<String, String>> {
    Ok(grubcfg::parse_grubenv(
        &host.read_optional(grubenv)?.unwrap_or_default(),
    ))
}

/// Why GRUB could not write its environment at boot, if it could not
/// (grub-reboot(8): on LVM/MD "the chosen boot menu entry will remain the
/// default even after reboot"; GRUB also refuses to write on btrfs/zfs).
fn grubenv_unwritable(ctx: &Ctx) -> Result<Option<String>> {
    let bl = &ctx.plan.target.bootloader;
    let host = ctx.host;
    let env_path = host.path(&bl.grubenv).to_string_lossy().into_owned();
    if !host.exists(&bl.grubenv) {
        let out = host.run(
            &CommandSpec::new(&bl.editenv)
                .args([env_path.as_str(), "create"])
                .allow_failure(),
        )?;
        if !out.success() {
            return Ok(Some(format!(
                "{} could not create {}: {}",
                bl.editenv,
                bl.grubenv,
                out.stderr.trim()
            )));
        }
    }
    let out = host.run(
        &CommandSpec::new(&bl.editenv)
            .args([env_path.as_str(), "set", "cubeboot_probe=1"])
            .allow_failure(),
    )?;
    if !out.success() {
        return Ok(Some(format!(
            "{} cannot write {}: {}",
            bl.editenv,
            bl.grubenv,
            out.stderr.trim()
        )));
    }
    host.run(
        &CommandSpec::new(&bl.editenv)
            .args([env_path.as_str(), "unset", "cubeboot_probe"])
            .allow_failure(),
    )?;
    // grub-editenv writes the file from Linux; what matters is whether GRUB
    // can at boot, which depends on what holds the directory.
    let probe = bl.editenv.replace("editenv", "probe");
    let dir = Path::new(&bl.grubenv)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/boot".into());
    for (target, bad) in [
        (
            "abstraction",
            &["lvm", "diskfilter", "raid", "mdraid1x", "mdraid09"][..],
        ),
        ("fs", &["btrfs", "zfs"][..]),
    ] {
        let out = host.run(
            &on_target(host, &probe)
                .arg(format!("--target={target}"))
                .arg(&dir)
                .allow_failure(),
        )?;
        if !out.success() {
            ctx.say(&format!(
                "{probe} --target={target} {dir} failed ({}); assuming GRUB can write {}",
                out.stderr.trim(),
                bl.grubenv
            ));
            continue;
        }
        if let Some(found) = out
            .stdout
            .split_whitespace()
            .find(|w| bad.iter().any(|b| w.starts_with(b)))
        {
            return Ok(Some(format!(
                "{dir} is on {found}, where GRUB cannot write {} at boot",
                bl.grubenv
            )));
        }
    }
    Ok(None)
}

/// `grub-reboot`/`grub-set-default` edit grubenv only; on an image they are
/// pointed at its /boot instead of being chrooted.
fn grubenv_tool(host: &dyn Host, program: &str, grubenv: &str) -> CommandSpec {
    let mut cmd = CommandSpec::new(program);
    if !is_live_root(host) {
        // grubenv is <boot dir>/grub[2]/grubenv.
        let boot_dir = Path::new(grubenv)
            .parent()
            .and_then(Path::parent)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/boot".into());
        cmd = cmd.arg(format!(
            "--boot-directory={}",
            host.path(&boot_dir).to_string_lossy()
        ));
    }
    cmd
}

/// DEB family: update-grub, a drop-in under /etc/default/grub.d, entries by
/// menuentry id, grub-reboot / grub-set-default.
mod grub {
    use super::*;
    use grub_default::{evaluate, render_dropin, DROPIN_NAME};

    const LINUX: &str = "GRUB_CMDLINE_LINUX";
    const LINUX_DEFAULT: &str = "GRUB_CMDLINE_LINUX_DEFAULT";

    fn dropin_path(plan: &Plan) -> String {
        let dir = plan
            .target
            .bootloader
            .dropin_dir
            .as_deref()
            .unwrap_or("/etc/default/grub.d");
        format!("{dir}/{DROPIN_NAME}")
    }

    /// /etc/default/grub then grub.d/*.cfg in name order, as update-grub
    /// sources them; `skip_ours` leaves this stage's drop-in out.
    fn default_files(ctx: &Ctx, skip_ours: bool) -> Result<Vec<(String, String)>> {
        let host = ctx.host;
        let dir = ctx
            .plan
            .target
            .bootloader
            .dropin_dir
            .as_deref()
            .unwrap_or("/etc/default/grub.d");
        let mut files = Vec::new();
        if let Some(t) = host.read_optional(DEFAULT_GRUB)? {
            files.push((DEFAULT_GRUB.to_string(), t));
        }
        for name in host.list_dir(dir)? {
            if !name.ends_with(".cfg") || (skip_ours && name == DROPIN_NAME) {
                continue;
            }
            let path = format!("{dir}/{name}");
            files.push((path.clone(), host.read_string(&path)?));
        }
        Ok(files)
    }

    fn mkconfig(ctx: &Ctx) -> Result<()> {
        let argv = &ctx.plan.target.bootloader.mkconfig;
        let Some((program, args)) = argv.split_first() else {
            bail!("the plan names no mkconfig command for this bootloader");
        };
        ctx.host
            .run(&on_target(ctx.host, program).args(args.iter().cloned()))
            .map(|_| ())
    }

    /// Write the drop-in, regenerate grub.cfg and return it.
    fn apply(ctx: &Ctx, linux: &str, default: &str, grub_default: Option<&str>) -> Result<String> {
        let path = dropin_path(ctx.plan);
        let text = render_dropin(linux, default, grub_default);
        ctx.host.write_atomic(&path, text.as_bytes(), 0o644)?;
        mkconfig(ctx)?;
        Ok(ctx
            .host
            .read_optional(&ctx.plan.target.bootloader.grub_cfg)?
            .unwrap_or_default())
    }

    /// The old kernel's entry id path, from grub.cfg as it is now.
    fn old_entry_path(ctx: &Ctx, cfg: &str) -> Result<String> {
        let old_kernel = ctx.journal.fact(facts::OLD_KERNEL).unwrap_or_default();
        let old = grubcfg::find_kernel_entry(cfg, old_kernel).with_context(|| {
            format!("refusing to reboot: cannot pin the fallback kernel {old_kernel}")
        })?;
        Ok(old.id_path().unwrap_or_default())
    }

    /// Before the package goes in: pin the running kernel as the default by
    /// id, so the package's own update-grub cannot make the PVM kernel entry 0
    /// (on Debian 12 it sorts above the distro's 6.1) before anything is
    /// verified. Returns what it did, or why it could not.
    pub(super) fn pin_old_default(ctx: &mut Ctx) -> Result<String> {
        let bl = &ctx.plan.target.bootloader;
        let Some(cfg) = ctx.host.read_optional(&bl.grub_cfg)? else {
            return Ok(format!("no {} yet; nothing to pin", bl.grub_cfg));
        };
        let old_path = match old_entry_path(ctx, &cfg) {
            Ok(p) => p,
            Err(e) => return Ok(format!("old default not pinned ({e:#})")),
        };
        write_pin(ctx, &old_path)?;
        ctx.journal
            .set_fact(facts::OLD_DEFAULT_ENTRY, old_path.as_str());
        Ok(format!("pinned {old_path} as the default"))
    }

    /// A drop-in that only sets GRUB_DEFAULT to `old_path` (the command line
    /// stays what the other files set).
    fn write_pin(ctx: &Ctx, old_path: &str) -> Result<()> {
        let text = format!(
            "# Generated by cubeboot (cube-firstboot); do not edit.\n\
             # Keeps the kernel that booted before the PVM kernel as the default.\n\
             # Undo: remove this file and run update-grub.\n\
             GRUB_DEFAULT={}\n",
            grub_default::shell_double_quote(old_path)
        );
        ctx.host
            .write_atomic(&dropin_path(ctx.plan), text.as_bytes(), 0o644)
    }

    pub(super) fn arm(ctx: &mut Ctx, params: &[String]) -> Result<Outcome> {
        let kver = ctx.plan.kernel.kver.clone();
        let bl = ctx.plan.target.bootloader.clone();
        let dry = ctx.host.is_dry_run();
        let placeholder =
            |k: &str| format!("gnulinux-advanced-<uuid>>gnulinux-{k}-advanced-<uuid>");

        // What update-grub would use without us, and the merged result: the
        // configured keys leave both variables; the parameters go into
        // GRUB_CMDLINE_LINUX, which recovery entries use too.
        let base = evaluate(&default_files(ctx, true)?)?;
        let linux = cmdline::merge_line(base.get(LINUX), params);
        let keys: Vec<&str> = params.iter().map(|p| cmdline::key(p)).collect();
        let default: String = cmdline::split(base.get(LINUX_DEFAULT))
            .into_iter()
            .filter(|p| !keys.contains(&cmdline::key(p)))
            .collect::<Vec<_>>()
            .join(" ");

        // The fallback, pinned by id before anything else changes, so every
        // failure below leaves the old kernel as the default.
        let mut cfg = ctx.host.read_optional(&bl.grub_cfg)?.unwrap_or_default();
        let old_kernel = ctx
            .journal
            .fact(facts::OLD_KERNEL)
            .unwrap_or_default()
            .to_string();
        if grubcfg::find_kernel_entry(&cfg, &old_kernel).is_err() {
            mkconfig(ctx)?;
            cfg = ctx.host.read_optional(&bl.grub_cfg)?.unwrap_or_default();
        }
        let old_path = match old_entry_path(ctx, &cfg) {
            Err(_) if dry => placeholder(&old_kernel),
            r => r?,
        };
        ctx.journal
            .set_fact(facts::OLD_DEFAULT_ENTRY, old_path.as_str());
        let unwritable = grubenv_unwritable(ctx)?;
        if unwritable.is_none() {
            ctx.host
                .run(&grubenv_tool(ctx.host, &bl.set_default, &bl.grubenv).arg(&old_path))?;
        }
        // With grubenv, `saved` now means the old kernel; without, the old
        // kernel stays the direct default until the PVM entry is verified.
        let cfg = apply(
            ctx,
            &linux,
            &default,
            Some(if unwritable.is_none() {
                "saved"
            } else {
                &old_path
            }),
        )?;

        // A drop-in sorting after ours could override the merge.
        if !dry {
            let all = evaluate(&default_files(ctx, false)?)?;
            let effective = format!("{} {}", all.get(LINUX), all.get(LINUX_DEFAULT));
            if !cmdline::has_merged(&effective, params) {
                bail!(
                    "{} is overridden by a later file in {}: update-grub would use `{}`",
                    dropin_path(ctx.plan),
                    bl.dropin_dir.as_deref().unwrap_or("/etc/default/grub.d"),
                    effective.trim()
                );
            }
        }

        let pvm_path = match grubcfg::find_kernel_entry(&cfg, &kver) {
            Err(_) if dry => placeholder(&kver),
            Err(e) => {
                return Err(e.context(format!(
                    "refusing to reboot: {} after update-grub",
                    bl.grub_cfg
                )))
            }
            Ok(pvm) => {
                let args = pvm.args.join(" ");
                if !cmdline::has_merged(&args, params) {
                    bail!(
                        "refusing to reboot: the {kver} entry in {} boots with `{args}`, not the \
                         configured parameters",
                        bl.grub_cfg
                    );
                }
                pvm.id_path().unwrap_or_default()
            }
        };
        ctx.journal.set_fact(facts::PVM_ENTRY, pvm_path.as_str());

        if let Some(why) = unwritable {
            // No one-shot possible: make the PVM entry the default directly and
            // say so; a panic then reboots into it again until someone steps in.
            apply(ctx, &linux, &default, Some(&pvm_path))?;
            ctx.journal.set_fact(facts::DIRECT_DEFAULT, why.as_str());
            let w =
                format!("{why}; no trial boot possible, {pvm_path} is now the default directly");
            ctx.say(&format!("warning: {w}"));
            ctx.journal.warn(w);
            return Ok(Outcome::RebootRequested(format!(
                "{pvm_path} set as the default directly ({why})"
            )));
        }
        ctx.journal.facts.remove(facts::DIRECT_DEFAULT);

        // PVM boots once; the old kernel stays the saved default. (This order:
        // grub-set-default clears next_entry.)
        ctx.host
            .run(&grubenv_tool(ctx.host, &bl.reboot_once, &bl.grubenv).arg(&pvm_path))?;
        if !dry {
            let env = read_grubenv(ctx.host, &bl.grubenv)?;
            if env.get("next_entry") != Some(&pvm_path) || env.get("saved_entry") != Some(&old_path)
            {
                bail!(
                    "refusing to reboot: {} has next_entry={:?} saved_entry={:?} after {} and {}",
                    bl.grubenv,
                    env.get("next_entry"),
                    env.get("saved_entry"),
                    bl.set_default,
                    bl.reboot_once
                );
            }
        }
        Ok(Outcome::RebootRequested(format!(
            "trial boot of {pvm_path} armed; {old_path} stays the default"
        )))
    }

    pub(super) fn commit(ctx: &mut Ctx) -> Result<String> {
        let bl = &ctx.plan.target.bootloader;
        let Some(pvm_path) = ctx.journal.fact(facts::PVM_ENTRY).map(str::to_string) else {
            bail!("the journal has no PVM entry (fact {})", facts::PVM_ENTRY);
        };
        if ctx.journal.fact(facts::DIRECT_DEFAULT).is_some() {
            return Ok(format!(
                "{pvm_path} already is the default (direct default)"
            ));
        }
        ctx.host
            .run(&grubenv_tool(ctx.host, &bl.set_default, &bl.grubenv).arg(&pvm_path))?;
        if !ctx.host.is_dry_run() {
            let env = read_grubenv(ctx.host, &bl.grubenv)?;
            if env.get("saved_entry") != Some(&pvm_path) {
                bail!(
                    "{} did not take: {} has saved_entry={:?}",
                    bl.set_default,
                    bl.grubenv,
                    env.get("saved_entry")
                );
            }
        }
        Ok(format!("committed {pvm_path} as the saved default"))
    }

    /// Back to the command line the machine had, with the old kernel pinned
    /// by id (GRUB_DEFAULT=0 could be the PVM entry now).
    pub(super) fn roll_back(ctx: &mut Ctx) -> Result<()> {
        let bl = ctx.plan.target.bootloader.clone();
        let Some(old_path) = ctx
            .journal
            .fact(facts::OLD_DEFAULT_ENTRY)
            .map(str::to_string)
        else {
            bail!(
                "the journal has no old default entry (fact {})",
                facts::OLD_DEFAULT_ENTRY
            );
        };
        write_pin(ctx, &old_path)?;
        mkconfig(ctx)?;
        // Also the saved entry, for tools that read grubenv; best effort when
        // grubenv is not writable.
        ctx.host.run(
            &grubenv_tool(ctx.host, &bl.set_default, &bl.grubenv)
                .arg(&old_path)
                .allow_failure(),
        )?;
        if !ctx.host.is_dry_run() {
            let cfg = ctx.host.read_string(&bl.grub_cfg)?;
            let old_kernel = ctx.journal.fact(facts::OLD_KERNEL).unwrap_or_default();
            grubcfg::find_kernel_entry(&cfg, old_kernel)
                .with_context(|| format!("{} after rollback", bl.grub_cfg))?;
        }
        Ok(())
    }
}

/// RPM family with BLS: grubby edits the entry's options, entries are found
/// by their linux line, grub2-reboot boots one once by BLS id.
mod bls_boot {
    use super::*;

    fn vmlinuz(kver: &str) -> String {
        format!("/boot/vmlinuz-{kver}")
    }

    fn entries(host: &dyn Host) -> Result<Vec<bls::BlsEntry>> {
        let mut out = Vec::new();
        for name in host.list_dir(BLS_DIR)? {
            if let Some(stem) = name.strip_suffix(".conf") {
                let text = host.read_string(&format!("{BLS_DIR}/{name}"))?;
                out.push(bls::BlsEntry::parse(stem, &text));
            }
        }
        Ok(out)
    }

    fn default_kernel(host: &dyn Host) -> Result<String> {
        Ok(host
            .run(&on_target(host, "grubby").arg("--default-kernel"))?
            .stdout
            .trim()
            .to_string())
    }

    pub(super) fn arm(ctx: &mut Ctx, params: &[String]) -> Result<Outcome> {
        let host = ctx.host;
        let kver = ctx.plan.kernel.kver.clone();
        let bl = ctx.plan.target.bootloader.clone();
        let dry = host.is_dry_run();
        let path = vmlinuz(&kver);

        let all = entries(host)?;
        let entry = match bls::find_by_kernel(&all, &kver) {
            Ok(e) => e.clone(),
            Err(_) if dry => bls::BlsEntry::parse(&format!("<machine-id>-{kver}"), ""),
            Err(e) => {
                return Err(e.context(format!(
                    "refusing to reboot: the kernel package did not create a BLS entry for {path}"
                )))
            }
        };

        record_old_default(ctx)?;
        if ctx.journal.fact(facts::OLD_DEFAULT_ENTRY) == Some(path.as_str()) {
            bail!("refusing to reboot: {path} already is the default before its trial boot");
        }
        let old = ctx
            .journal
            .fact(facts::OLD_DEFAULT_ENTRY)
            .unwrap_or_default()
            .to_string();

        // Parameters: on BLS they live in the entry's options line;
        // GRUB_CMDLINE_LINUX does nothing there (cube-sandbox-facts.md §9).
        if ctx.journal.fact(FACT_BLS_OPTIONS).is_none() && !dry {
            // What grubby is about to change, so it can be put back by hand.
            ctx.journal.set_fact(FACT_BLS_OPTIONS, entry.options());
        }
        let existing = cmdline::split(entry.options());
        let displaced = cmdline::displaced(&existing, params);
        let mut update = on_target(host, "grubby").arg(format!("--update-kernel={path}"));
        if !displaced.is_empty() {
            update = update.arg(format!("--remove-args={}", displaced.join(" ")));
        }
        host.run(&update.arg(format!("--args={}", params.join(" "))))?;
        if !dry {
            let after = entries(host)?;
            let e = bls::find_by_kernel(&after, &kver)?;
            if !cmdline::has_merged(e.options(), params) {
                bail!(
                    "refusing to reboot: after grubby the {} entry's options are `{}`, not the \
                     configured parameters",
                    e.id,
                    e.options()
                );
            }
        }

        // GRUB_DEFAULT=saved is what makes grubenv's saved_entry count.
        if let Some(text) = host.read_optional(DEFAULT_GRUB)? {
            let d = grub_default::evaluate(&[(DEFAULT_GRUB.to_string(), text.clone())])?;
            if d.grub_default() != "saved" {
                backup_once(host, DEFAULT_GRUB)?;
                let edited = grub_default::set_assignment(&text, "GRUB_DEFAULT", "saved");
                host.write_atomic(DEFAULT_GRUB, edited.as_bytes(), 0o644)?;
                if let Some((program, args)) = bl.mkconfig.split_first() {
                    host.run(&on_target(host, program).args(args.iter().cloned()))?;
                }
            }
        }

        ctx.journal.set_fact(facts::PVM_ENTRY, entry.id.as_str());
        if let Some(why) = grubenv_unwritable(ctx)? {
            host.run(&on_target(host, "grubby").arg(format!("--set-default={path}")))?;
            let now = default_kernel(host)?;
            if !dry && now != path {
                bail!("grubby --set-default={path} did not take: the default is {now}");
            }
            ctx.journal.set_fact(facts::DIRECT_DEFAULT, why.as_str());
            let w = format!("{why}; no trial boot possible, {path} is now the default directly");
            ctx.say(&format!("warning: {w}"));
            ctx.journal.warn(w);
            return Ok(Outcome::RebootRequested(format!(
                "{path} set as the default directly ({why})"
            )));
        }
        ctx.journal.facts.remove(facts::DIRECT_DEFAULT);

        // Pin the old default explicitly (an image's saved_entry may name an
        // entry of another machine-id), then the one-shot by BLS id.
        host.run(&on_target(host, "grubby").arg(format!("--set-default={old}")))?;
        host.run(&grubenv_tool(host, &bl.reboot_once, &bl.grubenv).arg(&entry.id))?;
        if !dry {
            let env = read_grubenv(host, &bl.grubenv)?;
            if env.get("next_entry") != Some(&entry.id) {
                bail!(
                    "refusing to reboot: {} has next_entry={:?} after {}",
                    bl.grubenv,
                    env.get("next_entry"),
                    bl.reboot_once
                );
            }
        }
        Ok(Outcome::RebootRequested(format!(
            "trial boot of {} armed; {old} stays the default",
            entry.id
        )))
    }

    /// The default entry before anything changes, by kernel path (BLS ids
    /// can name another machine); recorded once.
    pub(super) fn record_old_default(ctx: &mut Ctx) -> Result<String> {
        if let Some(old) = ctx.journal.fact(facts::OLD_DEFAULT_ENTRY) {
            return Ok(format!("old default {old}"));
        }
        let old = default_kernel(ctx.host)?;
        if old.is_empty() && !ctx.host.is_dry_run() {
            bail!("grubby --default-kernel printed nothing: no default entry to fall back to");
        }
        ctx.journal.set_fact(facts::OLD_DEFAULT_ENTRY, old.as_str());
        Ok(format!("old default {old}"))
    }

    /// Undo a package scriptlet that made the new kernel the default
    /// (UPDATEDEFAULT=yes, or a distro without /etc/sysconfig/kernel).
    pub(super) fn restore_old_default(ctx: &mut Ctx) -> Result<()> {
        let host = ctx.host;
        let Some(old) = ctx
            .journal
            .fact(facts::OLD_DEFAULT_ENTRY)
            .map(str::to_string)
        else {
            return Ok(());
        };
        let now = default_kernel(host)?;
        if now != old && !host.is_dry_run() {
            ctx.say(&format!(
                "the package made {now} the default; restoring {old} until the trial boot passes"
            ));
            host.run(&on_target(host, "grubby").arg(format!("--set-default={old}")))?;
            let again = default_kernel(host)?;
            if again != old {
                bail!("grubby --set-default={old} did not take: the default is {again}");
            }
        }
        Ok(())
    }

    pub(super) fn commit(ctx: &mut Ctx) -> Result<String> {
        let host = ctx.host;
        let path = vmlinuz(&ctx.plan.kernel.kver);
        host.run(&on_target(host, "grubby").arg(format!("--set-default={path}")))?;
        let now = default_kernel(host)?;
        if !host.is_dry_run() && now != path {
            bail!("grubby --set-default={path} did not take: grubby --default-kernel says {now}");
        }
        Ok(format!(
            "committed {path} as the default (grubby --default-kernel)"
        ))
    }

    pub(super) fn roll_back(ctx: &mut Ctx) -> Result<()> {
        let host = ctx.host;
        let Some(old) = ctx
            .journal
            .fact(facts::OLD_DEFAULT_ENTRY)
            .map(str::to_string)
        else {
            bail!(
                "the journal has no old default entry (fact {})",
                facts::OLD_DEFAULT_ENTRY
            );
        };
        host.run(&on_target(host, "grubby").arg(format!("--set-default={old}")))?;
        let now = default_kernel(host)?;
        if !host.is_dry_run() && now != old {
            bail!("grubby --set-default={old} did not take: the default is {now}");
        }
        Ok(())
    }
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
