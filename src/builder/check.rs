//! `cubeboot profiles` and `cubeboot check`: validate inputs without building.

use std::path::Path;

use anyhow::{Context, Result};

use serde_json::Map;

use super::cli::{CheckArgs, ProfilesArgs};
use super::diag::{Diagnostic, Report};
use super::json;
use super::lock::Lock;
use super::profile::{self, KernelSource};

/// `cubeboot profiles`: one line per valid profile (or JSON); problems on
/// stderr. With `--export DIR`, the built-in profiles are written there.
pub fn list_profiles(args: ProfilesArgs) -> Result<()> {
    if let Some(dir) = &args.export {
        return export_profiles(dir);
    }
    let loaded = profile::load(args.dir.profiles_dir.as_deref());
    if args.json {
        let (profiles, report) = match loaded {
            Ok(loaded) => loaded,
            Err(e) => return json::emit("profiles", Map::new(), Vec::new(), Err(e)),
        };
        let list: Vec<_> = profiles
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.name,
                    "path": p.path,
                    "description": p.description,
                    "family": p.target.family,
                    "bootloader": p.target.bootloader.kind,
                    "kernel_asset": p.kernel_asset.key(),
                    "os_ids": p.target.os_ids,
                    "version_id": p.target.version_id,
                })
            })
            .collect();
        let mut fields = Map::new();
        fields.insert("profiles".into(), list.into());
        let diagnostics = report.0.iter().map(json::diagnostic).collect();
        let outcome = if report.errors() > 0 {
            Err(report.into())
        } else {
            Ok(())
        };
        return json::emit("profiles", fields, diagnostics, outcome);
    }
    let (profiles, report) = loaded?;
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

/// Write the built-in profiles into `dir`; an existing file that differs is
/// left alone and named, so edits are never overwritten.
fn export_profiles(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut kept = Vec::new();
    for (name, text) in profile::BUILT_IN {
        let path = dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(old) if old == *text => {}
            Ok(_) => kept.push(path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                crate::atomic_write::write_atomic(&path, text.as_bytes(), 0o644)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    if !kept.is_empty() {
        anyhow::bail!(
            "left {} edited file(s) as they are: {}",
            kept.len(),
            kept.join(", ")
        );
    }
    eprintln!(
        "wrote {} profiles into {}; build with --profiles-dir {}",
        profile::BUILT_IN.len(),
        dir.display(),
        dir.display()
    );
    Ok(())
}

/// `cubeboot check [--strict] [--lock FILE]`: profiles, then the lock, then
/// local copies of locked assets. Warnings fail only with --strict.
pub fn run(args: CheckArgs) -> Result<()> {
    let checked = check(&args);
    if !args.json {
        let checked = checked?;
        if !checked.report.is_empty() {
            eprintln!("{}\n", checked.report);
        }
        return checked.outcome();
    }
    match checked {
        Ok(c) => {
            let fields = serde_json::json!({
                "checked": c.label,
                "profiles": c.profiles,
                "errors": c.report.errors(),
                "warnings": c.report.warnings(),
            });
            let diagnostics = c.report.0.iter().map(json::diagnostic).collect();
            json::emit("check", json::object(fields), diagnostics, c.outcome())
        }
        Err(e) => json::emit("check", Map::new(), Vec::new(), Err(e)),
    }
}

/// What `check` found: the profiles and the lock, and every diagnostic.
struct Checked {
    label: String,
    profiles: usize,
    report: Report,
    strict: bool,
}

impl Checked {
    /// The summary line; an error with errors (or warnings with --strict).
    fn outcome(&self) -> Result<()> {
        let (errors, warnings) = (self.report.errors(), self.report.warnings());
        let summary = format!(
            "checked {}: {errors} errors, {warnings} warnings",
            self.label
        );
        if errors > 0 || (self.strict && warnings > 0) {
            let strict = if errors == 0 { " (--strict)" } else { "" };
            anyhow::bail!("{summary}{strict}");
        }
        eprintln!("{summary}");
        Ok(())
    }
}

fn check(args: &CheckArgs) -> Result<Checked> {
    // Step 1: every profile, all problems collected.
    let (profiles, mut report) = profile::load(args.dir.profiles_dir.as_deref())?;
    let dir_label = args
        .dir
        .profiles_dir
        .as_deref()
        .map_or(profile::BUILT_IN_LABEL.into(), |d| d.display().to_string());
    // A one-distro fleet checks the lock against its own profile only.
    let selected: Vec<_> = if args.profile == "all" {
        profiles.iter().collect()
    } else {
        match profiles.iter().find(|p| p.name == args.profile) {
            Some(p) => vec![p],
            None => anyhow::bail!(
                "no profile named {:?} in {dir_label}; available: all, {}",
                args.profile,
                profiles
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    };
    // Step 2: the lock, its pins against any local copies, and whether it
    // has the kernel each selected profile needs.
    let mut checked = if args.profile == "all" {
        format!("{} valid profiles in {dir_label}", profiles.len())
    } else {
        format!(
            "profile {} of {} valid profiles in {dir_label}",
            args.profile,
            profiles.len()
        )
    };
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
                // What the locked bundle cannot do on these profiles' hosts
                // of `--arch` (docs/arm64.md).
                let for_arch: Vec<_> = selected
                    .iter()
                    .copied()
                    .filter(|p| p.supports(args.arch))
                    .collect();
                report.0.extend(super::bundle_check::diagnostics(
                    &lock, &for_arch, args.arch,
                ));
                for p in &selected {
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
    Ok(Checked {
        label: checked,
        profiles: profiles.len(),
        report,
        strict: args.strict,
    })
}
