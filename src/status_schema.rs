//! The status a helper writes to /run/cubeboot/status.json and posts to
//! `cubeboot watch`: one typed definition for both halves (the helper
//! writes it, the receiver reads it), so a field the helper adds reaches
//! the fleet view, and neither side compares state text. A leaf beside the
//! plan: it imports only the plan's [`Role`], so the builder reads it
//! without the helper's engine. The JSON is documented in docs/watch.md and docs/helper.md.
//!
//! `state` and `finished` stay on the wire as the plain strings operators
//! and receivers already read (`running`, `done`, `failed: kernel-install`,
//! `failed: rolled back to 6.1.0-26-amd64`, ...); in code they are
//! [`RunState`]. A value this build does not know (a newer helper's new
//! step) makes the whole status unreadable here: `watch` reports such a post
//! as refused, naming the value, rather than guessing what it means.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::plan::Role;

pub const STATUS_VERSION: u32 = 1;

/// The steps, in the order the runner takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepId {
    /// Root, the plan's architecture (and on aarch64 a working /dev/kvm), RAM,
    /// disk, distro matches the plan, cloud-init finished.
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

impl StepId {
    /// The step with this name, as the journal and the status write it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|id| id.name() == name)
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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

impl StepState {
    /// The name the journal and the status file use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Done => "done",
            Self::Skipped => "skipped",
            Self::RebootRequested => "reboot-requested",
            Self::Failed => "failed",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::Started,
            Self::Done,
            Self::Skipped,
            Self::RebootRequested,
            Self::Failed,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }
}

/// The checks cube-verify runs (src/firstboot/cube/verify.rs). Declared in
/// the order of their names, so a map keyed by them lists them as it did
/// when the keys were strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckName {
    CubeApi,
    CubeMaster,
    DevKvm,
    GuestKernel,
    KvmModule,
    OneClickEnv,
    Registered,
}

impl CheckName {
    pub const ALL: [Self; 7] = [
        Self::CubeApi,
        Self::CubeMaster,
        Self::DevKvm,
        Self::GuestKernel,
        Self::KvmModule,
        Self::OneClickEnv,
        Self::Registered,
    ];

    /// The check's name on the wire and on the console.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CubeApi => "cube-api",
            Self::CubeMaster => "cube-master",
            Self::DevKvm => "dev-kvm",
            Self::GuestKernel => "guest-kernel",
            Self::KvmModule => "kvm-module",
            Self::OneClickEnv => "one-click-env",
            Self::Registered => "registered",
        }
    }
}

impl std::fmt::Display for CheckName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named check's result (e.g. from the Cube verification).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    pub ok: bool,
    pub detail: String,
}

/// The state of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RunState {
    /// Nothing has started yet.
    #[default]
    Pending,
    /// A step is being taken.
    Running,
    /// The helper asked for the planned reboot and continues after it.
    Rebooting,
    /// Stopped before the end: `--stop-after`, or no helper running while
    /// the journal shows an unfinished run. Resumable.
    Stopped,
    /// Every step complete.
    Done,
    /// Ended by a failure; `run --retry` re-enters it.
    Failed(Failure),
}

/// Why a run ended failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The step failed (`failed: <step>`).
    Step(StepId),
    /// The trial boot did not come back as planned; the old kernel is the
    /// default again (`failed: rolled back to <kver>`).
    RolledBack { to: String },
    /// As above, but restoring the old default failed too.
    RollBackFailed { to: String },
    /// The step was started in two boots and never finished: the machine
    /// reset under it each time, so it is not started a third time.
    Interrupted(StepId),
    /// `cube-firstboot upgrade` could not install or verify the new bundle.
    Upgrade,
    /// No usable plan (before the state machine).
    Plan,
    /// The helper itself could not go on (e.g. an unusable journal).
    Helper,
}

impl RunState {
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Done | Self::Failed(_))
    }

    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Self::Failed(f) => Some(f),
            _ => None,
        }
    }
}

const FAILED: &str = "failed: ";
const ROLLED_BACK: &str = "rolled back to ";
const ROLL_BACK_FAILED: &str = "could not roll back to ";
const INTERRUPTED: &str = " interrupted by unexpected reboots";

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pending => f.write_str("pending"),
            Self::Running => f.write_str("running"),
            Self::Rebooting => f.write_str("rebooting"),
            Self::Stopped => f.write_str("stopped"),
            Self::Done => f.write_str("done"),
            Self::Failed(why) => write!(f, "{FAILED}{why}"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Step(step) => write!(f, "{step}"),
            Self::RolledBack { to } => write!(f, "{ROLLED_BACK}{to}"),
            Self::RollBackFailed { to } => write!(f, "{ROLL_BACK_FAILED}{to}"),
            Self::Interrupted(step) => write!(f, "{step}{INTERRUPTED}"),
            Self::Upgrade => f.write_str("upgrade"),
            Self::Plan => f.write_str("plan"),
            Self::Helper => f.write_str("helper"),
        }
    }
}

/// Text that is not a run state this helper writes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown run state {0:?}")]
pub struct UnknownRunState(pub String);

impl FromStr for RunState {
    type Err = UnknownRunState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownRunState(s.to_string());
        Ok(match s {
            "pending" => Self::Pending,
            "running" => Self::Running,
            "rebooting" => Self::Rebooting,
            "stopped" => Self::Stopped,
            "done" => Self::Done,
            _ => {
                let why = s.strip_prefix(FAILED).ok_or_else(unknown)?;
                Self::Failed(why.parse().map_err(|_| unknown())?)
            }
        })
    }
}

impl FromStr for Failure {
    type Err = UnknownRunState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let step = StepId::from_name;
        if let Some(to) = s.strip_prefix(ROLLED_BACK) {
            return Ok(Self::RolledBack { to: to.into() });
        }
        if let Some(to) = s.strip_prefix(ROLL_BACK_FAILED) {
            return Ok(Self::RollBackFailed { to: to.into() });
        }
        if let Some(id) = s.strip_suffix(INTERRUPTED).and_then(step) {
            return Ok(Self::Interrupted(id));
        }
        match s {
            "upgrade" => Ok(Self::Upgrade),
            "plan" => Ok(Self::Plan),
            "helper" => Ok(Self::Helper),
            _ => step(s)
                .map(Self::Step)
                .ok_or_else(|| UnknownRunState(format!("{FAILED}{s}"))),
        }
    }
}

impl TryFrom<String> for RunState {
    type Error = UnknownRunState;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<RunState> for String {
    fn from(s: RunState) -> Self {
        s.to_string()
    }
}

/// The whole status. Every field has a default, so a status from an older
/// helper that lacks some still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: u32,
    /// `pending`, `running`, `rebooting`, `stopped`, `done` or `failed: …`.
    pub state: RunState,
    /// The step under way (`""` on the wire when none).
    #[serde(with = "none_is_empty")]
    pub step: Option<StepId>,
    /// Steps finished out of all steps.
    pub progress: Progress,
    pub last_error: Option<String>,
    pub hints: Vec<String>,
    /// Named checks (e.g. from the Cube verification) with their results.
    pub checks: BTreeMap<CheckName, CheckResult>,
    /// Warnings worth a human's attention (e.g. a boot parameter renames NICs).
    pub warnings: Vec<String>,
    pub generator: String,
    pub profile: String,
    pub updated_at: u64,
    /// One line for people: what happened, or what is happening.
    pub message: String,
    /// Every step with its journal state, in order.
    pub steps: Vec<StepView>,
    /// The machine's hostname, so a webhook receiver can tell nodes apart.
    pub hostname: String,
    /// From the plan (`""` on the wire when no plan was read).
    #[serde(with = "none_is_empty")]
    pub role: Option<Role>,
    /// The download under way, if any (bytes so far of the asset's size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<DownloadProgress>,
    /// The installer's current phase, as it last announced it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub phase: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgress {
    pub asset: String,
    pub bytes: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepView {
    pub name: StepId,
    /// The journal's state of the step; `pending` on the wire while it has none.
    #[serde(with = "none_is_pending")]
    pub state: Option<StepState>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl Status {
    pub fn is_done(&self) -> bool {
        self.state == RunState::Done
    }

    pub fn is_failed(&self) -> bool {
        matches!(self.state, RunState::Failed(_))
    }

    /// What a person should read first about a failure: the first hint,
    /// else the first line of the error.
    pub fn first_hint(&self) -> Option<&str> {
        self.hints
            .first()
            .map(String::as_str)
            .or_else(|| self.last_error.as_deref().and_then(|e| e.lines().next()))
    }
}

/// A value of a closed set written by its name (`step`, `role`).
trait Named: Sized + Copy {
    /// The key it is written under, for errors.
    const KEY: &'static str;
    fn name(self) -> &'static str;
    fn from_name(name: &str) -> Option<Self>;
}

impl Named for StepId {
    const KEY: &'static str = "step";

    fn name(self) -> &'static str {
        StepId::name(self)
    }

    fn from_name(name: &str) -> Option<Self> {
        StepId::from_name(name)
    }
}

impl Named for Role {
    const KEY: &'static str = "role";

    fn name(self) -> &'static str {
        self.as_str()
    }

    fn from_name(name: &str) -> Option<Self> {
        Role::from_name(name)
    }
}

/// `step` and `role`: none is the empty string, as version 1 wrote them.
mod none_is_empty {
    use super::Named;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, T: Named>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(v.map_or("", T::name))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, T: Named>(d: D) -> Result<Option<T>, D::Error> {
        let name = String::deserialize(d)?;
        if name.is_empty() {
            return Ok(None);
        }
        T::from_name(&name)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown {} {name:?}", T::KEY)))
    }
}

/// A step's state in the status: the journal's, or `pending` before it has one.
mod none_is_pending {
    use super::StepState;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    const PENDING: &str = "pending";

    pub fn serialize<S: Serializer>(state: &Option<StepState>, s: S) -> Result<S::Ok, S::Error> {
        match state {
            Some(st) => st.serialize(s),
            None => s.serialize_str(PENDING),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StepState>, D::Error> {
        let name = String::deserialize(d)?;
        if name == PENDING {
            return Ok(None);
        }
        StepState::from_name(&name)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown step state {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_reads_back_from_its_text() {
        let all = [
            (RunState::Pending, "pending"),
            (RunState::Running, "running"),
            (RunState::Rebooting, "rebooting"),
            (RunState::Stopped, "stopped"),
            (RunState::Done, "done"),
            (
                RunState::Failed(Failure::Step(StepId::KernelInstall)),
                "failed: kernel-install",
            ),
            (
                RunState::Failed(Failure::RolledBack {
                    to: "6.1.0-26-amd64".into(),
                }),
                "failed: rolled back to 6.1.0-26-amd64",
            ),
            (
                RunState::Failed(Failure::RollBackFailed {
                    to: "6.1.0-26-amd64".into(),
                }),
                "failed: could not roll back to 6.1.0-26-amd64",
            ),
            (
                RunState::Failed(Failure::Interrupted(StepId::KernelVerify)),
                "failed: kernel-verify interrupted by unexpected reboots",
            ),
            (RunState::Failed(Failure::Upgrade), "failed: upgrade"),
            (RunState::Failed(Failure::Plan), "failed: plan"),
            (RunState::Failed(Failure::Helper), "failed: helper"),
        ];
        for (state, text) in all {
            assert_eq!(state.to_string(), text);
            assert_eq!(text.parse::<RunState>(), Ok(state.clone()));
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("{text:?}"));
            assert_eq!(serde_json::from_str::<RunState>(&json).unwrap(), state);
        }
        for bad in ["failed", "failed: ", "failed: nonsense", "Done", ""] {
            assert_eq!(
                bad.parse::<RunState>(),
                Err(UnknownRunState(bad.to_string())),
                "{bad:?}"
            );
        }
    }

    /// `step` and `role` are typed in code and the same text on the wire:
    /// `""` for none, else the name; an unknown name is refused naming it.
    #[test]
    fn step_and_role_keep_their_text_and_refuse_unknown_names() {
        let none = Status::default();
        let json = serde_json::to_value(&none).unwrap();
        assert_eq!((&json["step"], &json["role"]), (&"".into(), &"".into()));
        let some = Status {
            step: Some(StepId::CubeInstall),
            role: Some(Role::Compute),
            ..Status::default()
        };
        let text = serde_json::to_string(&some).unwrap();
        assert!(text.contains(r#""step":"cube-install""#), "{text}");
        assert!(text.contains(r#""role":"compute""#), "{text}");
        assert_eq!(serde_json::from_str::<Status>(&text).unwrap(), some);
        for (key, bad, why) in [
            ("role", "worker", "unknown role \"worker\""),
            ("step", "kernel", "unknown step \"kernel\""),
        ] {
            let mut v = serde_json::to_value(&some).unwrap();
            v[key] = bad.into();
            let err = serde_json::from_value::<Status>(v).unwrap_err().to_string();
            assert!(err.starts_with(why), "{err}");
        }
    }
}
