//! strata-supervisor against a real systemd (booted by strata-testkit): dependency order,
//! budgets and hardening on the units, backoff and quarantine, OOM reporting, adoption after
//! SIGKILL, reload, the D-Bus admin check, and the exposure score of a capability-less unit.

mod common;

use std::time::Duration;

use common::{Node, node_header};
use futures_util::StreamExt;

const LONG: Duration = Duration::from_secs(30);

fn three_services() -> String {
    format!(
        r#"{}
[services.db]
exec = ["/bin/sleep", "infinity"]
budget = {{ memory = "64M", cpu = "50%", tasks = 32, io = 200 }}

[services.api]
exec = ["/bin/sleep", "infinity"]
after = ["db"]

[services.web]
exec = ["/bin/sleep", "infinity"]
after = ["api"]
"#,
        node_header()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_comes_up_in_dependency_order_with_budgets_and_hardening() {
    let mut node = Node::boot().await;
    node.write_manifest(&three_services());
    node.start_supervisor().await;
    for s in ["db", "api", "web"] {
        node.wait_state(s, "running", LONG).await;
    }
    let started = |u: &str| -> u64 {
        node.show(u, "ExecMainStartTimestampMonotonic")
            .parse()
            .expect("timestamp")
    };
    let (db, api, web) = (
        started("strata-db.service"),
        started("strata-api.service"),
        started("strata-web.service"),
    );
    assert!(
        db < api && api < web,
        "start order db {db} < api {api} < web {web}"
    );

    // Budgets, exactly as declared.
    assert_eq!(
        node.show("strata-db.service", "MemoryMax"),
        (64u64 << 20).to_string()
    );
    assert_eq!(
        node.show("strata-db.service", "CPUQuotaPerSecUSec"),
        "500ms"
    );
    assert_eq!(node.show("strata-db.service", "TasksMax"), "32");
    assert_eq!(node.show("strata-db.service", "IOWeight"), "200");
    // The hardened baseline and the supervisor's own settings.
    for (prop, want) in [
        ("Slice", "strata.slice"),
        ("Restart", "no"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("PrivateNetwork", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectProc", "invisible"),
        ("RestrictSUIDSGID", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("CapabilityBoundingSet", ""),
        ("UMask", "0077"),
    ] {
        assert_eq!(
            node.show("strata-web.service", prop),
            want,
            "{prop} of strata-web.service"
        );
    }
    let inaccessible = node.show("strata-web.service", "InaccessiblePaths");
    assert!(
        inaccessible.contains("/run/dbus"),
        "system bus hidden: {inaccessible}"
    );
    let desc = node.show("strata-web.service", "Description");
    assert!(
        desc.contains("web"),
        "description explains the unit: {desc}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_backs_off_then_quarantines_and_release_starts_clean() {
    let mut node = Node::boot().await;
    node.write_manifest(&format!(
        r#"{}
[services.crashy]
exec = ["/bin/sh", "-c", "sleep 0.2; exit 3"]
restart = {{ initial = "100ms", max = "2s", quarantine = {{ crashes = 4, window = "1m" }} }}
"#,
        node_header()
    ));
    let proxy_conn = node.bus.clone();
    let proxy = strata_systemd::control::Supervisor1Proxy::new(&proxy_conn)
        .await
        .expect("proxy");
    let mut crashes = proxy.receive_service_crashed().await.expect("subscribe");
    node.start_supervisor().await;

    let mut seen = Vec::new();
    tokio::time::timeout(LONG, async {
        while let Some(sig) = crashes.next().await {
            let a = sig.args().expect("args");
            seen.push((tokio::time::Instant::now(), a.reason.clone()));
            if seen.len() == 4 {
                break;
            }
        }
    })
    .await
    .expect("four crashes within 30 s");
    assert!(
        seen.iter().all(|(_, r)| r == "exited with status 3"),
        "{seen:?}"
    );

    let info = node.wait_state("crashy", "quarantined", LONG).await;
    assert!(
        info.reason.contains("4 failures"),
        "quarantine reason: {}",
        info.reason
    );
    assert_eq!(info.last_exit, "exited with status 3");
    assert_eq!(
        info.restarts, 3,
        "three restarts before the fourth crash quarantined it"
    );
    // The failed unit stays visible to systemctl with its result.
    assert_eq!(node.show("strata-crashy.service", "ActiveState"), "failed");
    assert_eq!(node.show("strata-crashy.service", "Result"), "exit-code");

    proxy.release("crashy").await.expect("release as root");
    node.wait_state("crashy", "running", LONG).await;
    // Release clears the history: the next crash is attempt 1 of a fresh backoff, and it
    // does not quarantine again.
    let info = node.wait_state("crashy", "backing-off", LONG).await;
    assert!(info.reason.contains("(attempt 1)"), "{info:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_memory_max_is_reported_as_an_oom_kill() {
    let mut node = Node::boot().await;
    node.write_manifest(&format!(
        r#"{}
[services.hog]
exec = ["/usr/bin/python3", "-c", "import time; b = bytearray(256 * 1024 * 1024); time.sleep(60)"]
budget = {{ memory = "48M" }}
restart = {{ initial = "5s", quarantine = {{ crashes = 1, window = "1m" }} }}
"#,
        node_header()
    ));
    let proxy = strata_systemd::control::Supervisor1Proxy::new(&node.bus)
        .await
        .expect("proxy");
    let mut crashes = proxy.receive_service_crashed().await.expect("subscribe");
    node.start_supervisor().await;
    let reason = tokio::time::timeout(LONG, async {
        let sig = crashes.next().await.expect("crash signal");
        sig.args().expect("args").reason.clone()
    })
    .await
    .expect("hog crashed within 30 s");
    assert_eq!(reason, "killed by the OOM killer (memory budget exceeded)");
    let info = node.wait_state("hog", "quarantined", LONG).await;
    assert_eq!(info.last_exit, reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_supervisor_adopts_running_units_and_reload_rolls_only_changes() {
    let mut node = Node::boot().await;
    node.write_manifest(&three_services());
    node.start_supervisor().await;
    for s in ["db", "api", "web"] {
        node.wait_state(s, "running", LONG).await;
    }
    let pids = |node: &Node| -> Vec<String> {
        ["db", "api", "web"]
            .iter()
            .map(|s| node.show(&format!("strata-{s}.service"), "MainPID"))
            .collect()
    };
    let before = pids(&node);
    assert!(before.iter().all(|p| p != "0"), "{before:?}");

    node.kill_supervisor().await;
    node.start_supervisor().await;
    for s in ["db", "api", "web"] {
        let info = node.wait_state(s, "running", LONG).await;
        assert_eq!(info.restarts, 0);
    }
    assert_eq!(pids(&node), before, "adopted, not restarted");
    let units = node.strata_units();
    assert_eq!(units.len(), 3, "no duplicate unit: {units:?}");

    // web changes, api goes away (web now runs after db).
    let changed = three_services()
        .replace(
            "[services.api]\nexec = [\"/bin/sleep\", \"infinity\"]\nafter = [\"db\"]\n",
            "",
        )
        .replace(
            "[services.web]\nexec = [\"/bin/sleep\", \"infinity\"]\nafter = [\"api\"]",
            "[services.web]\nexec = [\"/bin/sleep\", \"100000\"]\nafter = [\"db\"]",
        );
    node.write_manifest(&changed);
    let proxy = node.proxy().await;
    let version = proxy.reload().await.expect("reload");
    assert_eq!(version, 2);
    let web = node.wait_state("web", "running", LONG).await;
    assert_ne!(web.main_pid.to_string(), before[2], "web was rolled");
    assert_eq!(
        node.show("strata-db.service", "MainPID"),
        before[0],
        "db untouched"
    );
    let gone = tokio::time::timeout(LONG, async {
        loop {
            if node.show("strata-api.service", "LoadState") == "not-found" {
                return;
            }
            // systemd gives no signal for "unit garbage-collected" to a non-subscriber; the
            // supervisor is the subscriber, so check its view too.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "api's unit is gone: {:?}",
        node.strata_units()
    );
    assert!(
        proxy.get_service("api").await.is_err(),
        "api is no longer declared"
    );

    // An invalid manifest is refused and the graph is untouched.
    node.write_manifest("[node]\nid = 5\n");
    let err = proxy.reload().await.expect_err("invalid manifest refused");
    assert!(err.to_string().contains("InvalidManifest"), "{err}");
    assert_eq!(node.show("strata-db.service", "MainPID"), before[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_root_or_strata_admin_may_stop_a_service() {
    let mut node = Node::boot().await;
    node.write_manifest(&three_services());
    node.start_supervisor().await;
    node.wait_state("web", "running", LONG).await;

    let busctl = |as_nobody: bool, method: &str, name: &str| {
        let mut cmd = if as_nobody {
            let mut c = node.sd.command("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "busctl"]);
            c
        } else {
            node.sd.command("busctl")
        };
        cmd.args([
            "call",
            "org.strata.Supervisor1",
            "/org/strata/Supervisor1",
            "org.strata.Supervisor1",
            method,
            "s",
            name,
        ]);
        cmd.output().expect("busctl")
    };
    // Reading is open to everyone.
    let out = busctl(true, "GetService", "web");
    assert!(
        out.status.success(),
        "nobody may read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Stopping is not.
    let out = busctl(true, "Stop", "web");
    assert!(!out.status.success(), "nobody must not stop web");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Access denied") || err.contains("AccessDenied"),
        "{err}"
    );
    assert_eq!(node.show("strata-web.service", "ActiveState"), "active");
    // Positive control: root may.
    let out = busctl(false, "Stop", "web");
    assert!(
        out.status.success(),
        "root may stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    node.wait_state("web", "stopped", LONG).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_capabilities_is_rated_1_5_or_lower() {
    let mut node = Node::boot().await;
    node.write_manifest(&three_services());
    node.start_supervisor().await;
    node.wait_state("web", "running", LONG).await;
    let out = node
        .sd
        .command("systemd-analyze")
        .args(["security", "--no-pager", "strata-web.service"])
        .output()
        .expect("systemd-analyze");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for strata-web.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security strata-web.service: {score}");
    assert!(score <= 1.5, "exposure {score} > 1.5:\n{text}");
}
