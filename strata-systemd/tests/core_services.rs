//! The core services end to end on a real systemd, through the supervisor: identity, fs,
//! registry and audit run as sandboxed transient units (DynamicUser, Landlock through
//! strata-launch), exactly as in production, and are driven with strata-ctl inside the
//! namespace — as root, as an unprivileged user, and from a service holding a `call:fs` token
//! that systemd delivered as a credential.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::Node;
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(30);
const STATE_DIR: &str = "/var/lib/strata-test/state";
/// What strata-fs serves; the tokens' prefix is `<FS_ROOT>/data`.
const FS_ROOT: &str = "/var/lib/strata-test/fsroot";
const CORE: [&str; 4] = ["identity", "registry", "fs", "audit"];

fn prefix() -> String {
    format!("{FS_ROOT}/data")
}

/// A node with every core service enabled, fs serving FS_ROOT, and `reader`, a service that
/// calls fs with the token delivered for its `call:fs` capability.
fn manifest() -> String {
    let bin = strata_testkit::BIN_DIR;
    format!(
        r#"{node}
[core.fs]
roots = ["{FS_ROOT}"]

[services.reader]
exec = ["{bin}/strata-ctl", "call", "fs.stat", '{{"path": "{FS_ROOT}/data/file.txt"}}', "--compact"]
capabilities = ["call:fs", "fs.read:{bin}"]
after = ["fs"]
restart = {{ initial = "1h", max = "1h" }}
"#,
        node = common::node_section()
    )
}

/// Output of a command inside the namespace, as (exit code, stdout, stderr).
fn run(out: Output) -> (Option<i32>, String, String) {
    let text = |bytes: Vec<u8>| {
        String::from_utf8(bytes)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    (out.status.code(), text(out.stdout), text(out.stderr))
}

struct Ctl<'a> {
    node: &'a Node,
}

impl Ctl<'_> {
    /// `strata-ctl ARGS` as root inside the namespace.
    fn as_root(&self, args: &[&str]) -> (Option<i32>, String, String) {
        run(self
            .node
            .sd
            .command(self.node.inside_bin("strata-ctl"))
            .args(args)
            .output()
            .expect("run strata-ctl inside"))
    }

    /// `strata-ctl ARGS` as uid/gid 65534 without supplementary groups.
    fn as_nobody(&self, args: &[&str]) -> (Option<i32>, String, String) {
        self.as_uid(65534, args)
    }

    /// `strata-ctl ARGS` as `uid` (and gid `uid`) without supplementary groups: Strata decides
    /// `strata-admin` membership from the user database, not from the caller's groups.
    fn as_uid(&self, uid: u32, args: &[&str]) -> (Option<i32>, String, String) {
        run(self
            .node
            .sd
            .command("setpriv")
            .arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg(self.node.inside_bin("strata-ctl"))
            .args(args)
            .output()
            .expect("run setpriv strata-ctl inside"))
    }

    /// A token from `strata-ctl token issue` as root: (token, cap_id).
    fn issue(&self, args: &[&str]) -> (String, String) {
        let mut all = vec!["token", "issue"];
        all.extend_from_slice(args);
        let (code, out, err) = self.as_root(&all);
        assert_eq!(code, Some(0), "token issue {args:?}: {out}{err}");
        let v: Value = serde_json::from_str(&out).expect("issue prints JSON");
        (
            v["token"].as_str().expect("token").to_owned(),
            v["cap_id"].as_str().expect("cap_id").to_owned(),
        )
    }

    /// `strata-ctl call METHOD PARAMS --token T --compact`: (exit code, response envelope).
    fn call(&self, method: &str, params: &Value, token: &str) -> (Option<i32>, Value) {
        self.try_call(method, params, token)
            .unwrap_or_else(|text| panic!("{method} printed no JSON: {text}"))
    }

    /// Like `call`, but a call that got no response (service unreachable) is `Err(output)`.
    fn try_call(
        &self,
        method: &str,
        params: &Value,
        token: &str,
    ) -> Result<(Option<i32>, Value), String> {
        let params = params.to_string();
        let (code, out, err) =
            self.as_root(&["call", method, &params, "--token", token, "--compact"]);
        match serde_json::from_str(out.trim()) {
            Ok(v) => Ok((code, v)),
            Err(_) => Err(format!("{out}{err}")),
        }
    }

    /// Waits until `method` gets a response again (after a restart of its service).
    async fn wait_reachable(&self, method: &str, params: &Value, token: &str) {
        let deadline = Instant::now() + LONG;
        loop {
            match self.try_call(method, params, token) {
                Ok(_) => return,
                Err(text) => assert!(Instant::now() < deadline, "{method} unreachable: {text}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ok(&self, method: &str, params: &Value, token: &str) -> Value {
        let (code, v) = self.call(method, params, token);
        assert_eq!(code, Some(0), "{method} {params} failed: {v}");
        assert_eq!(v["ok"], true, "{v}");
        v["result"].clone()
    }

    fn refused(&self, method: &str, params: &Value, token: &str, name: &str, fragment: &str) {
        let (code, v) = self.call(method, params, token);
        assert_eq!(code, Some(1), "{method} {params}: {v}");
        assert_eq!(v["ok"], false, "{method} {params}: {v}");
        assert_eq!(v["error"]["name"], name, "{method} {params}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(fragment),
            "{method} {params}: message {message:?} lacks {fragment:?}"
        );
    }
}

/// The fixture strata-fs serves, written inside the namespace (its /var/lib/strata-test is a
/// private tmpfs): files, a binary file, and symlinks that try to leave the prefix.
fn write_fixture(node: &Node) -> Vec<u8> {
    let binary: Vec<u8> = (0..300).flat_map(|_| 0u8..=255).collect();
    for (path, data) in [
        (
            format!("{FS_ROOT}/secret.txt"),
            b"outside the prefix\n".to_vec(),
        ),
        (
            format!("{FS_ROOT}/data/file.txt"),
            b"hello from strata-fs\n".to_vec(),
        ),
        (format!("{FS_ROOT}/data/sub/inner.txt"), b"inner\n".to_vec()),
        (format!("{FS_ROOT}/data/bin.dat"), binary.clone()),
    ] {
        node.sd
            .write_file(std::path::Path::new(&path), &data)
            .expect("write fixture");
    }
    let links = format!(
        "cd {FS_ROOT}/data && ln -s /etc/passwd link_out && ln -s ../secret.txt rel_out \
         && ln -s /proc/self/root proc_link && ln -s ../../../../../../proc/self/root rel_proc \
         && ln -s .. dir_out && ln -s file.txt in_link && ln -s sub sub_link \
         && chmod -R a+rX {FS_ROOT}"
    );
    let (code, out, err) = run(node
        .sd
        .command("sh")
        .args(["-c", &links])
        .output()
        .expect("sh"));
    assert_eq!(code, Some(0), "creating the symlinks: {out}{err}");
    binary
}

async fn boot_core() -> (Node, Vec<u8>) {
    let mut node = Node::boot().await;
    let binary = write_fixture(&node);
    node.write_manifest(&manifest());
    node.start_supervisor().await;
    for s in CORE {
        node.wait_state(s, "running", LONG).await;
    }
    (node, binary)
}

/// Decodes standard base64 (the test's own tiny decoder keeps the dependency list short).
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("not base64: {c}"));
        acc = (acc << 6) | u32::try_from(v).expect("6 bits");
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).expect("8 bits"));
        }
    }
    out
}

/// Reads a whole file through fs.open / fs.read / fs.close.
fn read_all(ctl: &Ctl<'_>, path: &str, token: &str) -> Vec<u8> {
    let opened = ctl.ok("fs.open", &json!({"path": path}), token);
    let handle = opened["handle"].as_str().expect("handle").to_owned();
    let mut data = Vec::new();
    loop {
        let r = ctl.ok("fs.read", &json!({"handle": handle}), token);
        data.extend(base64_decode(r["data_b64"].as_str().expect("data_b64")));
        if r["eof"] == true {
            break;
        }
    }
    ctl.ok("fs.close", &json!({"handle": handle}), token);
    data
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_fs_and_revocation_end_to_end() {
    let (node, binary) = boot_core().await;
    let ctl = Ctl { node: &node };
    let prefix = prefix();

    // Issue: root may, an unprivileged user may not (exact code), and may not revoke either.
    let (token, cap_id) = ctl.issue(&[
        "--service",
        "fs",
        "--action",
        "*",
        "--path-prefix",
        &prefix,
        "--ttl",
        "600",
    ]);
    let (code, out, err) =
        ctl.as_nobody(&["token", "issue", "--service", "fs", "--action", "read"]);
    assert_eq!(
        code,
        Some(1),
        "an unprivileged issue must be refused: {out}{err}"
    );
    assert!(
        format!("{out}{err}").contains("PERMISSION_DENIED"),
        "{out}{err}"
    );
    let (code, out, err) = ctl.as_nobody(&["token", "revoke", &cap_id]);
    assert_eq!(
        code,
        Some(1),
        "an unprivileged revoke must be refused: {out}{err}"
    );
    assert!(
        format!("{out}{err}").contains("PERMISSION_DENIED"),
        "{out}{err}"
    );

    // list → open → read, text and binary.
    let listed = ctl.ok("fs.list", &json!({"path": "."}), &token);
    let names: Vec<&str> = listed["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["name"].as_str())
        .collect();
    assert!(
        names.contains(&"file.txt") && names.contains(&"bin.dat") && names.contains(&"sub"),
        "{listed}"
    );
    assert_eq!(
        read_all(&ctl, "file.txt", &token),
        b"hello from strata-fs\n"
    );
    let got = read_all(&ctl, "bin.dat", &token);
    assert_eq!(got.len(), binary.len());
    assert!(got == binary, "bin.dat did not round-trip byte for byte");

    // Traversal, inside the sandboxed unit (where systemd's RestrictSUIDSGID= filter refuses
    // openat2, so strata-fs resolves component by component): each refused with the exact
    // code, each beside a positive control of the same spelling that stays inside.
    let long_component = "a".repeat(300);
    let long_path = "a/".repeat(2100);
    let refused: Vec<(String, &str, &str)> = vec![
        ("../secret.txt".into(), "PERMISSION_DENIED", "contains `..`"),
        (
            "sub/../../secret.txt".into(),
            "PERMISSION_DENIED",
            "contains `..`",
        ),
        (
            "sub//..//..//secret.txt".into(),
            "PERMISSION_DENIED",
            "contains `..`",
        ),
        (
            format!("{prefix}/../secret.txt"),
            "PERMISSION_DENIED",
            "contains `..`",
        ),
        (
            "/etc/passwd".into(),
            "PERMISSION_DENIED",
            "outside the token's path prefix",
        ),
        (
            format!("{FS_ROOT}/secret.txt"),
            "PERMISSION_DENIED",
            "outside the token's path prefix",
        ),
        (
            "/proc/self/root/etc/passwd".into(),
            "PERMISSION_DENIED",
            "outside the token's path prefix",
        ),
        ("link_out".into(), "PERMISSION_DENIED", "resolves outside"),
        ("rel_out".into(), "PERMISSION_DENIED", "resolves outside"),
        (
            "proc_link/etc/passwd".into(),
            "PERMISSION_DENIED",
            "resolves outside",
        ),
        (
            "rel_proc/etc/passwd".into(),
            "PERMISSION_DENIED",
            "resolves outside",
        ),
        (
            "dir_out/secret.txt".into(),
            "PERMISSION_DENIED",
            "resolves outside",
        ),
        (
            "sub_link/../../secret.txt".into(),
            "PERMISSION_DENIED",
            "contains `..`",
        ),
        (
            "file.txt\0/../../etc/passwd".into(),
            "INVALID_ARGUMENT",
            "NUL byte",
        ),
        (long_path, "INVALID_ARGUMENT", "at most 4095"),
        (long_component, "INVALID_ARGUMENT", "too long"),
    ];
    for (path, name, fragment) in &refused {
        for method in ["fs.open", "fs.stat", "fs.list"] {
            ctl.refused(method, &json!({"path": path}), &token, name, fragment);
        }
    }
    for (path, kind) in [
        ("file.txt".to_owned(), "file"),
        ("./file.txt".to_owned(), "file"),
        ("sub//inner.txt".to_owned(), "file"),
        ("in_link".to_owned(), "file"),
        ("sub_link/inner.txt".to_owned(), "file"),
        (format!("{prefix}/sub/inner.txt"), "file"),
        ("sub".to_owned(), "dir"),
        ("sub_link".to_owned(), "dir"),
    ] {
        let st = ctl.ok("fs.stat", &json!({"path": path}), &token);
        assert_eq!(st["type"], kind, "fs.stat {path}: {st}");
    }
    // A token whose prefix is a symlink to a directory inside the root works in the unit,
    // where strata-fs resolves component by component (it once answered NOT_FOUND for such a
    // prefix there: docs/fuzzing.md, findings); the prefix `sub` is the positive control.
    for dir in ["sub", "sub_link"] {
        let via = format!("{prefix}/{dir}");
        let (scoped, _) = ctl.issue(&[
            "--service",
            "fs",
            "--action",
            "*",
            "--path-prefix",
            &via,
            "--ttl",
            "600",
        ]);
        let listed = ctl.ok("fs.list", &json!({"path": "."}), &scoped);
        let names: Vec<&str> = listed["entries"]
            .as_array()
            .expect("entries")
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["inner.txt"],
            "fs.list under the prefix {via}: {listed}"
        );
        assert_eq!(
            read_all(&ctl, "inner.txt", &scoped),
            b"inner\n",
            "under {via}"
        );
    }

    // The reader service got its call:fs token as a systemd credential and used it.
    let reader = node
        .sd
        .journal("strata-reader.service")
        .expect("reader journal");
    assert!(
        reader.contains(r#""ok":true"#) && reader.contains(r#""type":"file""#),
        "reader did not call fs with its delivered token:\n{reader}"
    );

    // Identity restarts: its key is the same, and tokens issued before verify after.
    let key_path = node.sd.root().join("run/strata/identity.pub");
    let key_before = std::fs::read(&key_path).expect("identity.pub");
    let proxy = node.proxy().await;
    let pid = node.show("strata-identity.service", "MainPID");
    proxy.restart("identity").await.expect("restart identity");
    node.wait_new_main_pid("strata-identity.service", &pid, LONG)
        .await;
    node.wait_state("identity", "running", LONG).await;
    let key_after = std::fs::read(&key_path).expect("identity.pub");
    assert_eq!(
        key_before, key_after,
        "identity's key changed across a restart"
    );
    ctl.ok("fs.stat", &json!({"path": "file.txt"}), &token);
    let (code, out, err) = ctl.as_root(&["token", "inspect", "--online", &token]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"valid\": true"), "{out}");

    // Revoke while fs runs: the next calls are denied with "revoked" (pushed to fs).
    let (second, second_id) = ctl.issue(&[
        "--service",
        "fs",
        "--action",
        "stat",
        "--path-prefix",
        &prefix,
    ]);
    ctl.ok("fs.stat", &json!({"path": "file.txt"}), &second);
    let (code, out, err) = ctl.as_root(&["token", "revoke", &second_id]);
    assert_eq!(code, Some(0), "{out}{err}");
    let revoked_at = Instant::now();
    loop {
        let (_, v) = ctl.call("fs.stat", &json!({"path": "file.txt"}), &second);
        if v["ok"] == false {
            assert_eq!(v["error"]["details"]["reason"], "revoked", "{v}");
            assert!(
                v["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("revoked"),
                "{v}"
            );
            break;
        }
        // Each attempt is a strata-ctl process (~ms); the push normally lands before the first.
        assert!(
            revoked_at.elapsed() < Duration::from_secs(2),
            "fs still accepts a token revoked {:?} ago",
            revoked_at.elapsed()
        );
    }

    // Revoke while fs is stopped: it catches up when it comes back.
    proxy.stop("fs").await.expect("stop fs");
    node.wait_state("fs", "stopped", LONG).await;
    let (code, out, err) = ctl.as_root(&["token", "revoke", &token]);
    assert_eq!(code, Some(0), "{out}{err}");
    proxy.start("fs").await.expect("start fs");
    node.wait_state("fs", "running", LONG).await;
    ctl.refused(
        "fs.list",
        &json!({"path": "."}),
        &token,
        "UNAUTHENTICATED",
        "revoked",
    );
    // Positive control: a fresh token works on the restarted fs.
    let (fresh, _) = ctl.issue(&[
        "--service",
        "fs",
        "--action",
        "list",
        "--path-prefix",
        &prefix,
    ]);
    ctl.ok("fs.list", &json!({"path": "."}), &fresh);
}

/// A member of `strata-admin` (by the user database, as identity and the metrics method look
/// it up from inside their Landlock sandbox) may issue tokens and read metrics; a user who is
/// not may not. The group exists only in the namespace: its /etc/group is a private bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strata_admin_member_may_issue_and_read_metrics() {
    let host_group = std::fs::read_to_string("/etc/group").expect("read /etc/group");
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    // The member: a user of the host's database that is surely not root (nobody, 65534).
    let member = passwd
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&"65534")).then(|| f[0].to_owned())
        })
        .expect("a user with uid 65534 in /etc/passwd");
    let group_file =
        std::env::temp_dir().join(format!("strata-itest-group-{}", std::process::id()));
    std::fs::write(
        &group_file,
        format!("{host_group}strata-admin:x:4242:{member}\n"),
    )
    .expect("write the namespace's /etc/group");
    let mut node =
        Node::boot_with(strata_testkit::BootOptions::new().bind_ro(&group_file, "/etc/group"))
            .await;
    write_fixture(&node);
    node.write_manifest(&manifest());
    node.start_supervisor().await;
    for s in CORE {
        node.wait_state(s, "running", LONG).await;
    }
    let _ = std::fs::remove_file(&group_file);
    let ctl = Ctl { node: &node };

    // The member: issues a token (identity's check) and reads fs's metrics.
    let (code, out, err) =
        ctl.as_nobody(&["token", "issue", "--service", "fs", "--action", "stat"]);
    assert_eq!(
        code,
        Some(0),
        "a strata-admin member must be able to issue: {out}{err}"
    );
    let token: Value = serde_json::from_str(&out).expect("issue prints JSON");
    assert!(
        token["token"].as_str().is_some_and(|t| !t.is_empty()),
        "{out}"
    );
    let (code, out, err) = ctl.as_nobody(&["call", "fs.metrics", "{}", "--compact"]);
    assert_eq!(
        code,
        Some(0),
        "a strata-admin member must read fs.metrics: {out}{err}"
    );
    assert!(out.contains("request_latency_seconds"), "{out}");

    // Not a member (a uid without any entry): refused, with the exact code.
    let (code, out, err) = ctl.as_uid(
        4321,
        &["token", "issue", "--service", "fs", "--action", "stat"],
    );
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        format!("{out}{err}").contains("PERMISSION_DENIED"),
        "{out}{err}"
    );
    let (code, out, err) = ctl.as_uid(4321, &["call", "fs.metrics", "{}", "--compact"]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains(r#""name":"PERMISSION_DENIED""#), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_survives_restarts_and_audit_detects_tampering() {
    let (node, _) = boot_core().await;
    let ctl = Ctl { node: &node };
    let proxy = node.proxy().await;

    // The supervisor registered every running service.
    // The core services and entries registered by tokens. `reader` is left out: it runs once
    // and exits, so whether the supervisor registered it depends on timing.
    let list = |ctl: &Ctl<'_>| -> Vec<(String, String)> {
        let r = ctl.ok("registry.list", &json!({}), "");
        let mut v: Vec<(String, String)> = r["services"]
            .as_array()
            .expect("services")
            .iter()
            .map(|s| {
                (
                    s["service"].as_str().expect("service").to_owned(),
                    s["endpoint"].as_str().expect("endpoint").to_owned(),
                )
            })
            .filter(|(service, _)| service != "reader")
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + LONG;
    let before = loop {
        let l = list(&ctl);
        if CORE.iter().all(|c| l.iter().any(|(s, _)| s == c)) || Instant::now() > deadline {
            break l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for c in CORE {
        assert!(
            before
                .iter()
                .any(|(s, e)| s == c && e == &format!("unix:///run/strata/{c}.sock")),
            "{c} not registered: {before:?}"
        );
    }
    // An entry registered with a token (not by the supervisor) survives too.
    let (reg, _) = ctl.issue(&["--service", "registry", "--action", "register"]);
    ctl.ok(
        "registry.register",
        &json!({"service": "billing", "endpoint": "tcp://127.0.0.1:9000"}),
        &reg,
    );
    // Refused without authority: an unprivileged caller with no token.
    let (code, out, err) = ctl.as_nobody(&[
        "call",
        "registry.register",
        r#"{"service":"evil","endpoint":"tcp://127.0.0.1:1"}"#,
        "--compact",
    ]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains(r#""name":"UNAUTHENTICATED""#), "{out}");
    let with_billing = list(&ctl);
    assert!(with_billing.contains(&("billing".into(), "tcp://127.0.0.1:9000".into())));

    // Restart (stop + start) and SIGKILL the registry: nothing is lost.
    // The D-Bus call returns once the supervisor took the command: wait for the new process
    // (the old one answers until it is stopped), then for its socket.
    let unit = "strata-registry.service";
    let pid = node.show(unit, "MainPID");
    proxy.restart("registry").await.expect("restart registry");
    node.wait_new_main_pid(unit, &pid, LONG).await;
    ctl.wait_reachable("registry.list", &json!({}), "").await;
    assert_eq!(list(&ctl), with_billing, "entries changed across a restart");
    let pid = node.show(unit, "MainPID");
    let (code, out, err) = run(node
        .sd
        .systemctl(&["kill", "-s", "KILL", unit])
        .expect("systemctl kill"));
    assert_eq!(code, Some(0), "{out}{err}");
    node.wait_new_main_pid(unit, &pid, LONG).await;
    ctl.wait_reachable("registry.list", &json!({}), "").await;
    assert_eq!(list(&ctl), with_billing, "entries changed across a SIGKILL");

    // Audit: decisions of fs reached the log and the journal; the chain verifies.
    let (t, cap_id) = ctl.issue(&[
        "--service",
        "fs",
        "--action",
        "list",
        "--path-prefix",
        &prefix(),
    ]);
    // Denied (a `stat` the token does not grant) and allowed decisions.
    ctl.refused(
        "fs.stat",
        &json!({"path": "."}),
        &t,
        "PERMISSION_DENIED",
        "stat",
    );
    let deadline = Instant::now() + LONG;
    loop {
        let tail = ctl.as_root(&[
            "audit",
            "tail",
            "--state-dir",
            STATE_DIR,
            "--json",
            "-n",
            "1000",
        ]);
        if tail.1.contains(&cap_id) && tail.1.contains("action_not_granted") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the denial never reached the audit log: {}",
            tail.1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Verified after the records the test waited for are in the log.
    let verify = ctl.as_root(&["audit", "verify", "--state-dir", STATE_DIR]);
    assert_eq!(verify.0, Some(0), "audit verify: {}{}", verify.1, verify.2);
    let journal = node.sd.journal("strata-audit.service").expect("journal");
    assert!(
        journal.contains(&format!("denied fs.stat for {cap_id}")),
        "the denial is not in audit's journal:\n{journal}"
    );

    // Tamper with one record in the middle (flip a decision): verify names it and fails.
    let log = format!("{STATE_DIR}/audit/audit.log");
    let (code, out, err) = run(node
        .sd
        .command("sh")
        .args([
            "-c",
            &format!(
                "n=$(grep -n '\"decision\":\"deny\"' {log} | head -1 | cut -d: -f1) && \
                 sed -i \"${{n}}s/\\\"decision\\\":\\\"deny\\\"/\\\"decision\\\":\\\"allow\\\"/\" {log} && echo $n"
            ),
        ])
        .output()
        .expect("sh"));
    assert_eq!(code, Some(0), "tampering: {out}{err}");
    let line: u64 = out.trim().parse().expect("line number");
    let (code, out, err) = ctl.as_root(&["audit", "verify", "--state-dir", STATE_DIR]);
    assert_eq!(code, Some(1), "a tampered log verified: {out}{err}");
    assert!(
        format!("{out}{err}").contains(&format!("line {line}")),
        "verify does not name line {line}: {out}{err}"
    );
}
