//! Per-service state: the public view (`StateKind`, `ServiceStatus`) and the reconciler's
//! internal record behind it.

use std::collections::VecDeque;
use std::fmt;

use serde::Serialize;

use super::time::Timestamp;
use crate::observed::ExitReason;

/// The state of a service as operators see it (`strata-ctl status`, `ServiceStateChanged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateKind {
    /// Known, not acted on yet.
    Declared,
    /// Ready to start but a dependency is not running; the reason names it.
    Waiting,
    /// A start is under way (clearing the previous unit, start requested, or activating).
    Starting,
    Running,
    /// Ended cleanly (or was stopped outside Strata); not restarted until an operator starts it.
    Exited,
    /// Just failed. Only ever seen in a transition: a failure moves on at once to
    /// `backing-off` or `quarantined`.
    Failed,
    /// Failed; restarts when the backoff delay has passed.
    BackingOff,
    /// Failed too often; its failed unit is left in place until an operator releases it.
    Quarantined,
    /// A stop is under way (operator stop, restart, or a roll to a changed spec).
    Stopping,
    /// Stopped by an operator; stays stopped until started.
    Stopped,
}

impl StateKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Declared => "declared",
            Self::Waiting => "waiting",
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Exited => "exited",
            Self::Failed => "failed",
            Self::BackingOff => "backing-off",
            Self::Quarantined => "quarantined",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A snapshot of one service for status displays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub unit: String,
    pub state: StateKind,
    /// Why the service is in this state, for humans ("waiting for fs (backing-off)").
    pub reason: String,
    /// When the service entered `state`.
    pub since: Timestamp,
    /// Automatic restarts after failures so far (operator restarts and rolls not counted).
    pub restarts: u32,
    /// Consecutive failures counted by the backoff (0 after a healthy run of `reset_after`).
    pub attempt: u32,
    /// Failures within the quarantine window.
    pub recent_failures: u32,
    /// Main PID of the unit while it has one.
    pub main_pid: Option<u32>,
    pub last_exit: Option<ExitReason>,
    /// When the pending restart is due (state `backing-off`).
    pub restart_at: Option<Timestamp>,
    pub quarantine_reason: Option<String>,
}

/// What a stop in progress leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AfterStop {
    /// The operator stopped the service.
    Stopped,
    /// A restart or a roll: start again once the old unit is gone.
    Start,
}

/// The reconciler's internal state of one service (finer than `StateKind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum St {
    Declared,
    Waiting,
    /// ResetFailed issued to free the unit name before a start.
    Clearing {
        issued_at: Timestamp,
    },
    /// Start issued; the unit has not been observed yet.
    StartIssued {
        at: Timestamp,
    },
    /// The unit is observed activating.
    Activating,
    Running {
        since: Timestamp,
    },
    Exited,
    BackingOff {
        until: Timestamp,
    },
    Quarantined {
        reason: String,
    },
    Stopping {
        /// When Stop was last issued (None: not yet, or the unit is stopping on its own).
        issued_at: Option<Timestamp>,
        then: AfterStop,
        /// A start issued before the stop whose unit has not been observed yet: until it is
        /// (or the start is confirmed failed or times out) absence does not mean stopped.
        unconfirmed_start: Option<Timestamp>,
    },
    Stopped,
}

impl St {
    pub(crate) fn kind(&self) -> StateKind {
        match self {
            Self::Declared => StateKind::Declared,
            Self::Waiting => StateKind::Waiting,
            Self::Clearing { .. } | Self::StartIssued { .. } | Self::Activating => {
                StateKind::Starting
            }
            Self::Running { .. } => StateKind::Running,
            Self::Exited => StateKind::Exited,
            Self::BackingOff { .. } => StateKind::BackingOff,
            Self::Quarantined { .. } => StateKind::Quarantined,
            Self::Stopping { .. } => StateKind::Stopping,
            Self::Stopped => StateKind::Stopped,
        }
    }

    /// A unit started by us should exist: its disappearance or failure is news.
    pub(crate) fn expects_unit(&self) -> bool {
        matches!(
            self,
            Self::StartIssued { .. } | Self::Activating | Self::Running { .. }
        )
    }

    /// When a start was issued whose unit has not been observed yet.
    pub(crate) fn unconfirmed_start(&self) -> Option<Timestamp> {
        match self {
            Self::StartIssued { at } => Some(*at),
            Self::Stopping {
                unconfirmed_start, ..
            } => *unconfirmed_start,
            _ => None,
        }
    }
}

/// Everything the reconciler remembers about one service between calls.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) st: St,
    pub(crate) reason: String,
    /// When the current `StateKind` was entered.
    pub(crate) since: Timestamp,
    /// The last state announced in a Transition event.
    pub(crate) reported: (StateKind, String),
    /// Consecutive failures for the backoff.
    pub(crate) attempt: u32,
    /// Failure times within the quarantine window, oldest first.
    pub(crate) failures: VecDeque<Timestamp>,
    pub(crate) restarts: u32,
    /// The next start is an automatic restart after a failure (counted in `restarts`).
    pub(crate) restart_due: bool,
    /// The run (observation `run`) of the ended unit a restart in place was issued for: an end
    /// observed with another run is the end of the restarted run, not the old one.
    pub(crate) restarted_run: Option<u64>,
    pub(crate) last_exit: Option<ExitReason>,
    pub(crate) main_pid: u32,
    /// The failed or exited unit currently observed has been accounted for (as a failure, a
    /// completed stop, or a unit to clear): it must not be counted as a new failure.
    pub(crate) end_seen: bool,
}

impl Record {
    pub(crate) fn new(now: Timestamp) -> Self {
        let reason = "declared, not started yet".to_owned();
        Self {
            st: St::Declared,
            reported: (StateKind::Declared, reason.clone()),
            reason,
            since: now,
            attempt: 0,
            failures: VecDeque::new(),
            restarts: 0,
            restart_due: false,
            restarted_run: None,
            last_exit: None,
            main_pid: 0,
            end_seen: false,
        }
    }

    /// A start is being issued: if it is the automatic restart after a failure, count it.
    pub(crate) fn count_due_restart(&mut self) {
        if self.restart_due {
            self.restarts = self.restarts.saturating_add(1);
            self.restart_due = false;
        }
    }

    /// Moves to `st`; `since` changes only when the visible state does.
    pub(crate) fn set(&mut self, st: St, reason: impl Into<String>, now: Timestamp) {
        if st.kind() != self.st.kind() {
            self.since = now;
        }
        self.st = st;
        self.reason = reason.into();
    }

    pub(crate) fn status(&self, name: &str, unit: &str) -> ServiceStatus {
        ServiceStatus {
            name: name.to_owned(),
            unit: unit.to_owned(),
            state: self.st.kind(),
            reason: self.reason.clone(),
            since: self.since,
            restarts: self.restarts,
            attempt: self.attempt,
            recent_failures: u32::try_from(self.failures.len()).unwrap_or(u32::MAX),
            main_pid: (self.main_pid != 0).then_some(self.main_pid),
            last_exit: self.last_exit.clone(),
            restart_at: match self.st {
                St::BackingOff { until } => Some(until),
                _ => None,
            },
            quarantine_reason: match &self.st {
                St::Quarantined { reason } => Some(reason.clone()),
                _ => None,
            },
        }
    }
}
