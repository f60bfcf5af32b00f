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
pub mod step;
pub mod troubleshooting;
pub mod units;
pub mod upgrade;
pub mod webhook;

pub mod cube;
pub mod fetch;
pub mod kernel;
pub mod preflight;

use crate::plan::{Asset, Plan};
use host::Host;
use journal::Journal;

pub use step::{Outcome, StepFailure, StepId};

/// Where the helper keeps its state and which unit runs it: the one
/// layout both halves read.
pub use crate::layout::{
    CACHE_DIR, JOURNAL_PATH, LOG_DIR, STATE_DIR, STATUS_PATH, UNIT_FILE, UNIT_NAME,
};

/// What every step gets: the host seam, the plan, the journal (facts
/// recorded by earlier steps, e.g. which kernel was the default before),
/// and the progress channel its downloads and phases report through
/// (`live.rs`; the runner opens it around the step).
pub struct Ctx<'a> {
    pub host: &'a dyn Host,
    pub plan: &'a Plan,
    pub journal: &'a mut Journal,
    pub progress: live::Handle,
}

impl<'a> Ctx<'a> {
    /// A step's context with no one listening to its progress (a step run
    /// outside the runner: an upgrade, a test).
    pub fn new(host: &'a dyn Host, plan: &'a Plan, journal: &'a mut Journal) -> Self {
        Self {
            host,
            plan,
            journal,
            progress: live::Handle::none(),
        }
    }

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
