//! Property tests of the reconciler against a simulated systemd: from any observed state and
//! any sequence of faults, operator commands, reloads and supervisor restarts, the plan
//! converges once faults stop; never two starts in flight, never a start while a unit of the
//! name exists, no action storms, sticky quarantine, bounded backoff.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use strata_core::observed::{ExitReason, UnitObservation, UnitPhase};
use strata_core::reconcile::{
    Action, Desired, DesiredService, Observed, Plan, ReconcileError, Reconciler, RestartPolicy,
    SplitMix64, StateKind, Timeouts, Timestamp, unit_name,
};
use strata_core::unit::{LandlockRuleset, UnitSpec};

/// Declarable services; `x` and `y` only ever appear as leftover units.
const SERVICES: [&str; 4] = ["a", "b", "c", "d"];
const ALL_UNITS: [&str; 6] = ["a", "b", "c", "d", "x", "y"];
/// Events reach the supervisor at most this late (well under the start-confirm timeout, as
/// on a live bus; the driver resyncs after losing events).
const MAX_LAG: Duration = Duration::from_secs(5);
const CONVERGENCE_STEPS: usize = 400;

#[derive(Debug, Clone)]
struct PolicyGen {
    initial_ms: u64,
    max_ms: u64,
    reset_ms: u64,
    crashes: u32,
    window_ms: u64,
}

#[derive(Debug, Clone)]
struct SvcGen {
    present: bool,
    variant: u8,
    /// Bit j: depends on SERVICES[j] (only j < own index, so graphs are acyclic).
    deps: u8,
    policy: PolicyGen,
}

fn policy_gen() -> impl Strategy<Value = PolicyGen> {
    // Boundaries matter most: zero delays, a max below initial, tiny windows.
    let ms = |big: u64| prop_oneof![Just(0u64), 1u64..5, 0..big];
    (ms(3000), ms(20_000), ms(60_000), 0u32..5, ms(120_000)).prop_map(
        |(initial_ms, max_ms, reset_ms, crashes, window_ms)| PolicyGen {
            initial_ms,
            max_ms,
            reset_ms,
            crashes,
            window_ms,
        },
    )
}

fn desired_gen() -> impl Strategy<Value = Vec<SvcGen>> {
    prop::collection::vec(
        (any::<bool>(), 0u8..2, any::<u8>(), policy_gen()).prop_map(
            |(present, variant, deps, policy)| SvcGen {
                present: present || variant == 0,
                variant,
                deps,
                policy,
            },
        ),
        SERVICES.len(),
    )
}

fn hash(name: &str, variant: u8) -> String {
    format!("{name}-v{variant}")
}

fn build_desired(graph: &[SvcGen]) -> Desired {
    let services = graph
        .iter()
        .enumerate()
        .filter(|(_, g)| g.present)
        .map(|(i, g)| {
            let name = SERVICES[i];
            DesiredService {
                name: name.to_owned(),
                spec: UnitSpec {
                    service: name.to_owned(),
                    unit: unit_name(name),
                    description: format!("Strata service {name}"),
                    slice: "strata.slice".to_owned(),
                    exec: vec!["/usr/bin/sleep".to_owned(), "infinity".to_owned()],
                    properties: Vec::new(),
                    landlock: LandlockRuleset::default(),
                    spec_hash: hash(name, g.variant),
                },
                after: (0..i)
                    .filter(|j| g.deps & (1 << j) != 0)
                    .map(|j| SERVICES[j].to_owned())
                    .collect(),
                restart: RestartPolicy {
                    initial: Duration::from_millis(g.policy.initial_ms),
                    max: Duration::from_millis(g.policy.max_ms),
                    reset_after: Duration::from_millis(g.policy.reset_ms),
                    quarantine_crashes: g.policy.crashes,
                    quarantine_window: Duration::from_millis(g.policy.window_ms),
                },
            }
        });
    Desired::new(services.collect::<Vec<_>>()).expect("generated graphs are consistent")
}

/// A leftover unit: (phase 0..5, hash 0 = none, 1 = v0, 2 = v1).
fn initial_gen() -> impl Strategy<Value = Vec<Option<(u8, u8)>>> {
    prop::collection::vec(prop::option::of((0u8..5, 0u8..3)), ALL_UNITS.len())
}

#[derive(Debug, Clone)]
enum Op {
    Tick(u32),
    Deliver(u8),
    Plan,
    /// Plan twice at the same time with the same observations: the second plan does nothing.
    Replan,
    /// systemd moves unit #i along: activating → running, deactivating → gone or failed,
    /// exited → collected.
    Progress(u8, bool),
    Crash(u8, u8),
    CleanExit(u8),
    RejectNextStart,
    Command(u8, u8),
    Reload(Vec<SvcGen>),
    /// Two quick reloads: service #i removed, then declared again (planning in between or not).
    Flap(u8, bool),
    SupervisorRestart(u64),
}

fn op_gen() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u32..20_000).prop_map(Op::Tick),
        3 => (0u8..6).prop_map(Op::Deliver),
        4 => Just(Op::Plan),
        2 => Just(Op::Replan),
        4 => (any::<u8>(), any::<bool>()).prop_map(|(i, f)| Op::Progress(i, f)),
        2 => (any::<u8>(), 0u8..4).prop_map(|(i, k)| Op::Crash(i, k)),
        1 => any::<u8>().prop_map(Op::CleanExit),
        1 => Just(Op::RejectNextStart),
        2 => (0u8..4, 0u8..5).prop_map(|(c, s)| Op::Command(c, s)),
        1 => desired_gen().prop_map(Op::Reload),
        1 => (0u8..4, any::<bool>()).prop_map(|(i, p)| Op::Flap(i, p)),
        1 => any::<u64>().prop_map(Op::SupervisorRestart),
    ]
}

#[derive(Debug)]
struct FakeUnit {
    phase: UnitPhase,
    hash: Option<String>,
    pid: u32,
}

/// systemd as the supervisor sees it: the true units, and a queue of change events that
/// reach the supervisor's observed map late (but in order).
struct Sim {
    truth: BTreeMap<String, FakeUnit>,
    queue: VecDeque<(Timestamp, String, Option<UnitObservation>)>,
    observed: Observed,
    now: Timestamp,
    rec: Reconciler,
    desired: Desired,
    /// Starts issued and not yet observed (unit → when).
    in_flight: BTreeMap<String, Timestamp>,
    /// Services seen quarantined and not released since.
    quarantined: BTreeSet<String>,
    reject_next_start: bool,
    /// Services whose unit the fake let exit cleanly: the only legitimate way to `exited`.
    clean_exits: BTreeSet<String>,
    /// The last backoff seen per service: (entered, restart due).
    backoffs: BTreeMap<String, (Timestamp, Timestamp)>,
    next_pid: u32,
    timeouts: Timeouts,
}

fn obs(unit: &str, u: &FakeUnit) -> UnitObservation {
    UnitObservation {
        unit: unit.to_owned(),
        phase: u.phase.clone(),
        main_pid: if matches!(
            u.phase,
            UnitPhase::Starting | UnitPhase::Running | UnitPhase::Stopping
        ) {
            u.pid
        } else {
            0
        },
        spec_hash: u.hash.clone(),
        // Each run of a fake unit has its own pid: it stands for the run's start stamp.
        run: u64::from(u.pid),
    }
}

fn service_of(unit: &str) -> &str {
    unit.strip_prefix("strata-")
        .and_then(|u| u.strip_suffix(".service"))
        .unwrap_or(unit)
}

fn is_live(phase: &UnitPhase) -> bool {
    matches!(
        phase,
        UnitPhase::Starting | UnitPhase::Running | UnitPhase::Stopping
    )
}

impl Sim {
    fn new(desired: Desired, initial: &[Option<(u8, u8)>], seed: u64) -> Self {
        let mut truth = BTreeMap::new();
        for (i, slot) in initial.iter().enumerate() {
            let Some((phase, h)) = *slot else { continue };
            let name = ALL_UNITS[i];
            let phase = match phase {
                0 => UnitPhase::Starting,
                1 => UnitPhase::Running,
                2 => UnitPhase::Stopping,
                3 => UnitPhase::Failed(ExitReason::ExitCode(1)),
                _ => UnitPhase::Exited,
            };
            let hash = match h {
                0 => None,
                v => Some(hash(name, v - 1)),
            };
            truth.insert(
                unit_name(name),
                FakeUnit {
                    phase,
                    hash,
                    pid: 1000 + i as u32,
                },
            );
        }
        let now = Timestamp::from_secs(1000);
        let timeouts = Timeouts::default();
        let observed = truth.iter().map(|(u, f)| (u.clone(), obs(u, f))).collect();
        Self {
            truth,
            queue: VecDeque::new(),
            observed,
            now,
            rec: Reconciler::new(desired.clone(), seed, now).with_timeouts(timeouts),
            desired,
            in_flight: BTreeMap::new(),
            quarantined: BTreeSet::new(),
            reject_next_start: false,
            backoffs: BTreeMap::new(),
            clean_exits: BTreeSet::new(),
            next_pid: 5000,
            timeouts,
        }
    }

    fn changed(&mut self, unit: &str) {
        let o = self.truth.get(unit).map(|u| obs(unit, u));
        self.queue.push_back((self.now, unit.to_owned(), o));
    }

    fn deliver(&mut self, n: usize) {
        for _ in 0..n {
            let Some((_, unit, o)) = self.queue.pop_front() else {
                break;
            };
            match o {
                Some(o) => self.observed.insert(unit, o),
                None => self.observed.remove(&unit),
            };
        }
    }

    fn deliver_stale(&mut self) {
        while self
            .queue
            .front()
            .is_some_and(|(at, _, _)| at.saturating_add(MAX_LAG) <= self.now)
        {
            self.deliver(1);
        }
    }

    fn nth_unit(&self, i: u8) -> Option<String> {
        let n = self.truth.len();
        (n > 0)
            .then(|| self.truth.keys().nth(usize::from(i) % n).cloned())
            .flatten()
    }

    fn policy(&self, service: &str) -> RestartPolicy {
        self.desired
            .get(service)
            .map(|s| s.restart.clone())
            .unwrap_or_default()
    }

    /// One supervisor iteration: plan, check the invariants, perform the actions.
    fn plan(&mut self) -> Result<Plan, TestCaseError> {
        self.deliver_stale();
        let now = self.now;
        self.in_flight.retain(|unit, _| {
            !self
                .observed
                .get(unit)
                .is_some_and(|o| o.phase != UnitPhase::Gone)
        });
        let plan = self.rec.plan(&self.observed, now);
        for action in &plan.actions {
            match action {
                Action::Start(spec) | Action::Restart(spec) => {
                    let unit = spec.unit.clone();
                    let in_place = matches!(action, Action::Restart(_));
                    if let Some(at) = self.in_flight.get(&unit) {
                        prop_assert!(
                            now >= at.saturating_add(self.timeouts.start_confirm),
                            "(2) second start of {unit} while one from {at} is in flight"
                        );
                    }
                    if in_place {
                        // StartUnit runs whatever the loaded unit holds: it must be this very
                        // spec (a driver that finds the unit gone starts the spec anew). On a
                        // unit that is already live it is a no-op, as in systemd.
                        prop_assert!(
                            self.truth
                                .get(&unit)
                                .is_none_or(|u| u.hash.as_deref() == Some(spec.spec_hash.as_str())),
                            "(3) restart of {unit} in place while systemd holds another spec: {:?}",
                            self.truth.get(&unit)
                        );
                    } else {
                        prop_assert!(
                            !self.truth.contains_key(&unit),
                            "(3) start of {unit} while systemd has it: {:?}",
                            self.truth.get(&unit)
                        );
                    }
                    prop_assert!(
                        !self.quarantined.contains(&spec.service),
                        "(5) start of quarantined {}",
                        spec.service
                    );
                    // Dependency gating: every dependency is observed running its spec.
                    let deps = self.desired.get(&spec.service).map(|s| s.after.clone());
                    for dep in deps.unwrap_or_default() {
                        let dep_hash = self.desired.get(&dep).map(|d| d.spec.spec_hash.clone());
                        let seen = self.observed.get(&unit_name(&dep));
                        prop_assert!(
                            dep_hash.is_some()
                                && seen
                                    .is_some_and(|o| o.phase == UnitPhase::Running
                                        && o.spec_hash == dep_hash),
                            "start of {} while its dependency {dep} is {:?}",
                            spec.service,
                            seen
                        );
                    }
                    prop_assert_eq!(
                        Some(&spec.spec_hash),
                        self.desired.get(&spec.service).map(|s| &s.spec.spec_hash)
                    );
                    let live = self.truth.get(&unit).is_some_and(|u| {
                        matches!(u.phase, UnitPhase::Starting | UnitPhase::Running)
                    });
                    if std::mem::take(&mut self.reject_next_start) {
                        self.rec
                            .start_failed(&spec.service, "rejected by the fake", now)
                            .map_err(|e| TestCaseError::fail(format!("start_failed: {e}")))?;
                    } else if in_place && live {
                        // systemd: a start job on an active or activating unit changes nothing.
                    } else {
                        self.next_pid += 1;
                        self.truth.insert(
                            unit.clone(),
                            FakeUnit {
                                phase: UnitPhase::Starting,
                                hash: Some(spec.spec_hash.clone()),
                                pid: self.next_pid,
                            },
                        );
                        self.in_flight.insert(unit.clone(), now);
                        self.changed(&unit);
                    }
                }
                Action::Stop { unit } => {
                    if let Some(u) = self.truth.get_mut(unit) {
                        if matches!(u.phase, UnitPhase::Starting | UnitPhase::Running) {
                            u.phase = UnitPhase::Stopping;
                            self.changed(unit);
                        }
                    }
                }
                Action::ResetFailed { unit } => {
                    prop_assert!(
                        !self.quarantined.contains(service_of(unit)),
                        "(5) reset-failed of quarantined {unit}"
                    );
                    if self.truth.get(unit).is_some_and(|u| {
                        matches!(u.phase, UnitPhase::Failed(_) | UnitPhase::Exited)
                    }) {
                        self.truth.remove(unit);
                        self.changed(unit);
                    }
                }
            }
        }
        for st in self.rec.status() {
            if self.quarantined.contains(&st.name) {
                prop_assert_eq!(
                    st.state,
                    StateKind::Quarantined,
                    "(5) {} left quarantine",
                    st.name
                );
            }
            if st.state == StateKind::Quarantined {
                self.quarantined.insert(st.name.clone());
            }
            // A backoff entered during this call was computed with the current policy (a
            // reload may change it later).
            let entered = st
                .restart_at
                .filter(|&until| self.backoffs.get(&st.name) != Some(&(st.since, until)));
            if let Some(until) = entered {
                self.backoffs.insert(st.name.clone(), (st.since, until));
                let max = self.policy(&st.name).max;
                prop_assert!(
                    st.since <= until && until <= st.since.saturating_add(max),
                    "(6) restart of {} at {until} after failing at {} exceeds max {max:?}",
                    st.name,
                    st.since
                );
            }
        }
        if let Some(w) = plan.next_wakeup {
            prop_assert!(w > now, "wakeup {w} not in the future of {now}");
        }
        Ok(plan)
    }

    fn progress(&mut self, unit: &str, fail_on_stop: bool) {
        let Some(u) = self.truth.get_mut(unit) else {
            return;
        };
        match u.phase {
            UnitPhase::Starting => u.phase = UnitPhase::Running,
            UnitPhase::Stopping if fail_on_stop => {
                u.phase = UnitPhase::Failed(ExitReason::ExitCode(143));
            }
            UnitPhase::Stopping | UnitPhase::Exited => {
                self.truth.remove(unit);
            }
            _ => return,
        }
        self.changed(unit);
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Tick(ms) => {
                self.now = self
                    .now
                    .saturating_add(Duration::from_millis(u64::from(*ms)));
            }
            Op::Deliver(n) => self.deliver(usize::from(*n)),
            Op::Plan => {
                self.plan()?;
            }
            Op::Replan => {
                let rejecting = self.reject_next_start;
                self.plan()?;
                let rejected = rejecting && !self.reject_next_start;
                let again = self.plan()?;
                if !rejected {
                    prop_assert!(
                        again.actions.is_empty(),
                        "(4) repeated plan acted again: {:?}",
                        again.actions
                    );
                }
            }
            Op::Progress(i, fail) => {
                if let Some(unit) = self.nth_unit(*i) {
                    self.progress(&unit, *fail);
                }
            }
            Op::Crash(i, kind) => {
                if let Some(unit) = self.nth_unit(*i) {
                    let u = self.truth.get_mut(&unit).expect("listed unit");
                    if matches!(u.phase, UnitPhase::Starting | UnitPhase::Running) {
                        u.phase = UnitPhase::Failed(match kind {
                            0 => ExitReason::ExitCode(1),
                            1 => ExitReason::Signal(9),
                            2 => ExitReason::OomKill,
                            _ => ExitReason::StartFailed("exit-code".to_owned()),
                        });
                        self.changed(&unit);
                    }
                }
            }
            Op::CleanExit(i) => {
                if let Some(unit) = self.nth_unit(*i) {
                    let u = self.truth.get_mut(&unit).expect("listed unit");
                    if u.phase == UnitPhase::Running {
                        u.phase = UnitPhase::Exited;
                        self.clean_exits.insert(service_of(&unit).to_owned());
                        self.changed(&unit);
                    }
                }
            }
            Op::RejectNextStart => self.reject_next_start = true,
            Op::Command(cmd, s) => self.command(*cmd, usize::from(*s))?,
            Op::Reload(graph) => {
                let d = build_desired(graph);
                self.quarantined.retain(|n| d.get(n).is_some());
                self.rec.set_desired(d.clone(), self.now);
                self.desired = d;
            }
            Op::Flap(i, plan_between) => {
                let name = SERVICES[usize::from(*i)];
                let full = self.desired.clone();
                let without: Vec<DesiredService> = full
                    .services()
                    .filter(|s| s.name != name)
                    .cloned()
                    .collect();
                let without = Desired::new(without).expect("subset of a valid graph");
                self.quarantined.remove(name);
                self.rec.set_desired(without.clone(), self.now);
                self.desired = without;
                if *plan_between {
                    self.plan()?;
                }
                self.rec.set_desired(full.clone(), self.now);
                self.desired = full;
            }
            Op::SupervisorRestart(seed) => {
                // A new process: same units in systemd, a full resync, durable quarantine marks.
                let mut rec = Reconciler::new(self.desired.clone(), *seed, self.now)
                    .with_timeouts(self.timeouts);
                for name in &self.quarantined {
                    rec.restore_quarantine(name, "restored after a supervisor restart", self.now)
                        .map_err(|e| TestCaseError::fail(e.to_string()))?;
                }
                self.rec = rec;
                self.queue.clear();
                self.observed = self
                    .truth
                    .iter()
                    .map(|(u, f)| (u.clone(), obs(u, f)))
                    .collect();
                self.in_flight.clear();
                self.reject_next_start = false;
            }
        }
        Ok(())
    }

    fn command(&mut self, cmd: u8, s: usize) -> Result<(), TestCaseError> {
        let name = if s < SERVICES.len() {
            SERVICES[s]
        } else {
            "nope"
        };
        let now = self.now;
        let result = match cmd {
            0 => self.rec.start(name, now),
            1 => self.rec.stop(name, now),
            2 => self.rec.restart(name, now),
            _ => self.rec.release(name, now),
        };
        if self.desired.get(name).is_none() {
            prop_assert_eq!(
                result,
                Err(ReconcileError::UnknownService {
                    name: name.to_owned()
                })
            );
            return Ok(());
        }
        let quarantined = self.quarantined.contains(name);
        match (cmd, result) {
            (3, Ok(())) => {
                prop_assert!(
                    quarantined,
                    "release of {name} succeeded while not quarantined"
                );
                self.quarantined.remove(name);
            }
            (3, Err(e)) => {
                prop_assert!(!quarantined, "release of quarantined {name} failed: {e}");
                prop_assert!(matches!(e, ReconcileError::NotQuarantined { .. }), "{}", e);
            }
            (_, Ok(())) => {
                prop_assert!(!quarantined, "command {cmd} accepted on quarantined {name}");
            }
            (_, Err(e)) => {
                prop_assert!(quarantined, "command {cmd} on {name} failed: {e}");
                prop_assert!(matches!(e, ReconcileError::Quarantined { .. }), "{}", e);
            }
        }
        Ok(())
    }

    /// Faults have stopped: every event is delivered, systemd completes every job, and the
    /// supervisor plans until nothing is left to do, jumping to the requested wakeups.
    fn converge(&mut self) -> Result<usize, TestCaseError> {
        self.reject_next_start = false;
        for step in 0..CONVERGENCE_STEPS {
            self.deliver(usize::MAX);
            let plan = self.plan()?;
            let units: Vec<String> = self.truth.keys().cloned().collect();
            let before: Vec<String> = self
                .truth
                .iter()
                .map(|(u, f)| format!("{u}{:?}", f.phase))
                .collect();
            for u in &units {
                self.progress(u, false);
            }
            let after: Vec<String> = self
                .truth
                .iter()
                .map(|(u, f)| format!("{u}{:?}", f.phase))
                .collect();
            let quiet = plan.actions.is_empty() && self.queue.is_empty() && before == after;
            if quiet {
                match plan.next_wakeup {
                    Some(w) => self.now = w,
                    None => return Ok(step),
                }
            }
        }
        Err(TestCaseError::fail(format!(
            "(1) no convergence within {CONVERGENCE_STEPS} steps: {:#?}",
            self.rec.status()
        )))
    }

    fn check_converged(&mut self) -> Result<(), TestCaseError> {
        let status: BTreeMap<String, StateKind> = self
            .rec
            .status()
            .into_iter()
            .map(|s| (s.name, s.state))
            .collect();
        // The services that must run: not quarantined, stopped or exited, and every dependency
        // declared and itself expected to run.
        let mut expected: BTreeSet<&str> = BTreeSet::new();
        for name in self.desired.start_order() {
            let svc = self.desired.get(name).expect("ordered service");
            let state = status[name.as_str()];
            let held = matches!(
                state,
                StateKind::Quarantined | StateKind::Stopped | StateKind::Exited
            );
            if !held && svc.after.iter().all(|d| expected.contains(d.as_str())) {
                expected.insert(name);
            }
        }
        for svc in self.desired.services() {
            let state = status[svc.name.as_str()];
            let unit = self.truth.get(&svc.spec.unit);
            if expected.contains(svc.name.as_str()) {
                prop_assert_eq!(state, StateKind::Running, "(1) {} not running", svc.name);
            } else {
                prop_assert!(
                    matches!(
                        state,
                        StateKind::Quarantined
                            | StateKind::Stopped
                            | StateKind::Exited
                            | StateKind::Waiting
                            | StateKind::Running
                    ),
                    "(1) {} settled in {state}",
                    svc.name
                );
            }
            if state == StateKind::Running {
                prop_assert!(
                    unit.is_some_and(|u| u.phase == UnitPhase::Running
                        && u.hash.as_ref() == Some(&svc.spec.spec_hash)),
                    "(1) {} is running but systemd has {:?}",
                    svc.name,
                    unit
                );
            }
            if state == StateKind::Exited {
                prop_assert!(
                    self.clean_exits.contains(&svc.name),
                    "(1) {} is exited but never exited cleanly",
                    svc.name
                );
            }
            if state == StateKind::Quarantined {
                prop_assert!(
                    unit.is_none_or(|u| matches!(u.phase, UnitPhase::Failed(_))),
                    "quarantined {} has {:?}",
                    svc.name,
                    unit
                );
            }
        }
        for (unit, u) in &self.truth {
            let declared = self.desired.get(service_of(unit)).is_some();
            prop_assert!(
                declared || u.hash.is_none(),
                "(1) undeclared {unit} remains: {:?}",
                u.phase
            );
            if is_live(&u.phase) && declared {
                prop_assert_eq!(
                    status[service_of(unit)],
                    StateKind::Running,
                    "live {} of a service not running",
                    unit
                );
            }
        }
        // (4) quiescent: nothing to do, twice.
        for _ in 0..2 {
            let plan = self.plan()?;
            prop_assert!(
                plan.actions.is_empty(),
                "(4) actions at a quiescent state: {:?}",
                plan.actions
            );
            prop_assert!(
                plan.events.is_empty(),
                "(4) events at a quiescent state: {:?}",
                plan.events
            );
        }
        Ok(())
    }
}

proptest! {
    // PROPTEST_CASES raises the count for a long soak.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(384),
        ..ProptestConfig::default()
    })]

    #[test]
    fn converges_safely_from_any_state_through_any_faults(
        graph in desired_gen(),
        initial in initial_gen(),
        ops in prop::collection::vec(op_gen(), 0..80),
        seed in any::<u64>(),
    ) {
        let mut sim = Sim::new(build_desired(&graph), &initial, seed);
        for op in &ops {
            sim.apply(op)?;
        }
        sim.converge()?;
        sim.check_converged()?;
    }

    #[test]
    fn fresh_supervisor_adopts_a_converged_graph_without_actions(
        graph in desired_gen(),
        seed in any::<u64>(),
        seed2 in any::<u64>(),
    ) {
        let mut sim = Sim::new(build_desired(&graph), &[], seed);
        sim.converge()?;
        sim.check_converged()?;
        sim.apply(&Op::SupervisorRestart(seed2))?;
        let plan = sim.plan()?;
        prop_assert!(plan.actions.is_empty(), "restart acted: {:?}", plan.actions);
        sim.check_converged()?;
    }

    #[test]
    fn backoff_delay_is_within_zero_and_the_cap(
        initial_ns in prop_oneof![Just(0u64), 1u64..1000, 0u64..1_000_000_000_000],
        max_ns in prop_oneof![Just(0u64), 1u64..1000, 0u64..10_000_000_000_000, Just(u64::MAX)],
        attempt in 0u32..200,
        seed in any::<u64>(),
    ) {
        let policy = RestartPolicy {
            initial: Duration::from_nanos(initial_ns),
            max: Duration::from_nanos(max_ns),
            ..RestartPolicy::default()
        };
        let mut rng = SplitMix64::new(seed);
        let cap = policy.backoff_cap(attempt);
        prop_assert!(cap <= policy.max);
        let expected_cap = Duration::from_nanos(initial_ns)
            .checked_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .unwrap_or(Duration::MAX)
            .min(policy.max);
        if attempt <= 31 {
            prop_assert_eq!(cap, expected_cap);
        }
        for _ in 0..16 {
            let d = policy.backoff_delay(attempt, &mut rng);
            prop_assert!(d <= cap, "{d:?} > {cap:?}");
        }
    }
}
