//! `cubeboot profiles` and `cubeboot check`: validate inputs without building.

use anyhow::Result;

use super::cli::{CheckArgs, ProfilesArgs};
use super::diag::{Diagnostic, Report};
use super::lock::Lock;
use super::profile::{self, KernelSource};

/// `cubeboot profiles`: one line per valid profile; problems on stderr.
pub fn list_profiles(args: ProfilesArgs) -> Result<()> {
    let (profiles, report) = profile::load_dir(&args.dir.profiles_dir)?;
    println!(
        "{:<16} {:<4} {:<14} DESCRIPTION",
        "PROFILE", "PKG", "BOOTLOADER"
    );
    for p in &profiles {
        println!("{}", p.summary());
    }
    if report.errors() > 0 {
        return Err(report.into());
    }
    Ok(())
}

/// `cubeboot check [--strict] [--lock FILE]`: profiles, then the lock, then
/// local copies of locked assets. Warnings fail only with --strict.
pub fn run(args: CheckArgs) -> Result<()> {
    // Step 1: every profile, all problems collected.
    let (profiles, mut report) = profile::load_dir(&args.dir.profiles_dir)?;
    // Step 2: the lock, its pins against any local copies, and whether it
    // has the kernel each profile needs.
    let mut checked = format!(
        "{} valid profiles in {}",
        profiles.len(),
        args.dir.profiles_dir.display()
    );
    if let Some(path) = &args.lock {
        checked.push_str(&format!(" and {}", path.display()));
        match Lock::load(path) {
            Err(e) => match e.downcast::<Report>() {
                Ok(r) => report.0.extend(r.0),
                Err(e) => return Err(e),
            },
            Ok(lock) => {
                report.0.extend(lock.warnings.iter().cloned());
                report.0.extend(lock.verify_local_copies()?);
                for p in &profiles {
                    let pinned = |s: &KernelSource| match s {
                        KernelSource::Release => lock.file.assets.get(p.kernel_asset).is_some(),
                        KernelSource::Repo => lock.file.kernel_repo.is_some(),
                    };
                    if !p.kernel_sources.iter().any(pinned) {
                        let wanted = p
                            .kernel_sources
                            .iter()
                            .map(|s| match s {
                                KernelSource::Release => {
                                    format!("`{}` asset", p.kernel_asset.key())
                                }
                                KernelSource::Repo => "`kernel-repo`".to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(" or ");
                        report.push(Diagnostic::warning(
                            path,
                            "$.assets",
                            format!(
                                "no {wanted}: profile {} cannot be built from this lock",
                                p.name
                            ),
                        ));
                    }
                }
            }
        }
    }
    // Step 3: report; exit status from errors (and warnings with --strict).
    if !report.is_empty() {
        eprintln!("{report}\n");
    }
    let (errors, warnings) = (report.errors(), report.warnings());
    let failed = errors > 0 || (args.strict && warnings > 0);
    let summary = format!("checked {checked}: {errors} errors, {warnings} warnings");
    if failed {
        let strict = if errors == 0 { " (--strict)" } else { "" };
        anyhow::bail!("{summary}{strict}");
    }
    eprintln!("{summary}");
    Ok(())
}
