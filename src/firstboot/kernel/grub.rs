//! The Debian-family back end: update-grub with a drop-in under
//! /etc/default/grub.d, entries chosen by menuentry id in grub.cfg, and
//! grub-reboot / grub-set-default on grubenv.

use anyhow::{bail, Context, Result};

use super::grub_default::{self, evaluate, render_dropin, DROPIN_NAME};
use super::{grubcfg, grubenv, Bootloader, Ctx, DEFAULT_GRUB};
use crate::cmdline;
use crate::firstboot::host::{on_target, Host};
use crate::firstboot::Outcome;
use crate::plan::Plan;

/// grub.cfg, grub-mkconfig and grubenv.
pub(super) struct Grub;

impl Bootloader for Grub {
    /// Before the package goes in: pin the running kernel as the default by
    /// id, so the package's own update-grub cannot make the PVM kernel entry 0
    /// (on Debian 12 it sorts above the distro's 6.1) before anything is
    /// verified. Returns what it did, or why it could not.
    fn pin_old_default(&self, ctx: &mut Ctx) -> Result<String> {
        let bl = &ctx.plan.target.bootloader;
        let Some(cfg) = ctx.host.read_optional(&bl.grub_cfg)? else {
            return Ok(format!("no {} yet; nothing to pin", bl.grub_cfg));
        };
        let old_path = match old_entry_path(ctx, &cfg) {
            Ok(p) => p,
            // A grub.cfg that does not list the running kernel yet: the
            // trial boot regenerates it and looks again before any reboot.
            Err(e)
                if matches!(
                    e.downcast_ref::<grubcfg::EntryError>(),
                    Some(grubcfg::EntryError::Missing { .. })
                ) =>
            {
                return Ok(format!("old default not pinned ({e:#})"))
            }
            // Ambiguous or unusable entries come from the operator's own
            // files and stay: installing now would let the package's
            // update-grub make the unverified kernel entry 0 with nothing
            // pinned, so nothing is installed.
            Err(e) => {
                let k = &ctx.plan.kernel;
                return Err(e.context(format!(
                    "refusing to install {} {}",
                    k.package, k.package_version
                )));
            }
        };
        write_pin(ctx, &old_path)?;
        ctx.journal.facts.old_default_entry = Some(old_path.clone());
        Ok(format!("pinned {old_path} as the default"))
    }

    fn arm_trial_boot(&self, ctx: &mut Ctx, params: &[String]) -> Result<Outcome> {
        remember_dropin(ctx)?;
        let kver = ctx.plan.kernel.kver.clone();
        let bl = ctx.plan.target.bootloader.clone();

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
        let args = format!("{} {linux} {default}", super::root_args(ctx.host)?);
        super::refuse_unhonoured(ctx, &args, params)?;

        // The fallback, pinned by id before anything else changes, so every
        // failure below leaves the old kernel as the default.
        let mut cfg = ctx.host.read_optional(&bl.grub_cfg)?.unwrap_or_default();
        let old_kernel = ctx
            .journal
            .facts
            .old_kernel
            .as_deref()
            .unwrap_or_default()
            .to_string();
        if grubcfg::find_kernel_entry(&cfg, &old_kernel).is_err() {
            mkconfig(ctx)?;
            cfg = ctx.host.read_optional(&bl.grub_cfg)?.unwrap_or_default();
        }
        let old_path = old_entry_path(ctx, &cfg).context("refusing to reboot")?;
        ctx.journal.facts.old_default_entry = Some(old_path.clone());
        let unwritable = grubenv::unwritable(ctx.host, &ctx.plan.target.bootloader)?;
        if unwritable.is_none() {
            ctx.host
                .run(&grubenv::tool(ctx.host, &bl.set_default, &bl.grubenv).arg(&old_path))?;
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
        ctx.host
            .check_change("that no later drop-in overrides ours", &mut || {
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
                Ok(())
            })?;

        // The entry update-grub made; a dry run did not run update-grub, so
        // it shows the id 10_linux would give the entry (the old one's, with
        // the new version).
        let mut pvm_path = predicted_entry_id(&old_path, &old_kernel, &kver);
        ctx.host.check_change(
            &format!("the {kver} entry in {} after update-grub", bl.grub_cfg),
            &mut || {
                let pvm = grubcfg::find_kernel_entry(&cfg, &kver).map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "refusing to reboot: {} after update-grub",
                        bl.grub_cfg
                    ))
                })?;
                let args = pvm.args.join(" ");
                if !cmdline::has_merged(&args, params) {
                    bail!(
                        "refusing to reboot: the {kver} entry in {} boots with `{args}`, not the \
                         configured parameters",
                        bl.grub_cfg
                    );
                }
                pvm_path = pvm.id_path().unwrap_or_default();
                Ok(())
            },
        )?;
        ctx.journal.facts.pvm_entry = Some(pvm_path.clone());

        if let Some(why) = unwritable {
            // No one-shot possible: make the PVM entry the default directly and
            // say so; a panic then reboots into it again until someone steps in.
            apply(ctx, &linux, &default, Some(&pvm_path))?;
            ctx.journal.facts.direct_default = Some(why.clone());
            let w =
                format!("{why}; no trial boot possible, {pvm_path} is now the default directly");
            ctx.say(&format!("warning: {w}"));
            ctx.journal.warn(w);
            return Ok(Outcome::RebootRequested(format!(
                "{pvm_path} set as the default directly ({why})"
            )));
        }
        ctx.journal.facts.direct_default = None;

        // PVM boots once; the old kernel stays the saved default. (This order:
        // grub-set-default clears next_entry.)
        ctx.host
            .run(&grubenv::tool(ctx.host, &bl.reboot_once, &bl.grubenv).arg(&pvm_path))?;
        ctx.host
            .check_change(&format!("next_entry and saved_entry in {}", bl.grubenv), &mut || {
                let env = grubenv::read(ctx.host, &bl.grubenv)?;
                if env.get("next_entry") != Some(&pvm_path)
                    || env.get("saved_entry") != Some(&old_path)
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
                Ok(())
            })?;
        Ok(Outcome::RebootRequested(format!(
            "trial boot of {pvm_path} armed; {old_path} stays the default"
        )))
    }

    fn commit(&self, ctx: &mut Ctx) -> Result<String> {
        let bl = &ctx.plan.target.bootloader;
        let Some(pvm_path) = ctx.journal.facts.pvm_entry.clone() else {
            bail!("the journal has no PVM entry (fact kernel.pvm-entry)");
        };
        if ctx.journal.facts.direct_default.is_some() {
            return Ok(format!(
                "{pvm_path} already is the default (direct default)"
            ));
        }
        set_saved_default(ctx.host, bl, &pvm_path)?;
        Ok(format!("committed {pvm_path} as the saved default"))
    }

    /// Back to the command line the machine had, with the old kernel pinned
    /// by id (GRUB_DEFAULT=0 could be the PVM entry now).
    fn roll_back(&self, ctx: &mut Ctx) -> Result<()> {
        let bl = ctx.plan.target.bootloader.clone();
        let Some(old_path) = ctx.journal.facts.old_default_entry.clone() else {
            bail!("the journal has no old default entry (fact kernel.old-default-entry)");
        };
        write_pin(ctx, &old_path)?;
        mkconfig(ctx)?;
        // Also the saved entry, for tools that read grubenv; best effort when
        // grubenv is not writable.
        ctx.host.run(
            &grubenv::tool(ctx.host, &bl.set_default, &bl.grubenv)
                .arg(&old_path)
                .allow_failure(),
        )?;
        let old_kernel = ctx.journal.facts.old_kernel.as_deref().unwrap_or_default();
        ctx.host.check_change(
            &format!("the {old_kernel} entry in {}", bl.grub_cfg),
            &mut || {
                let cfg = ctx.host.read_string(&bl.grub_cfg)?;
                grubcfg::find_kernel_entry(&cfg, old_kernel)
                    .with_context(|| format!("{} after rollback", bl.grub_cfg))?;
                Ok(())
            },
        )?;
        Ok(())
    }

    fn is_image_default(&self, host: &dyn Host, plan: &Plan) -> Result<bool> {
        let env = grubenv::read(host, &plan.target.bootloader.grubenv)?;
        // Entry ids end in `gnulinux-<kver>-advanced-<uuid>` (10_linux).
        Ok(env
            .get("saved_entry")
            .is_some_and(|e| e.contains(&format!("gnulinux-{}-", plan.kernel.kver)))
            && !env.contains_key("next_entry"))
    }

    fn make_image_default(
        &self,
        host: &dyn Host,
        plan: &Plan,
        pvm_entry: Option<&str>,
    ) -> Result<String> {
        let kver = &plan.kernel.kver;
        let bl = &plan.target.bootloader;
        // Recorded by the kernel stage when it armed the trial boot; when it
        // had nothing to arm (the PVM kernel already runs), found by id in the
        // image's grub.cfg the same way.
        let entry = match pvm_entry {
            Some(e) => e.to_string(),
            None => {
                let cfg = host.read_string(&bl.grub_cfg)?;
                grubcfg::find_kernel_entry(&cfg, kver)
                    .with_context(|| format!("finding the {kver} entry in {}", bl.grub_cfg))?
                    .id_path()
                    .with_context(|| format!("the {kver} entry in {} has no id", bl.grub_cfg))?
            }
        };
        set_saved_default(host, bl, &entry)?;
        Ok(format!("{entry} is the image's saved default"))
    }
}

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
    let old_kernel = ctx.journal.facts.old_kernel.as_deref().unwrap_or_default();
    let old = grubcfg::find_kernel_entry(cfg, old_kernel)
        .with_context(|| format!("cannot pin the fallback kernel {old_kernel}"))?;
    Ok(old.id_path().unwrap_or_default())
}

/// Our drop-in as it was before this run first changed it ("" when there
/// was none), recorded once: a rollback gives the old kernel back the
/// command line it booted with. After an upgrade's failed trial boot that
/// is the old PVM kernel's, parameters and all (docs/upgrades.md).
fn remember_dropin(ctx: &mut Ctx) -> Result<()> {
    if ctx.journal.facts.grub_dropin_before.is_none() {
        let path = dropin_path(ctx.plan);
        let before = ctx.host.read_optional(&path)?.unwrap_or_default();
        ctx.journal.facts.grub_dropin_before = Some(before);
    }
    Ok(())
}

/// A drop-in that sets GRUB_DEFAULT to `old_path` and keeps the command
/// line our drop-in had before this run (none on a first boot: then the
/// command line is what the other files set).
fn write_pin(ctx: &mut Ctx, old_path: &str) -> Result<()> {
    remember_dropin(ctx)?;
    let before = ctx
        .journal
        .facts
        .grub_dropin_before
        .clone()
        .unwrap_or_default();
    if before.contains("GRUB_CMDLINE_LINUX") {
        let text = grub_default::set_assignment(&before, "GRUB_DEFAULT", old_path);
        return ctx
            .host
            .write_atomic(&dropin_path(ctx.plan), text.as_bytes(), 0o644);
    }
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

/// The one commit, for a verified trial boot and for an image:
/// `grub-set-default ENTRY` (which also clears `next_entry`), checked in
/// grubenv. grubenv only, so on an image the tool is pointed at its /boot
/// rather than chrooted.
fn set_saved_default(host: &dyn Host, bl: &crate::plan::Bootloader, entry: &str) -> Result<()> {
    host.run(&grubenv::tool(host, &bl.set_default, &bl.grubenv).arg(entry))?;
    host.check_change(&format!("saved_entry in {}", bl.grubenv), &mut || {
        let env = grubenv::read(host, &bl.grubenv)?;
        let next = env.get("next_entry").filter(|v| !v.is_empty());
        if env.get("saved_entry").map(String::as_str) != Some(entry) || next.is_some() {
            bail!(
                "{} did not take: {} has saved_entry={:?} next_entry={:?}",
                bl.set_default,
                bl.grubenv,
                env.get("saved_entry"),
                next
            );
        }
        Ok(())
    })
}

/// The id 10_linux gives the entry for `kver`, from the old kernel's:
/// `gnulinux-advanced-ID>gnulinux-VERSION-advanced-ID` (grub:
/// util/grub.d/10_linux.in), so the same with the new version. Shown by a
/// dry run, which did not run update-grub; a real run reads grub.cfg.
fn predicted_entry_id(old_path: &str, old_kernel: &str, kver: &str) -> String {
    let old_part = format!("gnulinux-{old_kernel}-advanced-");
    if !old_kernel.is_empty() && old_path.contains(&old_part) {
        return old_path.replace(&old_part, &format!("gnulinux-{kver}-advanced-"));
    }
    match old_path.rsplit_once("gnulinux-simple-") {
        Some((_, id)) => format!("gnulinux-advanced-{id}>gnulinux-{kver}-advanced-{id}"),
        None => format!("the {kver} entry update-grub makes"),
    }
}

#[cfg(test)]
mod tests {
    use super::predicted_entry_id;

    #[test]
    fn a_dry_run_names_the_entry_update_grub_would_make() {
        let uuid = "0b5c1e2a-1c1d-4d5e-9f00-2a3b4c5d6e7f";
        let old = format!("gnulinux-advanced-{uuid}>gnulinux-6.1.0-18-amd64-advanced-{uuid}");
        assert_eq!(
            predicted_entry_id(&old, "6.1.0-18-amd64", "6.6.69-pvm"),
            format!("gnulinux-advanced-{uuid}>gnulinux-6.6.69-pvm-advanced-{uuid}")
        );
        assert_eq!(
            predicted_entry_id(
                &format!("gnulinux-simple-{uuid}"),
                "6.1.0-18-amd64",
                "6.6.69-pvm"
            ),
            format!("gnulinux-advanced-{uuid}>gnulinux-6.6.69-pvm-advanced-{uuid}")
        );
    }
}
