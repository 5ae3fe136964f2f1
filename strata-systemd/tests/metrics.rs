//! Metrics end to end on a real systemd: the supervisor's `Metrics()` over D-Bus and the core
//! services' `<service>.metrics`, read with `strata-ctl metrics` inside the namespace. Restarts
//! are caused with `systemctl kill -s KILL`, denials with real fs calls (no token, a revoked
//! token), and every count is compared with exactly what the test did.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::Node;
use serde_json::{Value, json};
use strata_core::metrics::{Exposition, parse_exposition};

const LONG: Duration = Duration::from_secs(30);
const FS_ROOT: &str = "/var/lib/strata-test/fsroot";
const CORE: [&str; 4] = ["identity", "registry", "fs", "audit"];
/// How many times the test SIGKILLs `crasher`.
const CRASHES: u32 = 3;

/// Every core service, fs serving FS_ROOT, and `crasher`, restarted at once after a failure
/// and never quarantined by the test's crashes.
fn manifest() -> String {
    format!(
        r#"{node}
[core.fs]
roots = ["{FS_ROOT}"]

[services.crasher]
exec = ["/bin/sleep", "infinity"]
restart = {{ initial = "0s", max = "1s", quarantine = {{ crashes = 100, window = "10m" }} }}
"#,
        node = common::node_section()
    )
}

/// (exit code, stdout, stderr).
fn output(out: Output) -> (Option<i32>, String, String) {
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// `strata-ctl ARGS` inside the namespace, as root or as uid/gid 65534 without groups.
fn ctl(node: &Node, nobody: bool, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = if nobody {
        let mut c = node.sd.command("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(node.inside_bin("strata-ctl"));
        c
    } else {
        node.sd.command(node.inside_bin("strata-ctl"))
    };
    output(cmd.args(args).output().expect("run strata-ctl inside"))
}

/// `strata-ctl call METHOD PARAMS [--token T] --compact` as root: the response envelope.
fn call(node: &Node, method: &str, params: &Value, token: Option<&str>) -> Value {
    let params = params.to_string();
    let mut args = vec!["call", method, params.as_str(), "--compact"];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    let (_, out, err) = ctl(node, false, &args);
    serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("{method} printed no JSON ({e}): {out}{err}"))
}

/// `strata-ctl metrics` as root, parsed (exit status 0 required).
fn scrape(node: &Node) -> Exposition {
    let (code, out, err) = ctl(node, false, &["metrics"]);
    assert_eq!(code, Some(0), "strata-ctl metrics: {err}\n{out}");
    parse_exposition(&out).unwrap_or_else(|e| panic!("not a valid exposition: {e}\n{out}"))
}

/// A sample of the merged exposition (0 when the series does not exist yet).
fn value(exp: &Exposition, source: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("strata_service", source)];
    all.extend_from_slice(labels);
    exp.value(name, &all).unwrap_or(0.0)
}

async fn wait_restarted(node: &Node, name: &str, restarts: u32, old_pid: u32) {
    let proxy = node.proxy().await;
    let deadline = Instant::now() + LONG;
    loop {
        let info = proxy.get_service(name).await.expect("GetService");
        if info.state == "running" && info.restarts == restarts && info.main_pid != old_pid {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} was not restarted a {restarts}th time: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_restarts_denials_and_requests_exactly() {
    let mut node = Node::boot().await;
    node.sd
        .write_file(
            std::path::Path::new(&format!("{FS_ROOT}/data/file.txt")),
            b"metrics\n",
        )
        .expect("write fixture");
    let (code, out, err) = output(
        node.sd
            .command("chmod")
            .args(["-R", "a+rX", FS_ROOT])
            .output()
            .expect("chmod"),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    node.write_manifest(&manifest());
    node.start_supervisor().await;
    for s in CORE.iter().chain(&["crasher"]) {
        node.wait_state(s, "running", LONG).await;
    }
    let proxy = node.proxy().await;

    // Restarts: each SIGKILL is one restart, as the reconciler counts it and as exported.
    let exp = scrape(&node);
    let restarts = |exp: &Exposition, s: &str| {
        exp.value(
            "service_restarts_total",
            &[("strata_service", "supervisor"), ("service", s)],
        )
    };
    assert_eq!(restarts(&exp, "crasher"), Some(0.0), "before any crash");
    for i in 1..=CRASHES {
        let pid = proxy
            .get_service("crasher")
            .await
            .expect("GetService")
            .main_pid;
        let (code, out, err) = output(
            node.sd
                .systemctl(&["kill", "-s", "KILL", "strata-crasher.service"])
                .expect("systemctl kill"),
        );
        assert_eq!(code, Some(0), "{out}{err}");
        wait_restarted(&node, "crasher", i, pid).await;
    }
    let exp = scrape(&node);
    assert_eq!(restarts(&exp, "crasher"), Some(f64::from(CRASHES)));
    for s in proxy.list_services().await.expect("ListServices") {
        assert_eq!(
            restarts(&exp, &s.name),
            Some(f64::from(s.restarts)),
            "{} as GetService reports it",
            s.name
        );
    }
    assert_eq!(
        exp.value("bus_lagged_total", &[("strata_service", "supervisor")]),
        Some(0.0),
        "an idle node never overflows the event channel"
    );

    // Requests and denials on fs, counted from a baseline.
    let before = scrape(&node);
    let stat = json!({"path": "file.txt"});
    let mut stats = 0u32;
    for _ in 0..2 {
        let v = call(&node, "fs.stat", &stat, None);
        stats += 1;
        assert_eq!(v["error"]["name"], "UNAUTHENTICATED", "{v}");
        assert_eq!(v["error"]["details"]["reason"], "missing_token", "{v}");
    }
    let (code, out, err) = ctl(
        &node,
        false,
        &[
            "token",
            "issue",
            "--service",
            "fs",
            "--action",
            "stat",
            "--path-prefix",
            &format!("{FS_ROOT}/data"),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let issued: Value = serde_json::from_str(&out).expect("issue prints JSON");
    let token = issued["token"].as_str().expect("token");
    let cap_id = issued["cap_id"].as_str().expect("cap_id");
    for _ in 0..3 {
        let v = call(&node, "fs.stat", &stat, Some(token));
        stats += 1;
        assert_eq!(v["ok"], true, "positive control: {v}");
    }
    let (code, out, err) = ctl(&node, false, &["token", "revoke", cap_id]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The revocation is pushed to fs; calls until it lands are successes, counted as requests.
    let mut revoked = 0u32;
    let revoked_at = Instant::now();
    while revoked < 2 {
        let v = call(&node, "fs.stat", &stat, Some(token));
        stats += 1;
        if v["ok"] == false {
            assert_eq!(v["error"]["details"]["reason"], "revoked", "{v}");
            revoked += 1;
        } else {
            assert_eq!(revoked, 0, "a revoked token worked again: {v}");
            assert!(
                revoked_at.elapsed() < Duration::from_secs(5),
                "fs still accepts a token revoked {:?} ago",
                revoked_at.elapsed()
            );
        }
    }
    let after = scrape(&node);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, "fs", name, labels) - value(&before, "fs", name, labels)
    };
    assert_eq!(
        delta("rejected_total", &[("reason", "missing_token")]),
        2.0,
        "missing_token"
    );
    assert_eq!(
        delta("rejected_total", &[("reason", "revoked")]),
        f64::from(revoked),
        "revoked"
    );
    assert_eq!(
        delta("request_latency_seconds_count", &[("method", "fs.stat")]),
        f64::from(stats),
        "one latency observation per fs.stat call"
    );
    assert_eq!(
        delta(
            "request_latency_seconds_bucket",
            &[("method", "fs.stat"), ("le", "+Inf")]
        ),
        f64::from(stats)
    );
    // Every core service answered and carries its label.
    for s in CORE {
        assert!(
            after
                .samples
                .iter()
                .any(|x| x.label("strata_service") == Some(s)),
            "no samples of {s}"
        );
    }

    // fs.metrics: refused to nobody with the exact code, read by root (positive control).
    let (code, out, err) = ctl(&node, true, &["call", "fs.metrics", "{}", "--compact"]);
    assert_eq!(code, Some(1), "{out}{err}");
    let v: Value = serde_json::from_str(out.trim()).expect("JSON");
    assert_eq!(v["error"]["name"], "PERMISSION_DENIED", "{v}");
    assert_eq!(v["error"]["code"], 3, "{v}");
    let v = call(&node, "fs.metrics", &json!({}), None);
    assert_eq!(v["ok"], true, "{v}");
    let text = v["result"]["text"].as_str().expect("text");
    let fs_only = parse_exposition(text).expect("valid exposition");
    assert_eq!(
        fs_only.value("rejected_total", &[("reason", "not_admin")]),
        Some(1.0),
        "the refused scrape is counted:\n{text}"
    );
    // The supervisor's metrics are readable by everyone (D-Bus policy), the services' are not.
    let (code, out, err) = ctl(&node, true, &["metrics", "--service", "supervisor"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let supervisor_only = parse_exposition(&out).expect("valid exposition");
    assert!(
        supervisor_only
            .value("service_restarts_total", &[("service", "crasher")])
            .is_some(),
        "the supervisor's own text has the restart counts:\n{out}"
    );
    let (code, out, err) = ctl(&node, true, &["metrics"]);
    assert_eq!(
        code,
        Some(1),
        "an unprivileged full scrape is partial: {out}{err}"
    );
    assert!(err.contains("PERMISSION_DENIED"), "{err}");
    let partial = parse_exposition(&out).expect("valid exposition");
    assert!(
        !partial.samples.is_empty(),
        "the partial scrape still has the supervisor's samples: {out}"
    );
    assert!(
        partial
            .samples
            .iter()
            .all(|s| s.label("strata_service") == Some("supervisor")),
        "{out}"
    );

    // No supervisor: exit status 3.
    node.kill_supervisor().await;
    let (code, out, err) = ctl(&node, false, &["metrics"]);
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.is_empty(), "{out}");
}
