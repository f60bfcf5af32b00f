//! Version 1 of the profile schema (frozen once released).

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileSpec {
    pub version: u32,
    /// Human name, shown by `cubeboot profiles`.
    pub description: String,
    /// `ID` values from /etc/os-release this profile accepts.
    pub os_ids: Vec<String>,
    /// `VERSION_ID` prefix, e.g. `"12"`.
    pub version_id: String,
    pub family: PackageFamily,
    /// `kernel-rpm` or `kernel-deb`: which locked kernel package fits.
    pub kernel_asset: AssetKind,
    pub bootloader: BootloaderSpec,
    pub packages: PackagesSpec,
    #[serde(default)]
    pub quirks: QuirksSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootloaderSpec {
    pub kind: BootloaderKind,
    pub mkconfig: Vec<String>,
    pub reboot_once: String,
    pub set_default: String,
    pub editenv: String,
    pub grub_cfg: String,
    pub grubenv: String,
    #[serde(default)]
    pub dropin_dir: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PackagesSpec {
    pub manager: PackageManager,
    pub install: Vec<String>,
    #[serde(default)]
    pub docker: DockerSource,
    pub hold: KernelHold,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct QuirksSpec {
    /// CubeSandbox #366: multipathd blocks cgroup v2 `cpu` delegation.
    #[serde(default)]
    pub multipathd_cgroup_fix: bool,
    /// Control role needs resolvectl or NetworkManager (docs/cube-installer.md).
    #[serde(default)]
    pub needs_resolver: bool,
}

/// Cross-field rules a type cannot express (on a file of any version,
/// read up into the newest schema).
pub fn validate(spec: &v2::ProfileSpec, name: &str, text: &str, path: &Path) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut err = |key: &str, msg: String| {
        out.push(Diagnostic::error(path, key, msg).at(text, yaml::locate_or_parent(text, key)));
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        err(
            "$",
            format!("profile file name {name:?} must be lowercase letters, digits, '-' and '.'"),
        );
    }
    let (want_asset, want_manager) = match spec.family {
        PackageFamily::Rpm => (AssetKind::KernelRpm, PackageManager::Dnf),
        PackageFamily::Deb => (AssetKind::KernelDeb, PackageManager::Apt),
    };
    if spec.kernel_asset != want_asset {
        err(
            "$.kernel-asset",
            format!(
                "family {} installs {}, not {}",
                family_name(spec.family),
                want_asset.key(),
                spec.kernel_asset.key()
            ),
        );
    }
    if spec.packages.manager != want_manager {
        err(
            "$.packages.manager",
            format!(
                "family {} is driven by {}",
                family_name(spec.family),
                manager_name(want_manager)
            ),
        );
    }
    let hold_ok = matches!(
        (spec.packages.manager, spec.packages.hold),
        (PackageManager::Apt, KernelHold::AptMarkHold)
            | (
                PackageManager::Dnf,
                KernelHold::DnfVersionlock | KernelHold::DnfExclude
            )
    );
    if !hold_ok {
        err(
            "$.packages.hold",
            format!(
                "this hold does not work with {}",
                manager_name(spec.packages.manager)
            ),
        );
    }
    if spec.os_ids.is_empty() {
        err("$.os-ids", "at least one os-release ID is needed".into());
    }
    if spec.version_id.is_empty() {
        err("$.version-id", "must not be empty".into());
    }
    if spec.bootloader.mkconfig.is_empty() {
        err(
            "$.bootloader.mkconfig",
            "needs the grub.cfg regeneration command".into(),
        );
    }
    let b = &spec.bootloader;
    let mut paths = vec![
        ("grub-cfg", Some(&b.grub_cfg)),
        ("grubenv", Some(&b.grubenv)),
    ];
    paths.push(("dropin-dir", b.dropin_dir.as_ref()));
    for (key, value) in paths {
        if let Some(v) = value {
            if !v.starts_with('/') {
                err(
                    &format!("$.bootloader.{key}"),
                    format!("{v:?} must be an absolute path on the target"),
                );
            }
        }
    }
    for (i, p) in spec.packages.install.iter().enumerate() {
        if p.is_empty() || p.starts_with('-') || p.contains(char::is_whitespace) {
            err(
                &format!("$.packages.install[{i}]"),
                format!("{p:?} is not a package name"),
            );
        }
    }
    // Warnings: what the Cube installer needs but does not install itself
    // (docs/cube-installer.md, "What the host must bring"). Fatal under
    // `check --strict`.
    for needed in ["curl", "tar", "xfsprogs", "python3"] {
        if !spec.packages.install.iter().any(|p| p == needed) {
            out.push(
                Diagnostic::warning(
                    path,
                    "$.packages.install",
                    format!("{needed} is not listed; the Cube installer expects it (docs/cube-installer.md)"),
                )
                .at(text, yaml::locate_or_parent(text, "$.packages.install")),
            );
        }
    }
    out
}

fn family_name(f: PackageFamily) -> &'static str {
    match f {
        PackageFamily::Rpm => "rpm",
        PackageFamily::Deb => "deb",
    }
}

fn manager_name(m: PackageManager) -> &'static str {
    match m {
        PackageManager::Apt => "apt",
        PackageManager::Dnf => "dnf",
    }
}
