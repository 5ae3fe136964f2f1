//! The reconciler: a pure state machine that turns the desired service graph and the observed
//! units into the actions (start, stop, reset-failed) that converge them, with restart backoff,
//! quarantine and dependency gating.
//!
//! # Inputs and outputs
//!
//! The caller (strata-supervisor) feeds the desired graph ([`Reconciler::set_desired`]), operator
//! commands ([`Reconciler::start`], [`Reconciler::stop`], [`Reconciler::restart`],
//! [`Reconciler::release`]) and rejected starts ([`Reconciler::start_failed`]), and calls
//! [`Reconciler::plan`] with the observed units and the current time whenever something was
//! observed or a command arrived. Time is a [`Timestamp`] from an epoch the caller picks (a
//! monotonic clock); randomness comes from a seeded [`SplitMix64`]. A [`Plan`] holds the actions
//! to perform in order, the events to publish (`ServiceStateChanged`, `ServiceCrashed`), and when
//! to call `plan` again if nothing is observed before that (a backoff expiring, a timeout), so
//! the caller needs no polling loop.
//!
//! # Semantics
//!
//! * Units run with `Restart=no`; the reconciler restarts failures (non-zero exit, signal, OOM
//!   kill, failed or rejected start) after a delay drawn uniformly from
//!   `[0, min(max, initial * 2^(n-1))]` for the n-th consecutive failure ("full jitter"). A
//!   failure after `reset_after` of running starts over at n = 1.
//! * `quarantine_crashes` failures within `quarantine_window` quarantine the service: its failed
//!   unit is left in place (no reset-failed) so `systemctl status` shows why, and nothing
//!   restarts it until [`Reconciler::release`], which also clears the failure history and the
//!   backoff attempt. `quarantine_crashes = 0` disables quarantine. A reload does not release.
//! * A clean exit (status 0), or a unit that disappears without failing (stopped outside
//!   Strata), is not restarted: the service is `exited` until an operator starts it. Like
//!   systemd's `Restart=on-failure`, restarting is for failures.
//! * A service starts only when every service in its `after` list is `running`; until then it
//!   is `waiting`, with a reason such as "waiting for fs (backing-off)". A dependency that stops
//!   later does not stop its dependents (start ordering, not binding).
//! * A unit found running with the desired spec hash is adopted without any action; a
//!   different or missing hash is rolled (stop, then start once the old unit is gone). A unit
//!   that carries a spec hash but belongs to no declared service is stopped and reset. A unit
//!   without a spec hash that belongs to no declared service was not made by Strata (the
//!   supervisor's own unit may be named `strata-*.service`) and is left alone.
//! * A start is issued only when no unit of that name is observed (a failed or exited unit is
//!   reset first, and the start waits until it is gone) and never while an earlier start of the
//!   service is unconfirmed, so a service never has two units and systemd never sees a
//!   duplicate name. A start not observed within [`Timeouts::start_confirm`] counts as a failed
//!   start. Stop and reset-failed are issued once, and again only if the observation has not
//!   moved after [`Timeouts::action_retry`]: repeated plans do not repeat actions.
//! * An operator stop lasts until an operator start. It is not durable across a supervisor
//!   restart; quarantine is: the supervisor persists the quarantined services (the
//!   `quarantined` transitions) and restores them with [`Reconciler::restore_quarantine`].

mod backoff;
mod state;
#[cfg(test)]
mod tests;
mod time;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use thiserror::Error;

pub use backoff::{RestartPolicy, SplitMix64};
pub use state::{ServiceStatus, StateKind};
pub use time::Timestamp;

use crate::observed::{ExitReason, UnitObservation, UnitPhase};
use crate::unit::UnitSpec;
use state::{AfterStop, Record, St};
use time::human;

const REASON_STOP_AGAIN: &str =
    "stopping a unit started outside Strata (the service is stopped by the operator)";
const REASON_GONE: &str = "the unit is gone without failing (exited cleanly or stopped outside \
     Strata); only failures are restarted";
const REASON_CLEAN_EXIT: &str = "exited cleanly (status 0); only failures are restarted";

/// The observed Strata units, by unit name. An observation in phase `Gone` counts as absent.
pub type Observed = BTreeMap<String, UnitObservation>;

/// The unit name of a service: `strata-<service>.service`.
pub fn unit_name(service: &str) -> String {
    format!("strata-{service}.service")
}

/// One service of the desired graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    /// The derived unit; `spec.service` is `name` and `spec.unit` is [`unit_name`]`(name)`.
    pub spec: UnitSpec,
    /// Services that must be running before this one starts.
    pub after: Vec<String>,
    pub restart: RestartPolicy,
}

/// The desired service graph, checked for consistency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    services: BTreeMap<String, DesiredService>,
    /// Dependencies before dependents (services in a cycle last, by name).
    order: Vec<String>,
    /// Unit name → service name.
    by_unit: BTreeMap<String, String>,
}

/// Why a desired graph was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DesiredError {
    #[error("service `{name}` is declared twice")]
    DuplicateService { name: String },
    #[error("service `{name}` has the unit spec of service `{spec_service}`")]
    SpecServiceMismatch { name: String, spec_service: String },
    #[error("service `{name}` has unit name `{unit}`, expected `{expected}`")]
    UnitNameMismatch {
        name: String,
        unit: String,
        expected: String,
    },
}

impl Desired {
    /// Checks that each spec belongs to its service and that no service is declared twice.
    /// Dependencies on undeclared services and cycles are not errors here (the service graph
    /// rejects them earlier); such services wait, and their status says for what.
    pub fn new(services: impl IntoIterator<Item = DesiredService>) -> Result<Self, DesiredError> {
        let mut map = BTreeMap::new();
        let mut by_unit = BTreeMap::new();
        for svc in services {
            if svc.spec.service != svc.name {
                return Err(DesiredError::SpecServiceMismatch {
                    name: svc.name,
                    spec_service: svc.spec.service,
                });
            }
            let expected = unit_name(&svc.name);
            if svc.spec.unit != expected {
                return Err(DesiredError::UnitNameMismatch {
                    name: svc.name,
                    unit: svc.spec.unit,
                    expected,
                });
            }
            if map.contains_key(&svc.name) {
                return Err(DesiredError::DuplicateService { name: svc.name });
            }
            by_unit.insert(expected, svc.name.clone());
            map.insert(svc.name.clone(), svc);
        }
        let order = start_order(&map);
        Ok(Self {
            services: map,
            order,
            by_unit,
        })
    }

    pub fn get(&self, name: &str) -> Option<&DesiredService> {
        self.services.get(name)
    }

    /// The services, by name.
    pub fn services(&self) -> impl Iterator<Item = &DesiredService> {
        self.services.values()
    }

    /// Service names, dependencies before dependents.
    pub fn start_order(&self) -> &[String] {
        &self.order
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    fn service_of_unit(&self, unit: &str) -> Option<&str> {
        self.by_unit.get(unit).map(String::as_str)
    }
}

/// Dependencies before dependents, layer by layer, by name within a layer; services in or
/// behind a cycle last, by name.
fn start_order(services: &BTreeMap<String, DesiredService>) -> Vec<String> {
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::with_capacity(services.len());
    loop {
        // One layer: everything whose declared dependencies are all in earlier layers.
        let layer: Vec<&str> = services
            .iter()
            .filter(|(name, svc)| {
                !placed.contains(name.as_str())
                    && svc
                        .after
                        .iter()
                        .all(|d| placed.contains(d.as_str()) || !services.contains_key(d))
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if layer.is_empty() {
            break;
        }
        order.extend(layer.iter().map(|n| (*n).to_owned()));
        placed.extend(layer);
    }
    order.extend(
        services
            .keys()
            .filter(|n| !placed.contains(n.as_str()))
            .cloned(),
    );
    order
}

/// How long the reconciler waits for effects it cannot be told about directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A start not observed within this long counts as a failed start (its events were lost,
    /// or the unit came and went between two observations).
    pub start_confirm: Duration,
    /// A stop or reset-failed whose effect has not been observed after this long is issued
    /// again.
    pub action_retry: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            start_confirm: Duration::from_secs(30),
            action_retry: Duration::from_secs(10),
        }
    }
}

/// Something the caller must do to systemd, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start the spec as a transient unit. A rejected start is reported back with
    /// [`Reconciler::start_failed`].
    Start(Box<UnitSpec>),
    /// Start the unit of the spec again: it is loaded, ended (failed or exited) and carries this
    /// very spec hash, so the service manager already holds these properties (starting the
    /// loaded unit instead of clearing it and creating a new one skips loading a unit). A
    /// driver that finds the unit gone meanwhile starts the spec as a new transient unit. A
    /// rejected restart is reported back with [`Reconciler::start_failed`].
    Restart(Box<UnitSpec>),
    /// Stop the unit (no error when it is gone).
    Stop { unit: String },
    /// Clear a failed or exited unit so its name is free again.
    ResetFailed { unit: String },
}

impl Action {
    /// The unit the action is about.
    pub fn unit(&self) -> &str {
        match self {
            Self::Start(spec) | Self::Restart(spec) => &spec.unit,
            Self::Stop { unit } | Self::ResetFailed { unit } => unit,
        }
    }
}

/// Something to publish (D-Bus signals, journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `ServiceStateChanged`. Also sent when a waiting service starts waiting for something
    /// else (`old == new == waiting`, new reason).
    Transition {
        service: String,
        old: StateKind,
        new: StateKind,
        reason: String,
    },
    /// `ServiceCrashed`: the service failed (including a failed or rejected start).
    Crashed { service: String, reason: ExitReason },
    /// The service is no longer declared (a reload removed it); its unit is being stopped.
    Removed { service: String },
}

/// The output of one [`Reconciler::plan`] call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
    /// Call `plan` again at this time if nothing is observed before.
    pub next_wakeup: Option<Timestamp>,
}

/// Why an operator command or input was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReconcileError {
    #[error("unknown service `{name}`")]
    UnknownService { name: String },
    #[error("service `{name}` is not quarantined (it is {state})")]
    NotQuarantined { name: String, state: StateKind },
    #[error("service `{name}` is quarantined ({reason}); release it first")]
    Quarantined { name: String, reason: String },
    #[error("no start of service `{name}` is in flight (it is {state})")]
    NoStartInFlight { name: String, state: StateKind },
}

/// A start in flight of a service a reload removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ghost {
    at: Timestamp,
    /// For a restart in place: the run whose end was restarted (still observed until systemd
    /// reports the new run).
    restarted_run: Option<u64>,
}

impl Ghost {
    /// Whether `obs` is still "not yet started" for this start: no unit, or the old end.
    fn pending(&self, obs: Option<&UnitObservation>) -> bool {
        match obs {
            None => true,
            Some(o) => {
                matches!(o.phase, UnitPhase::Failed(_) | UnitPhase::Exited)
                    && self.restarted_run.is_some_and(|r| o.run <= r)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OrphanAction {
    Stop,
    ResetFailed,
}

/// The reconciler: per-service state across calls. See the module documentation.
#[derive(Debug, Clone)]
pub struct Reconciler {
    desired: Desired,
    records: BTreeMap<String, Record>,
    /// Units of undeclared services: the last action issued for each and when.
    orphans: BTreeMap<String, (OrphanAction, Timestamp)>,
    /// Unconfirmed starts of services removed by a reload, by unit: their units may still
    /// appear (or, for a restart in place, leave their old end), and a service declared again
    /// must not start a second one nor count that old end again.
    ghosts: BTreeMap<String, Ghost>,
    /// Events produced by commands and inputs, published with the next plan.
    events: Vec<Event>,
    rng: SplitMix64,
    timeouts: Timeouts,
}

fn present<'a>(observed: &'a Observed, unit: &str) -> Option<&'a UnitObservation> {
    observed.get(unit).filter(|o| o.phase != UnitPhase::Gone)
}

fn is_live(phase: Option<&UnitPhase>) -> bool {
    matches!(phase, Some(UnitPhase::Starting | UnitPhase::Running))
}

impl Reconciler {
    /// A reconciler for `desired`; `seed` seeds the backoff jitter (the supervisor passes a
    /// random one, tests a fixed one).
    pub fn new(desired: Desired, seed: u64, now: Timestamp) -> Self {
        let mut r = Self {
            desired: Desired::default(),
            records: BTreeMap::new(),
            orphans: BTreeMap::new(),
            ghosts: BTreeMap::new(),
            events: Vec::new(),
            rng: SplitMix64::new(seed),
            timeouts: Timeouts::default(),
        };
        r.set_desired(desired, now);
        r
    }

    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    pub fn desired(&self) -> &Desired {
        &self.desired
    }

    /// Replaces the desired graph (a reload). Services that stay keep their state, history and
    /// quarantine; a changed spec is rolled by the next plan; removed services' units are
    /// stopped; new services start.
    pub fn set_desired(&mut self, desired: Desired, now: Timestamp) {
        let removed: Vec<String> = self
            .records
            .keys()
            .filter(|n| desired.get(n).is_none())
            .cloned()
            .collect();
        for name in removed {
            let Some(rec) = self.records.remove(&name) else {
                continue;
            };
            // Carry actions in flight over to the unit's new life as an orphan (or back).
            let unit = unit_name(&name);
            if let Some(at) = rec.st.unconfirmed_start() {
                let restarted_run = rec.restarted_run.filter(|_| rec.end_seen);
                self.ghosts
                    .insert(unit.clone(), Ghost { at, restarted_run });
            }
            match rec.st {
                St::Stopping {
                    issued_at: Some(at),
                    ..
                } => {
                    self.orphans.insert(unit, (OrphanAction::Stop, at));
                }
                St::Clearing { issued_at } => {
                    self.orphans
                        .insert(unit, (OrphanAction::ResetFailed, issued_at));
                }
                _ => {}
            }
            self.events.push(Event::Removed { service: name });
        }
        for svc in desired.services() {
            if self.records.contains_key(&svc.name) {
                continue;
            }
            let mut rec = Record::new(now);
            let unit = &svc.spec.unit;
            if let Some(ghost) = self.ghosts.remove(unit) {
                rec.set(
                    St::StartIssued { at: ghost.at },
                    "start requested before the reload",
                    now,
                );
                if ghost.restarted_run.is_some() {
                    // The old end is still what systemd shows: already counted.
                    rec.end_seen = true;
                    rec.restarted_run = ghost.restarted_run;
                }
            } else if let Some((action, at)) = self.orphans.remove(unit) {
                match action {
                    OrphanAction::Stop => rec.set(
                        St::Stopping {
                            issued_at: Some(at),
                            then: AfterStop::Start,
                            unconfirmed_start: None,
                        },
                        "waiting for the previous unit to stop",
                        now,
                    ),
                    OrphanAction::ResetFailed => rec.set(
                        St::Clearing { issued_at: at },
                        "resetting the previous unit before starting",
                        now,
                    ),
                }
            }
            self.records.insert(svc.name.clone(), rec);
        }
        self.desired = desired;
    }

    fn record_mut(&mut self, name: &str) -> Result<&mut Record, ReconcileError> {
        self.records
            .get_mut(name)
            .ok_or_else(|| ReconcileError::UnknownService {
                name: name.to_owned(),
            })
    }

    /// Operator start: a stopped or exited service starts (dependencies permitting); a
    /// backing-off one restarts without waiting out its delay. No effect on a service that is
    /// starting or running. A quarantined service must be released instead.
    pub fn start(&mut self, name: &str, now: Timestamp) -> Result<(), ReconcileError> {
        let rec = self.record_mut(name)?;
        match &mut rec.st {
            St::Quarantined { reason } => Err(ReconcileError::Quarantined {
                name: name.to_owned(),
                reason: reason.clone(),
            }),
            St::Stopped | St::Exited | St::BackingOff { .. } => {
                rec.set(St::Declared, "start requested by the operator", now);
                Ok(())
            }
            St::Stopping { then, .. } => {
                *then = AfterStop::Start;
                rec.reason = "restarting (requested by the operator)".to_owned();
                Ok(())
            }
            St::Declared
            | St::Waiting
            | St::Clearing { .. }
            | St::StartIssued { .. }
            | St::Activating
            | St::Running { .. } => Ok(()),
        }
    }

    /// Operator stop: the unit is stopped and the service stays stopped until started.
    pub fn stop(&mut self, name: &str, now: Timestamp) -> Result<(), ReconcileError> {
        let rec = self.record_mut(name)?;
        match rec.st.clone() {
            St::Quarantined { reason } => Err(ReconcileError::Quarantined {
                name: name.to_owned(),
                reason,
            }),
            St::Stopped => Ok(()),
            St::Stopping {
                issued_at,
                unconfirmed_start,
                ..
            } => {
                rec.set(
                    St::Stopping {
                        issued_at,
                        then: AfterStop::Stopped,
                        unconfirmed_start,
                    },
                    "stopping (requested by the operator)",
                    now,
                );
                Ok(())
            }
            St::StartIssued { at } => {
                rec.set(
                    St::Stopping {
                        issued_at: None,
                        then: AfterStop::Stopped,
                        unconfirmed_start: Some(at),
                    },
                    "stopping (requested by the operator)",
                    now,
                );
                Ok(())
            }
            St::Activating | St::Running { .. } => {
                rec.set(
                    St::Stopping {
                        issued_at: None,
                        then: AfterStop::Stopped,
                        unconfirmed_start: None,
                    },
                    "stopping (requested by the operator)",
                    now,
                );
                Ok(())
            }
            St::Declared
            | St::Waiting
            | St::Clearing { .. }
            | St::Exited
            | St::BackingOff { .. } => {
                rec.set(St::Stopped, "stopped by the operator", now);
                Ok(())
            }
        }
    }

    /// Operator restart: a running unit is stopped and started again without backoff (not
    /// counted as a failure); a service that is not running is started.
    pub fn restart(&mut self, name: &str, now: Timestamp) -> Result<(), ReconcileError> {
        let rec = self.record_mut(name)?;
        match &mut rec.st {
            St::Quarantined { reason } => Err(ReconcileError::Quarantined {
                name: name.to_owned(),
                reason: reason.clone(),
            }),
            // A fresh unit is on its way already.
            St::Clearing { .. } | St::StartIssued { .. } => Ok(()),
            St::Activating | St::Running { .. } => {
                rec.set(
                    St::Stopping {
                        issued_at: None,
                        then: AfterStop::Start,
                        unconfirmed_start: None,
                    },
                    "restarting (requested by the operator)",
                    now,
                );
                Ok(())
            }
            St::Stopping { then, .. } => {
                *then = AfterStop::Start;
                rec.reason = "restarting (requested by the operator)".to_owned();
                Ok(())
            }
            St::Declared | St::Waiting | St::Exited | St::BackingOff { .. } | St::Stopped => {
                rec.set(St::Declared, "restart requested by the operator", now);
                Ok(())
            }
        }
    }

    /// Releases a quarantined service: clears its failure history and backoff attempt; the
    /// next plan resets its failed unit and starts it.
    pub fn release(&mut self, name: &str, now: Timestamp) -> Result<(), ReconcileError> {
        let rec = self.record_mut(name)?;
        if !matches!(rec.st, St::Quarantined { .. }) {
            return Err(ReconcileError::NotQuarantined {
                name: name.to_owned(),
                state: rec.st.kind(),
            });
        }
        rec.failures.clear();
        rec.attempt = 0;
        rec.restart_due = false;
        // The failed unit left in place was counted already.
        rec.end_seen = true;
        rec.set(
            St::Declared,
            "released from quarantine by the operator",
            now,
        );
        Ok(())
    }

    /// Marks a service quarantined, e.g. from the supervisor's durable record after its own
    /// restart (before the first plan, so the failed unit is not reset).
    pub fn restore_quarantine(
        &mut self,
        name: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), ReconcileError> {
        let rec = self.record_mut(name)?;
        rec.set(
            St::Quarantined {
                reason: reason.to_owned(),
            },
            reason,
            now,
        );
        Ok(())
    }

    /// Reports that systemd rejected the last Start of `name` (the driver's start failed): it
    /// counts as a failure, with backoff and quarantine.
    pub fn start_failed(
        &mut self,
        name: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), ReconcileError> {
        let Some(rec) = self.records.get_mut(name) else {
            // A reload may have removed the service after its start was issued.
            if self.ghosts.remove(&unit_name(name)).is_some() {
                return Ok(());
            }
            return Err(ReconcileError::UnknownService {
                name: name.to_owned(),
            });
        };
        match &mut rec.st {
            St::StartIssued { .. } => {
                let policy = self
                    .desired
                    .get(name)
                    .map(|s| s.restart.clone())
                    .unwrap_or_default();
                record_failure(
                    rec,
                    name,
                    &policy,
                    &mut self.rng,
                    &mut self.events,
                    ExitReason::StartFailed(reason.to_owned()),
                    now,
                );
                Ok(())
            }
            St::Stopping {
                unconfirmed_start: unconfirmed @ Some(_),
                ..
            } => {
                // Stopped before it started: nothing will appear, nothing to count.
                *unconfirmed = None;
                Ok(())
            }
            st => Err(ReconcileError::NoStartInFlight {
                name: name.to_owned(),
                state: st.kind(),
            }),
        }
    }

    /// Every declared service, by name.
    pub fn status(&self) -> Vec<ServiceStatus> {
        self.records
            .iter()
            .map(|(name, rec)| rec.status(name, &unit_name(name)))
            .collect()
    }

    pub fn service_status(&self, name: &str) -> Result<ServiceStatus, ReconcileError> {
        self.records
            .get(name)
            .map(|rec| rec.status(name, &unit_name(name)))
            .ok_or_else(|| ReconcileError::UnknownService {
                name: name.to_owned(),
            })
    }

    /// Decides what to do now. See the module documentation.
    pub fn plan(&mut self, observed: &Observed, now: Timestamp) -> Plan {
        let mut actions = Vec::new();
        self.ghosts.retain(|unit, ghost| {
            ghost.pending(present(observed, unit))
                && now < ghost.at.saturating_add(self.timeouts.start_confirm)
        });
        self.reap_orphans(observed, now, &mut actions);
        let order = self.desired.order.clone();
        // Take in every observation first, so that starts below see the current state of
        // their dependencies; then act in dependency order.
        for name in &order {
            self.observe(name, observed, now);
        }
        for name in &order {
            self.act(name, observed, now, &mut actions);
        }
        for name in &order {
            self.announce(name);
        }
        Plan {
            actions,
            events: std::mem::take(&mut self.events),
            next_wakeup: self.next_wakeup(now),
        }
    }

    /// Stops and resets units that carry a spec hash but belong to no declared service.
    fn reap_orphans(&mut self, observed: &Observed, now: Timestamp, actions: &mut Vec<Action>) {
        let desired = &self.desired;
        self.orphans.retain(|unit, _| {
            present(observed, unit).is_some() && desired.service_of_unit(unit).is_none()
        });
        for (unit, obs) in observed {
            if obs.spec_hash.is_none() || desired.service_of_unit(unit).is_some() {
                continue;
            }
            // A restart in place still in flight: its old end is no orphan to reset yet (the
            // new run, once seen, is stopped like any orphan).
            if self.ghosts.contains_key(unit) {
                continue;
            }
            let wanted = match obs.phase {
                UnitPhase::Starting | UnitPhase::Running => OrphanAction::Stop,
                UnitPhase::Failed(_) | UnitPhase::Exited => OrphanAction::ResetFailed,
                UnitPhase::Stopping | UnitPhase::Gone => continue,
            };
            let due = match self.orphans.get(unit) {
                Some(&(last, at)) if last == wanted => {
                    now >= at.saturating_add(self.timeouts.action_retry)
                }
                _ => true,
            };
            if due {
                actions.push(match wanted {
                    OrphanAction::Stop => Action::Stop { unit: unit.clone() },
                    OrphanAction::ResetFailed => Action::ResetFailed { unit: unit.clone() },
                });
                self.orphans.insert(unit.clone(), (wanted, now));
            }
        }
    }

    /// Updates the state of `name` from what is observed of its unit.
    fn observe(&mut self, name: &str, observed: &Observed, now: Timestamp) {
        let (Some(svc), Some(rec)) = (self.desired.get(name), self.records.get_mut(name)) else {
            return;
        };
        let obs = present(observed, &svc.spec.unit);
        let phase = obs.map(|o| &o.phase);
        let ours = obs.is_some_and(|o| o.spec_hash.as_deref() == Some(svc.spec.spec_hash.as_str()));
        rec.main_pid = match (obs, phase) {
            (Some(o), Some(UnitPhase::Starting | UnitPhase::Running | UnitPhase::Stopping)) => {
                o.main_pid
            }
            _ => 0,
        };
        if matches!(phase, None | Some(UnitPhase::Starting | UnitPhase::Running)) {
            // No unit, or a live one: the next failed or exited unit is a new end.
            rec.end_seen = false;
        }
        let start_confirm = self.timeouts.start_confirm;
        match rec.st.clone() {
            St::Quarantined { .. } => {}
            St::Stopped => {
                if is_live(phase) {
                    rec.set(
                        St::Stopping {
                            issued_at: None,
                            then: AfterStop::Stopped,
                            unconfirmed_start: None,
                        },
                        REASON_STOP_AGAIN,
                        now,
                    );
                }
            }
            St::Stopping {
                issued_at,
                then,
                unconfirmed_start,
            } => {
                let unconfirmed_start = unconfirmed_start
                    .filter(|at| obs.is_none() && now < at.saturating_add(start_confirm));
                let ended = matches!(phase, None | Some(UnitPhase::Failed(_) | UnitPhase::Exited));
                if ended && unconfirmed_start.is_none() {
                    if obs.is_some() {
                        // We stopped it; its end is no failure.
                        rec.end_seen = true;
                    }
                    match then {
                        AfterStop::Stopped => rec.set(St::Stopped, "stopped by the operator", now),
                        AfterStop::Start => {
                            rec.set(St::Declared, "the previous unit is gone, starting", now);
                        }
                    }
                } else {
                    rec.st = St::Stopping {
                        issued_at,
                        then,
                        unconfirmed_start,
                    };
                }
            }
            st => {
                let policy = &svc.restart;
                match phase {
                    None => match st {
                        St::Clearing { .. } => {
                            rec.set(St::Declared, "the previous unit is cleared, starting", now);
                        }
                        St::StartIssued { at } if now >= at.saturating_add(start_confirm) => {
                            record_failure(
                                rec,
                                name,
                                policy,
                                &mut self.rng,
                                &mut self.events,
                                ExitReason::StartFailed(format!(
                                    "the unit did not appear within {}",
                                    human(start_confirm)
                                )),
                                now,
                            );
                        }
                        St::Activating | St::Running { .. } => {
                            rec.set(St::Exited, REASON_GONE, now);
                        }
                        _ => {}
                    },
                    Some(UnitPhase::Starting | UnitPhase::Running) if !ours => {
                        let why = if obs.is_some_and(|o| o.spec_hash.is_none()) {
                            "the unit carries no spec hash: replacing it"
                        } else {
                            "the spec changed: replacing the unit"
                        };
                        rec.set(
                            St::Stopping {
                                issued_at: None,
                                then: AfterStop::Start,
                                unconfirmed_start: None,
                            },
                            why,
                            now,
                        );
                    }
                    Some(UnitPhase::Starting) => {
                        if st != St::Activating {
                            rec.set(St::Activating, "the unit is activating", now);
                        }
                    }
                    Some(UnitPhase::Running) => match st {
                        St::Running { since } => {
                            if now.saturating_duration_since(since) >= policy.reset_after {
                                rec.attempt = 0;
                            }
                        }
                        St::StartIssued { .. } | St::Activating => {
                            rec.set(St::Running { since: now }, "running", now);
                        }
                        _ => rec.set(
                            St::Running { since: now },
                            "running (adopted the unit: same spec)",
                            now,
                        ),
                    },
                    Some(UnitPhase::Stopping) => {}
                    Some(phase @ (UnitPhase::Failed(_) | UnitPhase::Exited))
                        if matches!(st, St::StartIssued { .. })
                            && rec.end_seen
                            && obs.is_some_and(|o| o.run != 0)
                            && rec
                                .restarted_run
                                .is_some_and(|r| obs.is_some_and(|o| o.run > r)) =>
                    {
                        // A run newer than the one restarted already ended (systemd reported
                        // failed → failed, its activation too short to be seen): a new end.
                        // Runs are start stamps, so a late report of an older run is not one.
                        rec.end_seen = true;
                        match phase {
                            UnitPhase::Failed(reason) => record_failure(
                                rec,
                                name,
                                policy,
                                &mut self.rng,
                                &mut self.events,
                                reason.clone(),
                                now,
                            ),
                            _ => rec.set(St::Exited, REASON_CLEAN_EXIT, now),
                        }
                    }
                    Some(UnitPhase::Failed(_) | UnitPhase::Exited)
                        if matches!(st, St::StartIssued { at } if rec.end_seen
                            && now >= at.saturating_add(start_confirm)) =>
                    {
                        // A restart in place whose unit never left its ended state (no
                        // activation seen): count it like a start that did not come up.
                        record_failure(
                            rec,
                            name,
                            policy,
                            &mut self.rng,
                            &mut self.events,
                            ExitReason::StartFailed(format!(
                                "the unit did not start again within {}",
                                human(start_confirm)
                            )),
                            now,
                        );
                    }
                    Some(UnitPhase::Failed(reason)) => {
                        let expected_alive = st.expects_unit();
                        let fresh_ours = ours && matches!(st, St::Declared | St::Waiting);
                        if !rec.end_seen && (expected_alive || fresh_ours) {
                            record_failure(
                                rec,
                                name,
                                policy,
                                &mut self.rng,
                                &mut self.events,
                                reason.clone(),
                                now,
                            );
                        }
                        rec.end_seen = true;
                    }
                    Some(UnitPhase::Exited) => {
                        // An end already accounted for (e.g. the unit a restart in place is
                        // about to start again) is no news.
                        if st.expects_unit() && !rec.end_seen {
                            rec.set(St::Exited, REASON_CLEAN_EXIT, now);
                        }
                        rec.end_seen = true;
                    }
                    Some(UnitPhase::Gone) => {}
                }
            }
        }
    }

    /// Issues what the state of `name` calls for.
    fn act(&mut self, name: &str, observed: &Observed, now: Timestamp, actions: &mut Vec<Action>) {
        let Some(svc) = self.desired.get(name) else {
            return;
        };
        let unit = svc.spec.unit.clone();
        let obs = present(observed, &unit);
        let phase = obs.map(|o| &o.phase);
        let retry = self.timeouts.action_retry;
        let Some(rec) = self.records.get_mut(name) else {
            return;
        };
        match rec.st.clone() {
            St::BackingOff { until } if now >= until => {
                rec.set(St::Declared, "the backoff delay is over, restarting", now);
                self.try_start(name, obs, now, actions);
            }
            St::Declared | St::Waiting => self.try_start(name, obs, now, actions),
            St::Clearing { issued_at } => {
                let stuck = matches!(phase, Some(UnitPhase::Failed(_) | UnitPhase::Exited));
                if stuck && now >= issued_at.saturating_add(retry) {
                    actions.push(Action::ResetFailed { unit });
                    rec.st = St::Clearing { issued_at: now };
                }
            }
            St::Stopping {
                issued_at,
                then,
                unconfirmed_start,
            } => {
                let wants_stop = is_live(phase) || (obs.is_none() && unconfirmed_start.is_some());
                let due = issued_at.is_none_or(|at| now >= at.saturating_add(retry));
                if wants_stop && due {
                    actions.push(Action::Stop { unit });
                    rec.st = St::Stopping {
                        issued_at: Some(now),
                        then,
                        unconfirmed_start,
                    };
                }
            }
            St::BackingOff { .. }
            | St::StartIssued { .. }
            | St::Activating
            | St::Running { .. }
            | St::Exited
            | St::Quarantined { .. }
            | St::Stopped => {}
        }
    }

    /// Starts `name` if its dependencies run. A failed or exited unit of the same spec is
    /// started again in place; one of another spec is reset first to free the name.
    fn try_start(
        &mut self,
        name: &str,
        obs: Option<&UnitObservation>,
        now: Timestamp,
        actions: &mut Vec<Action>,
    ) {
        let blocker = self.blocking_dependency(name);
        let (Some(svc), Some(rec)) = (self.desired.get(name), self.records.get_mut(name)) else {
            return;
        };
        if let Some((dep, why)) = blocker {
            rec.set(St::Waiting, format!("waiting for {dep} ({why})"), now);
            return;
        }
        let ours = obs.is_some_and(|o| o.spec_hash.as_deref() == Some(svc.spec.spec_hash.as_str()));
        match obs.map(|o| &o.phase) {
            None => {
                actions.push(Action::Start(Box::new(svc.spec.clone())));
                rec.count_due_restart();
                rec.restarted_run = None;
                rec.set(St::StartIssued { at: now }, "start requested", now);
            }
            Some(UnitPhase::Failed(_) | UnitPhase::Exited) if ours => {
                actions.push(Action::Restart(Box::new(svc.spec.clone())));
                rec.count_due_restart();
                // The ended unit stays visible until systemd starts it: that end is known.
                rec.end_seen = true;
                rec.restarted_run = obs.map(|o| o.run);
                rec.set(
                    St::StartIssued { at: now },
                    "restart requested (same unit)",
                    now,
                );
            }
            Some(UnitPhase::Failed(_) | UnitPhase::Exited) => {
                actions.push(Action::ResetFailed {
                    unit: svc.spec.unit.clone(),
                });
                rec.end_seen = true;
                rec.set(
                    St::Clearing { issued_at: now },
                    "resetting the previous unit before starting",
                    now,
                );
            }
            Some(UnitPhase::Stopping) => rec.set(
                St::Stopping {
                    issued_at: None,
                    then: AfterStop::Start,
                    unconfirmed_start: None,
                },
                "waiting for the previous unit to stop",
                now,
            ),
            // Adopted or rolled by observe already.
            Some(UnitPhase::Starting | UnitPhase::Running | UnitPhase::Gone) => {}
        }
    }

    /// The first dependency of `name` that is not running, and its state.
    fn blocking_dependency(&self, name: &str) -> Option<(String, String)> {
        let svc = self.desired.get(name)?;
        svc.after
            .iter()
            .find_map(|dep| match self.records.get(dep) {
                None => Some((dep.clone(), "not declared".to_owned())),
                Some(r) if !matches!(r.st, St::Running { .. }) => {
                    Some((dep.clone(), r.st.kind().to_string()))
                }
                Some(_) => None,
            })
    }

    /// Emits a Transition when the visible state (or what a waiting service waits for) changed
    /// since the last one.
    fn announce(&mut self, name: &str) {
        let Some(rec) = self.records.get_mut(name) else {
            return;
        };
        let kind = rec.st.kind();
        let (old, old_reason) = &rec.reported;
        if kind != *old || (kind == StateKind::Waiting && rec.reason != *old_reason) {
            self.events.push(Event::Transition {
                service: name.to_owned(),
                old: *old,
                new: kind,
                reason: rec.reason.clone(),
            });
            rec.reported = (kind, rec.reason.clone());
        }
    }

    /// The earliest future deadline: a backoff expiring, a start or action timing out, or the
    /// backoff attempt resetting after a healthy run.
    fn next_wakeup(&self, now: Timestamp) -> Option<Timestamp> {
        let confirm = self.timeouts.start_confirm;
        let retry = self.timeouts.action_retry;
        let mut deadlines = Vec::new();
        for (name, rec) in &self.records {
            match &rec.st {
                St::BackingOff { until } => deadlines.push(*until),
                St::StartIssued { at } => deadlines.push(at.saturating_add(confirm)),
                St::Clearing { issued_at } => deadlines.push(issued_at.saturating_add(retry)),
                St::Stopping {
                    issued_at,
                    unconfirmed_start,
                    ..
                } => {
                    deadlines.extend(issued_at.map(|t| t.saturating_add(retry)));
                    deadlines.extend(unconfirmed_start.map(|t| t.saturating_add(confirm)));
                }
                St::Running { since } if rec.attempt > 0 => {
                    if let Some(svc) = self.desired.get(name) {
                        deadlines.push(since.saturating_add(svc.restart.reset_after));
                    }
                }
                _ => {}
            }
        }
        deadlines.extend(
            self.orphans
                .values()
                .map(|(_, at)| at.saturating_add(retry)),
        );
        deadlines.extend(self.ghosts.values().map(|g| g.at.saturating_add(confirm)));
        deadlines.into_iter().filter(|&t| t > now).min()
    }
}

/// Counts a failure of `service`: publishes it, then backs off or quarantines.
fn record_failure(
    rec: &mut Record,
    service: &str,
    policy: &RestartPolicy,
    rng: &mut SplitMix64,
    events: &mut Vec<Event>,
    exit: ExitReason,
    now: Timestamp,
) {
    let exit_text = exit.to_string();
    events.push(Event::Crashed {
        service: service.to_owned(),
        reason: exit.clone(),
    });
    rec.last_exit = Some(exit);
    let failed_reason = exit_text.clone();
    events.push(Event::Transition {
        service: service.to_owned(),
        old: rec.reported.0,
        new: StateKind::Failed,
        reason: failed_reason.clone(),
    });
    rec.reported = (StateKind::Failed, failed_reason);
    rec.end_seen = true;
    if let St::Running { since } = rec.st {
        if now.saturating_duration_since(since) >= policy.reset_after {
            rec.attempt = 0;
        }
    }
    rec.failures.push_back(now);
    while rec
        .failures
        .front()
        .is_some_and(|&t| now.saturating_duration_since(t) > policy.quarantine_window)
    {
        rec.failures.pop_front();
    }
    let count = rec.failures.len();
    if policy.quarantine_crashes > 0 && count >= policy.quarantine_crashes as usize {
        let reason = format!(
            "{count} failures within {}; last: {exit_text}",
            human(policy.quarantine_window)
        );
        rec.set(
            St::Quarantined {
                reason: reason.clone(),
            },
            reason,
            now,
        );
        return;
    }
    rec.attempt = rec.attempt.saturating_add(1);
    let delay = policy.backoff_delay(rec.attempt, rng);
    rec.restart_due = true;
    rec.set(
        St::BackingOff {
            until: now.saturating_add(delay),
        },
        format!(
            "{exit_text}; restarting in {} (attempt {})",
            human(delay),
            rec.attempt
        ),
        now,
    );
}
