//! Version 2 of the profile schema: version 1 plus `kernel-sources` and
//! `arch` (frozen once released; its parts are version 1's).

use super::v1::{BootloaderSpec, PackagesSpec, QuirksSpec};
use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ProfileSpec {
    pub version: u32,
    pub description: String,
    pub os_ids: Vec<String>,
    pub version_id: String,
    pub family: PackageFamily,
    pub kernel_asset: AssetKind,
    pub bootloader: BootloaderSpec,
    pub packages: PackagesSpec,
    #[serde(default)]
    pub quirks: QuirksSpec,
    /// Where the kernel comes from, in order of preference (absent:
    /// the release asset only).
    #[serde(default)]
    pub kernel_sources: Option<Vec<KernelSource>>,
    /// The machine architectures the profile supports (absent: x86_64).
    #[serde(default)]
    pub arch: Option<Vec<Arch>>,
}

/// A version 1 file read as version 2: the release kernel, x86_64.
impl From<v1::ProfileSpec> for ProfileSpec {
    fn from(v1: v1::ProfileSpec) -> Self {
        Self {
            version: v1.version,
            description: v1.description,
            os_ids: v1.os_ids,
            version_id: v1.version_id,
            family: v1.family,
            kernel_asset: v1.kernel_asset,
            bootloader: v1.bootloader,
            packages: v1.packages,
            quirks: v1.quirks,
            kernel_sources: None,
            arch: None,
        }
    }
}

impl ProfileSpec {
    pub fn into_profile(self, name: String, path: &Path) -> Profile {
        let b = self.bootloader;
        Profile {
            target: Target {
                profile: name.clone(),
                os_ids: self.os_ids,
                version_id: self.version_id,
                family: self.family,
                bootloader: Bootloader {
                    kind: b.kind,
                    mkconfig: b.mkconfig,
                    reboot_once: b.reboot_once,
                    set_default: b.set_default,
                    editenv: b.editenv,
                    grub_cfg: b.grub_cfg,
                    grubenv: b.grubenv,
                    dropin_dir: b.dropin_dir,
                },
                packages: HostPackages {
                    manager: self.packages.manager,
                    install: self.packages.install,
                    docker: self.packages.docker,
                    hold: self.packages.hold,
                },
                quirks: Quirks {
                    multipathd_cgroup_fix: self.quirks.multipathd_cgroup_fix,
                    needs_resolver: self.quirks.needs_resolver,
                },
                // Set per build (`--arch`), from the profile's `arches`.
                arch: Arch::X86_64,
            },
            name,
            path: path.to_path_buf(),
            description: self.description,
            kernel_asset: self.kernel_asset,
            kernel_sources: self
                .kernel_sources
                .unwrap_or_else(|| vec![KernelSource::Release]),
            arches: self.arch.unwrap_or_else(|| vec![Arch::X86_64]),
        }
    }
}

/// Rules for `arch` (docs/arm64.md).
pub fn validate_arch(spec: &ProfileSpec, text: &str, path: &Path) -> Vec<Diagnostic> {
    let key = "$.arch";
    let err = |msg: &str| {
        vec![Diagnostic::error(path, key, msg).at(text, yaml::locate_or_parent(text, key))]
    };
    match &spec.arch {
        None => Vec::new(),
        Some(a) if a.is_empty() => err("name at least one of `x86_64`, `aarch64`"),
        Some(a) if (1..a.len()).any(|i| a[..i].contains(&a[i])) => {
            err("an architecture is listed twice")
        }
        Some(_) => Vec::new(),
    }
}

/// Rules for `kernel-sources`.
pub fn validate(spec: &ProfileSpec, text: &str, path: &Path) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let key = "$.kernel-sources";
    let mut err = |msg: String| {
        out.push(Diagnostic::error(path, key, msg).at(text, yaml::locate_or_parent(text, key)));
    };
    let Some(sources) = &spec.kernel_sources else {
        return out;
    };
    if sources.is_empty() {
        err("name at least one of `release`, `repo`".into());
    }
    for (i, s) in sources.iter().enumerate() {
        if sources[..i].contains(s) {
            err(format!("{s:?} is listed twice").to_lowercase());
        }
    }
    if sources.contains(&KernelSource::Repo) && spec.packages.manager != PackageManager::Dnf {
        err(
            "`repo` kernels are installed with dnf; this profile's packages.manager is not dnf"
                .into(),
        );
    }
    out
}
