//! Every secret value the helper knows (planned in the installer
//! environment, generated for Cube, read back from the installed env files),
//! so each text that leaves the process (console, journal, status file,
//! webhook, diagnostics) can be scrubbed of them by value. Scrubbing by key
//! name alone misses the same value quoted in an installer's output.
//!
//! A leaf (only the plan's types below it): the host seam holds one set,
//! so every channel sees the same one.

use std::collections::BTreeSet;
use std::sync::{Arc, PoisonError, RwLock};

use crate::plan::Plan;

/// What a secret value becomes in outgoing text.
pub const MASK: &str = "***";

/// Shorter values cannot be told apart from ordinary words in a log line.
pub const MIN_LEN: usize = 4;

/// Parts of an environment key that say its value is a credential.
const SECRET_KEY_PARTS: &[&str] = &[
    "PASS",
    "SECRET",
    "TOKEN",
    "KEY",
    "CREDENTIAL",
    "AUTH",
    "PRIVATE",
    "DATABASE_URL",
    "DSN",
];

/// A shared, growing set of secret values (cloning shares the set).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    values: Arc<RwLock<BTreeSet<String>>>,
}

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remember `value` as a secret. Values too short or too plain to be a
    /// credential (`true`, `8080`) are ignored: masking them would garble
    /// ordinary text and hide nothing.
    pub fn add(&self, value: &str) {
        let value = value.trim();
        let plain = value.chars().all(|c| c.is_ascii_digit())
            || ["true", "false", "yes", "no", "on", "off"]
                .iter()
                .any(|w| value.eq_ignore_ascii_case(w));
        if value.chars().count() < MIN_LEN || plain {
            return;
        }
        self.values
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(value.to_string());
    }

    /// Remember the values of environment entries whose key names a
    /// credential (`CUBE_DB_PASS`, `E2B_API_KEY`, `DATABASE_URL`, ...).
    pub fn add_env<'a>(&self, entries: impl IntoIterator<Item = (&'a str, &'a str)>) {
        for (k, v) in entries {
            if is_secret_key(k) {
                self.add(v);
            }
        }
    }

    /// `text` with every known secret replaced by [`MASK`]; longer values
    /// first, so a secret that contains another is masked whole.
    pub fn scrub(&self, text: &str) -> String {
        let values = self.values.read().unwrap_or_else(PoisonError::into_inner);
        let mut ordered: Vec<&String> = values
            .iter()
            .filter(|v| text.contains(v.as_str()))
            .collect();
        if ordered.is_empty() {
            return text.to_string();
        }
        ordered.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_string();
        for v in ordered {
            out = out.replace(v.as_str(), MASK);
        }
        out
    }

    /// Scrub a string in place.
    pub fn scrub_in_place(&self, text: &mut String) {
        let scrubbed = self.scrub(text);
        if scrubbed != *text {
            *text = scrubbed;
        }
    }

    pub fn len(&self) -> usize {
        self.values
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Planned values that are secrets: installer environment whose name says
/// it is a credential, the object storage key a compute node gets, the
/// cluster's ops-agent token and the webhook signing secret.
pub fn plan_secrets(plan: &Plan) -> Vec<String> {
    plan.cube
        .extra_env
        .iter()
        .filter(|(k, _)| is_secret_key(k))
        .map(|(_, v)| v.clone())
        // The compute node's copy of the control node's object storage key.
        .chain(plan.cube.s3.iter().map(|s| s.secret_access_key.clone()))
        // CUBE_OPS_OPSAGENT_TOKEN, shared by every node of the cluster.
        .chain(plan.cube.ops_token.clone())
        // The webhook signing secret stays in the plan (src/signing.rs).
        .chain(plan.report.webhook_secret.clone())
        .collect()
}

/// Whether an environment key's name says its value is a credential.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_uppercase();
    SECRET_KEY_PARTS.iter().any(|p| key.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_masked_wherever_they_appear() {
        let s = Secrets::new();
        s.add("hunter22");
        s.add("hunter22-and-more");
        let text = "a hunter22-and-more b hunter22 c";
        assert_eq!(s.scrub(text), "a *** b *** c");
        // Clones share the set.
        let c = s.clone();
        c.add("e2b_0123abcd");
        assert_eq!(s.scrub("X-API-Key: e2b_0123abcd"), "X-API-Key: ***");
    }

    #[test]
    fn plain_or_short_values_are_not_taken_for_secrets() {
        let s = Secrets::new();
        for v in ["", "abc", "true", "OFF", "8080", "  "] {
            s.add(v);
        }
        assert!(s.is_empty());
        assert_eq!(s.scrub("true 8080 abc"), "true 8080 abc");
    }

    #[test]
    fn the_clusters_ops_agent_token_is_a_planned_secret() {
        let mut plan = crate::plan::testing::sample_plan();
        plan.cube.ops_token = Some("opsagent-7f3c9a1e5b2d4c86".into());
        let s = Secrets::new();
        plan_secrets(&plan).iter().for_each(|v| s.add(v));
        assert_eq!(
            s.scrub("shared_token: \"opsagent-7f3c9a1e5b2d4c86\""),
            "shared_token: \"***\""
        );
    }

    #[test]
    fn env_entries_count_by_the_meaning_of_their_key() {
        let s = Secrets::new();
        s.add_env([
            ("CUBE_DB_PASS", "db-pass-1"),
            ("E2B_API_KEY", "e2b_ffff"),
            ("DATABASE_URL", "mysql://u:p@h/db"),
            ("CUBE_SANDBOX_NODE_IP", "10.0.2.15"),
            ("CUBE_PVM_ENABLE", "1"),
        ]);
        assert_eq!(s.len(), 3);
        assert_eq!(s.scrub("10.0.2.15 db-pass-1"), "10.0.2.15 ***");
    }
}
