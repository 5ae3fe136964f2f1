//! The systemd driver against a real systemd 252 booted in a private namespace.
//!
//! Each test boots its own instance through strata-testkit; a test that cannot boot fails with
//! the harness's reason (never skips).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use strata_core::observed::{ExitReason, UnitObservation, UnitPhase};
use strata_core::unit::{LandlockRuleset, PropValue, Property, UnitSpec};
use strata_systemd::driver::{DriverEvent, UnitDriver};
use strata_systemd::systemd::{
    BusTarget, DriverConfig, DriverError, SpecError, SystemdDriver, UnitDetails,
};
use strata_testkit::PrivateSystemd;
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

fn boot() -> PrivateSystemd {
    match PrivateSystemd::boot() {
        Ok(sd) => sd,
        Err(e) => panic!("cannot boot a private systemd for the driver tests: {e}"),
    }
}

async fn driver(sd: &PrivateSystemd) -> SystemdDriver {
    let config = DriverConfig {
        cgroup_root: sd.root().join("sys/fs/cgroup"),
        ..DriverConfig::default()
    };
    SystemdDriver::connect_with(BusTarget::Address(sd.bus_address()), config)
        .await
        .expect("connecting the driver to the private systemd")
}

fn spec(name: &str, exec: &[&str], properties: Vec<Property>) -> UnitSpec {
    UnitSpec {
        service: name.into(),
        unit: format!("strata-{name}.service"),
        description: format!("Strata driver test unit {name}"),
        slice: "strata.slice".into(),
        exec: exec.iter().map(|s| (*s).to_owned()).collect(),
        properties,
        landlock: LandlockRuleset::default(),
        spec_hash: format!("hash{}", name.replace('-', "")),
    }
}

fn u64p(name: &str, v: u64) -> Property {
    Property::new(name, PropValue::U64(v))
}

/// Reads events until `pred` holds for a `Changed` observation of `unit`; fails after
/// EVENT_TIMEOUT, listing what was seen.
async fn wait_for(
    rx: &mut mpsc::Receiver<DriverEvent>,
    unit: &str,
    what: &str,
    pred: impl Fn(&UnitObservation) -> bool,
) -> UnitObservation {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, rx.recv()).await {
            Ok(Some(DriverEvent::Changed(obs))) if obs.unit == unit && pred(&obs) => return obs,
            Ok(Some(ev)) => seen.push(ev),
            Ok(None) => panic!("event stream ended while waiting for {unit} {what}; saw {seen:#?}"),
            Err(_) => panic!("no event {what} for {unit} within {EVENT_TIMEOUT:?}; saw {seen:#?}"),
        }
    }
}

async fn first_resync(rx: &mut mpsc::Receiver<DriverEvent>) -> Vec<UnitObservation> {
    match timeout(EVENT_TIMEOUT, rx.recv()).await {
        Ok(Some(DriverEvent::Resync(all))) => all,
        other => panic!("the first event must be a Resync, got {other:?}"),
    }
}

async fn details(d: &SystemdDriver, unit: &str) -> UnitDetails {
    d.unit_details(unit)
        .await
        .unwrap_or_else(|e| panic!("reading {unit}: {e}"))
}

fn memcg_file(sd: &PrivateSystemd, cgroup: &str, controller: &str, file: &str) -> String {
    let p: PathBuf = sd
        .root()
        .join("sys/fs/cgroup")
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
        .join(file);
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_read_back_exactly_and_reach_the_kernel() {
    let sd = boot();
    let d = driver(&sd).await;
    let s = spec(
        "budget",
        &["/bin/sleep", "300"],
        vec![
            u64p("MemoryMax", 64 << 20),
            u64p("CPUQuotaPerSecUSec", 200_000),
            u64p("TasksMax", 16),
        ],
    );
    assert_eq!(d.start_and_wait(&s).await.expect("start"), "done");
    let det = details(&d, &s.unit).await;
    assert_eq!(det.memory_max, 64 << 20);
    assert_eq!(det.cpu_quota_per_sec_usec, 200_000);
    assert_eq!(det.tasks_max, 16);
    assert_eq!(
        (det.active_state.as_str(), det.sub_state.as_str()),
        ("active", "running")
    );
    assert_ne!(det.main_pid, 0);
    assert_eq!(det.n_restarts, 0);
    assert_eq!(det.spec_hash.as_deref(), Some("hashbudget"));
    assert_eq!(det.phase(), UnitPhase::Running);
    assert_eq!(
        det.control_group,
        format!("{}/strata.slice/{}", cgroup_root(&sd), s.unit)
    );
    // What the kernel enforces: 64 MiB, 20 ms per 100 ms period, 16 tasks.
    let cg = det.control_group.as_str();
    assert_eq!(
        memcg_file(&sd, cg, "memory", "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(memcg_file(&sd, cg, "cpu", "cpu.cfs_quota_us"), "20000");
    assert_eq!(memcg_file(&sd, cg, "cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(memcg_file(&sd, cg, "pids", "pids.max"), "16");
    // The observation agrees with the details.
    let listed = d.list().await.expect("list");
    assert_eq!(listed, vec![det.observation()]);
    assert_eq!(det.tasks_current, 1, "one sleep process in the unit");
    sd.shutdown().expect("shutdown");
}

/// systemd's own cgroup root in the namespace (`/strata-ns-<token>`).
fn cgroup_root(sd: &PrivateSystemd) -> String {
    format!("/strata-ns-{}", sd.token())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_is_observed_through_the_event_stream() {
    let sd = boot();
    let d = driver(&sd).await;
    let mut rx = d.events().await.expect("events");
    assert_eq!(first_resync(&mut rx).await, vec![]);
    let s = spec("victim", &["/bin/sleep", "300"], vec![]);
    d.start(&s).await.expect("start");
    let running = wait_for(&mut rx, &s.unit, "Running", |o| {
        o.phase == UnitPhase::Running
    })
    .await;
    assert_ne!(running.main_pid, 0);
    assert_eq!(running.spec_hash.as_deref(), Some("hashvictim"));

    d.kill(&s.unit, libc::SIGKILL).await.expect("kill");
    let failed = wait_for(&mut rx, &s.unit, "Failed", |o| {
        matches!(o.phase, UnitPhase::Failed(_))
    })
    .await;
    assert_eq!(failed.phase, UnitPhase::Failed(ExitReason::Signal(9)));
    assert_eq!(failed.main_pid, 0);
    let det = details(&d, &s.unit).await;
    assert_eq!(
        (
            det.result.as_str(),
            det.exec_main_code,
            det.exec_main_status
        ),
        ("signal", 2, 9)
    );
    // A plain SIGKILL is not an OOM kill: the watch was armed and says no.
    assert_eq!(d.oom_killed(&s.unit), Some(false));
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_unit_restarts_in_place_with_its_properties() {
    let sd = boot();
    let d = driver(&sd).await;
    let mut rx = d.events().await.expect("events");
    assert_eq!(first_resync(&mut rx).await, vec![]);
    let s = spec(
        "again",
        &["/bin/sleep", "300"],
        vec![u64p("MemoryMax", 48 << 20), u64p("TasksMax", 8)],
    );
    d.start(&s).await.expect("start");
    let first = wait_for(&mut rx, &s.unit, "Running", |o| {
        o.phase == UnitPhase::Running
    })
    .await;
    d.kill(&s.unit, libc::SIGKILL).await.expect("kill");
    wait_for(&mut rx, &s.unit, "Failed", |o| {
        o.phase == UnitPhase::Failed(ExitReason::Signal(9))
    })
    .await;
    // StartUnit on the loaded failed unit: a new main process, the same unit and properties.
    d.restart(&s).await.expect("restart in place");
    let second = wait_for(&mut rx, &s.unit, "Running again", |o| {
        o.phase == UnitPhase::Running
    })
    .await;
    assert_ne!(second.main_pid, 0);
    assert_ne!(second.main_pid, first.main_pid);
    let det = details(&d, &s.unit).await;
    assert_eq!((det.memory_max, det.tasks_max), (48 << 20, 8));
    assert_eq!(det.spec_hash.as_deref(), Some("hashagain"));
    assert_eq!(det.phase(), UnitPhase::Running);
    // On a running unit it changes nothing: restart() returns once the job is queued, so
    // watch the unit's events for a while; a restart would show another PID or phase.
    d.restart(&s).await.expect("restart of a running unit");
    let changed = timeout(Duration::from_millis(1500), async {
        loop {
            match rx.recv().await {
                Some(DriverEvent::Changed(o))
                    if o.unit == s.unit
                        && (o.main_pid != second.main_pid || o.phase != UnitPhase::Running) =>
                {
                    return Some(o);
                }
                Some(_) => {}
                None => return None,
            }
        }
    })
    .await;
    assert!(
        changed.is_err(),
        "restarting a running unit disturbed it: {changed:?}"
    );
    assert_eq!(details(&d, &s.unit).await.main_pid, second.main_pid);
    // A crash loop: more restarts within 10 s than systemd's default start limit (5) allows.
    // Each end is a plain SIGKILL: the new cgroup at the old path must not make the old
    // cgroup's removal look like an OOM kill (cgroup v1 watch).
    let mut pid = second.main_pid;
    for round in 0..8 {
        d.kill(&s.unit, libc::SIGKILL).await.expect("kill");
        let failed = wait_for(&mut rx, &s.unit, "Failed", |o| {
            matches!(o.phase, UnitPhase::Failed(_))
        })
        .await;
        assert_eq!(failed.phase, UnitPhase::Failed(ExitReason::Signal(9)));
        d.restart(&s).await.expect("restart in place");
        let again = wait_for(
            &mut rx,
            &s.unit,
            &format!("Running after crash {round}"),
            |o| {
                assert_ne!(
                    o.phase,
                    UnitPhase::Failed(ExitReason::OomKill),
                    "a SIGKILL reported as an OOM kill (round {round})"
                );
                o.phase == UnitPhase::Running && o.main_pid != pid
            },
        )
        .await;
        pid = again.main_pid;
    }

    // A unit collected meanwhile (reset by hand): the restart starts the spec anew.
    d.kill(&s.unit, libc::SIGKILL).await.expect("kill");
    wait_for(&mut rx, &s.unit, "Failed", |o| {
        matches!(o.phase, UnitPhase::Failed(_))
    })
    .await;
    d.reset_failed(&s.unit).await.expect("reset-failed");
    timeout(EVENT_TIMEOUT, async {
        while let Some(ev) = rx.recv().await {
            if matches!(&ev, DriverEvent::Removed { unit } if *unit == s.unit) {
                return;
            }
        }
    })
    .await
    .expect("the reset unit is removed");
    d.restart(&s).await.expect("restart of a collected unit");
    let third = wait_for(&mut rx, &s.unit, "Running anew", |o| {
        o.phase == UnitPhase::Running
    })
    .await;
    assert_ne!(third.main_pid, pid);
    assert_eq!(details(&d, &s.unit).await.memory_max, 48 << 20);
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_of_a_unit_restarted_by_systemd_are_never_oom_kills() {
    let sd = boot();
    let d = driver(&sd).await;
    let mut rx = d.events().await.expect("events");
    assert_eq!(first_resync(&mut rx).await, vec![]);
    // systemd's own Restart= recreates the cgroup at the same path at once: the cgroup v1
    // watch must not read the new cgroup for the old one.
    let unit = "strata-autorestart.service";
    let out = sd
        .command("systemd-run")
        .args([
            "--quiet",
            "--unit",
            unit,
            "--slice=strata.slice",
            "-p",
            "Type=exec",
            "-p",
            "Restart=always",
            "-p",
            "RestartSec=0",
            "-p",
            "StartLimitIntervalSec=0",
            "-p",
            "MemoryMax=64M",
            "/bin/sleep",
            "300",
        ])
        .output()
        .expect("systemd-run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut pid = wait_for(&mut rx, unit, "Running", |o| o.phase == UnitPhase::Running)
        .await
        .main_pid;
    for round in 0..12 {
        d.kill(unit, libc::SIGKILL).await.expect("kill");
        pid = wait_for(
            &mut rx,
            unit,
            &format!("Running after crash {round}"),
            |o| {
                assert_ne!(
                    o.phase,
                    UnitPhase::Failed(ExitReason::OomKill),
                    "a SIGKILL reported as an OOM kill (round {round})"
                );
                o.phase == UnitPhase::Running && o.main_pid != 0 && o.main_pid != pid
            },
        )
        .await
        .main_pid;
    }
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_memory_max_is_reported_as_an_oom_kill() {
    let sd = boot();
    let d = driver(&sd).await;
    let mut rx = d.events().await.expect("events");
    first_resync(&mut rx).await;
    let alloc = |name: &str, mib: u32| {
        // Wait a little before allocating so that the failure is not part of the start job.
        let code = format!("import time; time.sleep(0.3); b = bytearray({mib} * 1024 * 1024)");
        spec(
            name,
            &["/usr/bin/python3", "-c", &code],
            vec![u64p("MemoryMax", 32 << 20)],
        )
    };
    // Positive control: 4 MiB fits under the 32 MiB budget and the unit exits cleanly.
    let small = alloc("fits", 4);
    assert_eq!(d.start_and_wait(&small).await.expect("start fits"), "done");
    let done = wait_for(&mut rx, &small.unit, "Exited", |o| {
        !matches!(o.phase, UnitPhase::Starting | UnitPhase::Running)
    })
    .await;
    assert_eq!(done.phase, UnitPhase::Exited);

    let big = alloc("hog", 200);
    assert_eq!(d.start_and_wait(&big).await.expect("start hog"), "done");
    let failed = wait_for(&mut rx, &big.unit, "Failed", |o| {
        matches!(o.phase, UnitPhase::Failed(_))
    })
    .await;
    assert_eq!(
        failed.phase,
        UnitPhase::Failed(ExitReason::OomKill),
        "oom watch: {:?}",
        d.oom_killed(&big.unit)
    );
    assert_eq!(d.oom_killed(&big.unit), Some(true));
    // What systemd itself says on cgroup v1: a SIGKILL.
    let det = details(&d, &big.unit).await;
    assert_eq!((det.result.as_str(), det.exec_main_status), ("signal", 9));
    assert_eq!(det.phase(), UnitPhase::Failed(ExitReason::OomKill));
    sd.shutdown().expect("shutdown");
}

/// Forks 50 sleepers; exits with the number of forks that succeeded (EAGAIN is counted as a
/// refusal, any other error fails the script with status 1).
const FORK_LOOP: &str = "
import errno, os, sys, time
ok = 0
for _ in range(50):
    try:
        pid = os.fork()
    except OSError as e:
        if e.errno != errno.EAGAIN:
            raise
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    ok += 1
print(f'forked {ok} of 50', flush=True)
os._exit(ok)
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_max_stops_a_fork_loop() {
    let sd = boot();
    let d = driver(&sd).await;
    let mut rx = d.events().await.expect("events");
    first_resync(&mut rx).await;
    let forker = |name: &str, tasks: u64| {
        spec(
            name,
            &["/usr/bin/python3", "-c", FORK_LOOP],
            vec![u64p("TasksMax", tasks)],
        )
    };
    // With 8 tasks: the script itself is one, so exactly 7 forks succeed.
    let limited = forker("forks-limited", 8);
    d.start(&limited).await.expect("start limited");
    let end = wait_for(&mut rx, &limited.unit, "end", |o| {
        matches!(o.phase, UnitPhase::Failed(_) | UnitPhase::Exited)
    })
    .await;
    assert_eq!(end.phase, UnitPhase::Failed(ExitReason::ExitCode(7)));
    // Positive control: with room for all, all 50 forks succeed.
    let roomy = forker("forks-roomy", 64);
    d.start(&roomy).await.expect("start roomy");
    let end = wait_for(&mut rx, &roomy.unit, "end", |o| {
        matches!(o.phase, UnitPhase::Failed(_) | UnitPhase::Exited)
    })
    .await;
    assert_eq!(end.phase, UnitPhase::Failed(ExitReason::ExitCode(50)));
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_cleanup_leave_no_unit_behind() {
    let sd = boot();
    let d = driver(&sd).await;
    let runs = spec("runs", &["/bin/sleep", "300"], vec![]);
    let fails = spec("fails", &["/bin/sh", "-c", "exit 3"], vec![]);
    let killed = spec("killed", &["/bin/sleep", "300"], vec![]);
    for s in [&runs, &killed] {
        assert_eq!(d.start_and_wait(s).await.expect("start"), "done");
    }
    // A process that exits at once may beat systemd's exec check: its start job then fails.
    let job = d.start_and_wait(&fails).await.expect("start fails");
    assert!(job == "done" || job == "failed", "{job}");
    d.kill(&killed.unit, libc::SIGKILL).await.expect("kill");
    // Wait (by event) until both failures are recorded.
    let mut rx = d.events().await.expect("events");
    let mut failed: HashMap<String, UnitPhase> = HashMap::new();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while failed.len() < 2 {
        let ev = timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        .unwrap_or_else(|_| panic!("failures not seen; have {failed:?}"))
        .expect("event stream ended");
        let obs = match ev {
            DriverEvent::Resync(all) => all,
            DriverEvent::Changed(o) => vec![o],
            DriverEvent::Removed { .. } => vec![],
        };
        for o in obs {
            if matches!(o.phase, UnitPhase::Failed(_)) {
                failed.insert(o.unit, o.phase);
            }
        }
    }
    assert_eq!(
        failed[&fails.unit],
        UnitPhase::Failed(ExitReason::ExitCode(3))
    );
    assert_eq!(
        failed[&killed.unit],
        UnitPhase::Failed(ExitReason::Signal(9))
    );
    let mut names: Vec<String> = d
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|o| o.unit)
        .collect();
    names.sort();
    let mut expected = vec![runs.unit.clone(), fails.unit.clone(), killed.unit.clone()];
    expected.sort();
    assert_eq!(
        names, expected,
        "positive control: all three are listed before cleanup"
    );

    for s in [&runs, &fails, &killed] {
        assert_eq!(d.stop_and_wait(&s.unit).await.expect("stop"), "done");
        d.reset_failed(&s.unit).await.expect("reset-failed");
    }
    assert_eq!(d.list().await.expect("list"), vec![]);
    let out = sd
        .systemctl(&[
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "strata-*.service",
        ])
        .expect("systemctl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
    // Stopping and resetting what is gone is not an error.
    d.stop(&runs.unit).await.expect("stop again");
    d.reset_failed(&runs.unit)
        .await
        .expect("reset-failed again");
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_quick_starts_each_reach_running_exactly_once() {
    const N: usize = 24;
    let sd = boot();
    let d = driver(&sd).await;
    let mut rx = d.events().await.expect("events");
    assert_eq!(first_resync(&mut rx).await, vec![]);
    let specs: Vec<UnitSpec> = (0..N)
        .map(|i| spec(&format!("quick-{i}"), &["/bin/sleep", "300"], vec![]))
        .collect();
    // Fire all starts at once, without waiting for jobs: the signals race the replies.
    let starts = specs.iter().map(|s| d.start(s));
    for r in futures_util::future::join_all(starts).await {
        r.expect("start");
    }
    let mut history: HashMap<String, Vec<UnitObservation>> = HashMap::new();
    let running = |h: &HashMap<String, Vec<UnitObservation>>| {
        h.values()
            .filter(|v| v.iter().any(|o| o.phase == UnitPhase::Running))
            .count()
    };
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while running(&history) < N {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        {
            Ok(Some(DriverEvent::Changed(o))) => history.entry(o.unit.clone()).or_default().push(o),
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!(
                "only {} of {N} units reached Running: {history:#?}",
                running(&history)
            ),
        }
    }
    // Let late duplicates arrive, if the driver let any through.
    while let Ok(Some(ev)) = timeout(Duration::from_millis(500), rx.recv()).await {
        match ev {
            DriverEvent::Changed(o) => history.entry(o.unit.clone()).or_default().push(o),
            other => panic!("unexpected event {other:?}"),
        }
    }
    for s in &specs {
        let h = &history[&s.unit];
        let runs = h.iter().filter(|o| o.phase == UnitPhase::Running).count();
        assert_eq!(runs, 1, "{}: {h:#?}", s.unit);
        assert!(
            h.windows(2).all(|w| w[0] != w[1]),
            "duplicate for {}: {h:#?}",
            s.unit
        );
        assert!(
            h.iter()
                .all(|o| matches!(o.phase, UnitPhase::Starting | UnitPhase::Running)),
            "{}: {h:#?}",
            s.unit
        );
        assert_eq!(h.last().map(|o| &o.phase), Some(&UnitPhase::Running));
        assert_eq!(
            d.metrics()
                .bus_lagged_total
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
    // Stopping them: each ends with Removed (inactive units are collected).
    for s in &specs {
        d.stop(&s.unit).await.expect("stop");
    }
    let mut removed = 0;
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while removed < N {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        {
            Ok(Some(DriverEvent::Removed { .. })) => removed += 1,
            Ok(Some(DriverEvent::Changed(o))) => assert!(
                matches!(o.phase, UnitPhase::Stopping | UnitPhase::Exited),
                "{o:?}"
            ),
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("only {removed} of {N} units were removed"),
        }
    }
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_unit_and_systemds_error() {
    let sd = boot();
    let d = driver(&sd).await;
    let bad = spec(
        "bad",
        &["/bin/sleep", "1"],
        vec![Property::new("ProtectEverything", PropValue::Bool(true))],
    );
    match d.start(&bad).await {
        Err(DriverError::Spec(SpecError::UnsupportedProperty { unit, property })) => {
            assert_eq!(
                (unit.as_str(), property.as_str()),
                ("strata-bad.service", "ProtectEverything")
            );
        }
        other => panic!("expected an unsupported-property error, got {other:?}"),
    }
    let s = spec("twice", &["/bin/sleep", "300"], vec![]);
    d.start_and_wait(&s).await.expect("first start");
    let err = d
        .start(&s)
        .await
        .expect_err("a second start of a loaded unit must fail");
    let msg = err.to_string();
    assert!(
        matches!(err, DriverError::StartUnit { ref unit, .. } if unit == &s.unit),
        "{err:?}"
    );
    assert!(msg.contains("strata-twice.service"), "{msg}");
    assert!(msg.contains("org.freedesktop.systemd1.UnitExists"), "{msg}");
    match d.unit_details("strata-nothere.service").await {
        Err(DriverError::NoSuchUnit { unit }) => assert_eq!(unit, "strata-nothere.service"),
        other => panic!("expected NoSuchUnit, got {other:?}"),
    }
    // A property systemd accepts in the table but whose value it rejects names systemd's error.
    let odd = spec(
        "odd",
        &["/bin/sleep", "1"],
        vec![Property::new(
            "ProtectProc",
            PropValue::Str("sideways".into()),
        )],
    );
    match d.start(&odd).await {
        Err(DriverError::StartUnit { unit, source }) => {
            assert_eq!(unit, "strata-odd.service");
            assert!(
                source
                    .to_string()
                    .contains("org.freedesktop.DBus.Error.InvalidArgs"),
                "{source}"
            );
        }
        other => panic!("expected systemd to refuse ProtectProc=sideways, got {other:?}"),
    }
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hardening_baseline_is_accepted_by_systemd() {
    let sd = boot();
    let d = driver(&sd).await;
    let strs = |v: &[&str]| PropValue::Strings(v.iter().map(|s| (*s).to_owned()).collect());
    let b = |n: &str| Property::new(n, PropValue::Bool(true));
    let s = spec(
        "hardened",
        &["/bin/sleep", "300"],
        vec![
            b("DynamicUser"),
            Property::new("ProtectSystem", PropValue::Str("strict".into())),
            Property::new("ProtectHome", PropValue::Str("yes".into())),
            b("PrivateTmp"),
            b("PrivateDevices"),
            b("PrivateNetwork"),
            b("NoNewPrivileges"),
            b("ProtectKernelTunables"),
            b("ProtectKernelModules"),
            b("ProtectKernelLogs"),
            b("ProtectControlGroups"),
            b("ProtectClock"),
            b("ProtectHostname"),
            Property::new("ProtectProc", PropValue::Str("invisible".into())),
            Property::new("ProcSubset", PropValue::Str("pid".into())),
            b("RestrictNamespaces"),
            b("RestrictRealtime"),
            b("RestrictSUIDSGID"),
            b("LockPersonality"),
            b("MemoryDenyWriteExecute"),
            Property::new(
                "SystemCallFilter",
                PropValue::List {
                    allow: true,
                    items: vec!["@system-service".into()],
                },
            ),
            Property::new("SystemCallArchitectures", strs(&["native"])),
            Property::new(
                "RestrictAddressFamilies",
                PropValue::List {
                    allow: true,
                    items: vec!["AF_UNIX".into(), "AF_INET".into()],
                },
            ),
            Property::new("CapabilityBoundingSet", PropValue::Capabilities(vec![])),
            Property::new("AmbientCapabilities", PropValue::Capabilities(vec![])),
            Property::new(
                "SocketBindAllow",
                PropValue::SocketBind(vec![strata_core::unit::SocketBind {
                    family: "AF_INET".into(),
                    protocol: "tcp".into(),
                    port: 8080,
                }]),
            ),
            Property::new("UMask", PropValue::Str("0077".into())),
            Property::new("ReadWritePaths", strs(&["/var/lib/strata-test"])),
            Property::new("InaccessiblePaths", strs(&["/run/dbus"])),
            Property::new("IPAddressDeny", strs(&["any"])),
            Property::new("Environment", strs(&["GREETING=hello"])),
            Property::new(
                "SetCredential",
                PropValue::Credentials(vec![("greeting".into(), "hi".into())]),
            ),
            Property::new("WorkingDirectory", PropValue::Str("/".into())),
            u64p("IOWeight", 50),
        ],
    );
    assert_eq!(d.start_and_wait(&s).await.expect("start"), "done");
    let det = details(&d, &s.unit).await;
    assert_eq!(det.phase(), UnitPhase::Running);
    assert_eq!(det.spec_hash.as_deref(), Some("hashhardened"));
    let show = sd
        .systemctl(&[
            "show",
            &s.unit,
            "-p",
            "DynamicUser,ProtectSystem,UMask,CapabilityBoundingSet,SocketBindAllow,Environment",
        ])
        .expect("systemctl show");
    let show = String::from_utf8_lossy(&show.stdout);
    for line in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "UMask=0077",
        "CapabilityBoundingSet=",
        "Environment=GREETING=hello STRATA_SPEC_HASH=hashhardened",
    ] {
        assert!(
            show.lines().any(|l| l == line),
            "missing {line:?} in:\n{show}"
        );
    }
    // systemd 252 prints this one without the colon before the port ("ipv4:tcp8080").
    assert!(
        show.lines()
            .any(|l| l.starts_with("SocketBindAllow=ipv4:tcp") && l.ends_with("8080")),
        "missing SocketBindAllow in:\n{show}"
    );
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_bus_drops_the_stream_reconnects_and_resyncs() {
    let sd = boot();
    let d = driver(&sd).await;
    let mut rx = d.events().await.expect("events");
    assert_eq!(first_resync(&mut rx).await, vec![]);
    let before = spec("before", &["/bin/sleep", "300"], vec![]);
    d.start(&before).await.expect("start before");
    wait_for(&mut rx, &before.unit, "Running", |o| {
        o.phase == UnitPhase::Running
    })
    .await;

    // Kill the bus daemon; dbus.socket restarts it on the next connection attempt.
    let out = sd
        .systemctl(&["kill", "--signal=SIGKILL", "dbus.service"])
        .expect("systemctl kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let deadline = Instant::now() + EVENT_TIMEOUT;
    let resync = loop {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        {
            Ok(Some(DriverEvent::Resync(all))) => break all,
            Ok(Some(DriverEvent::Changed(o))) if o.unit == before.unit => {
                panic!("the running unit must not change: {o:?}")
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("event stream ended instead of reconnecting"),
            Err(_) => panic!("no Resync within {EVENT_TIMEOUT:?} after the bus dropped"),
        }
    };
    assert_eq!(resync.len(), 1, "{resync:?}");
    assert_eq!(resync[0].unit, before.unit);
    assert_eq!(resync[0].phase, UnitPhase::Running);
    assert!(
        d.metrics()
            .bus_reconnects_total
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );

    // The command connection reconnects too, and the new stream sees new units.
    let after = spec("after", &["/bin/sleep", "300"], vec![]);
    assert_eq!(d.start_and_wait(&after).await.expect("start after"), "done");
    wait_for(&mut rx, &after.unit, "Running", |o| {
        o.phase == UnitPhase::Running
    })
    .await;
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_consumer_gets_counted_and_resynced() {
    const N: usize = 6;
    let sd = boot();
    let config = DriverConfig {
        cgroup_root: sd.root().join("sys/fs/cgroup"),
        event_capacity: 2,
    };
    let d = SystemdDriver::connect_with(BusTarget::Address(sd.bus_address()), config)
        .await
        .expect("connect");
    let mut rx = d.events().await.expect("events");
    assert_eq!(first_resync(&mut rx).await, vec![]);
    let specs: Vec<UnitSpec> = (0..N)
        .map(|i| spec(&format!("flood-{i}"), &["/bin/sleep", "300"], vec![]))
        .collect();
    // Not reading while all of them start: the channel (2 slots) overflows.
    for s in &specs {
        assert_eq!(d.start_and_wait(s).await.expect("start"), "done");
    }
    let lagged = || {
        d.metrics()
            .bus_lagged_total
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // The driver's event task may still be catching up with the bus when the last start job
    // is done: give it until EVENT_TIMEOUT to hit the full channel.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while lagged() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(lagged() > 0, "the channel must have overflowed");
    // Reading again: a Resync follows, and the current state of every unit arrives.
    let mut state: HashMap<String, UnitPhase> = HashMap::new();
    let mut resyncs = 0;
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !(resyncs > 0 && state.len() == N && state.values().all(|p| *p == UnitPhase::Running)) {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            rx.recv(),
        )
        .await
        {
            Ok(Some(DriverEvent::Resync(all))) => {
                resyncs += 1;
                state = all.into_iter().map(|o| (o.unit, o.phase)).collect();
            }
            Ok(Some(DriverEvent::Changed(o))) => {
                state.insert(o.unit, o.phase);
            }
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("state not converged: resyncs {resyncs}, {state:?}"),
        }
    }
    sd.shutdown().expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_do_not_disturb_each_other() {
    let a = boot();
    let b = boot();
    assert_ne!(a.pid(), b.pid());
    let (da, db) = (driver(&a).await, driver(&b).await);
    let mut rx_a = da.events().await.expect("events a");
    let mut rx_b = db.events().await.expect("events b");
    assert_eq!(first_resync(&mut rx_a).await, vec![]);
    assert_eq!(first_resync(&mut rx_b).await, vec![]);
    // The same unit name in both.
    let s = spec("same", &["/bin/sleep", "300"], vec![]);
    assert_eq!(da.start_and_wait(&s).await.expect("start a"), "done");
    assert_eq!(db.start_and_wait(&s).await.expect("start b"), "done");
    wait_for(&mut rx_a, &s.unit, "Running", |o| {
        o.phase == UnitPhase::Running
    })
    .await;
    wait_for(&mut rx_b, &s.unit, "Running", |o| {
        o.phase == UnitPhase::Running
    })
    .await;
    let (ca, cb) = (details(&da, &s.unit).await, details(&db, &s.unit).await);
    assert_ne!(
        ca.control_group, cb.control_group,
        "separate cgroup subtrees"
    );

    da.kill(&s.unit, libc::SIGKILL).await.expect("kill in a");
    let failed = wait_for(&mut rx_a, &s.unit, "Failed", |o| {
        matches!(o.phase, UnitPhase::Failed(_))
    })
    .await;
    assert_eq!(failed.phase, UnitPhase::Failed(ExitReason::Signal(9)));
    // b saw nothing and its unit still runs.
    assert!(
        timeout(Duration::from_millis(300), rx_b.recv())
            .await
            .is_err(),
        "instance b must see no event"
    );
    assert_eq!(details(&db, &s.unit).await.phase(), UnitPhase::Running);
    a.shutdown().expect("shutdown a");
    assert_eq!(details(&db, &s.unit).await.phase(), UnitPhase::Running);
    b.shutdown().expect("shutdown b");
}
