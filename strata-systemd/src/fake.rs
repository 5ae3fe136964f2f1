//! A recording fake of [`UnitDriver`]: a tiny in-memory systemd for tests of the supervisor loop.
//!
//! It applies actions the way systemd would (a start makes a running unit, a stop removes it,
//! reset-failed frees a failed name), records every call, and lets the test inject what systemd
//! would report (a crash, an OOM kill, a start refusal).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use strata_core::observed::{ExitReason, UnitObservation, UnitPhase};
use strata_core::unit::UnitSpec;
use tokio::sync::mpsc;

use crate::driver::{DriverEvent, UnitDriver};

/// One call the supervisor made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Start { unit: String, spec_hash: String },
    Restart { unit: String, spec_hash: String },
    Stop(String),
    Kill(String, i32),
    ResetFailed(String),
}

/// Why the fake refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FakeDriverError {
    #[error("unit {unit} already exists (state {phase:?})")]
    AlreadyLoaded { unit: String, phase: UnitPhase },
    #[error("start of {unit} refused: {reason}")]
    Refused { unit: String, reason: String },
    #[error("unit {unit} holds spec {held:?}, not {wanted}: refusing to start it in place")]
    OtherSpec {
        unit: String,
        held: Option<String>,
        wanted: String,
    },
}

#[derive(Debug, Default)]
struct Inner {
    units: BTreeMap<String, UnitObservation>,
    calls: Vec<Call>,
    refuse_next_start: Option<String>,
    next_pid: u32,
    events: Option<mpsc::Sender<DriverEvent>>,
}

/// The fake driver; clones share one fake systemd.
#[derive(Debug, Clone, Default)]
pub struct FakeDriver {
    inner: Arc<Mutex<Inner>>,
}

impl FakeDriver {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The units the fake systemd has now.
    pub fn units(&self) -> BTreeMap<String, UnitObservation> {
        self.lock().units.clone()
    }

    /// Puts a unit in place before the supervisor starts (e.g. one left by an earlier run).
    pub fn preload(&self, obs: UnitObservation) {
        self.lock().units.insert(obs.unit.clone(), obs);
    }

    /// The next start is refused with `reason`.
    pub fn refuse_next_start(&self, reason: &str) {
        self.lock().refuse_next_start = Some(reason.to_owned());
    }

    /// The unit's main process ends with `reason` (the unit becomes failed).
    pub fn fail(&self, unit: &str, reason: ExitReason) {
        self.set_phase(unit, UnitPhase::Failed(reason));
    }

    /// The unit's main process exits cleanly.
    pub fn exit(&self, unit: &str) {
        self.set_phase(unit, UnitPhase::Exited);
    }

    fn set_phase(&self, unit: &str, phase: UnitPhase) {
        let mut g = self.lock();
        let Some(obs) = g.units.get_mut(unit) else {
            return;
        };
        obs.phase = phase;
        obs.main_pid = 0;
        let obs = obs.clone();
        send(&g, DriverEvent::Changed(obs));
    }
}

/// A new main process of `spec`'s unit, running at once (the fake has no activation phase).
fn run(g: &mut Inner, spec: &UnitSpec) {
    g.next_pid += 1;
    let obs = UnitObservation {
        unit: spec.unit.clone(),
        phase: UnitPhase::Running,
        main_pid: 1000 + g.next_pid,
        spec_hash: Some(spec.spec_hash.clone()),
        // Each run gets its own start stamp, as ExecMainStartTimestampMonotonic does.
        run: u64::from(g.next_pid),
    };
    g.units.insert(spec.unit.clone(), obs.clone());
    send(g, DriverEvent::Changed(obs));
}

fn send(g: &Inner, ev: DriverEvent) {
    if let Some(tx) = &g.events {
        // The fake's channel is unbounded in practice (large capacity); a full one is a test bug.
        let _ = tx.try_send(ev);
    }
}

impl UnitDriver for FakeDriver {
    type Error = FakeDriverError;

    async fn start(&self, spec: &UnitSpec) -> Result<(), FakeDriverError> {
        let mut g = self.lock();
        g.calls.push(Call::Start {
            unit: spec.unit.clone(),
            spec_hash: spec.spec_hash.clone(),
        });
        if let Some(reason) = g.refuse_next_start.take() {
            return Err(FakeDriverError::Refused {
                unit: spec.unit.clone(),
                reason,
            });
        }
        if let Some(existing) = g.units.get(&spec.unit) {
            return Err(FakeDriverError::AlreadyLoaded {
                unit: spec.unit.clone(),
                phase: existing.phase.clone(),
            });
        }
        run(&mut g, spec);
        Ok(())
    }

    async fn restart(&self, spec: &UnitSpec) -> Result<(), FakeDriverError> {
        let mut g = self.lock();
        g.calls.push(Call::Restart {
            unit: spec.unit.clone(),
            spec_hash: spec.spec_hash.clone(),
        });
        if let Some(reason) = g.refuse_next_start.take() {
            return Err(FakeDriverError::Refused {
                unit: spec.unit.clone(),
                reason,
            });
        }
        let Some(existing) = g.units.get(&spec.unit).cloned() else {
            // Collected meanwhile: like the systemd driver, start the spec anew.
            run(&mut g, spec);
            return Ok(());
        };
        // The fake is strict where systemd would silently run the old properties.
        if existing.spec_hash.as_deref() != Some(spec.spec_hash.as_str()) {
            return Err(FakeDriverError::OtherSpec {
                unit: spec.unit.clone(),
                held: existing.spec_hash,
                wanted: spec.spec_hash.clone(),
            });
        }
        if matches!(existing.phase, UnitPhase::Starting | UnitPhase::Running) {
            return Ok(()); // systemd: a start job on an active unit changes nothing
        }
        run(&mut g, spec);
        Ok(())
    }

    async fn stop(&self, unit: &str) -> Result<(), FakeDriverError> {
        let mut g = self.lock();
        g.calls.push(Call::Stop(unit.to_owned()));
        if g.units.remove(unit).is_some() {
            send(
                &g,
                DriverEvent::Removed {
                    unit: unit.to_owned(),
                },
            );
        }
        Ok(())
    }

    async fn kill(&self, unit: &str, signal: i32) -> Result<(), FakeDriverError> {
        self.lock().calls.push(Call::Kill(unit.to_owned(), signal));
        self.fail(unit, ExitReason::Signal(signal));
        Ok(())
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), FakeDriverError> {
        let mut g = self.lock();
        g.calls.push(Call::ResetFailed(unit.to_owned()));
        let done = matches!(
            g.units.get(unit).map(|o| &o.phase),
            Some(UnitPhase::Failed(_) | UnitPhase::Exited)
        );
        if done {
            g.units.remove(unit);
            send(
                &g,
                DriverEvent::Removed {
                    unit: unit.to_owned(),
                },
            );
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<UnitObservation>, FakeDriverError> {
        Ok(self.lock().units.values().cloned().collect())
    }

    async fn events(&self) -> Result<mpsc::Receiver<DriverEvent>, FakeDriverError> {
        let (tx, rx) = mpsc::channel(4096);
        let mut g = self.lock();
        let _ = tx.try_send(DriverEvent::Resync(g.units.values().cloned().collect()));
        g.events = Some(tx);
        Ok(rx)
    }
}
