//! What a step is, as the runner, the journal and the steps see it: its
//! name ([`StepId`]), what it reports ([`Outcome`]) and how it fails
//! ([`StepFailure`]). A leaf: it imports nothing from the helper's engine.
//! `firstboot/mod.rs` re-exports it for the steps; the journal and the run
//! state, below every step, take `StepId` and `Failure` straight from
//! `src/status_schema.rs`, where they are defined, not from `mod.rs`.

use crate::status_schema::Failure;

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
