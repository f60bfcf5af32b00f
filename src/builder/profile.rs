//! Distro profiles: versioned, strict YAML specs, one per target distro.
//!
//! Like a Butane config (`coreos/butane: config/`), a profile is read in two passes: a
//! minimal `{version}` first, then the schema of that version, so an unknown
//! version is a clear error listing the supported ones rather than a pile of
//! "unknown field" complaints. Released versions are frozen.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::diag::{Diagnostic, Report};
use super::lock::AssetKind;
use super::yaml;
use crate::arch::Arch;
use crate::plan::{
    Bootloader, BootloaderKind, DockerSource, HostPackages, KernelHold, PackageFamily,
    PackageManager, Quirks, Target,
};

/// Profile schema versions this build reads. Version 2 is version 1 plus
/// `kernel-sources` (where the PVM kernel comes from); version 1 files stay
/// valid and mean what they meant.
pub const SUPPORTED_PROFILE_VERSIONS: &[u32] = &[1, 2];

/// Where a distro's PVM kernel can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelSource {
    /// The upstream release asset named by `kernel-asset` (`kernel-rpm`,
    /// `kernel-deb`), installed from its verified file.
    Release,
    /// A split kernel dnf installs from a distro repository, pinned package
    /// by package in the lock's `kernel-repo` (OpenCloudOS 9).
    Repo,
}

/// A validated profile, ready for the plan.
#[derive(Debug, Clone)]
pub struct Profile {
    /// File stem, e.g. `debian-12`.
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    /// Which locked kernel package this distro installs.
    pub kernel_asset: AssetKind,
    /// Kernel sources in order of preference; the build takes the first
    /// the lock pins.
    pub kernel_sources: Vec<KernelSource>,
    /// Machine architectures this distro's payload is built for
    /// (`build --arch`); x86_64 alone unless the profile says more.
    pub arches: Vec<Arch>,
    pub target: Target,
}

/// The profiles of this repository's profiles/, built into the binary so an
/// installed `cubeboot` works anywhere (`--profiles-dir` reads others;
/// `cubeboot profiles --export DIR` writes these out). Sorted by file name.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "almalinux-9.yaml",
        include_str!("../../profiles/almalinux-9.yaml"),
    ),
    (
        "centos-stream-9.yaml",
        include_str!("../../profiles/centos-stream-9.yaml"),
    ),
    (
        "debian-12.yaml",
        include_str!("../../profiles/debian-12.yaml"),
    ),
    (
        "debian-13.yaml",
        include_str!("../../profiles/debian-13.yaml"),
    ),
    (
        "opencloudos-9.yaml",
        include_str!("../../profiles/opencloudos-9.yaml"),
    ),
    ("rocky-9.yaml", include_str!("../../profiles/rocky-9.yaml")),
    (
        "tencentos-4.yaml",
        include_str!("../../profiles/tencentos-4.yaml"),
    ),
    (
        "ubuntu-22.04.yaml",
        include_str!("../../profiles/ubuntu-22.04.yaml"),
    ),
    (
        "ubuntu-24.04.yaml",
        include_str!("../../profiles/ubuntu-24.04.yaml"),
    ),
];

/// Where diagnostics say a built-in profile lives.
pub const BUILT_IN_DIR: &str = "(built in) profiles";

/// How messages name the built-in set.
pub const BUILT_IN_LABEL: &str = "the built-in profiles";

/// Load and validate the profiles of `dir`, or the built-in ones.
pub fn load(dir: Option<&Path>) -> Result<(Vec<Profile>, Report)> {
    match dir {
        Some(dir) => load_dir(dir),
        None => Ok(load_texts(BUILT_IN.iter().map(|(name, text)| {
            (Path::new(BUILT_IN_DIR).join(name), text.to_string())
        }))),
    }
}

/// Parse and validate profiles given as (path, text), in order.
fn load_texts(files: impl Iterator<Item = (PathBuf, String)>) -> (Vec<Profile>, Report) {
    let mut profiles = Vec::new();
    let mut report = Report::default();
    for (path, text) in files {
        match parse(&text, &path) {
            Ok((p, warnings)) => {
                report.0.extend(warnings);
                profiles.push(p);
            }
            Err(diags) => report.0.extend(diags),
        }
    }
    (profiles, report)
}

/// Load and validate every `*.yaml` in `dir`, sorted by name. All problems
/// of all files are collected before failing.
pub fn load_dir(dir: &Path) -> Result<(Vec<Profile>, Report)> {
    // Collect the file list first: the order of read_dir is not stable.
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading profile directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    if paths.is_empty() {
        anyhow::bail!("no profiles (*.yaml) in {}", dir.display());
    }
    let mut files = Vec::new();
    let mut oversized = Vec::new();
    for path in paths {
        let text = yaml::read_document(&path)
            .with_context(|| format!("reading profile {}", path.display()))?;
        match text {
            Ok(text) => files.push((path, text)),
            Err(d) => oversized.push(d),
        }
    }
    let (profiles, mut report) = load_texts(files.into_iter());
    for d in oversized {
        report.push(d);
    }
    Ok((profiles, report))
}

/// Load profiles and fail on any error; returns the selected ones
/// (`all` or one name).
pub fn select(dir: Option<&Path>, which: &str) -> Result<Vec<Profile>> {
    let (profiles, report) = load(dir)?;
    if report.errors() > 0 {
        return Err(report.into());
    }
    if which == "all" {
        return Ok(profiles);
    }
    match profiles.iter().find(|p| p.name == which) {
        Some(p) => Ok(vec![p.clone()]),
        None => {
            let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
            anyhow::bail!(
                "no profile named {which:?} in {}; available: all, {}",
                dir.map_or(BUILT_IN_LABEL.into(), |d| d.display().to_string()),
                names.join(", ")
            )
        }
    }
}

/// [`select`] for a build of `arch` (docs/arm64.md): `all` means every
/// profile that supports it; a named profile that does not is refused.
pub fn select_arch(dir: Option<&Path>, which: &str, arch: Arch) -> Result<Vec<Profile>> {
    let selected = select(dir, which)?;
    if which != "all" {
        if let Some(p) = selected.iter().find(|p| !p.supports(arch)) {
            let arches: Vec<&str> = p.arches.iter().map(|a| a.uname()).collect();
            anyhow::bail!(
                "--arch {arch}: profile {} is built for {} only (its `arch:` list, {})",
                p.name,
                arches.join(", "),
                p.path.display()
            );
        }
        return Ok(selected);
    }
    let fit: Vec<Profile> = selected.into_iter().filter(|p| p.supports(arch)).collect();
    if fit.is_empty() {
        anyhow::bail!("--arch {arch}: no profile lists {arch} in its `arch:`");
    }
    Ok(fit)
}

/// Parse one profile: version first, then the schema; then cross-field checks.
/// Returns the profile and its warnings, or every error found.
pub fn parse(text: &str, path: &Path) -> Result<(Profile, Vec<Diagnostic>), Vec<Diagnostic>> {
    // Step 1: the version decides the schema.
    let version = peek_version(text, path).map_err(|d| vec![d])?;
    // Step 2: strict parse of that version's schema, read up into the
    // newest (a v1 file means what it meant: no `kernel-sources`, x86_64).
    let spec = match version {
        1 => {
            // Keys of later versions, named as such.
            for key in ["$.kernel-sources", "$.arch"] {
                if let Some(at) = yaml::locate(text, key) {
                    let msg = format!("`{}` needs `version: 2`", &key[2..]);
                    return Err(vec![Diagnostic::error(path, key, msg).at(text, Some(at))]);
                }
            }
            v2::ProfileSpec::from(
                yaml::from_str::<v1::ProfileSpec>(text, path).map_err(|d| vec![d])?,
            )
        }
        _ => yaml::from_str::<v2::ProfileSpec>(text, path).map_err(|d| vec![d])?,
    };
    // Step 3: cross-field checks, all collected.
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut diags = v1::validate(&spec, &name, text, path);
    diags.extend(v2::validate(&spec, text, path));
    diags.extend(v2::validate_arch(&spec, text, path));
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    Ok((spec.into_profile(name, path), diags))
}

fn peek_version(text: &str, path: &Path) -> Result<u32, Diagnostic> {
    let doc = yaml::to_json_value(text, path)?;
    let supported = SUPPORTED_PROFILE_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let Some(map) = doc.as_object() else {
        return Err(Diagnostic::error(
            path,
            "$",
            "a profile is a mapping starting with `version:`",
        )
        .at(text, Some((1, 1))));
    };
    let at = yaml::locate(text, "$.version");
    match map.get("version") {
        None => Err(Diagnostic::error(
            path,
            "$",
            format!("missing `version:`; supported profile versions: {supported}"),
        )
        .at(text, Some((1, 1)))),
        Some(v) => match v.as_u64() {
            Some(n)
                if SUPPORTED_PROFILE_VERSIONS
                    .iter()
                    .any(|s| u64::from(*s) == n) =>
            {
                Ok(n as u32)
            }
            _ => Err(Diagnostic::error(
                path,
                "$.version",
                format!("unsupported profile version {v}; supported profile versions: {supported}"),
            )
            .at(text, at)),
        },
    }
}

/// The schema versions, each frozen once released.
pub mod v1;
pub mod v2;

impl Profile {
    /// The directory a build of `arch` writes this profile's payload to:
    /// `debian-12`, `debian-12-aarch64`.
    pub fn out_dir(&self, arch: Arch) -> String {
        match arch {
            Arch::X86_64 => self.name.clone(),
            other => format!("{}-{other}", self.name),
        }
    }

    /// Whether a payload for `arch` can be built from this profile.
    pub fn supports(&self, arch: Arch) -> bool {
        self.arches.contains(&arch)
    }

    /// One line for `cubeboot profiles`.
    pub fn summary(&self) -> String {
        let family = match self.target.family {
            PackageFamily::Rpm => "rpm",
            PackageFamily::Deb => "deb",
        };
        let boot = match self.target.bootloader.kind {
            BootloaderKind::BlsGrubby => "bls-grubby",
            BootloaderKind::GrubMkconfig => "grub-mkconfig",
        };
        format!(
            "{:<16} {:<4} {:<14} {}",
            self.name, family, boot, self.description
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1
description: Debian 12
os-ids: [debian]
version-id: \"12\"
family: deb
kernel-asset: kernel-deb
bootloader:
  kind: grub-mkconfig
  mkconfig: [update-grub]
  reboot-once: grub-reboot
  set-default: grub-set-default
  editenv: grub-editenv
  grub-cfg: /boot/grub/grub.cfg
  grubenv: /boot/grub/grubenv
  dropin-dir: /etc/default/grub.d
packages:
  manager: apt
  install: [curl, tar, xfsprogs, python3]
  hold: apt-mark-hold
";

    fn parse_err(text: &str) -> String {
        let errs = parse(text, Path::new("profiles/debian-12.yaml")).unwrap_err();
        errs.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    #[test]
    fn good_profile_parses() {
        let (p, warnings) = parse(GOOD, Path::new("profiles/debian-12.yaml")).unwrap();
        assert_eq!(p.name, "debian-12");
        assert_eq!(p.kernel_asset, AssetKind::KernelDeb);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn unknown_key_names_path_and_position() {
        let text = GOOD.replace("  grubenv:", "  grub-env:");
        assert_eq!(
            parse_err(&text),
            "error[$.bootloader]: unknown field `grub-env`, expected one of `kind`, `mkconfig`, `reboot-once`, `set-default`, `editenv`, `grub-cfg`, `grubenv`, `dropin-dir`\n  --> profiles/debian-12.yaml:14:3\n   |\n14 |   grub-env: /boot/grub/grubenv\n   |   ^"
        );
    }

    #[test]
    fn malformed_yaml_names_position() {
        let text = GOOD.replace("os-ids: [debian]", "os-ids: [debian");
        let msg = parse_err(&text);
        assert!(
            msg.starts_with("error[$]: did not find expected ',' or ']', while parsing"),
            "{msg}"
        );
        assert!(msg.contains("--> profiles/debian-12.yaml:"), "{msg}");
    }

    #[test]
    fn unknown_version_lists_supported() {
        let text = GOOD.replace("version: 1", "version: 7");
        assert_eq!(
            parse_err(&text),
            "error[$.version]: unsupported profile version 7; supported profile versions: 1, 2\n  --> profiles/debian-12.yaml:1:1\n  |\n1 | version: 7\n  | ^"
        );
    }

    #[test]
    fn cross_field_errors_are_all_reported() {
        let text = GOOD
            .replace("kernel-asset: kernel-deb", "kernel-asset: kernel-rpm")
            .replace("manager: apt", "manager: dnf");
        let msg = parse_err(&text);
        assert!(msg.contains("error[$.kernel-asset]: family deb installs kernel-deb, not kernel-rpm\n  --> profiles/debian-12.yaml:6:1"), "{msg}");
        assert!(msg.contains("error[$.packages.manager]: family deb is driven by apt\n  --> profiles/debian-12.yaml:17:3"), "{msg}");
        assert!(
            msg.contains("error[$.packages.hold]: this hold does not work with dnf"),
            "{msg}"
        );
    }

    #[test]
    fn a_v1_file_is_read_by_the_frozen_v1_schema() {
        // A v1 file's unknown key is answered with v1's own keys, not with
        // keys of a later version.
        let text = GOOD.replace("family: deb", "family: deb\nkernel-source: [release]");
        let msg = parse_err(&text);
        assert!(
            msg.starts_with("error[$]: unknown field `kernel-source`, expected one of `version`, `description`, `os-ids`, `version-id`, `family`, `kernel-asset`, `bootloader`, `packages`, `quirks`\n"),
            "{msg}"
        );
    }

    #[test]
    fn kernel_sources_need_version_2() {
        let text = format!("{GOOD}kernel-sources: [release]\n");
        assert_eq!(
            parse_err(&text).lines().next().unwrap(),
            "error[$.kernel-sources]: `kernel-sources` needs `version: 2`"
        );
        let v2 = text.replace("version: 1", "version: 2");
        let (p, _) = parse(&v2, Path::new("profiles/debian-12.yaml")).unwrap();
        assert_eq!(p.kernel_sources, vec![KernelSource::Release]);
        let (p, _) = parse(GOOD, Path::new("profiles/debian-12.yaml")).unwrap();
        assert_eq!(p.kernel_sources, vec![KernelSource::Release]);
        // apt cannot install a repository kernel the way the helper does.
        let repo = v2.replace("[release]", "[repo, release]");
        assert_eq!(
            parse_err(&repo).lines().next().unwrap(),
            "error[$.kernel-sources]: `repo` kernels are installed with dnf; this profile's packages.manager is not dnf"
        );
        let unknown = v2.replace("[release]", "[mirror]");
        assert!(
            parse_err(&unknown).starts_with("error[$.kernel-sources[0]]: unknown variant `mirror`, expected `release` or `repo`"),
            "{}",
            parse_err(&unknown)
        );
    }

    #[test]
    fn arch_lists_need_version_2_and_default_to_x86_64() {
        let (p, _) = parse(GOOD, Path::new("profiles/debian-12.yaml")).unwrap();
        assert_eq!(p.arches, vec![Arch::X86_64]);
        let text = format!("{GOOD}arch: [x86_64, aarch64]\n");
        assert_eq!(
            parse_err(&text).lines().next().unwrap(),
            "error[$.arch]: `arch` needs `version: 2`"
        );
        let v2 = text.replace("version: 1", "version: 2");
        let (p, _) = parse(&v2, Path::new("profiles/debian-12.yaml")).unwrap();
        assert_eq!(p.arches, vec![Arch::X86_64, Arch::Aarch64]);
        assert!(p.supports(Arch::Aarch64));
        let twice = v2.replace("[x86_64, aarch64]", "[aarch64, aarch64]");
        assert_eq!(
            parse_err(&twice).lines().next().unwrap(),
            "error[$.arch]: an architecture is listed twice"
        );
        let arm = v2.replace("[x86_64, aarch64]", "[arm64]");
        assert!(
            parse_err(&arm).starts_with(
                "error[$.arch[0]]: unknown variant `arm64`, expected `x86_64` or `aarch64`"
            ),
            "{}",
            parse_err(&arm)
        );
    }

    #[test]
    fn missing_python_is_a_warning() {
        let text = GOOD.replace(", python3]", "]");
        let (_, warnings) = parse(&text, Path::new("profiles/debian-12.yaml")).unwrap();
        assert_eq!(
            warnings[0].to_string().lines().next().unwrap(),
            "warning[$.packages.install]: python3 is not listed; the Cube installer expects it (docs/cube-installer.md)"
        );
    }
}
