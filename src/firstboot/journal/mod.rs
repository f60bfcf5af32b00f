//! The durable journal at /var/lib/cubeboot/state.json: which steps are done,
//! facts later steps need (the kernel that was default before, whether PVM or
//! native KVM is used), and how many reboots were spent. Versioned, written
//! atomically before any side effect that can reboot or kill the process.
//!
//! A leaf of the engine: it knows the step names and the host seam, nothing
//! else. The status is built from it and the runner writes it.

mod facts;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::host::{unix_secs, Host};
use super::run_state::RunState;
use super::JOURNAL_PATH;
use crate::status_schema::StepId;
pub use facts::{DnsmasqMode, Facts, KvmInUse, Quickcheck};

/// Version 2 records the boots a step was started in (the crash-loop guard)
/// and keeps the facts as named fields. Version 3 has the kernel-commit step:
/// before it, kernel-verify committed the PVM entry itself. Older journals
/// are migrated.
pub const JOURNAL_VERSION: u32 = 3;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Journal {
    pub version: u32,
    /// SHA-256 of the plan this journal belongs to; a different plan starts over.
    pub plan_sha256: String,
    pub steps: BTreeMap<StepId, StepRecord>,
    /// Reboots the helper has requested so far.
    pub reboots: u32,
    /// Facts recorded by steps for later steps.
    pub facts: Facts,
    /// Terminal state once reached: `done` or `failed: …`.
    #[serde(default)]
    pub finished: Option<RunState>,
    /// Warnings steps raised for a human (shown in the status file).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Named checks steps ran, with their results (shown in the status file).
    #[serde(default)]
    pub checks: BTreeMap<CheckName, CheckResult>,
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
    /// While `started`: the boot ids the step was started in without
    /// finishing (the crash-loop guard counts them). For the reboot step's
    /// `reboot-requested`: the boot it asked in, compared with the current
    /// boot to tell whether the reboot happened.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub boots: Vec<String>,
}

/// A step's state and a check's result are part of the status schema too.
pub use crate::status_schema::{CheckName, CheckResult, StepState};

/// Why the journal could not be used; `main` gives each its own hint.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("reading journal {JOURNAL_PATH}")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("parsing journal {JOURNAL_PATH}")]
    Parse(#[source] serde_json::Error),
    #[error("journal {JOURNAL_PATH} has version {found}, this helper reads versions 1 to {JOURNAL_VERSION}")]
    Version { found: u32 },
    #[error("writing journal {JOURNAL_PATH}")]
    Write(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl JournalError {
    /// The journal on disk is unusable (not a passing I/O problem).
    pub fn is_unusable(&self) -> bool {
        matches!(self, Self::Parse(_) | Self::Version { .. })
    }
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
    pub fn load(host: &dyn Host, plan_sha256: &str) -> Result<Self, JournalError> {
        let Some(j) = Self::read(host)? else {
            return Ok(Self::new(plan_sha256));
        };
        if j.plan_sha256 != plan_sha256 {
            host.say(&format!(
                "journal belongs to another plan ({}); starting over",
                j.plan_sha256
            ));
            return Ok(Self::new(plan_sha256));
        }
        Ok(j)
    }

    /// The journal on disk as it is, whatever plan it belongs to.
    pub fn read(host: &dyn Host) -> Result<Option<Self>, JournalError> {
        let text = host
            .read_optional(JOURNAL_PATH)
            .map_err(|e| JournalError::Read(e.into()))?;
        text.map(|t| Self::parse(&t)).transpose()
    }

    /// Parse journal text of any version this helper knows.
    pub fn parse(text: &str) -> Result<Self, JournalError> {
        let mut value: serde_json::Value =
            serde_json::from_str(text).map_err(JournalError::Parse)?;
        let found = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        match found {
            1 => {
                migrate_v1(&mut value);
                migrate_v2(&mut value);
            }
            2 => migrate_v2(&mut value),
            v if v == u64::from(JOURNAL_VERSION) => {}
            _ => {
                return Err(JournalError::Version {
                    found: u32::try_from(found).unwrap_or(u32::MAX),
                })
            }
        }
        serde_json::from_value(value).map_err(JournalError::Parse)
    }

    /// Write the journal, its free text scrubbed of every secret the host
    /// knows (error text can quote an installer's output).
    pub fn save(&self, host: &dyn Host) -> Result<(), JournalError> {
        let mut clean = self.clone();
        let secrets = host.secrets();
        let scrub = |s: &mut String| secrets.scrub_in_place(s);
        clean.last_error.iter_mut().for_each(scrub);
        clean.hints.iter_mut().for_each(scrub);
        clean.warnings.iter_mut().for_each(scrub);
        clean.checks.values_mut().for_each(|c| scrub(&mut c.detail));
        clean.steps.values_mut().for_each(|r| scrub(&mut r.detail));
        clean.facts.final_message.iter_mut().for_each(scrub);
        // Plain structs, maps and strings always serialize.
        let mut text = serde_json::to_string_pretty(&clean).unwrap_or_default();
        text.push('\n');
        host.write_atomic(JOURNAL_PATH, text.as_bytes(), 0o600)
            .map_err(|e| JournalError::Write(e.into()))
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

    /// Record that `step` starts now, in this boot.
    pub fn start(&mut self, host: &dyn Host, step: StepId) {
        let mut boots = match self.steps.get(&step) {
            Some(r) if r.state == StepState::Started => r.boots.clone(),
            _ => Vec::new(),
        };
        if let Some(id) = host.boot_id() {
            if !boots.contains(&id) {
                boots.push(id);
            }
        }
        self.put(host, step, StepState::Started, "", boots);
    }

    /// Record a step's outcome.
    pub fn mark(&mut self, host: &dyn Host, step: StepId, state: StepState, detail: &str) {
        self.put(host, step, state, detail, Vec::new());
    }

    /// Record that `step` asks for a reboot now, in this boot: the next
    /// start tells by the boot id whether it happened.
    pub fn mark_rebooting(&mut self, host: &dyn Host, step: StepId, detail: &str) {
        let boot = host.boot_id().unwrap_or_default();
        self.put(host, step, StepState::RebootRequested, detail, vec![boot]);
    }

    fn put(
        &mut self,
        host: &dyn Host,
        step: StepId,
        state: StepState,
        detail: &str,
        boots: Vec<String>,
    ) {
        self.steps.insert(
            step,
            StepRecord {
                state,
                detail: detail.into(),
                at: unix_secs(host.now()),
                boots,
            },
        );
    }

    /// Boots other than `current` in which `step` was started and never
    /// finished (empty unless the step is recorded as started).
    pub fn interrupted_boots(&self, step: StepId, current: &str) -> Vec<&str> {
        match self.steps.get(&step) {
            Some(r) if r.state == StepState::Started => r
                .boots
                .iter()
                .map(String::as_str)
                .filter(|b| *b != current)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// The boot in which `step` asked for a reboot now, if it did (empty
    /// when the boot id could not be read).
    pub fn reboot_requested_in(&self, step: StepId) -> Option<&str> {
        match self.steps.get(&step) {
            Some(r) if r.state == StepState::RebootRequested => r.boots.last().map(String::as_str),
            _ => None,
        }
    }

    /// Add a warning for the status file (once; repeated runs do not pile up).
    pub fn warn(&mut self, message: impl Into<String>) {
        let message = message.into();
        if !self.warnings.contains(&message) {
            self.warnings.push(message);
        }
    }

    /// Record a named check's result for the status file.
    pub fn record_check(&mut self, name: CheckName, ok: bool, detail: impl Into<String>) {
        self.checks.insert(
            name,
            CheckResult {
                ok,
                detail: detail.into(),
            },
        );
    }
}

/// Version 1 kept the boot id of the reboot request as the fact
/// `reboot.boot-id`; version 2 keeps it on the reboot step's record.
fn migrate_v1(value: &mut serde_json::Value) {
    let boot = value
        .get_mut("facts")
        .and_then(serde_json::Value::as_object_mut)
        .and_then(|f| f.remove("reboot.boot-id"));
    if let Some(boot) = boot {
        if let Some(reboot) = value
            .get_mut("steps")
            .and_then(|s| s.get_mut(StepId::Reboot.name()))
            .and_then(serde_json::Value::as_object_mut)
        {
            reboot.insert("boots".into(), serde_json::json!([boot]));
        }
    }
    value["version"] = serde_json::json!(2);
}

/// Versions 1 and 2 had no kernel-commit step: a kernel-verify that finished
/// had already made the PVM entry the default (or had nothing to commit). The
/// commit is recorded as kernel-verify left it, so a resumed run neither
/// commits twice nor treats the committed kernel as still on trial.
fn migrate_v2(value: &mut serde_json::Value) {
    if let Some(steps) = value
        .get_mut("steps")
        .and_then(serde_json::Value::as_object_mut)
    {
        let verified = steps
            .get(StepId::KernelVerify.name())
            .and_then(|r| serde_json::from_value::<StepRecord>(r.clone()).ok())
            .filter(|r| matches!(r.state, StepState::Done | StepState::Skipped));
        if let Some(r) = verified {
            let detail = if r.state == StepState::Done {
                format!(
                    "committed by kernel-verify (the journal predates the kernel-commit \
                     step): {}",
                    r.detail
                )
            } else {
                r.detail
            };
            let commit = StepRecord {
                detail,
                boots: Vec::new(),
                ..r
            };
            if let Ok(commit) = serde_json::to_value(commit) {
                steps
                    .entry(StepId::KernelCommit.name().to_string())
                    .or_insert(commit);
            }
        }
    }
    value["version"] = serde_json::json!(JOURNAL_VERSION);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::firstboot::host::ScriptedHost;
    use crate::firstboot::run_state::Failure;

    /// A version 1 journal as the previous helper wrote it, mid-run: the
    /// reboot asked for in boot-1, every fact key it used.
    const V1: &str = r#"{
  "version": 1,
  "plan_sha256": "abc",
  "steps": {
    "preflight": {"state": "done", "detail": "ok", "at": 10},
    "kernel-boot": {"state": "reboot-requested", "detail": "trial boot armed", "at": 11},
    "reboot": {"state": "reboot-requested", "detail": "trial boot of the PVM kernel", "at": 12}
  },
  "reboots": 1,
  "facts": {
    "cube.dnsmasq-mode": "standalone",
    "cube.network-cidr": "10.99.0.0/16",
    "cube.node-ip": "10.0.2.15",
    "diagnostics": "/var/log/cubeboot/diagnostics-1.tar.gz",
    "kernel.already-running": "6.6.69-pvm",
    "kernel.bls-options-before": "root=UUID=x ro",
    "kernel.direct-default": "grubenv is read-only",
    "kernel.old": "6.1.0-26-amd64",
    "kernel.old-default-entry": "gnulinux-6.1.0-26-amd64-advanced-x",
    "kernel.pvm-entry": "gnulinux-6.6.69-pvm-advanced-x",
    "kvm.mode": "pvm",
    "reboot.boot-id": "boot-1",
    "report.final-message": "finished"
  },
  "finished": "failed: rolled back to 6.1.0-26-amd64",
  "warnings": ["w"],
  "checks": {"cube-api": {"ok": true, "detail": "GET /health: 200"}},
  "last_error": "e",
  "hints": ["h"]
}"#;

    #[test]
    fn a_version_1_journal_is_migrated_with_every_fact() {
        let j = Journal::parse(V1).unwrap();
        assert_eq!(j.version, JOURNAL_VERSION);
        assert_eq!(j.reboot_requested_in(StepId::Reboot), Some("boot-1"));
        assert_eq!(j.reboot_requested_in(StepId::KernelBoot), None);
        let f = &j.facts;
        assert_eq!(f.kvm_mode, Some(KvmInUse::Pvm));
        assert_eq!(f.old_kernel.as_deref(), Some("6.1.0-26-amd64"));
        assert_eq!(
            f.pvm_entry.as_deref(),
            Some("gnulinux-6.6.69-pvm-advanced-x")
        );
        assert_eq!(f.dnsmasq_mode, Some(DnsmasqMode::Standalone));
        assert_eq!(f.final_message.as_deref(), Some("finished"));
        assert_eq!(
            j.finished,
            Some(RunState::Failed(Failure::RolledBack {
                to: "6.1.0-26-amd64".into()
            }))
        );
        // Written back as version 2 with the same fact keys (less the boot
        // id, which moved), and read back unchanged.
        let text = serde_json::to_string_pretty(&j).unwrap();
        assert!(text.contains("\"kernel.old-default-entry\""), "{text}");
        assert!(!text.contains("reboot.boot-id"), "{text}");
        assert_eq!(Journal::parse(&text).unwrap(), j);
    }

    /// A version 2 journal (the step list before kernel-commit) whose
    /// kernel-verify finished: that step had committed the PVM entry.
    #[test]
    fn a_version_2_journal_keeps_the_commit_kernel_verify_made() {
        let v2 = |verify: &str| {
            format!(
                r#"{{"version": 2, "plan_sha256": "abc", "reboots": 1, "facts": {{}},
                "steps": {{
                  "kernel-boot": {{"state": "reboot-requested", "detail": "armed", "at": 11}},
                  "reboot": {{"state": "done", "detail": "rebooted", "at": 12}}{verify}
                }}}}"#
            )
        };
        let j = Journal::parse(&v2(r#", "kernel-verify": {"state": "done",
            "detail": "running 6.6.69-pvm with its boot parameters; committed x", "at": 13},
            "kvm-load": {"state": "started", "detail": "", "at": 14, "boots": ["b2"]}"#))
        .unwrap();
        assert_eq!(j.version, JOURNAL_VERSION);
        let commit = &j.steps[&StepId::KernelCommit];
        assert_eq!(commit.state, StepState::Done);
        assert_eq!(commit.at, 13);
        assert_eq!(
            commit.detail,
            "committed by kernel-verify (the journal predates the kernel-commit step): \
             running 6.6.69-pvm with its boot parameters; committed x"
        );
        assert_eq!(j.state(StepId::KvmLoad), Some(StepState::Started));

        // Mid-trial (not verified yet): nothing was committed; the new step
        // list runs kernel-verify, kvm-load and kernel-commit as usual.
        let j = Journal::parse(&v2("")).unwrap();
        assert_eq!(j.state(StepId::KernelCommit), None);
        // Skipped (nothing to commit) stays skipped, with its reason.
        let j = Journal::parse(&v2(
            r#", "kernel-verify": {"state": "skipped", "detail": "native KVM in use", "at": 13}"#,
        ))
        .unwrap();
        assert_eq!(j.state(StepId::KernelCommit), Some(StepState::Skipped));
        assert_eq!(j.steps[&StepId::KernelCommit].detail, "native KVM in use");
        // Rolled back: no commit; a --retry runs the new steps.
        let j = Journal::parse(&v2(
            r#", "kernel-verify": {"state": "failed", "detail": "rolled back", "at": 13}"#,
        ))
        .unwrap();
        assert_eq!(j.state(StepId::KernelCommit), None);
    }

    /// The typed facts read the values earlier helpers wrote and write them
    /// back byte for byte; a value outside their set names its key.
    #[test]
    fn typed_facts_keep_their_text_and_name_the_key_of_a_bad_value() {
        let text = |facts: &str| {
            format!(
                "{{\n  \"version\": 3,\n  \"plan_sha256\": \"abc\",\n  \"steps\": {{}},\n  \"reboots\": 0,\n  \"facts\": {{\n{facts}\n  }},\n  \"finished\": null,\n  \"warnings\": [],\n  \"checks\": {{}},\n  \"last_error\": null,\n  \"hints\": []\n}}"
            )
        };
        let facts = [
            (
                "kernel.trial-panic",
                "panic=10 in force (the operator's, from the running command line)",
            ),
            ("cube.dnsmasq-mode", "prefer-standalone"),
            ("cube.installer-quickcheck", "not run"),
        ];
        let lines: Vec<String> = facts
            .iter()
            .map(|(k, v)| format!("    \"{k}\": \"{v}\""))
            .collect();
        let written = text(&lines.join(",\n"));
        let j = Journal::parse(&written).unwrap();
        assert_eq!(j.facts.dnsmasq_mode, Some(DnsmasqMode::PreferStandalone));
        assert_eq!(j.facts.installer_quickcheck, Some(Quickcheck::NotRun));
        assert_eq!(j.facts.trial_panic.map(|p| p.secs), Some(10));
        // Keys sort differently in the struct: compare as written by save().
        let back = serde_json::to_string_pretty(&j).unwrap();
        assert_eq!(Journal::parse(&back).unwrap(), j);
        for (k, v) in facts {
            assert!(back.contains(&format!("\"{k}\": \"{v}\"")), "{back}");
        }
        for (key, bad) in [
            ("cube.dnsmasq-mode", "networkmanager"),
            ("cube.installer-quickcheck", "OK"),
            ("kernel.trial-panic", "panic=10"),
        ] {
            let err = Journal::parse(&text(&format!("    \"{key}\": \"{bad}\""))).unwrap_err();
            let why = std::error::Error::source(&err).unwrap().to_string();
            assert!(
                why.starts_with(&format!("{key}: \"{bad}\" is not")),
                "{why}"
            );
        }
    }

    #[test]
    fn unknown_versions_and_damaged_text_are_typed_errors() {
        let newer = V1.replace("\"version\": 1", "\"version\": 4");
        assert!(matches!(
            Journal::parse(&newer),
            Err(JournalError::Version { found: 4 })
        ));
        assert!(matches!(
            Journal::parse("{\"version\": 2,"),
            Err(JournalError::Parse(_))
        ));
        let unknown_fact = V1.replace("\"kvm.mode\"", "\"kvm.mood\"");
        assert!(matches!(
            Journal::parse(&unknown_fact),
            Err(JournalError::Parse(_))
        ));
        assert!(JournalError::Version { found: 4 }.is_unusable());
    }

    #[test]
    fn a_step_remembers_the_boots_it_was_started_in_until_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let host = ScriptedHost::new(dir.path());
        let mut j = Journal::new("abc");
        host.put("/proc/sys/kernel/random/boot_id", "b1\n");
        j.start(&host, StepId::KernelVerify);
        j.start(&host, StepId::KernelVerify);
        assert!(j.interrupted_boots(StepId::KernelVerify, "b1").is_empty());
        host.put("/proc/sys/kernel/random/boot_id", "b2\n");
        j.start(&host, StepId::KernelVerify);
        assert_eq!(
            j.interrupted_boots(StepId::KernelVerify, "b3"),
            ["b1", "b2"]
        );
        j.mark(&host, StepId::KernelVerify, StepState::Done, "ok");
        assert!(j.interrupted_boots(StepId::KernelVerify, "b3").is_empty());
        assert!(j.steps[&StepId::KernelVerify].boots.is_empty());
    }
}
