//! Runs a protocol v1 call as uid/gid 65534 (nobody) in a child process: the test binary
//! re-executes itself under `setpriv` with the `child_client` helper test selected.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use strata_services::ipc::{Client, ClientError};

/// A world-searchable temporary directory, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(tag: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let p = std::env::temp_dir().join(format!(
            "strata-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("create test dir");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(p)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Calls `method` on `sock` as nobody; returns `{"ok":true,"result":…}` or
/// `{"ok":false,"error":{…}}`. Fails (never skips) when not run as root.
pub fn call_as_nobody(sock: &Path, method: &str, params: &Value, token: Option<&str>) -> Value {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "this test must run as root: it starts a client as nobody with setpriv"
    );
    let exe = std::env::current_exe().expect("test binary path");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&exe)
        .args([
            "--exact",
            "child_client",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STRATA_CHILD_SOCKET", sock)
        .env("STRATA_CHILD_METHOD", method)
        .env("STRATA_CHILD_PARAMS", params.to_string());
    if let Some(t) = token {
        cmd.env("STRATA_CHILD_TOKEN", t);
    }
    let out = cmd.output().expect("setpriv runs (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("CHILD_RESULT=").map(|(_, json)| json))
        .unwrap_or_else(|| {
            panic!(
                "child printed no result; status {:?}\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("child result is JSON")
}

/// Body of the `child_client` helper test: does nothing unless started by
/// [`call_as_nobody`].
pub fn child_client_main() {
    let (Ok(sock), Ok(method)) = (
        std::env::var("STRATA_CHILD_SOCKET"),
        std::env::var("STRATA_CHILD_METHOD"),
    ) else {
        eprintln!("child_client: not started by a parent test, nothing to do");
        return;
    };
    let params: Value = std::env::var("STRATA_CHILD_PARAMS")
        .ok()
        .and_then(|p| serde_json::from_str(&p).ok())
        .unwrap_or_else(|| json!({}));
    let token = std::env::var("STRATA_CHILD_TOKEN").ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let result = rt.block_on(async {
        let mut c = Client::connect(&sock).await?;
        c.call(&method, params, token.as_deref()).await
    });
    let out = match result {
        Ok(v) => json!({"ok": true, "result": v}),
        Err(ClientError::Rpc(e)) => json!({"ok": false, "error": e}),
        Err(e) => json!({"ok": false, "client_error": e.to_string()}),
    };
    println!("\nCHILD_RESULT={out}");
}
