//! The supervisor's protocol v1 endpoint on `<runtime_dir>/supervisor.sock`:
//! `supervisor.status`, `supervisor.svc.list`, `supervisor.svc.start|stop`, for clients of the
//! original Strata protocol (`strata-ctl call supervisor.svc.list`).
//!
//! It is served by strata-services' IPC server (connection limit, timeouts, peer credentials),
//! and it holds no supervisor state: like the D-Bus interface ([`crate::control`]), every
//! method becomes a [`ControlRequest`] answered by the supervisor loop.
//!
//! Authorization (defect 3 of the original, where `supervisor.*` was open, must not recur):
//! every method needs a peer that is uid 0 or in the admin group (SO_PEERCRED, decided by
//! `strata_services::identity::admin_by_credentials`, the rule of `identity.issue`), or a token
//! for service `supervisor` granting the action (`status`, `svc.list`, `svc.start`,
//! `svc.stop`), decided by the one `authorize()` through a [`Verifier`]. The supervisor starts
//! identity itself, so it cannot wait for identity's key at start: a background task starts the
//! verifier once `<runtime_dir>/identity.pub` can be read (woken when identity reaches
//! `running`, with a slow poll as a fallback). Until then token-bearing requests are answered
//! `UNAVAILABLE`, while peer-credential requests are served.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};
use strata_core::authorize::{AuthzEvent, AuthzRequest, Decision, DenyReason};
use strata_core::capability::check_service_name;
use strata_core::manifest::{CoreService, Manifest};
use strata_core::metrics::Metrics;
use strata_core::protocol::{Request, RpcError};
use strata_services::audit::sender::AuditSender;
use strata_services::bootstrap::{BootstrapError, PUBLIC_KEY_FILE, start_audit_sender};
use strata_services::identity::{Admission, admin_by_credentials};
use strata_services::ipc::metrics::ServiceMetrics;
use strata_services::ipc::{BindError, Handler, Peer, ServerConfig, bind, serve, socket_path};
use strata_services::revocation::{FollowerConfig, RevocationFollower, shared_set};
use strata_services::verifier::{PublicKeyError, Verifier, read_public_key};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::control::{ControlError, ControlRequest, ServiceInfo};
use crate::supervisor::{Published, Publisher};

/// The service name of the endpoint: its socket is `<runtime_dir>/supervisor.sock`, its tokens
/// are minted for service `supervisor`.
pub const SERVICE: &str = "supervisor";

/// The methods served.
pub const METHODS: &[&str] = &[
    "supervisor.status",
    "supervisor.svc.list",
    "supervisor.svc.start",
    "supervisor.svc.stop",
];

/// `details.reason` of a token-bearing request while identity's key is not readable yet.
pub const REASON_IDENTITY_UNAVAILABLE: &str = "identity_unavailable";
/// `details.reason` of a token-bearing request on a node whose identity service is disabled.
pub const REASON_IDENTITY_DISABLED: &str = "identity_disabled";

/// How long a request waits for the supervisor loop's answer (the loop may be busy with a start
/// that mints tokens); less than strata-ctl's default 30 s, so the caller sees why.
const LOOP_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Why the endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorSocketError {
    /// The runtime directory could not be created.
    #[error("cannot create the runtime directory {path}: {source}")]
    RuntimeDir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The socket could not be bound (a live server on it, something else at the path, …).
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The sender of authorization events to audit could not be set up.
    #[error("cannot set up the audit sender: {0}")]
    Audit(#[from] BootstrapError),
    /// The freshly bound socket could not be examined.
    #[error("cannot examine the socket {path}: {source}")]
    Stat {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the endpoint needs to know about the node.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// `[node] runtime_dir`: the socket, `identity.pub` and `identity.sock` are there.
    pub runtime_dir: PathBuf,
    /// `[node] id`: the audience every token must name.
    pub node_id: String,
    /// Members of this group are admitted by their credentials (besides uid 0).
    pub admin_group: String,
    /// Whether identity is part of the graph (when not, tokens can never be verified).
    pub identity_enabled: bool,
    /// Whether audit is part of the graph (decisions are shipped to it when it is).
    pub audit_enabled: bool,
    /// Limits and timeouts of the server.
    pub server: ServerConfig,
    /// The supervisor's metrics registry (shared with D-Bus `Metrics()`): this endpoint's
    /// request latencies, refused input and denials (`rejected_total{reason}`) go there.
    pub metrics: Arc<Metrics>,
}

impl SocketConfig {
    /// The endpoint of the node `manifest` describes, with the server's default limits.
    pub fn from_manifest(manifest: &Manifest, admin_group: &str) -> Self {
        Self {
            runtime_dir: PathBuf::from(&manifest.node.runtime_dir),
            node_id: manifest.node.id.clone(),
            admin_group: admin_group.to_owned(),
            identity_enabled: manifest.core.enabled(CoreService::Identity),
            audit_enabled: manifest.core.enabled(CoreService::Audit),
            server: ServerConfig::default(),
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// A verifier with the follower that keeps its revocations current.
struct Tokens {
    verifier: Verifier,
    _follower: RevocationFollower,
}

/// State shared by the handler, the key watcher and the [`TapPublisher`].
struct Shared {
    started: Instant,
    /// The loop has reconciled the graph once (what READY=1 tells systemd).
    ready: AtomicBool,
    /// Set once, when identity's key has been read.
    tokens: OnceLock<Tokens>,
    /// Why the key could not be used, when it exists but is unusable.
    key_problem: Mutex<Option<String>>,
    /// Woken when identity reaches `running`.
    identity_up: Notify,
}

impl Shared {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            tokens: OnceLock::new(),
            key_problem: Mutex::new(None),
            identity_up: Notify::new(),
        }
    }
}

/// The request handler of `supervisor.sock`.
pub struct SupervisorEndpoint {
    requests: mpsc::Sender<ControlRequest>,
    shared: Arc<Shared>,
    node_id: String,
    admin_group: String,
    identity_enabled: bool,
    key_path: PathBuf,
    audit: Option<AuditSender>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for SupervisorEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorEndpoint")
            .field("node_id", &self.node_id)
            .field("admin_group", &self.admin_group)
            .field("identity_enabled", &self.identity_enabled)
            .field("tokens", &self.shared.tokens.get().is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NameParams {
    name: String,
}

impl SupervisorEndpoint {
    fn new(
        config: &SocketConfig,
        requests: mpsc::Sender<ControlRequest>,
        shared: Arc<Shared>,
        audit: Option<AuditSender>,
    ) -> Self {
        Self {
            requests,
            shared,
            node_id: config.node_id.clone(),
            admin_group: config.admin_group.clone(),
            identity_enabled: config.identity_enabled,
            key_path: config.runtime_dir.join(PUBLIC_KEY_FILE),
            audit,
            metrics: Arc::clone(&config.metrics),
        }
    }

    /// Sends a request to the supervisor loop and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
    ) -> Result<T, RpcError> {
        let gone = || RpcError::unavailable("the supervisor is shutting down: its loop is gone");
        let (tx, rx) = oneshot::channel();
        let asked = async {
            self.requests.send(make(tx)).await.map_err(|_| gone())?;
            rx.await.map_err(|_| gone())
        };
        tokio::time::timeout(LOOP_ANSWER_TIMEOUT, asked)
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::unavailable(format!(
                    "the supervisor loop did not answer within {}s; retry later",
                    LOOP_ANSWER_TIMEOUT.as_secs()
                )))
            })
    }

    /// Where token verification stands: `enabled`, `waiting_for_identity`, `identity_disabled`.
    fn token_state(&self) -> &'static str {
        if self.shared.tokens.get().is_some() {
            "enabled"
        } else if self.identity_enabled {
            "waiting_for_identity"
        } else {
            "identity_disabled"
        }
    }

    /// Admits the caller by its credentials, or by a token for `supervisor.<action>`.
    async fn authorize(&self, peer: &Peer, req: &Request) -> Result<(), RpcError> {
        let method = req.method.as_str();
        let action = req.action();
        if let Some(admitted) = admin_by_credentials(peer, &self.admin_group).await? {
            let who = match admitted {
                Admission::AdminGroup { uid } => {
                    format!("uid {uid} (group `{}`)", self.admin_group)
                }
                Admission::Root | Admission::Token { .. } => "uid 0".to_owned(),
            };
            tracing::info!(STRATA_EVENT = "authz.allowed", STRATA_SERVICE = SERVICE, action,
                uid = peer.uid, pid = ?peer.pid, "allowed {method} to {who} by peer credentials");
            self.audit(
                peer,
                action,
                Decision::Allow,
                None,
                format!("{who}, peer credentials"),
            );
            return Ok(());
        }
        let Some(token) = req.token.as_deref() else {
            let e = RpcError::permission_denied(format!(
                "{method} needs uid 0, membership in group `{}`, or a token for service \
                 `{SERVICE}` granting `{action}` (uid {} presented no token)",
                self.admin_group, peer.uid
            ))
            .with_detail("uid", peer.uid)
            .with_detail("reason", DenyReason::MissingToken.as_str());
            self.deny(peer, action, Some(DenyReason::MissingToken), &e);
            return Err(e);
        };
        let Some(tokens) = self.shared.tokens.get() else {
            let e = self.no_verifier(method, peer);
            self.deny(peer, action, None, &e);
            return Err(e);
        };
        // The one authorize(): it logs and audits its own decision.
        tokens
            .verifier
            .authorize(
                Some(token),
                &AuthzRequest {
                    service: SERVICE,
                    action,
                    path: None,
                },
            )
            .map(|_| ())
            .map_err(|e| e.with_detail("uid", peer.uid))
    }

    /// The answer to a token that cannot be verified because there is no verifier (yet).
    fn no_verifier(&self, method: &str, peer: &Peer) -> RpcError {
        let admin = format!(
            "callers with uid 0 or in group `{}` need no token",
            self.admin_group
        );
        if !self.identity_enabled {
            // Permanent (until the manifest enables identity): the token cannot be authenticated.
            return RpcError::unauthenticated(format!(
                "{method}: tokens cannot be verified on this node: the identity service is \
                 disabled in the manifest ([core.identity] enable = false); {admin}"
            ))
            .with_detail("uid", peer.uid)
            .with_detail("reason", REASON_IDENTITY_DISABLED);
        }
        let why = self
            .shared
            .key_problem
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .unwrap_or_else(|| {
                format!(
                    "waiting for the identity service to publish its key at {}",
                    self.key_path.display()
                )
            });
        RpcError::unavailable(format!(
            "{method}: tokens cannot be verified yet ({why}); retry once identity runs, {admin}"
        ))
        .with_detail("uid", peer.uid)
        .with_detail("reason", REASON_IDENTITY_UNAVAILABLE)
    }

    /// Logs and audits a denial decided here (not by `authorize()`).
    fn deny(&self, peer: &Peer, action: &str, reason: Option<DenyReason>, e: &RpcError) {
        tracing::warn!(STRATA_EVENT = "authz.denied", STRATA_SERVICE = SERVICE, action,
            uid = peer.uid, pid = ?peer.pid, "{}", e.message);
        let counted = e.details.get("reason").and_then(Value::as_str);
        self.metrics.record_rejected(
            counted
                .or(reason.map(DenyReason::as_str))
                .unwrap_or("denied"),
        );
        self.audit(peer, action, Decision::Deny, reason, e.message.clone());
    }

    fn audit(
        &self,
        peer: &Peer,
        action: &str,
        decision: Decision,
        reason: Option<DenyReason>,
        message: String,
    ) {
        if let Some(audit) = &self.audit {
            let event = AuthzEvent {
                cap_id: None,
                service: SERVICE.to_owned(),
                action: action.to_owned(),
                decision,
                reason,
                message: Some(message),
            };
            audit.record_authz(&event, Some(peer.uid));
        }
    }

    async fn status(&self) -> Result<Value, RpcError> {
        let services = self.ask(ControlRequest::List).await?;
        let running = services.iter().filter(|s| s.state == "running").count();
        let quarantined: Vec<&str> = services
            .iter()
            .filter(|s| s.state == "quarantined")
            .map(|s| s.name.as_str())
            .collect();
        Ok(json!({
            "node_id": self.node_id,
            "uptime_sec": self.shared.started.elapsed().as_secs(),
            "version": env!("CARGO_PKG_VERSION"),
            "ready": self.shared.ready.load(Ordering::Acquire),
            "services": services.len(),
            "running": running,
            "quarantined": quarantined,
            "tokens": self.token_state(),
        }))
    }

    async fn list(&self) -> Result<Value, RpcError> {
        let services = self.ask(ControlRequest::List).await?;
        let services: Vec<Value> = services.iter().map(service_json).collect();
        Ok(json!({ "services": services }))
    }

    async fn start_or_stop(&self, req: &Request, start: bool) -> Result<Value, RpcError> {
        let p: NameParams = req.params()?;
        check_service_name(&p.name).map_err(|e| {
            RpcError::invalid_argument(format!("{}: service name {e}", req.method))
                .with_detail("field", "name")
        })?;
        let name = p.name.clone();
        let answer = if start {
            self.ask(|tx| ControlRequest::Start(name, tx)).await?
        } else {
            self.ask(|tx| ControlRequest::Stop(name, tx)).await?
        };
        answer.map_err(control_rpc_error)?;
        tracing::info!(
            STRATA_SERVICE = p.name.as_str(),
            STRATA_EVENT = "control.v1",
            method = req.method.as_str(),
            "{} accepted for {}",
            req.method,
            p.name
        );
        let status = if start { "started" } else { "stopped" };
        Ok(json!({ "status": status, "name": p.name }))
    }
}

/// One service as `supervisor.svc.list` shows it: the original `{name, state, pid}` (`pid`
/// null when there is no main process) and what the D-Bus interface reports besides.
fn service_json(s: &ServiceInfo) -> Value {
    json!({
        "name": s.name,
        "state": s.state,
        "pid": (s.main_pid != 0).then_some(s.main_pid),
        "restarts": s.restarts,
        "reason": s.reason,
        "unit": s.unit,
        "since_usec": s.since_usec,
        "last_exit": s.last_exit,
    })
}

/// The protocol error for a refusal of the loop. A quarantined service is `CONFLICT`: the
/// request is well-formed and allowed, but conflicts with the service's state until an
/// operator releases it (protocol v1 has no FAILED_PRECONDITION).
fn control_rpc_error(e: ControlError) -> RpcError {
    let message = e.to_string();
    match e {
        ControlError::UnknownService(name) => {
            RpcError::not_found(message).with_detail("name", name)
        }
        ControlError::Quarantined { name, reason } => RpcError::conflict(message)
            .with_detail("name", name)
            .with_detail("state", "quarantined")
            .with_detail("quarantine_reason", reason),
        ControlError::NotQuarantined { name, state } => RpcError::conflict(message)
            .with_detail("name", name)
            .with_detail("state", state),
        // Neither is answered to a start or a stop; if one ever is, it names itself.
        ControlError::InvalidManifest(_) | ControlError::Failed(_) => RpcError::internal(message),
    }
}

impl Handler for SupervisorEndpoint {
    fn methods(&self) -> &[&str] {
        METHODS
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Value, RpcError> {
        // Authority first: an unauthorized caller learns nothing, not even which names exist.
        self.authorize(peer, &req).await?;
        match req.method.as_str() {
            "supervisor.status" => {
                let _: NoParams = req.params()?;
                self.status().await
            }
            "supervisor.svc.list" => {
                let _: NoParams = req.params()?;
                self.list().await
            }
            "supervisor.svc.start" => self.start_or_stop(&req, true).await,
            "supervisor.svc.stop" => self.start_or_stop(&req, false).await,
            // The server answers methods outside METHODS itself.
            other => Err(RpcError::not_found(format!("unknown method {other}"))),
        }
    }
}

/// Reads identity's key once it is there and starts the verifier and its revocation follower.
/// Tries at once (an identity adopted after a supervisor restart has published its key
/// already), then each time identity reaches `running`: it writes its key before it reports
/// ready (Type=notify), and the reconciler announces an adopted identity as running too.
async fn watch_identity_key(
    shared: Arc<Shared>,
    runtime_dir: PathBuf,
    node_id: String,
    identity_enabled: bool,
    audit: Option<AuditSender>,
    metrics: Arc<Metrics>,
) {
    if !identity_enabled {
        // Tokens are answered "identity disabled" by the endpoint; nothing to wait for.
        return;
    }
    let key_path = runtime_dir.join(PUBLIC_KEY_FILE);
    loop {
        match read_public_key(&key_path) {
            Ok(key) => {
                let set = shared_set();
                let follower = RevocationFollower::spawn(
                    FollowerConfig::new(socket_path(&runtime_dir, "identity")),
                    Arc::clone(&set),
                );
                let mut verifier = Verifier::new(key, node_id, set).with_metrics(metrics);
                if let Some(audit) = &audit {
                    verifier = verifier.with_audit_sink(audit.sink());
                }
                let _ = shared.tokens.set(Tokens {
                    verifier,
                    _follower: follower,
                });
                *shared
                    .key_problem
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                tracing::info!(STRATA_EVENT = "supervisor.tokens_enabled", key = %key_path.display(),
                    "tokens for supervisor.* are verified with identity's key from now on");
                return;
            }
            // A dangling link (identity has not written its key yet) reads as NotFound too.
            Err(PublicKeyError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                let text = e.to_string();
                let mut problem = shared
                    .key_problem
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if problem.as_deref() != Some(text.as_str()) {
                    tracing::warn!(STRATA_EVENT = "supervisor.identity_key_unusable", "{text}");
                    *problem = Some(text);
                }
            }
        }
        shared.identity_up.notified().await;
    }
}

/// The running endpoint. [`SupervisorSocket::shutdown`] stops it and removes the socket;
/// dropping it does the same without waiting for open connections.
pub struct SupervisorSocket {
    path: PathBuf,
    /// (device, inode) of the socket bound, so that only our own socket is ever removed.
    id: (u64, u64),
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    watcher: JoinHandle<()>,
    audit_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SupervisorSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SupervisorSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SupervisorSocket {
    /// Binds `<runtime_dir>/supervisor.sock` (mode 0666: every method is authorized; a stale
    /// socket of a dead supervisor is replaced, a live one is an error; the runtime directory
    /// is created 0755 if missing) and serves it. Requests go to the loop through `requests`.
    /// Needs a tokio runtime.
    pub fn start(
        config: SocketConfig,
        requests: mpsc::Sender<ControlRequest>,
    ) -> Result<Self, SupervisorSocketError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&config.runtime_dir)
            .map_err(|source| SupervisorSocketError::RuntimeDir {
                path: config.runtime_dir.clone(),
                source,
            })?;
        let path = socket_path(&config.runtime_dir, SERVICE);
        let listener = bind(&path)?;
        let meta =
            std::fs::symlink_metadata(&path).map_err(|source| SupervisorSocketError::Stat {
                path: path.clone(),
                source,
            })?;
        let shared = Arc::new(Shared::new());
        let (audit, audit_task) = if config.audit_enabled {
            // The supervisor is uid 0: audit accepts its events without a token.
            let (sender, task) = start_audit_sender(&config.runtime_dir, SERVICE)?;
            (Some(sender), Some(task))
        } else {
            (None, None)
        };
        let watcher = tokio::spawn(watch_identity_key(
            Arc::clone(&shared),
            config.runtime_dir.clone(),
            config.node_id.clone(),
            config.identity_enabled,
            audit.clone(),
            Arc::clone(&config.metrics),
        ));
        let endpoint = SupervisorEndpoint::new(&config, requests, Arc::clone(&shared), audit);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server_config = config.server;
        // Latencies and refused input are counted like every service's, in the registry that
        // D-Bus `Metrics()` renders (also served here as `supervisor.metrics`, admins only).
        server_config.metrics = Some(
            ServiceMetrics::new(SERVICE, config.metrics).with_admin_group(&config.admin_group),
        );
        let server = tokio::spawn(serve(
            listener,
            Arc::new(endpoint),
            server_config,
            async move {
                // A dropped sender stops the server too.
                let _ = stopped.await;
            },
        ));
        tracing::info!(STRATA_EVENT = "supervisor.socket_ready", socket = %path.display(),
            "serving protocol v1 on {}", path.display());
        Ok(Self {
            path,
            id: (meta.dev(), meta.ino()),
            shared,
            stop: Some(stop),
            server: Some(server),
            watcher,
            audit_task,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Wraps the loop's publisher, so that `supervisor.status` knows when the graph has been
    /// reconciled once, and the verifier starts as soon as identity runs.
    pub fn tap<P: Publisher>(&self, inner: P) -> TapPublisher<P> {
        TapPublisher {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }

    /// Stops accepting, closes the open connections and removes the socket.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        // Drop removes the socket.
    }

    fn remove_socket(&self) {
        // Only the socket this endpoint bound: never one a later supervisor put in its place.
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.id => {
                match std::fs::remove_file(&self.path) {
                    Ok(()) => tracing::info!(STRATA_EVENT = "supervisor.socket_removed",
                        socket = %self.path.display(), "removed {}", self.path.display()),
                    Err(e) => tracing::warn!(socket = %self.path.display(), error = %e,
                        "cannot remove the supervisor socket"),
                }
            }
            Ok(_) | Err(_) => {}
        }
    }
}

impl Drop for SupervisorSocket {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.watcher.abort();
        if let Some(task) = self.audit_task.take() {
            task.abort();
        }
        self.remove_socket();
    }
}

/// A [`Publisher`] that forwards everything to `inner` and tells the endpoint when the graph
/// has been reconciled once (`Ready`) and when identity runs.
#[derive(Clone)]
pub struct TapPublisher<P> {
    inner: P,
    shared: Arc<Shared>,
}

impl<P: std::fmt::Debug> std::fmt::Debug for TapPublisher<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapPublisher")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<P: Publisher> Publisher for TapPublisher<P> {
    async fn publish(&self, event: Published) {
        match &event {
            Published::Ready { .. } => self.shared.ready.store(true, Ordering::Release),
            Published::StateChanged { service, new, .. }
                if service == CoreService::Identity.name() && new == "running" =>
            {
                self.shared.identity_up.notify_one();
            }
            _ => {}
        }
        self.inner.publish(event).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::protocol::Code;

    fn info(name: &str, state: &str, pid: u32) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            unit: format!("strata-{name}.service"),
            state: state.into(),
            main_pid: pid,
            restarts: 2,
            since_usec: 7,
            reason: if state == "quarantined" {
                "5 failures within 10m".into()
            } else {
                String::new()
            },
            last_exit: String::new(),
        }
    }

    /// A stand-in for the supervisor loop: `web` runs, `db` is stopped, `bad` is quarantined.
    fn fake_loop() -> mpsc::Sender<ControlRequest> {
        let (tx, mut rx) = mpsc::channel(8);
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let known = |n: &str| match n {
                    "web" | "db" => Ok(()),
                    "bad" => Err(ControlError::Quarantined {
                        name: "bad".into(),
                        reason: "5 failures within 10m".into(),
                    }),
                    other => Err(ControlError::UnknownService(other.into())),
                };
                match req {
                    ControlRequest::List(tx) => {
                        let _ = tx.send(vec![
                            info("bad", "quarantined", 0),
                            info("db", "stopped", 0),
                            info("web", "running", 42),
                        ]);
                    }
                    ControlRequest::Start(n, tx) | ControlRequest::Stop(n, tx) => {
                        let _ = tx.send(known(&n));
                    }
                    other => panic!("the endpoint sent {other:?}"),
                }
            }
        });
        tx
    }

    fn config(identity_enabled: bool) -> SocketConfig {
        SocketConfig {
            runtime_dir: PathBuf::from("/nonexistent/strata-test-runtime"),
            node_id: "n1".into(),
            admin_group: "no-such-group-strata".into(),
            identity_enabled,
            audit_enabled: false,
            server: ServerConfig::default(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    fn endpoint(
        identity_enabled: bool,
        requests: mpsc::Sender<ControlRequest>,
    ) -> SupervisorEndpoint {
        SupervisorEndpoint::new(
            &config(identity_enabled),
            requests,
            Arc::new(Shared::new()),
            None,
        )
    }

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: None,
        }
    }

    fn request(method: &str, params: Value, token: Option<&str>) -> Request {
        let mut r = Request::new("r1", method);
        r.params = params;
        r.token = token.map(str::to_owned);
        r
    }

    async fn call(
        e: &SupervisorEndpoint,
        uid: u32,
        method: &str,
        params: Value,
    ) -> Result<Value, RpcError> {
        e.handle(&peer(uid), request(method, params, None)).await
    }

    #[tokio::test]
    async fn root_gets_status_list_start_and_stop() {
        let e = endpoint(true, fake_loop());
        let s = call(&e, 0, "supervisor.status", json!({}))
            .await
            .expect("status");
        assert_eq!(s["node_id"], "n1");
        assert_eq!(s["services"], 3);
        assert_eq!(s["running"], 1);
        assert_eq!(s["ready"], false);
        assert_eq!(s["quarantined"], json!(["bad"]));
        assert_eq!(s["tokens"], "waiting_for_identity");
        assert!(s["uptime_sec"].is_u64(), "{s}");
        e.shared.ready.store(true, Ordering::Release);
        let s = call(&e, 0, "supervisor.status", json!({}))
            .await
            .expect("status");
        assert_eq!(s["ready"], true);

        let l = call(&e, 0, "supervisor.svc.list", json!({}))
            .await
            .expect("list");
        let services = l["services"].as_array().expect("an array, never null");
        assert_eq!(services.len(), 3);
        assert_eq!(services[2]["name"], "web");
        assert_eq!(services[2]["pid"], 42);
        assert_eq!(services[2]["restarts"], 2);
        assert_eq!(services[1]["state"], "stopped");
        assert!(services[1]["pid"].is_null(), "{l}");
        assert_eq!(services[0]["reason"], "5 failures within 10m");

        let r = call(&e, 0, "supervisor.svc.stop", json!({"name": "web"}))
            .await
            .expect("stop");
        assert_eq!(r, json!({"status": "stopped", "name": "web"}));
        let r = call(&e, 0, "supervisor.svc.start", json!({"name": "db"}))
            .await
            .expect("start");
        assert_eq!(r, json!({"status": "started", "name": "db"}));
    }

    #[tokio::test]
    async fn refusals_of_the_loop_and_bad_params_have_precise_codes() {
        let e = endpoint(true, fake_loop());
        let err = call(&e, 0, "supervisor.svc.stop", json!({"name": "nosuch"}))
            .await
            .expect_err("unknown");
        assert_eq!(err.code, Code::NotFound);
        assert_eq!(err.message, "unknown service `nosuch`");
        assert_eq!(err.details["name"], "nosuch");
        let err = call(&e, 0, "supervisor.svc.start", json!({"name": "bad"}))
            .await
            .expect_err("quarantined");
        assert_eq!(err.code, Code::Conflict);
        assert_eq!(
            err.message,
            "service `bad` is quarantined (5 failures within 10m); release it first"
        );
        for (params, fragment) in [
            (json!({}), "missing field `name`"),
            (
                json!({"name": 5}),
                "invalid type: integer `5`, expected a string",
            ),
            (
                json!({"name": "web", "force": true}),
                "unknown field `force`",
            ),
            (
                json!({"name": "../web"}),
                "service name `../web` contains '.'",
            ),
        ] {
            let err = call(&e, 0, "supervisor.svc.stop", params.clone())
                .await
                .expect_err("bad params");
            assert_eq!(err.code, Code::InvalidArgument, "{params}: {err}");
            assert!(err.message.contains(fragment), "{params}: {}", err.message);
        }
        let err = call(&e, 0, "supervisor.svc.list", json!({"all": true}))
            .await
            .expect_err("params");
        assert_eq!(err.code, Code::InvalidArgument);
        // Positive control with the same endpoint.
        call(&e, 0, "supervisor.svc.stop", json!({"name": "web"}))
            .await
            .expect("stop web");
    }

    #[tokio::test]
    async fn without_credentials_or_token_everything_is_refused() {
        let e = endpoint(true, fake_loop());
        for method in METHODS {
            let action = method.trim_start_matches("supervisor.");
            let err = call(&e, 65534, method, json!({"name": "web"}))
                .await
                .expect_err("refused");
            assert_eq!(err.code, Code::PermissionDenied, "{method}");
            assert_eq!(
                err.message,
                format!(
                    "{method} needs uid 0, membership in group `no-such-group-strata`, or a token \
                     for service `supervisor` granting `{action}` (uid 65534 presented no token)"
                )
            );
            assert_eq!(err.details["reason"], "missing_token");
            assert_eq!(err.details["uid"], 65534);
        }
        // Every denial is counted in the supervisor's registry (what D-Bus `Metrics()` renders).
        let counted = strata_core::metrics::parse_exposition(&e.metrics.render())
            .expect("the registry renders valid text")
            .value("rejected_total", &[("reason", "missing_token")]);
        assert_eq!(counted, Some(METHODS.len() as f64));
    }

    #[tokio::test]
    async fn members_of_the_admin_group_are_admitted_by_credentials() {
        // nobody's primary group is nogroup on Debian: the lookup identity.issue uses.
        let mut e = endpoint(true, fake_loop());
        e.admin_group = "nogroup".into();
        call(&e, 65534, "supervisor.svc.list", json!({}))
            .await
            .expect("admin group member");
    }

    #[tokio::test]
    async fn tokens_before_identity_is_up_or_when_it_is_disabled() {
        let e = endpoint(true, fake_loop());
        let err = e
            .handle(
                &peer(65534),
                request("supervisor.svc.list", json!({}), Some("En0K")),
            )
            .await
            .expect_err("no verifier yet");
        assert_eq!(err.code, Code::Unavailable);
        assert_eq!(
            err.message,
            "supervisor.svc.list: tokens cannot be verified yet (waiting for the identity service \
             to publish its key at /nonexistent/strata-test-runtime/identity.pub); retry once \
             identity runs, callers with uid 0 or in group `no-such-group-strata` need no token"
        );
        assert_eq!(err.details["reason"], REASON_IDENTITY_UNAVAILABLE);
        // Root is served meanwhile.
        e.handle(
            &peer(0),
            request("supervisor.svc.list", json!({}), Some("En0K")),
        )
        .await
        .expect("root needs no verifier");

        let e = endpoint(false, fake_loop());
        let err = e
            .handle(
                &peer(65534),
                request("supervisor.status", json!({}), Some("En0K")),
            )
            .await
            .expect_err("identity disabled");
        assert_eq!(err.code, Code::Unauthenticated);
        assert!(
            err.message
                .contains("the identity service is disabled in the manifest"),
            "{}",
            err.message
        );
        assert_eq!(err.details["reason"], REASON_IDENTITY_DISABLED);
    }

    #[tokio::test]
    async fn a_gone_loop_is_unavailable() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let e = endpoint(true, tx);
        let err = call(&e, 0, "supervisor.svc.list", json!({}))
            .await
            .expect_err("gone");
        assert_eq!(err.code, Code::Unavailable);
        assert!(err.message.contains("shutting down"), "{}", err.message);
    }

    #[tokio::test]
    async fn the_socket_replaces_a_stale_one_and_is_removed_at_shutdown() {
        let dir = std::env::temp_dir().join(format!("strata-supsock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = config(false);
        cfg.runtime_dir = dir.join("run");
        let path = cfg.runtime_dir.join("supervisor.sock");
        std::fs::create_dir_all(&cfg.runtime_dir).expect("mkdir");
        // A stale socket: bound, then its server gone.
        drop(std::os::unix::net::UnixListener::bind(&path).expect("bind stale"));
        assert!(path.exists());
        let sock = SupervisorSocket::start(cfg.clone(), fake_loop()).expect("start");
        let meta = std::fs::metadata(&path).expect("socket");
        assert_eq!(meta.mode() & 0o777, 0o666);
        let mut client = strata_services::ipc::Client::connect(&path)
            .await
            .expect("connect");
        let v = client
            .call("supervisor.svc.list", json!({}), None)
            .await
            .expect("list as root");
        assert_eq!(v["services"].as_array().map(Vec::len), Some(3));
        // A live endpoint is never replaced.
        let err = SupervisorSocket::start(cfg, fake_loop()).expect_err("in use");
        assert!(
            matches!(err, SupervisorSocketError::Bind(BindError::InUse { .. })),
            "{err}"
        );
        sock.shutdown().await;
        assert!(!path.exists(), "the socket outlived a clean shutdown");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
