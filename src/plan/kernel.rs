//! The kernel part of the plan: the PVM host kernel to install (from the
//! release asset or a pinned dnf repository), how KVM is chosen, and the
//! boot parameters of the trial boot (docs/pvm-kernel.md).

use serde::{Deserialize, Serialize};

use crate::cmdline::TrialPanic;
use crate::digest::Sha256Digest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPlan {
    /// Exact `uname -r` of the PVM host kernel (from /boot/vmlinuz-KVER in the package).
    pub kver: String,
    /// Package name as the package manager knows it (for "already installed" and holds).
    pub package: String,
    /// Package version-release, for the already-installed check.
    pub package_version: String,
    pub kvm: KvmMode,
    /// Boot parameters to merge into the kernel command line, in order.
    pub boot_params: Vec<String>,
    /// `panic=` seconds for the trial boot, so a panicking kernel reboots into the old one.
    #[serde(default = "default_panic_seconds")]
    pub panic_seconds: u32,
    /// Set when dnf installs the kernel from a distro repository instead of
    /// the release asset (`assets.kernel` is then the package that pulls in
    /// the rest, fetched early as a reachability check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<KernelRepo>,
}

impl KernelPlan {
    /// The parameters a trial boot is armed with: the plan's, then `panic`'s
    /// unless the plan sets `panic=` itself. It stays after the commit: a
    /// host that panics later reboots instead of hanging.
    pub fn trial_params(&self, panic: TrialPanic) -> Vec<String> {
        let mut params = self.boot_params.clone();
        if !params.iter().any(|p| crate::cmdline::key(p) == "panic") {
            params.push(panic.param());
        }
        params
    }
}

/// A split kernel in a dnf repository, every package pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRepo {
    /// dnf baseurl (`https://`, `http://` or `file://`).
    pub baseurl: String,
    pub packages: Vec<RepoPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoPackage {
    /// `name-[epoch:]version-release.arch`.
    pub nevra: String,
    /// Path of the .rpm under the baseurl; its last part is the file name
    /// dnf downloads it as.
    pub location: String,
    pub sha256: Sha256Digest,
    pub size: u64,
    /// What `rpm -q --qf '%{SHA256HEADER}'` prints once it is installed.
    pub header_sha256: Sha256Digest,
}

impl RepoPackage {
    /// The file name dnf saves the package under.
    pub fn file_name(&self) -> &str {
        self.location.rsplit('/').next().unwrap_or(&self.location)
    }
}

fn default_panic_seconds() -> u32 {
    30
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvmMode {
    /// Use native /dev/kvm when kvm_intel/kvm_amd already work; otherwise PVM.
    Auto,
    /// Always switch to the PVM host kernel.
    Pvm,
}

/// Boot parameter presets the builder offers.
pub mod boot_params {
    /// What the Helm chart uses: kvm_pvm does not support KPTI yet.
    pub const MINIMAL: &[&str] = &["nopti", "pti=off"];

    /// The keys of the default set: the PVM part of [`TENCENT`], which
    /// upstream's `deploy/pvm/pvm_setup.sh` says the PVM host kernel needs
    /// before its first boot. docs/pvm-kernel.md ("Boot parameters") gives
    /// each parameter and why it is in or out.
    pub const PVM_KEYS: &[&str] = &[
        "clearcpuid",
        "clocksource",
        "pti",
        "no5lvl",
        "mitigations",
        "spec_store_bypass_disable",
        "retbleed",
        "kvm.nx_huge_pages",
        "tsc",
    ];

    /// The default set: the chart's `nopti`, then upstream's values of
    /// [`PVM_KEYS`] in upstream's order.
    pub fn pvm() -> Vec<String> {
        let upstream = TENCENT
            .iter()
            .filter(|p| PVM_KEYS.contains(&crate::cmdline::key(p)));
        std::iter::once(&"nopti")
            .chain(upstream)
            .map(|p| p.to_string())
            .collect()
    }

    /// Tencent's production set from `deploy/pvm/grub/host_grub_config.sh`.
    pub const TENCENT: &[&str] = &[
        "quiet",
        "elevator=noop",
        "console=ttyS0,115200",
        "console=tty0",
        "vconsole.keymap=us",
        "crashkernel=1800M-64G:256M,64G-128G:512M,128G-486G:768M,486G-972G:1024M,972G-:2048M",
        "vconsole.font=latarcyrheb-sun16",
        "net.ifnames=0",
        "biosdevname=0",
        "intel_idle.max_cstate=1",
        "intel_pstate=disable",
        "cgroup.memory=nokmem",
        "transparent_hugepage=never",
        "ipv6.disable=1",
        "systemd.unified_cgroup_hierarchy=1",
        "module.sig_enforce=1",
        "clearcpuid=27,28,54,57,104,107,118,120,122,131,152,158,193,196,198,199,200,201,214,215,225,241,249,250,254,289,292,295,297,299,302,306,307,309,311,312,317,321,322,323,389,416,418,425,513,514,517,518,520,521,522,523,524,526,534,537,539,540,580",
        "clocksource=tsc",
        "pti=off",
        "no5lvl",
        "mitigations=on",
        "spec_store_bypass_disable=prctl",
        "retbleed=off",
        "kvm.nx_huge_pages=never",
        "tsc=reliable",
        "kmem_cache.max_num=16000",
    ];
}
