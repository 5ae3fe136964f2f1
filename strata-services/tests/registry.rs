//! strata-registry on real sockets: who may register (uid 0, a token with
//! `registry.register`; nobody else), endpoint validation, never-null lists, and durability:
//! the real `strata-registry` binary killed with SIGKILL comes back with every entry.

mod as_nobody;
mod node;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_core::protocol::Code;
use strata_services::ipc::{Client, ClientError};
use strata_services::registry::Registry;

use as_nobody::call_as_nobody;
use node::Node;

fn rpc(r: Result<Value, ClientError>) -> Result<Value, strata_core::protocol::RpcError> {
    match r {
        Ok(v) => Ok(v),
        Err(ClientError::Rpc(e)) => Err(e),
        Err(e) => panic!("transport failure: {e}"),
    }
}

fn nobody_code(v: &Value) -> (u64, String) {
    assert_eq!(v["ok"], false, "{v}");
    (
        v["error"]["code"].as_u64().expect("error code"),
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_needs_authority_and_valid_endpoints() {
    let node = Node::start("registry-authz").await;
    let setup = node.verifier().await;
    let state = node.path("state/registry");
    let registry =
        Arc::new(Registry::open(&state, Some(Arc::clone(&setup.verifier))).expect("open"));
    let _served = node.serve("registry", Arc::clone(&registry));
    let sock = node.socket("registry");

    // Lists are never null.
    let empty = rpc(node
        .call("registry", "registry.list", json!({}), None)
        .await)
    .expect("list");
    assert_eq!(empty, json!({"services": []}));

    // uid 0 (the supervisor) registers without a token.
    let r = rpc(node
        .call(
            "registry",
            "registry.register",
            json!({"service": "fs", "endpoint": "unix:///run/strata/fs.sock"}),
            None,
        )
        .await)
    .expect("root registers");
    assert_eq!(
        (
            r["status"].as_str(),
            r["api_v"].as_u64(),
            r["changed"].as_bool()
        ),
        (Some("registered"), Some(1), Some(true))
    );

    // Nobody without a token, or with a token lacking the right, is refused.
    let params = json!({"service": "web", "endpoint": "tcp://127.0.0.1:8080"});
    let (code, msg) = nobody_code(&call_as_nobody(&sock, "registry.register", &params, None));
    assert_eq!(code, Code::Unauthenticated.as_u32() as u64, "{msg}");
    assert!(msg.contains("needs a capability token"), "{msg}");
    let (reader, _) = node
        .issue(json!({"service": "registry", "actions": ["resolve", "list"]}))
        .await;
    let (code, msg) = nobody_code(&call_as_nobody(
        &sock,
        "registry.register",
        &params,
        Some(&reader),
    ));
    assert_eq!(code, Code::PermissionDenied.as_u32() as u64, "{msg}");
    assert!(msg.contains("does not grant registry.register"), "{msg}");
    let (code, _) = nobody_code(&call_as_nobody(
        &sock,
        "registry.unregister",
        &json!({"service": "fs"}),
        Some(&reader),
    ));
    assert_eq!(code, Code::PermissionDenied.as_u32() as u64);
    // Positive control: nobody with `registry.register` registers and unregisters.
    let (writer, _) = node
        .issue(json!({"service": "registry", "rights": ["registry.register"]}))
        .await;
    let v = call_as_nobody(&sock, "registry.register", &params, Some(&writer));
    assert_eq!(v["ok"], true, "{v}");
    // Resolving and listing are open to every local peer.
    let v = call_as_nobody(&sock, "registry.resolve", &json!({"service": "web"}), None);
    assert_eq!(
        v["result"],
        json!({"service": "web", "endpoint": "tcp://127.0.0.1:8080", "api_v": 1})
    );
    let v = call_as_nobody(
        &sock,
        "registry.unregister",
        &json!({"service": "web"}),
        Some(&writer),
    );
    assert_eq!(v["ok"], true, "{v}");
    let e = rpc(node
        .call(
            "registry",
            "registry.resolve",
            json!({"service": "web"}),
            None,
        )
        .await)
    .expect_err("gone");
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert!(e.message.contains("`web` is not registered"), "{e}");
    let e = rpc(node
        .call(
            "registry",
            "registry.unregister",
            json!({"service": "web"}),
            None,
        )
        .await)
    .expect_err("already gone");
    assert_eq!(e.code, Code::NotFound, "{e}");

    // Validation, each naming the cause.
    for (params, fragment) in [
        (
            json!({"service": "x", "endpoint": "http://a:1"}),
            "unknown scheme",
        ),
        (
            json!({"service": "x", "endpoint": "unix://relative.sock"}),
            "socket path",
        ),
        (
            json!({"service": "x", "endpoint": "tcp://host:0"}),
            "port `0`",
        ),
        (
            json!({"service": "x", "endpoint": "tcp://bad host:80"}),
            "host `bad host`",
        ),
        (
            json!({"service": "Bad_Name", "endpoint": "tcp://h:1"}),
            "service name",
        ),
        (
            json!({"service": "x", "endpoint": "tcp://h:1", "api_v": 0}),
            "api_v 0",
        ),
        (json!({"service": "x"}), "missing field `endpoint`"),
        (
            json!({"service": "x", "endpoint": "tcp://h:1", "extra": true}),
            "unknown field `extra`",
        ),
    ] {
        let e = rpc(node
            .call("registry", "registry.register", params.clone(), None)
            .await)
        .expect_err("invalid");
        assert_eq!(e.code, Code::InvalidArgument, "{params}: {e}");
        assert!(e.message.contains(fragment), "{params}: {}", e.message);
    }
    // Re-registering the same endpoint changes nothing; a new one replaces it.
    let same = rpc(node
        .call(
            "registry",
            "registry.register",
            json!({"service": "fs", "endpoint": "unix:///run/strata/fs.sock"}),
            None,
        )
        .await)
    .expect("again");
    assert_eq!(same["changed"], false);
    let moved = rpc(node
        .call(
            "registry",
            "registry.register",
            json!({"service": "fs", "endpoint": "unix:///run/strata/fs/fs.sock", "api_v": 2}),
            None,
        )
        .await)
    .expect("moved");
    assert_eq!(moved["previous"]["endpoint"], "unix:///run/strata/fs.sock");
    assert_eq!(registry.entries().len(), 1);
}

struct RegistryProcess {
    child: Child,
}

impl RegistryProcess {
    fn spawn(runtime: &Path, state: &Path) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_strata-registry"))
            .args(["--node-id", "node-1", "--no-audit", "--runtime-dir"])
            .arg(runtime)
            .arg("--state-dir")
            .arg(state)
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("STATE_DIRECTORY")
            .stdin(Stdio::null())
            .spawn()
            .expect("strata-registry starts");
        Self { child }
    }

    fn kill9(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");
        let status = self.child.wait().expect("reaped");
        assert!(!status.success(), "killed by SIGKILL: {status:?}");
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn connect_when_up(sock: &PathBuf) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = Client::connect(sock).await {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "strata-registry did not come up at {}",
            sock.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_with_sigkill_comes_back_with_every_entry() {
    let node = Node::start("registry-restart").await;
    let state = node.path("state/registry");
    let sock = node.socket("registry");
    let first = RegistryProcess::spawn(&node.runtime, &state);
    let mut c = connect_when_up(&sock).await;
    let entries = [
        ("identity", "unix:///run/strata/identity.sock", 1),
        ("fs", "unix:///run/strata/fs.sock", 1),
        ("web", "tcp://[::1]:8080", 3),
    ];
    for (service, endpoint, api_v) in entries {
        c.call(
            "registry.register",
            json!({"service": service, "endpoint": endpoint, "api_v": api_v}),
            None,
        )
        .await
        .expect("register");
    }
    let before = c
        .call("registry.list", json!({}), None)
        .await
        .expect("list");
    drop(c);
    // Answered means durable: a kill -9 right after the last answer loses nothing.
    first.kill9();
    let _ = std::fs::remove_file(&sock);
    let _second = RegistryProcess::spawn(&node.runtime, &state);
    let mut c = connect_when_up(&sock).await;
    let after = c
        .call("registry.list", json!({}), None)
        .await
        .expect("list");
    assert_eq!(after, before);
    assert_eq!(after["services"].as_array().map(Vec::len), Some(3));
    let web = c
        .call("registry.resolve", json!({"service": "web"}), None)
        .await
        .expect("resolve");
    assert_eq!(
        web,
        json!({"service": "web", "endpoint": "tcp://[::1]:8080", "api_v": 3})
    );
    // The state file is private and holds no temporary leftovers.
    let names: Vec<String> = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["registry.json".to_owned()]);
}

#[test]
#[ignore = "helper: runs only when started by call_as_nobody"]
fn child_client() {
    as_nobody::child_client_main();
}
