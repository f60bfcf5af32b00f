//! The first-boot helper's engine: a journaled state machine of idempotent
//! steps. Each step checks whether its effect is present, does the work, and
//! the runner records completion in the journal before moving on. Reboots are
//! requests the runner alone carries out, after the journal is on disk.

pub mod host;
pub mod image;
pub mod journal;
pub mod link;
pub mod live;
pub mod report;
pub mod run_state;
pub mod runner;
pub mod secrets;
pub mod status;
pub mod troubleshooting;
pub mod units;
pub mod webhook;

pub mod cube;
pub mod fetch;
pub mod kernel;
pub mod preflight;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::plan::{Asset, Plan};
use host::Host;
use journal::Journal;
use run_state::Failure;

/// Where the helper keeps durable state on the target.
pub const STATE_DIR: &str = "/var/lib/cubeboot";
pub const JOURNAL_PATH: &str = "/var/lib/cubeboot/state.json";
pub const CACHE_DIR: &str = "/var/lib/cubeboot/cache";
pub const STATUS_PATH: &str = "/run/cubeboot/status.json";
pub const LOG_DIR: &str = "/var/log/cubeboot";
pub const UNIT_NAME: &str = "cube-firstboot.service";

/// The systemd unit the builder installs at
/// /etc/systemd/system/cube-firstboot.service (why each line: see the file).
pub const UNIT_FILE: &str = include_str!("../../templates/cube-firstboot.service");

/// The steps, in the order the runner takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepId {
    /// Root, x86_64, RAM, disk, distro matches the plan, cloud-init finished.
    Preflight,
    /// The kernel package, verified into the SHA-256-named cache (the
    /// bundle downloads beside the steps that follow, see `Bundle`).
    Fetch,
    /// Host packages the Cube installer needs (before the reboot).
    CubePrereqs,
    /// /data/cubelet on XFS, mounted from /etc/fstab. Before the kernel
    /// stage: it needs nothing from the new kernel, so it does not wait for
    /// the reboot, and a disk it must refuse stops the run before the
    /// kernel is touched. cube-install checks the mount again after the
    /// reboot.
    DataDisk,
    /// Install the PVM kernel package and hold it.
    KernelInstall,
    /// Boot parameters, entry chosen by identity, one-shot trial boot armed.
    KernelBoot,
    /// The one planned reboot.
    Reboot,
    /// After the reboot: running KVER with the parameters, else roll back.
    KernelVerify,
    /// modprobe kvm_pvm, verified by /proc/modules and a /dev/kvm that answers
    /// KVM_GET_API_VERSION; autoload persisted. Still in the trial boot: a
    /// failure (or a crash) rolls back.
    KvmLoad,
    /// Only now: the PVM entry becomes the default.
    KernelCommit,
    /// The one-click bundle verified in the cache: its download started
    /// with `Fetch` and ran beside the kernel stage; this waits for it, or
    /// resumes it by Range when a reboot cut it.
    Bundle,
    /// The one-click installer from the verified bundle.
    CubeInstall,
    /// Success by state, not log text.
    CubeVerify,
    /// Binds, firewall, credentials.
    Harden,
    /// Final message, webhook, unit disabled.
    Report,
}

impl StepId {
    pub const ALL: [Self; 15] = [
        Self::Preflight,
        Self::Fetch,
        Self::CubePrereqs,
        Self::DataDisk,
        Self::KernelInstall,
        Self::KernelBoot,
        Self::Reboot,
        Self::KernelVerify,
        Self::KvmLoad,
        Self::KernelCommit,
        Self::Bundle,
        Self::CubeInstall,
        Self::CubeVerify,
        Self::Harden,
        Self::Report,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Preflight => "preflight",
            Self::Fetch => "fetch",
            Self::CubePrereqs => "cube-prereqs",
            Self::KernelInstall => "kernel-install",
            Self::KernelBoot => "kernel-boot",
            Self::Reboot => "reboot",
            Self::KernelVerify => "kernel-verify",
            Self::KvmLoad => "kvm-load",
            Self::KernelCommit => "kernel-commit",
            Self::DataDisk => "data-disk",
            Self::Bundle => "bundle",
            Self::CubeInstall => "cube-install",
            Self::CubeVerify => "cube-verify",
            Self::Harden => "harden",
            Self::Report => "report",
        }
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a step reports back to the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The effect is now present (detail for the status file).
    Done(String),
    /// Nothing to do: the effect was already there or does not apply.
    Skipped(String),
    /// The step armed a reboot; the reboot step that follows carries it out.
    RebootRequested(String),
    /// Reboot now (the reboot step): the runner records the request and
    /// reboots; the next start confirms it happened.
    Reboot(String),
}

/// A failure the status file explains with a hint for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StepFailure {
    pub message: String,
    pub hint: Option<String>,
    /// How the run ends when it is not plainly `failed: <step>`, e.g.
    /// [`Failure::RolledBack`].
    pub ends_as: Option<Failure>,
    /// The typed error behind the message, for callers that branch on it
    /// (e.g. a `fetch::FetchError`). Not a `source()`: the message already
    /// says what it says, and `{:#}` would print it twice.
    pub cause: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// Reboot once after recording the failure: a rollback that left the
    /// trial kernel running (docs/bootloader.md, "After a rollback").
    pub reboot_after: bool,
}

impl StepFailure {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            hint: None,
            ends_as: None,
            cause: None,
            reboot_after: false,
        }
    }

    /// See [`StepFailure::reboot_after`].
    pub fn reboot_after(mut self, reboot: bool) -> Self {
        self.reboot_after = reboot;
        self
    }

    /// Keep the typed error this failure explains.
    pub fn caused_by(mut self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.cause = Some(Box::new(e));
        self
    }

    /// The typed error behind this failure, if it is a `T`.
    pub fn cause<T: std::error::Error + 'static>(&self) -> Option<&T> {
        self.cause.as_deref()?.downcast_ref::<T>()
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn ends_as(mut self, failure: Failure) -> Self {
        self.ends_as = Some(failure);
        self
    }
}

/// What every step gets: the host seam, the plan, and the journal (facts
/// recorded by earlier steps, e.g. which kernel was the default before).
pub struct Ctx<'a> {
    pub host: &'a dyn Host,
    pub plan: &'a Plan,
    pub journal: &'a mut Journal,
}

impl Ctx<'_> {
    /// Where a verified asset lives in the cache (named by its SHA-256).
    pub fn asset_path(&self, asset: &Asset) -> String {
        cache_path(asset)
    }

    pub fn say(&self, line: &str) {
        self.host.say(line);
    }
}

pub fn cache_path(asset: &Asset) -> String {
    format!("{CACHE_DIR}/{}", asset.sha256)
}
