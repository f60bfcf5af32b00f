//! The durable journal at /var/lib/cubeboot/state.json: which steps are done,
//! facts later steps need (the kernel that was default before, whether PVM or
//! native KVM is used), and how many reboots were spent. Versioned, written
//! atomically before any side effect that can reboot or kill the process.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::host::{unix_secs, Host};
use super::status::CheckResult;
use super::{StepId, JOURNAL_PATH};

pub const JOURNAL_VERSION: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub version: u32,
    /// SHA-256 of the plan this journal belongs to; a different plan starts over.
    pub plan_sha256: String,
    pub steps: BTreeMap<StepId, StepRecord>,
    /// Reboots the helper has requested so far.
    pub reboots: u32,
    /// Facts recorded by steps for later steps (sorted for stable output).
    pub facts: BTreeMap<String, String>,
    /// Terminal state once reached: `done` or `failed: …`.
    #[serde(default)]
    pub finished: Option<String>,
    /// Warnings steps raised for a human (shown in the status file).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Named checks steps ran, with their results (shown in the status file).
    #[serde(default)]
    pub checks: BTreeMap<String, CheckResult>,
    /// The error and hint of the failure that ended the run, kept so the
    /// status can be rebuilt after a reboot (the status file is in /run).
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub hints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepRecord {
    pub state: StepState,
    pub detail: String,
    pub at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Started; a crash here means the step runs again (steps are idempotent).
    Started,
    Done,
    Skipped,
    /// The step armed a reboot; the reboot is next.
    RebootRequested,
    Failed,
}

impl Journal {
    pub fn new(plan_sha256: &str) -> Self {
        Self {
            version: JOURNAL_VERSION,
            plan_sha256: plan_sha256.into(),
            ..Self::default()
        }
    }

    /// Load the journal for this plan, or a fresh one. A journal for another
    /// plan is kept aside, not trusted.
    pub fn load(host: &dyn Host, plan_sha256: &str) -> Result<Self> {
        let Some(text) = host.read_optional(JOURNAL_PATH)? else {
            return Ok(Self::new(plan_sha256));
        };
        let j: Self = serde_json::from_str(&text)
            .with_context(|| format!("parsing journal {JOURNAL_PATH}"))?;
        if j.version != JOURNAL_VERSION {
            bail!(
                "journal {JOURNAL_PATH} has version {}, this helper writes version {JOURNAL_VERSION}",
                j.version
            );
        }
        if j.plan_sha256 != plan_sha256 {
            host.say(&format!(
                "journal belongs to another plan ({}); starting over",
                j.plan_sha256
            ));
            return Ok(Self::new(plan_sha256));
        }
        Ok(j)
    }

    pub fn save(&self, host: &dyn Host) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self).context("serializing journal")?;
        text.push('\n');
        host.write_atomic(JOURNAL_PATH, text.as_bytes(), 0o600)
    }

    pub fn state(&self, step: StepId) -> Option<StepState> {
        self.steps.get(&step).map(|r| r.state)
    }

    /// Whether the step's effect is recorded (done, skipped, or it armed the
    /// reboot that follows it).
    pub fn is_complete(&self, step: StepId) -> bool {
        matches!(
            self.state(step),
            Some(StepState::Done | StepState::Skipped | StepState::RebootRequested)
        )
    }

    pub fn mark(&mut self, host: &dyn Host, step: StepId, state: StepState, detail: &str) {
        self.steps.insert(
            step,
            StepRecord {
                state,
                detail: detail.into(),
                at: unix_secs(host.now()),
            },
        );
    }

    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts.get(key).map(String::as_str)
    }

    pub fn set_fact(&mut self, key: &str, value: impl Into<String>) {
        self.facts.insert(key.into(), value.into());
    }

    /// Add a warning for the status file (once; repeated runs do not pile up).
    pub fn warn(&mut self, message: impl Into<String>) {
        let message = message.into();
        if !self.warnings.contains(&message) {
            self.warnings.push(message);
        }
    }

    /// Record a named check's result for the status file.
    pub fn record_check(&mut self, name: &str, ok: bool, detail: impl Into<String>) {
        self.checks.insert(
            name.into(),
            CheckResult {
                ok,
                detail: detail.into(),
            },
        );
    }
}

/// Well-known fact keys shared between steps.
pub mod facts {
    /// `pvm` or `native`: which /dev/kvm the Cube stage installs for.
    pub const KVM_MODE: &str = "kvm.mode";
    /// The kernel release that was running/default before the switch.
    pub const OLD_KERNEL: &str = "kernel.old";
    /// The GRUB entry id (DEB) or kernel path (BLS) of the old default.
    pub const OLD_DEFAULT_ENTRY: &str = "kernel.old-default-entry";
    /// The entry id or path chosen for the PVM kernel.
    pub const PVM_ENTRY: &str = "kernel.pvm-entry";
    /// Set when grubenv could not be written and a direct default was used.
    pub const DIRECT_DEFAULT: &str = "kernel.direct-default";
    /// Node IP the Cube stage installed with.
    pub const NODE_IP: &str = "cube.node-ip";
    /// CUBE_SANDBOX_NETWORK_CIDR chosen when the default conflicted.
    pub const NETWORK_CIDR: &str = "cube.network-cidr";
    /// Diagnostics tarball written on failure.
    pub const DIAGNOSTICS: &str = "diagnostics";
    /// Boot id when the runner asked for the reboot: the same id on the next
    /// start means the reboot never happened and is asked for again.
    pub const REBOOT_BOOT_ID: &str = "reboot.boot-id";
    /// The one-line final message of a finished run (shown again later).
    pub const FINAL_MESSAGE: &str = "report.final-message";
}
