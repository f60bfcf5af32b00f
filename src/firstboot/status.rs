//! The machine-readable status at /run/cubeboot/status.json: what the helper
//! is doing, how far it got, the last error and a hint. `cube-firstboot
//! status` prints it; the webhook posts it.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::host::{unix_secs, Host};
use super::STATUS_PATH;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: u32,
    /// `running`, `rebooting`, `done` or `failed: …`.
    pub state: String,
    pub step: String,
    /// Steps finished out of all steps.
    pub progress: Progress,
    pub last_error: Option<String>,
    pub hints: Vec<String>,
    /// Named checks (e.g. from the Cube verification) with their results.
    pub checks: BTreeMap<String, CheckResult>,
    /// Warnings worth a human's attention (e.g. a boot parameter renames NICs).
    pub warnings: Vec<String>,
    pub generator: String,
    pub profile: String,
    pub updated_at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub ok: bool,
    pub detail: String,
}

impl Status {
    pub fn is_terminal(&self) -> bool {
        self.state == "done" || self.state.starts_with("failed")
    }

    pub fn write(&mut self, host: &dyn Host) -> Result<()> {
        self.version = 1;
        self.updated_at = unix_secs(host.now());
        let mut text = serde_json::to_string_pretty(self).context("serializing status")?;
        text.push('\n');
        host.write_atomic(STATUS_PATH, text.as_bytes(), 0o644)
    }

    pub fn read(host: &dyn Host) -> Result<Option<Self>> {
        match host.read_optional(STATUS_PATH)? {
            None => Ok(None),
            Some(t) => Ok(Some(
                serde_json::from_str(&t).with_context(|| format!("parsing {STATUS_PATH}"))?,
            )),
        }
    }
}
