//! The supervisor's protocol v1 endpoint (`<runtime_dir>/supervisor.sock`) on a real systemd:
//! `supervisor.status`, `supervisor.svc.list` and `supervisor.svc.start|stop` through
//! `strata-ctl call` inside the namespace, as root, as an unprivileged user without a token, and
//! with tokens minted by the identity service, each refusal with its exact code next to a
//! positive control; the units really stop and start.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::Node;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);
const STATE_DIR: &str = "/var/lib/strata-test/state";

/// Output of a command inside the namespace, as (exit code, stdout, stderr).
fn run(out: Output) -> (Option<i32>, String, String) {
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    (out.status.code(), text(out.stdout), text(out.stderr))
}

/// Who runs strata-ctl.
#[derive(Debug, Clone, Copy)]
enum As {
    Root,
    /// uid/gid 65534 without supplementary groups.
    Nobody,
}

fn ctl(node: &Node, who: As, args: &[&str]) -> (Option<i32>, String, String) {
    let bin = node.inside_bin("strata-ctl");
    let mut cmd = match who {
        As::Root => node.sd.command(&bin),
        As::Nobody => {
            let mut c = node.sd.command("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(&bin);
            c
        }
    };
    run(cmd.args(args).output().expect("run strata-ctl inside"))
}

/// `strata-ctl call METHOD PARAMS --compact [--token T]`: (exit code, response envelope).
fn call(node: &Node, who: As, method: &str, params: &Value, token: Option<&str>) -> (i32, Value) {
    let params = params.to_string();
    let mut args = vec!["call", method, &params, "--compact"];
    if let Some(t) = token {
        args.extend(["--token", t]);
    }
    let (code, out, err) = ctl(node, who, &args);
    let v: Value = serde_json::from_str(out.trim())
        .unwrap_or_else(|_| panic!("{method} as {who:?} printed no envelope: {out}{err}"));
    (code.expect("strata-ctl exited by a signal"), v)
}

fn ok(node: &Node, who: As, method: &str, params: &Value, token: Option<&str>) -> Value {
    let (code, v) = call(node, who, method, params, token);
    assert_eq!(code, 0, "{method} {params} as {who:?}: {v}");
    assert_eq!(v["ok"], true, "{v}");
    v["result"].clone()
}

/// Asserts a refusal with this code number and name; returns the error object.
fn refused(
    node: &Node,
    who: As,
    method: &str,
    params: &Value,
    token: Option<&str>,
    code: u64,
    name: &str,
) -> Value {
    let (exit, v) = call(node, who, method, params, token);
    assert_eq!(exit, 1, "{method} {params} as {who:?}: {v}");
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(
        v["error"]["code"], code,
        "{method} {params} as {who:?}: {v}"
    );
    assert_eq!(
        v["error"]["name"], name,
        "{method} {params} as {who:?}: {v}"
    );
    v["error"].clone()
}

fn active_state(node: &Node, unit: &str) -> String {
    node.show(unit, "ActiveState")
}

/// Waits until systemd reports `unit` in `state`.
async fn wait_active_state(node: &Node, unit: &str, state: &str) {
    let deadline = Instant::now() + LONG;
    loop {
        let now = active_state(node, unit);
        if now == state {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{unit} is {now}, not {state}, {LONG:?} after the request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn entry<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["services"]
        .as_array()
        .expect("services is an array")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {list}"))
}

/// The socket as the host sees it (through the namespace's root).
fn host_socket(node: &Node) -> PathBuf {
    node.sd.root().join("run/strata/supervisor.sock")
}

/// The PID of the supervisor forked by the nsenter `Node` started.
fn supervisor_pid(node: &Node) -> String {
    let nsenter = node.supervisor.as_ref().expect("a supervisor").id();
    let children = std::fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children"))
        .expect("children of nsenter");
    children
        .split_whitespace()
        .next()
        .expect("strata-supervisor runs under nsenter")
        .to_owned()
}

/// One raw frame to the socket from the host (uid 0) and the response read back.
fn raw_exchange(stream: &mut std::os::unix::net::UnixStream, payload: &[u8]) -> Value {
    let len = u32::try_from(payload.len()).expect("small frame");
    stream.write_all(&len.to_be_bytes()).expect("write length");
    stream.write_all(payload).expect("write payload");
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).expect("read length");
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    stream.read_exact(&mut body).expect("read response");
    serde_json::from_slice(&body).expect("response is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_socket_as_root_and_unprivileged_without_identity() {
    let mut node = Node::boot().await;
    node.write_manifest(&format!(
        "{}\n[services.web]\nexec = [\"/bin/sleep\", \"infinity\"]\n\n\
         [services.db]\nexec = [\"/bin/sleep\", \"infinity\"]\n\n\
         [services.crashy]\nexec = [\"/bin/sh\", \"-c\", \"exit 3\"]\n\
         restart = {{ initial = \"10ms\", max = \"10ms\", quarantine = {{ crashes = 2, window = \"1m\" }} }}\n",
        common::node_header()
    ));
    // A stale socket of a dead supervisor: the new one must replace it.
    let sock = host_socket(&node);
    std::fs::create_dir_all(sock.parent().expect("dir")).expect("mkdir /run/strata");
    drop(std::os::unix::net::UnixListener::bind(&sock).expect("bind a stale socket"));
    let stale_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&sock).expect("stat"));

    node.start_supervisor().await;
    node.wait_state("web", "running", LONG).await;
    node.wait_state("db", "running", LONG).await;
    node.wait_state("crashy", "quarantined", LONG).await;

    // The socket: replaced, a socket, 0666 in a 0755 directory.
    let meta = std::fs::symlink_metadata(&sock).expect("supervisor.sock exists");
    assert!(meta.file_type().is_socket());
    assert_ne!(
        std::os::unix::fs::MetadataExt::ino(&meta),
        stale_ino,
        "the stale socket was not replaced"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o666);
    let dir = std::fs::metadata(sock.parent().expect("dir")).expect("runtime dir");
    assert_eq!(dir.permissions().mode() & 0o777, 0o755);

    // Root: status and list.
    let status = ok(&node, As::Root, "supervisor.status", &json!({}), None);
    assert_eq!(status["node_id"], "itest", "{status}");
    assert_eq!(status["services"], 3, "{status}");
    assert_eq!(status["running"], 2, "{status}");
    assert_eq!(status["quarantined"], json!(["crashy"]), "{status}");
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["tokens"], "identity_disabled", "{status}");
    assert!(status["uptime_sec"].is_u64(), "{status}");
    let list = ok(&node, As::Root, "supervisor.svc.list", &json!({}), None);
    let web = entry(&list, "web");
    assert_eq!(web["state"], "running", "{list}");
    assert_eq!(web["restarts"], 0, "{list}");
    assert_eq!(
        web["pid"].to_string(),
        node.show("strata-web.service", "MainPID"),
        "svc.list pid is not systemd's MainPID: {list}"
    );

    // Root: stop and start web; systemd really stops and starts the unit; db is untouched.
    let r = ok(
        &node,
        As::Root,
        "supervisor.svc.stop",
        &json!({"name": "web"}),
        None,
    );
    assert_eq!(r, json!({"status": "stopped", "name": "web"}));
    wait_active_state(&node, "strata-web.service", "inactive").await;
    node.wait_state("web", "stopped", LONG).await;
    let list = ok(&node, As::Root, "supervisor.svc.list", &json!({}), None);
    assert_eq!(entry(&list, "web")["state"], "stopped", "{list}");
    assert!(entry(&list, "web")["pid"].is_null(), "{list}");
    assert_eq!(active_state(&node, "strata-db.service"), "active");
    let r = ok(
        &node,
        As::Root,
        "supervisor.svc.start",
        &json!({"name": "web"}),
        None,
    );
    assert_eq!(r, json!({"status": "started", "name": "web"}));
    wait_active_state(&node, "strata-web.service", "active").await;
    node.wait_state("web", "running", LONG).await;

    // Unknown service, malformed params, unknown method: exact codes.
    let e = refused(
        &node,
        As::Root,
        "supervisor.svc.stop",
        &json!({"name": "nosuch"}),
        None,
        4,
        "NOT_FOUND",
    );
    assert_eq!(e["message"], "unknown service `nosuch`", "{e}");
    let e = refused(
        &node,
        As::Root,
        "supervisor.svc.stop",
        &json!({"name": 5}),
        None,
        1,
        "INVALID_ARGUMENT",
    );
    assert_eq!(
        e["message"],
        "invalid params for supervisor.svc.stop: invalid type: integer `5`, expected a string",
        "{e}"
    );
    let e = refused(
        &node,
        As::Root,
        "supervisor.svc.start",
        &json!({"nmae": "web"}),
        None,
        1,
        "INVALID_ARGUMENT",
    );
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown field `nmae`")),
        "{e}"
    );
    // A quarantined service: CONFLICT with the reconciler's refusal; it stays failed.
    for method in ["supervisor.svc.start", "supervisor.svc.stop"] {
        let e = refused(
            &node,
            As::Root,
            method,
            &json!({"name": "crashy"}),
            None,
            8,
            "CONFLICT",
        );
        let message = e["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("service `crashy` is quarantined (")
                && message.ends_with("); release it first"),
            "{e}"
        );
        assert_eq!(e["details"]["state"], "quarantined", "{e}");
    }
    let list = ok(&node, As::Root, "supervisor.svc.list", &json!({}), None);
    assert_eq!(entry(&list, "crashy")["state"], "quarantined", "{list}");
    assert_eq!(active_state(&node, "strata-crashy.service"), "failed");
    refused(
        &node,
        As::Root,
        "supervisor.svc.restart",
        &json!({"name": "web"}),
        None,
        4,
        "NOT_FOUND",
    );
    assert_eq!(active_state(&node, "strata-web.service"), "active");

    // A malformed frame gets INVALID_ARGUMENT and the connection stays usable.
    let mut raw = std::os::unix::net::UnixStream::connect(&sock).expect("connect from the host");
    raw.set_read_timeout(Some(LONG)).expect("timeout");
    let bad = raw_exchange(&mut raw, b"{\"v\":1,\"req_id\":");
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["error"]["name"], "INVALID_ARGUMENT", "{bad}");
    assert!(
        bad["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("malformed JSON in request")),
        "{bad}"
    );
    let good = raw_exchange(
        &mut raw,
        br#"{"v":1,"req_id":"after","method":"supervisor.status","params":{}}"#,
    );
    assert_eq!(good["ok"], true, "{good}");
    assert_eq!(good["req_id"], "after", "{good}");
    drop(raw);

    // Unprivileged, no token: every method refused with the exact code and message.
    for (method, action, params) in [
        ("supervisor.status", "status", json!({})),
        ("supervisor.svc.list", "svc.list", json!({})),
        ("supervisor.svc.stop", "svc.stop", json!({"name": "web"})),
        ("supervisor.svc.start", "svc.start", json!({"name": "web"})),
    ] {
        let e = refused(
            &node,
            As::Nobody,
            method,
            &params,
            None,
            3,
            "PERMISSION_DENIED",
        );
        assert_eq!(
            e["message"],
            format!(
                "{method} needs uid 0, membership in group `strata-admin`, or a token for \
                 service `supervisor` granting `{action}` (uid 65534 presented no token)"
            ),
            "{e}"
        );
        assert_eq!(e["details"]["reason"], "missing_token", "{e}");
        assert_eq!(e["details"]["uid"], 65534, "{e}");
    }
    // Unprivileged with a token, while identity is disabled: it can never be verified.
    let e = refused(
        &node,
        As::Nobody,
        "supervisor.svc.list",
        &json!({}),
        Some("En0KEwoEc3ZjLmxpc3Q"),
        2,
        "UNAUTHENTICATED",
    );
    assert_eq!(
        e["message"],
        "supervisor.svc.list: tokens cannot be verified on this node: the identity service is \
         disabled in the manifest ([core.identity] enable = false); callers with uid 0 or in \
         group `strata-admin` need no token",
        "{e}"
    );
    assert_eq!(e["details"]["reason"], "identity_disabled", "{e}");
    // Nothing of that reached the units.
    assert_eq!(active_state(&node, "strata-web.service"), "active");

    // A clean shutdown (SIGTERM) removes the socket; the services keep running.
    let pid = supervisor_pid(&node);
    let (code, out, err) = run(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .output()
        .expect("kill"));
    assert_eq!(code, Some(0), "{out}{err}");
    let status = node
        .supervisor
        .take()
        .expect("supervisor")
        .wait()
        .expect("wait for strata-supervisor");
    assert!(status.success(), "strata-supervisor exited with {status}");
    assert!(
        std::fs::symlink_metadata(&sock).is_err(),
        "supervisor.sock outlived a clean shutdown"
    );
    assert_eq!(active_state(&node, "strata-web.service"), "active");
}

/// A node with identity, registry and audit, and a user service `web`.
fn identity_manifest() -> String {
    format!(
        r#"{node}
[core.fs]
enable = false

[services.web]
exec = ["/bin/sleep", "infinity"]
"#,
        node = common::node_section(),
    )
}

/// `strata-ctl token issue --service supervisor --action A` as root: (token, cap_id).
fn issue(node: &Node, action: &str) -> (String, String) {
    let (code, out, err) = ctl(
        node,
        As::Root,
        &[
            "token",
            "issue",
            "--service",
            "supervisor",
            "--action",
            action,
        ],
    );
    assert_eq!(code, Some(0), "token issue {action}: {out}{err}");
    let v: Value = serde_json::from_str(&out).expect("issue prints JSON");
    (
        v["token"].as_str().expect("token").to_owned(),
        v["cap_id"].as_str().expect("cap_id").to_owned(),
    )
}

/// `supervisor.svc.list` with `token` as nobody, once tokens are usable: the verifier starts
/// when identity runs and answers UNAVAILABLE until its first revocation catch-up; wait for
/// that, nothing else.
async fn list_with_token(node: &Node, token: &str) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let (code, v) = call(
            node,
            As::Nobody,
            "supervisor.svc.list",
            &json!({}),
            Some(token),
        );
        if code == 0 {
            return v["result"].clone();
        }
        assert_eq!(v["error"]["name"], "UNAVAILABLE", "{v}");
        assert!(Instant::now() < deadline, "tokens never became usable: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_socket_with_tokens_from_identity() {
    let mut node = Node::boot().await;
    node.write_manifest(&identity_manifest());
    node.start_supervisor().await;
    for s in ["identity", "registry", "audit", "web"] {
        node.wait_state(s, "running", LONG).await;
    }

    // strata-ctl finds the socket: the registry does not know `supervisor`, so it falls back to
    // <runtime_dir>/supervisor.sock.
    let (code, out, err) = ctl(
        &node,
        As::Root,
        &["call", "-v", "supervisor.svc.list", "{}", "--compact"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("using /run/strata/supervisor.sock"),
        "strata-ctl did not resolve supervisor.sock: {err}"
    );

    let (list_token, list_cap) = issue(&node, "svc.list");
    // Positive control: the svc.list token lists.
    let list = list_with_token(&node, &list_token).await;
    assert_eq!(entry(&list, "web")["state"], "running", "{list}");
    let status = ok(&node, As::Root, "supervisor.status", &json!({}), None);
    assert_eq!(status["tokens"], "enabled", "{status}");

    // The same token does not stop, start or read the status: not granted.
    for (method, params) in [
        ("supervisor.svc.stop", json!({"name": "web"})),
        ("supervisor.svc.start", json!({"name": "web"})),
        ("supervisor.status", json!({})),
    ] {
        let e = refused(
            &node,
            As::Nobody,
            method,
            &params,
            Some(&list_token),
            3,
            "PERMISSION_DENIED",
        );
        assert_eq!(e["details"]["reason"], "action_not_granted", "{e}");
        assert_eq!(e["details"]["cap_id"], list_cap.as_str(), "{e}");
    }
    assert_eq!(active_state(&node, "strata-web.service"), "active");
    // Without the token, the same caller is refused listing too.
    let e = refused(
        &node,
        As::Nobody,
        "supervisor.svc.list",
        &json!({}),
        None,
        3,
        "PERMISSION_DENIED",
    );
    assert_eq!(e["details"]["reason"], "missing_token", "{e}");

    // A token granting svc.stop stops web for real; root starts it again.
    let (stop_token, _) = issue(&node, "svc.stop");
    let r = ok(
        &node,
        As::Nobody,
        "supervisor.svc.stop",
        &json!({"name": "web"}),
        Some(&stop_token),
    );
    assert_eq!(r, json!({"status": "stopped", "name": "web"}));
    wait_active_state(&node, "strata-web.service", "inactive").await;
    let e = refused(
        &node,
        As::Nobody,
        "supervisor.svc.stop",
        &json!({"name": "nosuch"}),
        Some(&stop_token),
        4,
        "NOT_FOUND",
    );
    assert_eq!(e["message"], "unknown service `nosuch`", "{e}");
    ok(
        &node,
        As::Root,
        "supervisor.svc.start",
        &json!({"name": "web"}),
        None,
    );
    wait_active_state(&node, "strata-web.service", "active").await;

    // Revoking the list token reaches the supervisor's verifier.
    let (code, out, err) = ctl(&node, As::Root, &["token", "revoke", &list_cap]);
    assert_eq!(code, Some(0), "{out}{err}");
    let revoked_at = Instant::now();
    loop {
        let (_, v) = call(
            &node,
            As::Nobody,
            "supervisor.svc.list",
            &json!({}),
            Some(&list_token),
        );
        if v["ok"] == false {
            assert_eq!(v["error"]["name"], "UNAUTHENTICATED", "{v}");
            assert_eq!(v["error"]["details"]["reason"], "revoked", "{v}");
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "the supervisor still accepts a token revoked {:?} ago",
            revoked_at.elapsed()
        );
    }

    // The supervisor's decisions reach the audit log, the refused svc.stop among them.
    let deadline = Instant::now() + LONG;
    loop {
        let (_, tail, _) = ctl(
            &node,
            As::Root,
            &[
                "audit",
                "tail",
                "--state-dir",
                STATE_DIR,
                "--json",
                "-n",
                "1000",
            ],
        );
        let found = tail
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|r| {
                let e = &r["event"];
                e["source"] == "supervisor"
                    && e["action"] == "svc.stop"
                    && e["decision"] == "deny"
                    && e["reason"] == "action_not_granted"
            });
        if found {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the supervisor's denial never reached the audit log:\n{tail}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A restarted supervisor adopts the running identity and verifies tokens again without
    // polling for the key: it reads it at once, identity having published it long ago.
    node.kill_supervisor().await;
    node.start_supervisor().await;
    node.wait_state("identity", "running", LONG).await;
    let (fresh_token, _) = issue(&node, "svc.list");
    let list = list_with_token(&node, &fresh_token).await;
    assert_eq!(entry(&list, "web")["state"], "running", "{list}");
    // The new verifier caught up on the revocation made under the old supervisor.
    let (code, v) = call(
        &node,
        As::Nobody,
        "supervisor.svc.list",
        &json!({}),
        Some(&list_token),
    );
    assert_ne!(code, 0, "{v}");
    assert_eq!(v["error"]["details"]["reason"], "revoked", "{v}");
    let status = ok(&node, As::Root, "supervisor.status", &json!({}), None);
    assert_eq!(status["tokens"], "enabled", "{status}");
}
