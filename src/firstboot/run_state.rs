//! How a run stands, as a type: the `state` of the status file and the
//! `finished` of the journal. On disk both stay the plain strings operators
//! and webhook receivers already read (`running`, `done`,
//! `failed: kernel-install`, `failed: rolled back to 6.1.0-26-amd64`, ...);
//! in code nobody compares that text, they match on these enums.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::StepId;

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
        let step = |name: &str| StepId::ALL.into_iter().find(|id| id.name() == name);
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
}
