//! A node in a temporary directory for the fs, registry and audit tests: a real identity
//! service on `<runtime>/identity.sock`, real verifiers following its revocations, and any
//! handler served on a real Unix socket. Tests run as root (the supervisor's uid).

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use strata_services::bootstrap::{VerifierSetup, start_verifier};
use strata_services::identity::{Identity, IdentityConfig};
use strata_services::ipc::{Client, ClientError, Handler, ServerConfig, bind, serve};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::as_nobody::TestDir;

/// A server started by [`Node::serve`]; [`Served::stop`] or dropping it stops it.
pub struct Served {
    pub socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    done: Option<JoinHandle<()>>,
}

impl Served {
    /// Stops the server and waits until it no longer accepts.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub struct Node {
    pub dir: TestDir,
    pub runtime: PathBuf,
    pub identity_state: PathBuf,
    pub identity: Arc<Identity>,
    _identity_server: Served,
}

pub fn serve_at<H: Handler>(socket: &Path, handler: Arc<H>) -> Served {
    let listener = bind(socket).expect("bind test socket");
    let (tx, rx) = oneshot::channel();
    let done = tokio::spawn(serve(listener, handler, ServerConfig::default(), async {
        let _ = rx.await;
    }));
    Served {
        socket: socket.to_owned(),
        stop: Some(tx),
        done: Some(done),
    }
}

impl Node {
    /// Starts identity for node `node-1` in a fresh directory.
    pub async fn start(tag: &str) -> Node {
        assert_eq!(
            rustix::process::geteuid().as_raw(),
            0,
            "these tests run as root: they act as the supervisor (uid 0) and start clients as nobody"
        );
        let dir = TestDir::new(tag);
        let runtime = dir.0.join("run");
        std::fs::create_dir_all(&runtime).expect("runtime dir");
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let identity_state = dir.0.join("state/identity");
        let mut config = IdentityConfig::new(&identity_state, &runtime, "node-1");
        config.services.insert("web".into());
        let identity = Arc::new(Identity::open(config).expect("identity opens"));
        let server = serve_at(&runtime.join("identity.sock"), Arc::clone(&identity));
        Node {
            dir,
            runtime,
            identity_state,
            identity,
            _identity_server: server,
        }
    }

    /// A directory under the node's temporary directory.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.0.join(rel)
    }

    /// A verifier that follows identity's revocations, ready.
    pub async fn verifier(&self) -> VerifierSetup {
        start_verifier(&self.runtime, "node-1", Duration::from_secs(5), None, true)
            .await
            .expect("verifier starts")
    }

    /// Serves `handler` on `<runtime>/<name>.sock`.
    pub fn serve<H: Handler>(&self, name: &str, handler: Arc<H>) -> Served {
        serve_at(&self.runtime.join(format!("{name}.sock")), handler)
    }

    pub fn socket(&self, name: &str) -> PathBuf {
        self.runtime.join(format!("{name}.sock"))
    }

    /// Calls `method` on `<runtime>/<service>.sock` as this (root) process.
    pub async fn call(
        &self,
        service: &str,
        method: &str,
        params: Value,
        token: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut c = Client::connect(self.socket(service)).await?;
        c.call(method, params, token).await
    }

    /// Issues a token as root: (token, cap_id).
    pub async fn issue(&self, params: Value) -> (String, String) {
        let r = self
            .call("identity", "identity.issue", params, None)
            .await
            .expect("identity.issue as root");
        (
            r["token"].as_str().expect("token").to_owned(),
            r["cap_id"].as_str().expect("cap_id").to_owned(),
        )
    }

    /// Revokes a cap_id (or any block's revocation id) as root.
    pub async fn revoke(&self, id: &str) {
        let r = self
            .call("identity", "identity.revoke", json!({"cap_id": id}), None)
            .await
            .expect("identity.revoke as root");
        assert_eq!(r["status"], "revoked");
    }
}

/// Polls `cond` every 5 ms until it holds or `within` passes; true when it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
