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

/// The steps, in the order the runner takes them (the status schema
/// names them, so they live there).
pub use crate::status_schema::StepId;

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
