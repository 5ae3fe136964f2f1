//! The supervisor loop against the recording fake driver: start order, crash → backoff →
//! quarantine → release, adoption after a restart, and a reload that rolls only what changed.
//! (The same loop against a real systemd is tested in `supervisor_systemd.rs`.)

use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_core::observed::{ExitReason, UnitPhase};
use strata_systemd::control::ControlRequest;
use strata_systemd::fake::{Call, FakeDriver};
use strata_systemd::supervisor::{
    LaunchSettings, Published, QuarantineStore, RecordingPublisher, Signal, Supervisor,
    SupervisorConfig, load_manifest,
};
use tokio::sync::{mpsc, oneshot};

const MANIFEST: &str = r#"
[node]
id = "t"
binaries_dir = "/opt/strata/bin"

[core.identity]
enable = false
[core.registry]
enable = false
[core.fs]
enable = false
[core.audit]
enable = false

[services.db]
exec = ["/bin/sleep", "infinity"]
restart = { initial = "20ms", max = "80ms", quarantine = { crashes = 3, window = "1m" } }

[services.api]
exec = ["/bin/sleep", "infinity"]
after = ["db"]

[services.web]
exec = ["/bin/sleep", "infinity"]
after = ["api"]
"#;

struct Running {
    fake: FakeDriver,
    publisher: RecordingPublisher,
    control: mpsc::Sender<ControlRequest>,
    signals: mpsc::Sender<Signal>,
    task: tokio::task::JoinHandle<()>,
}

fn manifest_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("strata-loop-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("strata.toml");
    std::fs::write(&path, text).expect("write manifest");
    path
}

fn spawn(fake: FakeDriver, path: &Path) -> Running {
    let manifest = load_manifest(path).expect("manifest is valid");
    let publisher = RecordingPublisher::default();
    let config = SupervisorConfig {
        manifest_path: path.to_owned(),
        launch: LaunchSettings::default(),
        seed: 7,
        watchdog: None,
    };
    let sup = Supervisor::new(
        fake.clone(),
        publisher.clone(),
        config,
        &manifest,
        QuarantineStore::in_memory(),
    )
    .expect("supervisor");
    let (control, control_rx) = mpsc::channel(8);
    let (signals, signals_rx) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        sup.run(control_rx, signals_rx)
            .await
            .expect("loop ends cleanly");
    });
    Running {
        fake,
        publisher,
        control,
        signals,
        task,
    }
}

/// Waits (bounded) until `pred` holds for the fake's state.
async fn until(what: &str, mut pred: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pred() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn running(fake: &FakeDriver, unit: &str) -> bool {
    fake.units()
        .get(unit)
        .is_some_and(|o| o.phase == UnitPhase::Running)
}

/// Every start of a unit, as a new transient unit or again in place.
fn starts(calls: &[Call]) -> Vec<String> {
    calls
        .iter()
        .filter_map(|c| match c {
            Call::Start { unit, .. } | Call::Restart { unit, .. } => Some(unit.clone()),
            _ => None,
        })
        .collect()
}

async fn ask<T>(
    tx: &mpsc::Sender<ControlRequest>,
    make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
) -> T {
    let (otx, orx) = oneshot::channel();
    tx.send(make(otx)).await.expect("loop alive");
    orx.await.expect("loop answered")
}

#[tokio::test]
async fn starts_in_dependency_order_and_publishes_ready() {
    let r = spawn(FakeDriver::new(), &manifest_file("order", MANIFEST));
    until("web running", || running(&r.fake, "strata-web.service")).await;
    assert_eq!(
        starts(&r.fake.calls()),
        [
            "strata-db.service",
            "strata-api.service",
            "strata-web.service"
        ]
    );
    let published = r.publisher.take();
    assert!(
        published
            .iter()
            .any(|p| matches!(p, Published::Ready { services: 3 })),
        "{published:?}"
    );
    r.signals.send(Signal::Shutdown).await.expect("send");
    r.task.await.expect("join");
    assert!(
        r.fake.calls().iter().all(|c| !matches!(c, Call::Stop(_))),
        "shutdown must leave units running"
    );
}

#[tokio::test]
async fn crashes_back_off_then_quarantine_and_release_clears_history() {
    let r = spawn(FakeDriver::new(), &manifest_file("crash", MANIFEST));
    until("db running", || running(&r.fake, "strata-db.service")).await;
    for n in 1..=3 {
        r.fake.fail("strata-db.service", ExitReason::Signal(9));
        if n < 3 {
            until("db restarted", || {
                running(&r.fake, "strata-db.service")
                    && starts(&r.fake.calls())
                        .iter()
                        .filter(|u| *u == "strata-db.service")
                        .count()
                        == n + 1
            })
            .await;
        }
    }
    // The crashed unit carries the current spec: each restart starts it again in place,
    // without resetting it and creating a new transient unit.
    let calls = r.fake.calls();
    let db_calls: Vec<&Call> = calls
        .iter()
        .filter(|c| match c {
            Call::Start { unit, .. } | Call::Restart { unit, .. } => unit == "strata-db.service",
            Call::ResetFailed(unit) | Call::Stop(unit) | Call::Kill(unit, _) => {
                unit == "strata-db.service"
            }
        })
        .collect();
    assert!(
        matches!(
            db_calls.as_slice(),
            [
                Call::Start { .. },
                Call::Restart { .. },
                Call::Restart { .. },
                ..
            ]
        ),
        "{db_calls:?}"
    );
    until("db quarantined", || {
        r.publisher.events.lock().expect("lock").iter().any(|p| {
            matches!(p, Published::StateChanged { service, new, .. } if service == "db" && new == "quarantined")
        })
    })
    .await;
    // Quarantined: the failed unit stays visible, nothing restarts it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let db = r
        .fake
        .units()
        .get("strata-db.service")
        .cloned()
        .expect("failed unit kept");
    assert_eq!(db.phase, UnitPhase::Failed(ExitReason::Signal(9)));
    assert_eq!(
        starts(&r.fake.calls())
            .iter()
            .filter(|u| *u == "strata-db.service")
            .count(),
        3
    );
    let info = ask(&r.control, |tx| ControlRequest::Get("db".into(), tx))
        .await
        .expect("db known");
    assert_eq!(info.state, "quarantined");
    assert!(
        info.reason.contains("3 failures"),
        "reason names the count: {}",
        info.reason
    );

    // Release restarts it with a clean history: one more crash does not quarantine again.
    ask(&r.control, |tx| ControlRequest::Release("db".into(), tx))
        .await
        .expect("release");
    until("db running after release", || {
        running(&r.fake, "strata-db.service")
    })
    .await;
    r.fake.fail("strata-db.service", ExitReason::ExitCode(1));
    until("db restarted after one crash", || {
        running(&r.fake, "strata-db.service")
    })
    .await;
    let info = ask(&r.control, |tx| ControlRequest::Get("db".into(), tx))
        .await
        .expect("db known");
    assert_eq!(info.state, "running");
    let err = ask(&r.control, |tx| ControlRequest::Release("db".into(), tx))
        .await
        .expect_err("not quarantined");
    assert_eq!(
        err.to_string(),
        "service `db` is not quarantined (it is running)"
    );
    r.task.abort();
}

#[tokio::test]
async fn a_restarted_supervisor_adopts_units_with_the_same_spec() {
    let path = manifest_file("adopt", MANIFEST);
    let first = spawn(FakeDriver::new(), &path);
    until("web running", || running(&first.fake, "strata-web.service")).await;
    first.signals.send(Signal::Shutdown).await.expect("send");
    first.task.await.expect("join");
    let before = first.fake.units();

    // A new supervisor on a systemd that still has every unit.
    let fake = FakeDriver::new();
    for obs in before.values() {
        fake.preload(obs.clone());
    }
    let second = spawn(fake, &path);
    until("ready", || {
        second
            .publisher
            .events
            .lock()
            .expect("lock")
            .iter()
            .any(|p| matches!(p, Published::Ready { .. }))
    })
    .await;
    assert_eq!(second.fake.calls(), vec![], "adoption makes no call");
    let list = ask(&second.control, ControlRequest::List).await;
    assert!(list.iter().all(|s| s.state == "running"), "{list:?}");
    assert_eq!(second.fake.units(), before, "same units, same PIDs");
    second.task.abort();
}

#[tokio::test]
async fn reload_rolls_only_the_changed_service_and_stops_removed_ones() {
    let path = manifest_file("reload", MANIFEST);
    let r = spawn(FakeDriver::new(), &path);
    until("web running", || running(&r.fake, "strata-web.service")).await;
    let pids: Vec<u32> = ["strata-db.service", "strata-api.service"]
        .iter()
        .map(|u| r.fake.units()[*u].main_pid)
        .collect();

    // web changes its exec; api is removed (web no longer needs it).
    let changed = MANIFEST
        .replace(
            "[services.api]\nexec = [\"/bin/sleep\", \"infinity\"]\nafter = [\"db\"]\n",
            "",
        )
        .replace(
            "[services.web]\nexec = [\"/bin/sleep\", \"infinity\"]\nafter = [\"api\"]",
            "[services.web]\nexec = [\"/bin/sleep\", \"1000\"]\nafter = [\"db\"]",
        );
    std::fs::write(&path, changed).expect("write");
    let v = ask(&r.control, ControlRequest::Reload)
        .await
        .expect("reload accepted");
    assert_eq!(v, 2);
    until("web rolled and api gone", || {
        running(&r.fake, "strata-web.service")
            && !r.fake.units().contains_key("strata-api.service")
            && starts(&r.fake.calls())
                .iter()
                .filter(|u| *u == "strata-web.service")
                .count()
                == 2
    })
    .await;
    assert_eq!(
        r.fake.units()["strata-db.service"].main_pid,
        pids[0],
        "db untouched"
    );

    // An invalid manifest is refused and changes nothing.
    std::fs::write(&path, "[node]\nid = 3\n").expect("write");
    let calls_before = r.fake.calls().len();
    let err = ask(&r.control, ControlRequest::Reload)
        .await
        .expect_err("invalid manifest refused");
    assert!(
        err.to_string()
            .starts_with("invalid manifest, the running graph is unchanged"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(r.fake.calls().len(), calls_before);
    r.task.abort();
}

#[tokio::test]
async fn a_refused_start_becomes_a_backoff_not_a_storm() {
    let fake = FakeDriver::new();
    fake.refuse_next_start("org.freedesktop.systemd1.UnitExists");
    let r = spawn(fake, &manifest_file("refuse", MANIFEST));
    until("db running after a refused start", || {
        running(&r.fake, "strata-db.service")
    })
    .await;
    assert_eq!(
        starts(&r.fake.calls())[..2],
        ["strata-db.service", "strata-db.service"]
    );
    r.task.abort();
}
