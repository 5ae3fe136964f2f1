//! What the driver observes about units, in Strata's own terms (no systemd vocabulary).

use serde::{Deserialize, Serialize};

/// The phase of a unit as the reconciler needs to see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UnitPhase {
    /// A start job is queued or running, or the unit is activating.
    Starting,
    /// The main process runs (active).
    Running,
    /// The unit is deactivating.
    Stopping,
    /// The unit ended successfully (inactive, exit status 0) and is still loaded.
    Exited,
    /// The unit failed; `reason` says how.
    Failed(ExitReason),
    /// systemd no longer knows the unit (never started, collected, or removed).
    Gone,
}

/// Why a unit stopped running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    /// The main process exited with this non-zero status.
    ExitCode(i32),
    /// The main process was killed by this signal.
    Signal(i32),
    /// The kernel's OOM killer ended it (memory budget exceeded).
    OomKill,
    /// The start itself failed (exec error, sandbox setup, timeout); systemd's result string.
    StartFailed(String),
    /// Any other systemd result.
    Other(String),
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ExitCode(c) => write!(f, "exited with status {c}"),
            Self::Signal(s) => write!(f, "killed by signal {s}"),
            Self::OomKill => write!(f, "killed by the OOM killer (memory budget exceeded)"),
            Self::StartFailed(r) => write!(f, "start failed ({r})"),
            Self::Other(r) => write!(f, "failed ({r})"),
        }
    }
}

/// One observation of a Strata unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitObservation {
    /// Unit name (`strata-web.service`).
    pub unit: String,
    pub phase: UnitPhase,
    /// Main PID as systemd reports it (0 when none).
    pub main_pid: u32,
    /// The spec hash recorded on the unit when it was started, if any.
    pub spec_hash: Option<String>,
    /// Which run of the unit this is: a monotonic stamp of when its last main process
    /// started (0 before the first), as the driver reads it. Two ends of different runs differ
    /// in it even when everything else matches (a unit killed again right after a restart).
    #[serde(default)]
    pub run: u64,
}
