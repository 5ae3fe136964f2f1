//! Unit tests of the reconciler: one per transition, and a seeded crash/quarantine scenario.

use std::time::Duration;

use super::*;
use crate::unit::LandlockRuleset;

fn spec(name: &str, hash: &str) -> UnitSpec {
    UnitSpec {
        service: name.to_owned(),
        unit: unit_name(name),
        description: format!("Strata service {name}"),
        slice: "strata.slice".to_owned(),
        exec: vec!["/usr/bin/true".to_owned()],
        properties: Vec::new(),
        landlock: LandlockRuleset::default(),
        spec_hash: hash.to_owned(),
    }
}

fn svc(name: &str, after: &[&str]) -> DesiredService {
    DesiredService {
        name: name.to_owned(),
        spec: spec(name, &format!("h-{name}")),
        after: after.iter().map(|s| (*s).to_owned()).collect(),
        restart: RestartPolicy::default(),
    }
}

fn desired(services: Vec<DesiredService>) -> Desired {
    Desired::new(services).expect("valid desired graph")
}

fn t(secs: u64) -> Timestamp {
    Timestamp::from_secs(secs)
}

fn unit_obs(name: &str, phase: UnitPhase, hash: Option<&str>) -> UnitObservation {
    UnitObservation {
        unit: unit_name(name),
        phase,
        main_pid: 100,
        spec_hash: hash.map(str::to_owned),
        run: 0,
    }
}

fn running(name: &str) -> (&str, UnitPhase, Option<String>) {
    (name, UnitPhase::Running, Some(format!("h-{name}")))
}

fn obs_of(units: &[(&str, UnitPhase, Option<String>)]) -> Observed {
    units
        .iter()
        .map(|(n, p, h)| (unit_name(n), unit_obs(n, p.clone(), h.as_deref())))
        .collect()
}

fn start_of(name: &str) -> Action {
    Action::Start(Box::new(spec(name, &format!("h-{name}"))))
}

fn stop_of(name: &str) -> Action {
    Action::Stop {
        unit: unit_name(name),
    }
}

fn restart_of(name: &str) -> Action {
    Action::Restart(Box::new(spec(name, &format!("h-{name}"))))
}

fn reset_of(name: &str) -> Action {
    Action::ResetFailed {
        unit: unit_name(name),
    }
}

fn state(r: &Reconciler, name: &str) -> StateKind {
    r.service_status(name).expect("declared service").state
}

fn transitions(plan: &Plan) -> Vec<(String, StateKind, StateKind)> {
    plan.events
        .iter()
        .filter_map(|e| match e {
            Event::Transition {
                service, old, new, ..
            } => Some((service.clone(), *old, *new)),
            _ => None,
        })
        .collect()
}

/// Brings `name` (with no dependencies) to running and returns the reconciler.
fn running_reconciler(name: &str, policy: RestartPolicy, seed: u64) -> Reconciler {
    let mut s = svc(name, &[]);
    s.restart = policy;
    let mut r = Reconciler::new(desired(vec![s]), seed, t(0));
    let p = r.plan(&Observed::new(), t(0));
    assert_eq!(p.actions, [start_of(name)]);
    let p = r.plan(&obs_of(&[running(name)]), t(0));
    assert!(p.actions.is_empty());
    assert_eq!(state(&r, name), StateKind::Running);
    r
}

#[test]
fn declared_service_is_started_once_and_not_again_while_in_flight() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    assert_eq!(state(&r, "web"), StateKind::Declared);
    let p = r.plan(&Observed::new(), t(0));
    assert_eq!(p.actions, [start_of("web")]);
    assert_eq!(
        transitions(&p),
        [("web".into(), StateKind::Declared, StateKind::Starting)]
    );
    assert_eq!(p.next_wakeup, Some(t(30)), "start confirmation deadline");
    // The unit has not shown up yet: no second start, at the same or a later time.
    assert!(r.plan(&Observed::new(), t(0)).actions.is_empty());
    assert!(r.plan(&Observed::new(), t(29)).actions.is_empty());
}

#[test]
fn observed_starting_then_running() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    r.plan(&Observed::new(), t(0));
    let p = r.plan(
        &obs_of(&[("web", UnitPhase::Starting, Some("h-web".into()))]),
        t(1),
    );
    assert!(p.actions.is_empty());
    assert_eq!(state(&r, "web"), StateKind::Starting);
    assert_eq!(
        r.service_status("web").unwrap().reason,
        "the unit is activating"
    );
    let p = r.plan(&obs_of(&[running("web")]), t(2));
    assert!(p.actions.is_empty());
    assert_eq!(
        transitions(&p),
        [("web".into(), StateKind::Starting, StateKind::Running)]
    );
    let st = r.service_status("web").unwrap();
    assert_eq!((st.since, st.main_pid, st.restarts), (t(2), Some(100), 0));
    // Quiescent: nothing to do, no events, no wakeup.
    let p = r.plan(&obs_of(&[running("web")]), t(3));
    assert_eq!(p, Plan::default());
}

#[test]
fn dependency_gates_start_with_reason() {
    let mut fs = svc("fs", &[]);
    fs.restart.initial = Duration::from_secs(10);
    let mut r = Reconciler::new(desired(vec![svc("web", &["fs"]), fs]), 1, t(0));
    assert_eq!(r.desired().start_order(), ["fs", "web"]);
    let p = r.plan(&Observed::new(), t(0));
    assert_eq!(p.actions, [start_of("fs")]);
    let web = r.service_status("web").unwrap();
    assert_eq!(web.state, StateKind::Waiting);
    assert_eq!(web.reason, "waiting for fs (starting)");
    // fs fails: web's reason follows, with a transition event for the new reason.
    let fs_failed = (
        "fs",
        UnitPhase::Failed(ExitReason::ExitCode(1)),
        Some("h-fs".to_owned()),
    );
    let p = r.plan(&obs_of(&[fs_failed]), t(1));
    assert!(p.actions.is_empty());
    assert_eq!(
        r.service_status("web").unwrap().reason,
        "waiting for fs (backing-off)"
    );
    assert!(transitions(&p).contains(&("web".into(), StateKind::Waiting, StateKind::Waiting)));
    // fs running: web starts in the same plan.
    let mut r = Reconciler::new(desired(vec![svc("web", &["fs"]), svc("fs", &[])]), 1, t(0));
    r.plan(&Observed::new(), t(0));
    let p = r.plan(&obs_of(&[running("fs")]), t(1));
    assert_eq!(p.actions, [start_of("web")]);
    assert!(r.plan(&obs_of(&[running("fs")]), t(1)).actions.is_empty());
}

#[test]
fn undeclared_dependency_waits_and_says_so() {
    let mut r = Reconciler::new(desired(vec![svc("web", &["db"])]), 1, t(0));
    let p = r.plan(&Observed::new(), t(0));
    assert!(p.actions.is_empty());
    let web = r.service_status("web").unwrap();
    assert_eq!(
        (web.state, web.reason.as_str()),
        (StateKind::Waiting, "waiting for db (not declared)")
    );
}

#[test]
fn running_dependent_is_not_stopped_when_its_dependency_fails() {
    let mut r = Reconciler::new(desired(vec![svc("web", &["fs"]), svc("fs", &[])]), 1, t(0));
    let both = obs_of(&[running("fs"), running("web")]);
    assert!(r.plan(&both, t(0)).actions.is_empty());
    let fs_failed = obs_of(&[
        (
            "fs",
            UnitPhase::Failed(ExitReason::Signal(9)),
            Some("h-fs".into()),
        ),
        running("web"),
    ]);
    let p = r.plan(&fs_failed, t(1));
    assert!(!p.actions.contains(&stop_of("web")));
    assert_eq!(state(&r, "web"), StateKind::Running);
}

#[test]
fn running_unit_with_same_hash_is_adopted_without_action() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    let p = r.plan(&obs_of(&[running("web")]), t(5));
    assert!(p.actions.is_empty());
    let st = r.service_status("web").unwrap();
    assert_eq!(st.state, StateKind::Running);
    assert_eq!(st.reason, "running (adopted the unit: same spec)");
    // A starting unit is adopted as starting.
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    let p = r.plan(
        &obs_of(&[("web", UnitPhase::Starting, Some("h-web".into()))]),
        t(5),
    );
    assert!(p.actions.is_empty());
    assert_eq!(state(&r, "web"), StateKind::Starting);
}

#[test]
fn changed_hash_is_rolled_stop_then_start_once_gone() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    let old = obs_of(&[("web", UnitPhase::Running, Some("h-old".into()))]);
    let p = r.plan(&old, t(0));
    assert_eq!(p.actions, [stop_of("web")]);
    assert_eq!(state(&r, "web"), StateKind::Stopping);
    assert_eq!(
        r.service_status("web").unwrap().reason,
        "the spec changed: replacing the unit"
    );
    // Not repeated while the old unit is still there.
    assert!(r.plan(&old, t(0)).actions.is_empty());
    let stopping = obs_of(&[("web", UnitPhase::Stopping, Some("h-old".into()))]);
    assert!(r.plan(&stopping, t(1)).actions.is_empty());
    let p = r.plan(&Observed::new(), t(2));
    assert_eq!(p.actions, [start_of("web")]);
}

#[test]
fn reload_with_changed_spec_rolls_only_that_service() {
    let mut r = Reconciler::new(desired(vec![svc("a", &[]), svc("b", &[])]), 1, t(0));
    let obs = obs_of(&[running("a"), running("b")]);
    assert!(r.plan(&obs, t(0)).actions.is_empty());
    let mut b2 = svc("b", &[]);
    b2.spec.spec_hash = "h-b2".into();
    r.set_desired(desired(vec![svc("a", &[]), b2.clone()]), t(1));
    let p = r.plan(&obs, t(1));
    assert_eq!(p.actions, [stop_of("b")]);
    let p = r.plan(&obs_of(&[running("a")]), t(2));
    assert_eq!(p.actions, [Action::Start(Box::new(b2.spec))]);
}

#[test]
fn hashless_unit_of_declared_service_is_replaced_and_foreign_units_left_alone() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    let obs = obs_of(&[
        ("web", UnitPhase::Running, None),
        ("supervisor", UnitPhase::Running, None),
    ]);
    let p = r.plan(&obs, t(0));
    assert_eq!(
        p.actions,
        [stop_of("web")],
        "the supervisor's own unit is not touched"
    );
    assert_eq!(
        r.service_status("web").unwrap().reason,
        "the unit carries no spec hash: replacing it"
    );
}

#[test]
fn units_of_undeclared_services_are_stopped_and_reset_once() {
    let mut r = Reconciler::new(desired(vec![]), 1, t(0));
    let obs = obs_of(&[
        ("old", UnitPhase::Running, Some("h".into())),
        (
            "dead",
            UnitPhase::Failed(ExitReason::ExitCode(3)),
            Some("h".into()),
        ),
        ("done", UnitPhase::Exited, Some("h".into())),
        ("going", UnitPhase::Stopping, Some("h".into())),
    ]);
    let p = r.plan(&obs, t(0));
    assert_eq!(
        p.actions,
        [reset_of("dead"), reset_of("done"), stop_of("old")]
    );
    assert!(r.plan(&obs, t(0)).actions.is_empty(), "no repeats");
    assert_eq!(r.plan(&obs, t(9)).next_wakeup, Some(t(10)));
    // Still there after the retry interval: issued again.
    let p = r.plan(&obs, t(10));
    assert_eq!(
        p.actions,
        [reset_of("dead"), reset_of("done"), stop_of("old")]
    );
    // The stopped unit failed on its way out: it is reset next.
    let obs = obs_of(&[(
        "old",
        UnitPhase::Failed(ExitReason::Signal(15)),
        Some("h".into()),
    )]);
    assert_eq!(r.plan(&obs, t(11)).actions, [reset_of("old")]);
    assert_eq!(r.plan(&Observed::new(), t(12)), Plan::default());
}

#[test]
fn crash_backs_off_then_resets_and_restarts() {
    let mut r = running_reconciler("web", RestartPolicy::default(), 7);
    let failed = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::ExitCode(2)),
        Some("h-web".into()),
    )]);
    let p = r.plan(&failed, t(10));
    assert!(
        p.actions.is_empty(),
        "the failed unit stays visible during backoff"
    );
    assert_eq!(
        p.events[..2],
        [
            Event::Crashed {
                service: "web".into(),
                reason: ExitReason::ExitCode(2)
            },
            Event::Transition {
                service: "web".into(),
                old: StateKind::Running,
                new: StateKind::Failed,
                reason: "exited with status 2".into()
            },
        ]
    );
    assert_eq!(
        transitions(&p)[1],
        ("web".into(), StateKind::Failed, StateKind::BackingOff)
    );
    let st = r.service_status("web").unwrap();
    let until = st.restart_at.expect("backing off");
    assert!(
        until >= t(10) && until <= t(11),
        "first delay within [0, initial]"
    );
    assert_eq!(p.next_wakeup, Some(until).filter(|&u| u > t(10)));
    assert_eq!(st.last_exit, Some(ExitReason::ExitCode(2)));
    assert!(
        st.reason
            .starts_with("exited with status 2; restarting in ")
    );
    // Repeated observation of the same failed unit is not a second crash.
    let p = r.plan(&failed, t(10));
    assert!(!p.events.iter().any(|e| matches!(e, Event::Crashed { .. })));
    // Backoff over: the failed unit carries this spec, so it is started again in place, once.
    let p = r.plan(&failed, until);
    assert_eq!(p.actions, [restart_of("web")]);
    assert_eq!(state(&r, "web"), StateKind::Starting);
    assert_eq!(r.service_status("web").unwrap().restarts, 1);
    // The unit still shows its old failure until systemd starts it: no second crash, no
    // second restart.
    let p = r.plan(&failed, until);
    assert!(p.actions.is_empty() && p.events.is_empty(), "{p:?}");
    let p = r.plan(&obs_of(&[running("web")]), until);
    assert!(p.actions.is_empty());
    assert_eq!(state(&r, "web"), StateKind::Running);
    // It crashes again: that is a new failure.
    let p = r.plan(&failed, until.saturating_add(Duration::from_secs(1)));
    assert!(p.events.iter().any(|e| matches!(e, Event::Crashed { .. })));
    assert_eq!(r.service_status("web").unwrap().recent_failures, 2);
}

#[test]
fn a_failed_unit_of_another_spec_is_reset_then_started_anew() {
    let mut r = running_reconciler(
        "web",
        RestartPolicy {
            initial: Duration::ZERO,
            ..RestartPolicy::default()
        },
        7,
    );
    // The failed unit carries an older spec (e.g. adopted after a reload): never reuse it.
    let stale = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::Signal(9)),
        Some("h-old".into()),
    )]);
    let p = r.plan(&stale, t(10));
    assert_eq!(p.actions, [reset_of("web")]);
    assert_eq!(r.plan(&Observed::new(), t(10)).actions, [start_of("web")]);
}

#[test]
fn a_restart_in_place_that_never_activates_counts_as_a_failure() {
    let policy = RestartPolicy {
        initial: Duration::ZERO,
        ..RestartPolicy::default()
    };
    let mut r = running_reconciler("web", policy, 7);
    let failed = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::Signal(9)),
        Some("h-web".into()),
    )]);
    assert_eq!(r.plan(&failed, t(10)).actions, [restart_of("web")]);
    // Nothing moves (say systemd coalesced activating → failed into one unchanged state).
    let p = r.plan(&failed, t(39));
    assert!(p.actions.is_empty() && p.events.is_empty(), "{p:?}");
    assert_eq!(p.next_wakeup, Some(t(40)));
    let p = r.plan(&failed, t(40));
    assert!(p.events.contains(&Event::Crashed {
        service: "web".into(),
        reason: ExitReason::StartFailed("the unit did not start again within 30s".into())
    }));
    assert_eq!(r.service_status("web").unwrap().recent_failures, 2);
    // Zero backoff: restarted in place again at once, in the same plan.
    assert_eq!(p.actions, [restart_of("web")]);
}

#[test]
fn a_restarted_run_that_ends_unseen_is_a_new_failure_at_once() {
    let policy = RestartPolicy {
        initial: Duration::ZERO,
        ..RestartPolicy::default()
    };
    let mut r = running_reconciler("web", policy, 7);
    let ended = |run: u64| -> Observed {
        let mut o = unit_obs(
            "web",
            UnitPhase::Failed(ExitReason::Signal(9)),
            Some("h-web"),
        );
        o.run = run;
        [(unit_name("web"), o)].into_iter().collect()
    };
    assert_eq!(r.plan(&ended(1), t(10)).actions, [restart_of("web")]);
    // The same run's end seen again: nothing new.
    let p = r.plan(&ended(1), t(11));
    assert!(p.actions.is_empty() && p.events.is_empty(), "{p:?}");
    // systemd reports failed → failed for the restarted run (killed while activating): its
    // start stamp differs, so it is a new crash now, not after the 30 s start timeout.
    let p = r.plan(&ended(2), t(12));
    assert!(p.events.contains(&Event::Crashed {
        service: "web".into(),
        reason: ExitReason::Signal(9)
    }));
    assert_eq!(p.actions, [restart_of("web")]);
    assert_eq!(r.service_status("web").unwrap().recent_failures, 2);
}

#[test]
fn a_rejected_restart_in_place_counts_as_a_failure() {
    let policy = RestartPolicy {
        initial: Duration::ZERO,
        ..RestartPolicy::default()
    };
    let mut r = running_reconciler("web", policy, 7);
    let failed = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::Signal(9)),
        Some("h-web".into()),
    )]);
    assert_eq!(r.plan(&failed, t(10)).actions, [restart_of("web")]);
    r.start_failed("web", "Unit strata-web.service is masked", t(10))
        .expect("restart in flight");
    let st = r.service_status("web").unwrap();
    assert_eq!(st.recent_failures, 2);
    assert_eq!(
        st.last_exit,
        Some(ExitReason::StartFailed(
            "Unit strata-web.service is masked".into()
        ))
    );
}

#[test]
fn zero_backoff_restarts_the_failed_unit_in_the_same_plan() {
    let policy = RestartPolicy {
        initial: Duration::ZERO,
        ..RestartPolicy::default()
    };
    let mut r = running_reconciler("web", policy, 7);
    let failed = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::OomKill),
        Some("h-web".into()),
    )]);
    let p = r.plan(&failed, t(10));
    assert_eq!(p.actions, [restart_of("web")]);
}

#[test]
fn rejected_start_counts_as_a_failure() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 3, t(0));
    r.plan(&Observed::new(), t(0));
    r.start_failed("web", "Unit strata-web.service has a bad setting", t(0))
        .expect("start in flight");
    let st = r.service_status("web").unwrap();
    assert_eq!(st.state, StateKind::BackingOff);
    assert_eq!(
        st.last_exit,
        Some(ExitReason::StartFailed(
            "Unit strata-web.service has a bad setting".into()
        ))
    );
    assert_eq!(st.recent_failures, 1);
    let p = r.plan(&Observed::new(), t(0));
    assert!(p.events.contains(&Event::Crashed {
        service: "web".into(),
        reason: ExitReason::StartFailed("Unit strata-web.service has a bad setting".into())
    }));
    // Nothing was in flight any more.
    assert_eq!(
        r.start_failed("web", "again", t(0)),
        Err(ReconcileError::NoStartInFlight {
            name: "web".into(),
            state: StateKind::BackingOff
        })
    );
    assert_eq!(
        r.start_failed("nope", "x", t(0)).unwrap_err().to_string(),
        "unknown service `nope`"
    );
    // After the delay the start is issued directly: no unit holds the name.
    let until = st.restart_at.expect("backing off");
    assert_eq!(r.plan(&Observed::new(), until).actions, [start_of("web")]);
}

#[test]
fn unconfirmed_start_times_out_as_a_failure() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 3, t(0));
    r.plan(&Observed::new(), t(0));
    assert!(r.plan(&Observed::new(), t(29)).actions.is_empty());
    let p = r.plan(&Observed::new(), t(30));
    assert!(p.events.contains(&Event::Crashed {
        service: "web".into(),
        reason: ExitReason::StartFailed("the unit did not appear within 30s".into())
    }));
}

#[test]
fn clean_exit_stays_exited_until_an_operator_starts_it() {
    let mut r = running_reconciler("web", RestartPolicy::default(), 1);
    let exited = obs_of(&[("web", UnitPhase::Exited, Some("h-web".into()))]);
    let p = r.plan(&exited, t(5));
    assert!(p.actions.is_empty());
    assert_eq!(state(&r, "web"), StateKind::Exited);
    assert_eq!(r.plan(&Observed::new(), t(500)), Plan::default());
    r.start("web", t(600)).expect("declared");
    assert_eq!(r.plan(&exited, t(600)).actions, [restart_of("web")]);
    // A unit that vanishes without failing (stopped outside Strata) is exited too.
    let mut r = running_reconciler("web", RestartPolicy::default(), 1);
    assert!(r.plan(&Observed::new(), t(5)).actions.is_empty());
    assert_eq!(state(&r, "web"), StateKind::Exited);
}

#[test]
fn operator_stop_holds_until_start() {
    let mut r = running_reconciler("web", RestartPolicy::default(), 1);
    r.stop("web", t(1)).expect("declared");
    let p = r.plan(&obs_of(&[running("web")]), t(1));
    assert_eq!(p.actions, [stop_of("web")]);
    assert_eq!(state(&r, "web"), StateKind::Stopping);
    assert!(r.plan(&obs_of(&[running("web")]), t(1)).actions.is_empty());
    // Retried when systemd did not act on it.
    assert_eq!(
        r.plan(&obs_of(&[running("web")]), t(11)).actions,
        [stop_of("web")]
    );
    let p = r.plan(&Observed::new(), t(12));
    assert!(p.actions.is_empty());
    assert_eq!(state(&r, "web"), StateKind::Stopped);
    assert_eq!(r.plan(&Observed::new(), t(1000)), Plan::default());
    // A unit someone starts behind Strata's back is stopped again.
    assert_eq!(
        r.plan(&obs_of(&[running("web")]), t(1001)).actions,
        [stop_of("web")]
    );
    r.plan(&Observed::new(), t(1002));
    r.start("web", t(1003)).expect("declared");
    assert_eq!(r.plan(&Observed::new(), t(1003)).actions, [start_of("web")]);
}

#[test]
fn stop_while_a_start_is_unconfirmed_stops_without_a_second_start() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    r.plan(&Observed::new(), t(0));
    r.stop("web", t(0)).expect("declared");
    let p = r.plan(&Observed::new(), t(0));
    assert_eq!(p.actions, [stop_of("web")]);
    // Not yet observed: still stopping (the unit may still appear).
    assert_eq!(state(&r, "web"), StateKind::Stopping);
    let starting = obs_of(&[("web", UnitPhase::Starting, Some("h-web".into()))]);
    assert!(r.plan(&starting, t(1)).actions.is_empty());
    assert_eq!(r.plan(&Observed::new(), t(2)).actions, []);
    assert_eq!(state(&r, "web"), StateKind::Stopped);
    // A rejected start during the stop: nothing will appear.
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    r.plan(&Observed::new(), t(0));
    r.stop("web", t(0)).expect("declared");
    r.start_failed("web", "rejected", t(0))
        .expect("start in flight");
    r.plan(&Observed::new(), t(0));
    assert_eq!(state(&r, "web"), StateKind::Stopped);
    assert_eq!(r.service_status("web").unwrap().recent_failures, 0);
}

#[test]
fn operator_restart_stops_and_starts_without_counting_a_failure() {
    let mut r = running_reconciler("web", RestartPolicy::default(), 1);
    r.restart("web", t(1)).expect("declared");
    assert_eq!(
        r.plan(&obs_of(&[running("web")]), t(1)).actions,
        [stop_of("web")]
    );
    // It dies with a failure on SIGTERM: not counted, no backoff.
    let failed = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::ExitCode(143)),
        Some("h-web".into()),
    )]);
    assert_eq!(r.plan(&failed, t(2)).actions, [restart_of("web")]);
    let st = r.service_status("web").unwrap();
    assert_eq!((st.recent_failures, st.restarts, st.attempt), (0, 0, 0));
    // Restart of a start in flight is a no-op.
    r.restart("web", t(2)).expect("declared");
    assert!(r.plan(&Observed::new(), t(2)).actions.is_empty());
}

#[test]
fn attempt_resets_after_a_healthy_run() {
    let policy = RestartPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(64),
        reset_after: Duration::from_secs(60),
        quarantine_crashes: 0,
        ..RestartPolicy::default()
    };
    let mut r = running_reconciler("web", policy, 5);
    let fail = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::ExitCode(1)),
        Some("h-web".into()),
    )]);
    let mut now = t(0);
    // Three quick failures: attempt 3.
    for _ in 0..3 {
        now = now.saturating_add(Duration::from_secs(1));
        r.plan(&fail, now);
        let until = r
            .service_status("web")
            .unwrap()
            .restart_at
            .expect("backing off");
        now = until;
        r.plan(&fail, now);
        r.plan(&Observed::new(), now);
        r.plan(&obs_of(&[running("web")]), now);
    }
    assert_eq!(r.service_status("web").unwrap().attempt, 3);
    let p = r.plan(&obs_of(&[running("web")]), now);
    assert_eq!(
        p.next_wakeup,
        Some(now.saturating_add(Duration::from_secs(60)))
    );
    // Healthy for reset_after: the next failure is attempt 1 again.
    now = now.saturating_add(Duration::from_secs(61));
    r.plan(&fail, now);
    assert_eq!(r.service_status("web").unwrap().attempt, 1);
}

#[test]
fn commands_on_unknown_services_fail_naming_the_service() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    let want = ReconcileError::UnknownService { name: "db".into() };
    assert_eq!(r.start("db", t(0)), Err(want.clone()));
    assert_eq!(r.stop("db", t(0)), Err(want.clone()));
    assert_eq!(r.restart("db", t(0)), Err(want.clone()));
    assert_eq!(r.release("db", t(0)), Err(want.clone()));
    assert_eq!(r.service_status("db"), Err(want.clone()));
    assert_eq!(want.to_string(), "unknown service `db`");
    assert_eq!(r.start("web", t(0)), Ok(()), "positive control");
}

#[test]
fn release_of_a_service_that_is_not_quarantined_says_its_state() {
    let mut r = running_reconciler("web", RestartPolicy::default(), 1);
    let err = r.release("web", t(1)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "service `web` is not quarantined (it is running)"
    );
}

#[test]
fn removed_service_is_stopped_and_new_one_started() {
    let mut r = Reconciler::new(desired(vec![svc("a", &[])]), 1, t(0));
    assert!(r.plan(&obs_of(&[running("a")]), t(0)).actions.is_empty());
    r.set_desired(desired(vec![svc("b", &[])]), t(1));
    let p = r.plan(&obs_of(&[running("a")]), t(1));
    assert_eq!(p.actions, [stop_of("a"), start_of("b")]);
    assert!(p.events.contains(&Event::Removed {
        service: "a".into()
    }));
    assert!(r.service_status("a").is_err());
}

#[test]
fn removed_and_redeclared_service_with_unconfirmed_start_starts_no_second_unit() {
    let mut r = Reconciler::new(desired(vec![svc("a", &[])]), 1, t(0));
    assert_eq!(r.plan(&Observed::new(), t(0)).actions, [start_of("a")]);
    r.set_desired(desired(vec![]), t(0));
    assert!(r.plan(&Observed::new(), t(0)).actions.is_empty());
    r.set_desired(desired(vec![svc("a", &[])]), t(0));
    assert!(r.plan(&Observed::new(), t(1)).actions.is_empty());
    assert_eq!(state(&r, "a"), StateKind::Starting);
    assert!(r.plan(&obs_of(&[running("a")]), t(2)).actions.is_empty());
    assert_eq!(state(&r, "a"), StateKind::Running);
}

#[test]
fn desired_rejects_inconsistent_services() {
    let mut bad = svc("web", &[]);
    bad.spec.unit = "web.service".into();
    assert_eq!(
        Desired::new(vec![bad]).unwrap_err().to_string(),
        "service `web` has unit name `web.service`, expected `strata-web.service`"
    );
    let mut bad = svc("web", &[]);
    bad.spec.service = "api".into();
    assert_eq!(
        Desired::new(vec![bad]).unwrap_err().to_string(),
        "service `web` has the unit spec of service `api`"
    );
    assert_eq!(
        Desired::new(vec![svc("web", &[]), svc("web", &[])])
            .unwrap_err()
            .to_string(),
        "service `web` is declared twice"
    );
    assert!(Desired::new(vec![svc("web", &[]), svc("fs", &[])]).is_ok());
}

#[test]
fn start_order_puts_dependencies_first_and_cycles_last() {
    let d = desired(vec![
        svc("web", &["fs", "registry"]),
        svc("fs", &["identity"]),
        svc("identity", &[]),
        svc("registry", &["identity"]),
        svc("x", &["y"]),
        svc("y", &["x"]),
        svc("z", &["missing"]),
    ]);
    assert_eq!(
        d.start_order(),
        ["identity", "z", "fs", "registry", "web", "x", "y"]
    );
}

#[test]
fn failed_unit_found_by_a_fresh_reconciler_counts_once_and_is_restarted() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    let failed = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::Signal(6)),
        Some("h-web".into()),
    )]);
    let p = r.plan(&failed, t(0));
    assert_eq!(
        p.events
            .iter()
            .filter(|e| matches!(e, Event::Crashed { .. }))
            .count(),
        1
    );
    assert_eq!(state(&r, "web"), StateKind::BackingOff);
    // A failed unit with another spec is just cleared and replaced, no failure counted.
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    let old = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::Signal(6)),
        Some("h-old".into()),
    )]);
    assert_eq!(r.plan(&old, t(0)).actions, [reset_of("web")]);
    assert_eq!(r.service_status("web").unwrap().recent_failures, 0);
}

/// The scenario of the issue: failures back off with growing ceilings (seeded), the fifth
/// within the window quarantines, quarantine holds, release clears the history.
#[test]
fn scenario_backoff_quarantine_release() {
    let policy = RestartPolicy {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(8),
        reset_after: Duration::from_secs(600),
        quarantine_crashes: 5,
        quarantine_window: Duration::from_secs(600),
    };
    let run = |seed: u64| -> (Reconciler, Vec<Duration>, Timestamp) {
        let mut r = running_reconciler("web", policy.clone(), seed);
        let fail = obs_of(&[(
            "web",
            UnitPhase::Failed(ExitReason::ExitCode(1)),
            Some("h-web".into()),
        )]);
        let mut delays = Vec::new();
        let mut now = t(1);
        for attempt in 1..=5u32 {
            let p = r.plan(&fail, now);
            let st = r.service_status("web").unwrap();
            if attempt == 5 {
                assert_eq!(st.state, StateKind::Quarantined);
                assert!(p.actions.is_empty(), "quarantined: the failed unit stays");
                assert_eq!(
                    st.quarantine_reason.as_deref(),
                    Some("5 failures within 10m; last: exited with status 1")
                );
                assert_eq!(
                    transitions(&p),
                    [
                        ("web".into(), StateKind::Running, StateKind::Failed),
                        ("web".into(), StateKind::Failed, StateKind::Quarantined)
                    ]
                );
                break;
            }
            assert_eq!((st.state, st.attempt), (StateKind::BackingOff, attempt));
            let until = st.restart_at.expect("backing off");
            let delay = until.saturating_duration_since(now);
            assert!(
                delay <= policy.backoff_cap(attempt),
                "attempt {attempt}: {delay:?}"
            );
            delays.push(delay);
            now = until;
            assert_eq!(r.plan(&fail, now).actions, [restart_of("web")]);
            r.plan(&obs_of(&[running("web")]), now);
            now = now.saturating_add(Duration::from_secs(1));
        }
        (r, delays, now)
    };
    let (mut r, delays, now) = run(2024);
    assert_eq!(delays.len(), 4);
    // Seeded: the same seed gives the same delays, another seed others.
    assert_eq!(run(2024).1, delays);
    assert_ne!(run(2025).1, delays);
    let caps: Vec<Duration> = (1..=4).map(|a| policy.backoff_cap(a)).collect();
    assert_eq!(caps, [1, 2, 4, 8].map(Duration::from_secs));

    let fail = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::ExitCode(1)),
        Some("h-web".into()),
    )]);
    // Sticky: long after the window, still quarantined and untouched.
    let later = now.saturating_add(Duration::from_secs(3600));
    assert_eq!(r.plan(&fail, later), Plan::default());
    assert_eq!(state(&r, "web"), StateKind::Quarantined);
    let quarantined = ReconcileError::Quarantined {
        name: "web".into(),
        reason: "5 failures within 10m; last: exited with status 1".into(),
    };
    assert_eq!(r.start("web", later), Err(quarantined.clone()));
    assert_eq!(r.restart("web", later), Err(quarantined.clone()));
    assert_eq!(r.stop("web", later), Err(quarantined.clone()));
    assert_eq!(
        quarantined.to_string(),
        "service `web` is quarantined (5 failures within 10m; last: exited with status 1); \
         release it first"
    );
    // A reload does not release either.
    r.set_desired(r.desired().clone(), later);
    assert_eq!(r.plan(&fail, later), Plan::default());

    r.release("web", later).expect("quarantined");
    let st = r.service_status("web").unwrap();
    assert_eq!((st.recent_failures, st.attempt), (0, 0));
    assert_eq!(r.plan(&fail, later).actions, [restart_of("web")]);
    r.plan(&obs_of(&[running("web")]), later);
    // The next failure starts a fresh history: attempt 1, not quarantine again.
    let again = later.saturating_add(Duration::from_secs(1));
    r.plan(&fail, again);
    let st = r.service_status("web").unwrap();
    assert_eq!(
        (st.state, st.attempt, st.recent_failures),
        (StateKind::BackingOff, 1, 1)
    );
    assert!(st.restart_at.expect("backing off") <= again.saturating_add(Duration::from_secs(1)));
}

#[test]
fn restored_quarantine_keeps_the_failed_unit_of_a_fresh_reconciler() {
    let mut r = Reconciler::new(desired(vec![svc("web", &[])]), 1, t(0));
    r.restore_quarantine(
        "web",
        "5 failures within 10m; last: killed by signal 9",
        t(0),
    )
    .expect("declared");
    let failed = obs_of(&[(
        "web",
        UnitPhase::Failed(ExitReason::Signal(9)),
        Some("h-web".into()),
    )]);
    let p = r.plan(&failed, t(0));
    assert!(p.actions.is_empty());
    assert!(!p.events.iter().any(|e| matches!(e, Event::Crashed { .. })));
    assert_eq!(state(&r, "web"), StateKind::Quarantined);
}

#[test]
fn status_reports_every_service() {
    let r = Reconciler::new(desired(vec![svc("b", &[]), svc("a", &[])]), 1, t(0));
    let names: Vec<String> = r.status().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["a", "b"]);
    let st = r.service_status("a").unwrap();
    assert_eq!(st.unit, "strata-a.service");
    assert_eq!(st.main_pid, None);
}
