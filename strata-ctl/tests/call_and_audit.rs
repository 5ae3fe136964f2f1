//! `strata-ctl call` (and the original `-token T METHOD JSON` form) against real protocol v1
//! servers on Unix sockets, with endpoint resolution through a registry and the fallback to
//! `<runtime_dir>/<service>.sock`; `strata-ctl audit verify|tail` on intact and tampered logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::{Value, json};
use strata_core::audit_chain::{AuditDecision, AuditEvent, Chain, ChainHead};
use strata_core::protocol::{Request, RpcError};
use strata_services::ipc::{Handler, Peer, ServerConfig, bind, serve};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "strata-ctl-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Answers `fs.list` with what it received and where; `fs.open` always fails.
struct Echo {
    name: &'static str,
}

impl Handler for Echo {
    fn methods(&self) -> &[&str] {
        &["fs.list", "fs.open"]
    }

    async fn handle(&self, _peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.method.as_str() {
            "fs.list" => Ok(json!({"server": self.name, "token": req.token, "params": req.params})),
            _ => Err(RpcError::not_found("no such file or directory: `x`")),
        }
    }
}

/// A registry that places fs at a given socket.
struct FakeRegistry {
    fs_endpoint: String,
}

impl Handler for FakeRegistry {
    fn methods(&self) -> &[&str] {
        &["registry.resolve"]
    }

    async fn handle(&self, _peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.params["service"].as_str() {
            Some("fs") => Ok(json!({"service": "fs", "endpoint": self.fs_endpoint, "api_v": 1})),
            _ => Err(RpcError::not_found("not registered")),
        }
    }
}

fn start<H: Handler>(path: &Path, handler: H) {
    let listener = bind(path).expect("bind");
    tokio::spawn(serve(
        listener,
        Arc::new(handler),
        ServerConfig::default(),
        std::future::pending(),
    ));
}

async fn ctl(runtime: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-ctl"));
    cmd.args(args)
        .env("STRATA_RUNTIME_DIR", runtime)
        .env_remove("STRATA_TOKEN");
    tokio::task::spawn_blocking(move || cmd.output().expect("strata-ctl runs"))
        .await
        .expect("join")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_in_both_forms_with_fallback_and_registry_resolution() {
    let dir = TempDir::new("call");
    let runtime = dir.0.join("run");
    std::fs::create_dir_all(&runtime).expect("mkdir");
    start(&runtime.join("fs.sock"), Echo { name: "by-name" });

    // No registry: fallback to <runtime_dir>/fs.sock. The original client's form.
    let out = ctl(
        &runtime,
        &["-token", "TOK", "fs.list", r#"{"path":"/tmp"}"#],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let v = stdout_json(&out);
    assert_eq!(v["ok"], true);
    assert_eq!(v["v"], 1);
    assert_eq!(
        v["result"],
        json!({"server": "by-name", "token": "TOK", "params": {"path": "/tmp"}})
    );
    // The subcommand form; without a token, none is sent.
    let out = ctl(&runtime, &["call", "fs.list", "--compact"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        stdout_json(&out)["result"],
        json!({"server": "by-name", "token": null, "params": {}})
    );
    // ok=false: the envelope is printed and the exit status is 1.
    let out = ctl(&runtime, &["--token=T", "fs.open", r#"{"path":"x"}"#]).await;
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v = stdout_json(&out);
    assert_eq!(
        (v["ok"].as_bool(), v["error"]["name"].as_str()),
        (Some(false), Some("NOT_FOUND"))
    );
    // Bad params never reach the server.
    let out = ctl(&runtime, &["call", "fs.list", "[1,2]"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("params must be a JSON object"));

    // With a registry: the endpoint it gives wins over the socket named after the service.
    let elsewhere = dir.0.join("elsewhere.sock");
    start(&elsewhere, Echo { name: "resolved" });
    start(
        &runtime.join("registry.sock"),
        FakeRegistry {
            fs_endpoint: format!("unix://{}", elsewhere.display()),
        },
    );
    let out = ctl(&runtime, &["call", "fs.list", "{}", "-v"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(stdout_json(&out)["result"]["server"], "resolved");
    assert!(String::from_utf8_lossy(&out.stderr).contains("resolved by the registry"));

    // A service nobody answers for: exit 2 with the socket named.
    let out = ctl(&runtime, &["call", "web.ping"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("web.sock"),
        "{out:?}"
    );
}

fn write_log(dir: &Path, n: u64) -> (PathBuf, Vec<String>) {
    let mut chain = Chain::new();
    let lines: Vec<String> = (0..n)
        .map(|i| {
            let e = AuditEvent {
                time_ms: 1_700_000_000_000 + i,
                source: "fs".into(),
                service: "fs".into(),
                action: "read".into(),
                cap_id: Some(format!("cap{i}")),
                decision: if i == 2 {
                    AuditDecision::Deny
                } else {
                    AuditDecision::Allow
                },
                reason: (i == 2).then(|| "revoked".into()),
                message: (i == 2).then(|| "capability revoked".into()),
                peer_uid: None,
                count: 1,
            };
            chain.append(1_700_000_000_500 + i, e).to_line()
        })
        .collect();
    let head: ChainHead = chain.head().expect("non-empty");
    std::fs::write(dir.join("audit.head"), head.to_json()).expect("head");
    let log = dir.join("audit.log");
    std::fs::write(&log, lines.concat()).expect("log");
    (log, lines)
}

fn run_ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata-ctl"))
        .args(args)
        .output()
        .expect("strata-ctl runs")
}

#[test]
fn audit_verify_finds_every_kind_of_tampering_and_tail_shows_records() {
    let dir = TempDir::new("audit");
    let (log, lines) = write_log(&dir.0, 5);
    let file = log.to_string_lossy().into_owned();
    let out = run_ctl(&["audit", "verify", "--file", &file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("intact: 5 records (5 decisions), last seq 4, matches the head file"),
        "{text}"
    );

    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "altered",
            {
                let mut l = lines.clone();
                l[2] = l[2].replace("\"deny\"", "\"allow\"");
                l
            },
            "BROKEN: audit log broken at line 3 (altered)",
        ),
        (
            "removed",
            {
                let mut l = lines.clone();
                l.remove(1);
                l
            },
            "BROKEN: audit log broken at line 2 (removed)",
        ),
        (
            "cut off",
            lines[..4].to_vec(),
            "BROKEN: audit log broken at line 5 (removed)",
        ),
        (
            "reordered",
            {
                let mut l = lines.clone();
                l.swap(0, 3);
                l
            },
            "BROKEN: audit log broken at line 1 (reordered)",
        ),
    ];
    for (what, tampered, expected) in cases {
        std::fs::write(&log, tampered.concat()).expect("write");
        let out = run_ctl(&["audit", "verify", "--file", &file]);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expected), "{what}: {text}");
    }
    // Cut off the end without the head file: not detectable, and said so.
    std::fs::write(&log, lines[..4].concat()).expect("write");
    let out = run_ctl(&["audit", "verify", "--file", &file, "--no-head"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no head file"));

    std::fs::write(&log, lines.concat()).expect("write");
    let out = run_ctl(&["audit", "tail", "-n", "2", "--file", &file]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let shown: Vec<&str> = text.lines().collect();
    assert_eq!(shown.len(), 2, "{text}");
    assert!(
        shown[0].contains("3 2023-11-14T22:13:20.003Z ALLOW fs.read by fs cap=cap3"),
        "{text}"
    );
    let out = run_ctl(&["audit", "tail", "-n", "3", "--json", "--file", &file]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("\"reason\":\"revoked\"")),
        "{text}"
    );
}
