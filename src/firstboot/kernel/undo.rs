//! After a rollback, the machine as it was (docs/bootloader.md, "After a
//! rollback"): the failed PVM kernel package unheld, and removed unless it
//! is the running kernel; and, for the status, what the journal knows about
//! where a trial boot that crashed had got to.

use anyhow::Result;

use super::package::{dpkg, installed_names, rpm, DNF_CONF};
use super::{backup_once, on_target, running_kernel, Ctx};
use crate::firstboot::host::Host;
use crate::firstboot::journal::StepState;
use crate::firstboot::StepId;
use crate::plan::{KernelHold, PackageFamily};

/// The steps of the trial boot, in order.
const TRIAL_STEPS: [StepId; 3] = [StepId::KernelVerify, StepId::KvmLoad, StepId::KernelCommit];

/// Where a trial boot that restarted had got to, from the journal: the step
/// started in an earlier boot and never finished, else the last one that
/// finished.
pub(super) fn trial_crash_point(ctx: &Ctx) -> String {
    let this_boot = ctx.host.boot_id();
    let interrupted = TRIAL_STEPS.into_iter().find(|s| {
        ctx.journal.steps.get(s).is_some_and(|r| {
            r.state == StepState::Started && r.boots.iter().any(|b| Some(b) != this_boot.as_ref())
        })
    });
    if let Some(step) = interrupted {
        return format!(
            "{} had started in the trial boot and never finished",
            step.name()
        );
    }
    match TRIAL_STEPS
        .into_iter()
        .rfind(|s| ctx.journal.state(*s) == Some(StepState::Done))
    {
        Some(step) => format!(
            "{} had finished in the trial boot; no later step had started",
            step.name()
        ),
        None => "no step of the trial boot had finished".to_string(),
    }
}

/// What became of the failed kernel package after a rollback.
pub(super) struct Released {
    pub what: String,
    /// The trial kernel still runs: one reboot into the old default follows.
    pub reboot: bool,
}

/// Unhold the failed kernel package and remove it where that is safe: not
/// while it is the running kernel, and only when this run installed it.
/// A failure here is reported, not fatal: the old default is back already.
pub(super) fn release_failed_kernel(ctx: &mut Ctx, old: &str) -> Released {
    let kver = ctx.plan.kernel.kver.clone();
    let names = installed_names(ctx.plan);
    let list = names.join(" ");
    let running = running_kernel(ctx.host).ok().flatten();
    let on_trial = running.as_deref() == Some(kver.as_str());
    let what = if let Err(e) = unhold(ctx, &names) {
        format!("unholding {list} failed: {e:#}")
    } else if on_trial {
        format!(
            "{list} unheld; {kver}, the trial kernel, was still running: one reboot into {old} \
             follows (remove {list} after it)"
        )
    } else if !installed_by_this_run(ctx) {
        format!("{list} unheld; kept, as it was installed before this run")
    } else {
        match remove(ctx, &names) {
            Ok(()) => format!("{list} unheld and removed"),
            Err(e) => format!("{list} unheld; removing it failed: {e:#}"),
        }
    };
    Released {
        what,
        reboot: on_trial,
    }
}

/// kernel-install's detail starts with "installed" only when this run put
/// the package in ("… already installed" otherwise).
fn installed_by_this_run(ctx: &Ctx) -> bool {
    ctx.journal
        .steps
        .get(&StepId::KernelInstall)
        .is_some_and(|r| r.detail.starts_with("installed "))
}

fn unhold(ctx: &Ctx, names: &[String]) -> Result<()> {
    let host = ctx.host;
    match ctx.plan.target.packages.hold {
        KernelHold::AptMarkHold => {
            host.run(
                &on_target(host, "apt-mark")
                    .arg("unhold")
                    .args(names.iter().cloned()),
            )?;
        }
        KernelHold::DnfVersionlock => {
            let k = &ctx.plan.kernel;
            let spec = format!("{}-{}", k.package, k.package_version);
            // The versionlock fallback is the exclude below; either may be there.
            host.run(
                &on_target(host, "dnf")
                    .args(["versionlock", "delete", spec.as_str()])
                    .allow_failure(),
            )?;
            remove_dnf_excludes(host, names)?;
        }
        KernelHold::DnfExclude => remove_dnf_excludes(host, names)?,
    }
    Ok(())
}

fn remove_dnf_excludes(host: &dyn Host, names: &[String]) -> Result<()> {
    let Some(text) = host.read_optional(DNF_CONF)? else {
        return Ok(());
    };
    let edited = without_dnf_excludes(&text, names);
    if edited != text {
        backup_once(host, DNF_CONF)?;
        host.write_atomic(DNF_CONF, edited.as_bytes(), 0o644)?;
    }
    Ok(())
}

/// dnf.conf with `names` taken out of the `[main]` section's `exclude=`
/// (the line goes when nothing is left); other sections stay as they are.
pub fn without_dnf_excludes(conf: &str, names: &[String]) -> String {
    let mut section = "";
    let mut out = Vec::new();
    for line in conf.lines() {
        let t = line.trim();
        if t.starts_with('[') && t.ends_with(']') {
            section = t;
        }
        let exclude = (section == "[main]")
            .then(|| t.split_once('='))
            .flatten()
            .filter(|(k, _)| matches!(k.trim(), "exclude" | "excludepkgs"));
        match exclude {
            Some((k, v)) => {
                let kept: Vec<&str> = v
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty() && !names.iter().any(|n| n == s))
                    .collect();
                if !kept.is_empty() {
                    out.push(format!("{}={}", k.trim_end(), kept.join(" ")));
                }
            }
            None => out.push(line.to_string()),
        }
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// The package manager removes the packages; their own scripts take the
/// kernel out of /boot and the boot menu (update-grub, kernel-install).
fn remove(ctx: &Ctx, names: &[String]) -> Result<()> {
    let host = ctx.host;
    let cmd = match ctx.plan.target.family {
        PackageFamily::Deb => dpkg(host).arg("--purge"),
        PackageFamily::Rpm => rpm(host).arg("-e"),
    };
    host.run(&cmd.args(names.iter().cloned()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excludes_are_taken_out_by_name() {
        let names: Vec<String> = ["kernel", "kernel-core", "kernel-modules"]
            .map(String::from)
            .into();
        assert_eq!(
            without_dnf_excludes(
                "[main]\nexclude=foo kernel kernel-core kernel-modules\ngpgcheck=1\n[x]\nexclude=kernel\n",
                &names
            ),
            "[main]\nexclude=foo\ngpgcheck=1\n[x]\nexclude=kernel\n"
        );
        assert_eq!(
            without_dnf_excludes(
                "[main]\nexclude=kernel kernel-core kernel-modules\n",
                &names
            ),
            "[main]\n"
        );
    }
}
