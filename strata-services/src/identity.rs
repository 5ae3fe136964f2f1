//! strata-identity: owns the ed25519 root key, issues capability tokens, revokes them
//! durably, introspects them, and feeds every verifier the revocation list.
//!
//! Files: `<state_dir>/root.key` (hex private key, 0600, created once, atomically; a corrupt
//! key stops the service instead of being replaced, so tokens issued before a restart keep
//! verifying), `<state_dir>/revocations.log` (one hex revocation id per line, fsync'ed before
//! `identity.revoke` answers), `<runtime_dir>/identity.pub` (`ed25519/<hex>`, 0644).
//!
//! Issuing and revoking need uid 0, membership in the admin group (peer credentials, groups
//! from the user database) or a token with the right `identity.issue` / `identity.revoke`;
//! everyone else gets `PERMISSION_DENIED`.

use std::collections::BTreeSet;
use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};
use strata_core::authorize::{
    AuthzContext, AuthzRequest, Denial, DenyReason, RateLimiter, RevocationSet, RevocationView,
    TokenCache, authorize,
};
use strata_core::metrics::Metrics;
use strata_core::protocol::{Request, RpcError};
use strata_core::token::{
    self, Algorithm, KeyPair, PrivateKey, PublicKey, RunLimits, TokenError, TokenSpec, unhex,
};
use tokio::sync::watch;

use crate::durable::{DurableError, LineLog, create_atomic, write_atomic};
use crate::ipc::{Handler, Peer, socket_path};

/// Services every graph has; tokens may always be issued for them.
pub const CORE_SERVICES: [&str; 5] = ["identity", "fs", "registry", "audit", "supervisor"];
/// The root private key, in the state directory.
pub const KEY_FILE: &str = "root.key";
/// The revocation log, in the state directory.
pub const REVOCATIONS_FILE: &str = "revocations.log";
/// The published public key, in the runtime directory.
pub const PUBLIC_KEY_FILE: &str = "identity.pub";
/// The group whose members may issue and revoke.
pub const ADMIN_GROUP: &str = "strata-admin";
/// Methods served.
pub const METHODS: [&str; 4] = [
    "identity.issue",
    "identity.revoke",
    "identity.introspect",
    "identity.revocations",
];
/// Longest long poll of `identity.revocations`.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Configuration of the identity service.
#[derive(Debug, Clone)]
pub struct IdentityConfig {
    /// Durable state (key, revocations).
    pub state_dir: PathBuf,
    /// Socket and public key.
    pub runtime_dir: PathBuf,
    /// This node's id: the audience of every token.
    pub node_id: String,
    /// Services tokens may be issued for, besides [`CORE_SERVICES`].
    pub services: BTreeSet<String>,
    /// Group whose members may issue and revoke.
    pub admin_group: String,
    /// Longest lifetime of an issued token.
    pub max_ttl: Duration,
    /// Lifetime when `ttl_seconds` is not given.
    pub default_ttl: Duration,
}

impl IdentityConfig {
    /// Defaults: admin group `strata-admin`, ttl 1 h by default and 30 days at most.
    pub fn new(
        state_dir: impl Into<PathBuf>,
        runtime_dir: impl Into<PathBuf>,
        node_id: impl Into<String>,
    ) -> Self {
        Self {
            state_dir: state_dir.into(),
            runtime_dir: runtime_dir.into(),
            node_id: node_id.into(),
            services: BTreeSet::new(),
            admin_group: ADMIN_GROUP.to_owned(),
            max_ttl: token::MAX_TTL,
            default_ttl: token::DEFAULT_TTL,
        }
    }
}

/// Why the identity service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A directory could not be created.
    #[error("cannot create {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The key file could not be read.
    #[error("cannot read the root key {path}: {source}")]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The key file is readable or writable by others.
    #[error("root key {path} has mode {mode:o}: it must be readable by its owner only (0600)")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file does not hold a key.
    #[error(
        "root key {path} is corrupt ({reason}); refusing to start rather than make a new key that would invalidate every token issued"
    )]
    KeyCorrupt {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A revocation id in the log is invalid.
    #[error(transparent)]
    Durable(#[from] DurableError),
    /// The node id is not usable as a token audience.
    #[error("node id: {0}")]
    NodeId(TokenError),
}

fn mkdir(path: &Path, mode: u32) -> Result<(), IdentityError> {
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path)
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)))
        .map_err(|source| IdentityError::Directory {
            path: path.to_owned(),
            source,
        })
}

/// Loads the root key, or creates it when (and only when) the file does not exist.
fn load_or_create_key(path: &Path) -> Result<KeyPair, IdentityError> {
    if !path.exists() {
        let fresh = KeyPair::new();
        let text = format!("{}\n", fresh.private().to_bytes_hex());
        if create_atomic(path, text.as_bytes(), 0o600)? {
            tracing::info!(STRATA_EVENT = "identity.key_created", path = %path.display(),
                "created the root key");
            return Ok(fresh);
        }
        // Another instance created it between our check and our rename: use theirs.
    }
    let meta = std::fs::metadata(path).map_err(|source| IdentityError::KeyRead {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(IdentityError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(|source| IdentityError::KeyRead {
        path: path.to_owned(),
        source,
    })?;
    let private = PrivateKey::from_bytes_hex(text.trim(), Algorithm::Ed25519).map_err(|e| {
        IdentityError::KeyCorrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        }
    })?;
    Ok(KeyPair::from(&private))
}

/// A revocation id as accepted by `identity.revoke`: lower-case hex of 64 to 72 bytes
/// (an ed25519 signature, or a DER ECDSA one).
pub fn normalize_revocation_id(id: &str) -> Result<String, RpcError> {
    let lower = id.trim().to_ascii_lowercase();
    match unhex(&lower) {
        Some(raw) if (64..=72).contains(&raw.len()) => Ok(lower),
        _ => Err(RpcError::invalid_argument(format!(
            "cap_id `{}` is not a revocation id: expected 128 to 144 hex digits",
            id.chars().take(200).collect::<String>()
        ))
        .with_detail("field", "cap_id")),
    }
}

/// How a caller was admitted to issue or revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// uid 0.
    Root,
    /// A member of the admin group.
    AdminGroup {
        /// The caller's uid.
        uid: u32,
    },
    /// A token with the right.
    Token {
        /// Its cap_id.
        cap_id: String,
    },
}

/// Whether `peer` is an administrator by its credentials alone: uid 0, or a member of `group`
/// (primary or supplementary, from the user database). `None`: it is not (a failed group lookup
/// is logged and counts as not a member). The one rule for every admin-only method
/// (`identity.issue` and `identity.revoke` without a token, `<service>.metrics`).
pub async fn admin_by_credentials(peer: &Peer, group: &str) -> Result<Option<Admission>, RpcError> {
    if peer.uid == 0 {
        return Ok(Some(Admission::Root));
    }
    let uid = peer.uid;
    let owned = group.to_owned();
    let member = tokio::task::spawn_blocking(move || unix_groups::is_member(uid, &owned))
        .await
        .map_err(|e| RpcError::internal(format!("group lookup task failed: {e}")))?;
    match member {
        Ok(true) => Ok(Some(Admission::AdminGroup { uid })),
        Ok(false) => Ok(None),
        Err(e) => {
            tracing::warn!(uid, error = %e, group,
                "cannot resolve group membership; treating the caller as a non-member");
            Ok(None)
        }
    }
}

impl Admission {
    fn describe(&self) -> String {
        match self {
            Admission::Root => "uid 0".to_owned(),
            Admission::AdminGroup { uid } => format!("uid {uid} (admin group)"),
            Admission::Token { cap_id } => format!("token {cap_id}"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueParams {
    service: String,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    rights: Vec<String>,
    #[serde(default)]
    path_prefix: Option<String>,
    #[serde(default)]
    rate_limit: Option<f64>,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeParams {
    cap_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IntrospectParams {
    token: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationsParams {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    wait_ms: u64,
}

/// The identity service.
pub struct Identity {
    config: IdentityConfig,
    keypair: KeyPair,
    public: PublicKey,
    issuer: String,
    revoked: RwLock<RevocationSet>,
    /// Revocation ids in log order: index = sequence number - 1.
    order: RwLock<Vec<String>>,
    log: Arc<Mutex<LineLog>>,
    /// Serializes revocations (check, append, publish).
    revoke_lock: tokio::sync::Mutex<()>,
    seq: watch::Sender<u64>,
    limiter: RateLimiter,
    cache: TokenCache,
    limits: RunLimits,
    /// Denials of issue and revoke (`rejected_total{reason}`), served on `identity.metrics`.
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public.to_string())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads (or creates once) the root key, publishes the public key and loads the
    /// revocation log.
    pub fn open(config: IdentityConfig) -> Result<Self, IdentityError> {
        let issuer = format!("strata-identity@{}", config.node_id);
        // The node id becomes the audience of every token: validate it like one.
        let probe = TokenSpec {
            service: "identity".into(),
            actions: BTreeSet::from(["issue".to_owned()]),
            path_prefix: None,
            rate_limit: None,
            ttl: token::MIN_TTL,
            issuer: issuer.clone(),
            audience: config.node_id.clone(),
        };
        probe.validate().map_err(IdentityError::NodeId)?;

        mkdir(&config.state_dir, 0o700)?;
        mkdir(&config.runtime_dir, 0o755)?;
        let keypair = load_or_create_key(&config.state_dir.join(KEY_FILE))?;
        let public = keypair.public();
        write_atomic(
            &config.runtime_dir.join(PUBLIC_KEY_FILE),
            format!("{public}\n").as_bytes(),
            0o644,
        )?;
        let (log, lines) =
            LineLog::open(&config.state_dir.join(REVOCATIONS_FILE), 0o600, |line| {
                normalize_revocation_id(line)
                    .map(|_| ())
                    .map_err(|e| e.message)
            })?;
        let mut revoked = RevocationSet::ready();
        for id in &lines {
            revoked.insert_hex(id);
        }
        tracing::info!(STRATA_EVENT = "identity.started", public = %public,
            revocations = lines.len(), "identity key loaded");
        let (seq, _) = watch::channel(lines.len() as u64);
        Ok(Self {
            config,
            keypair,
            public,
            issuer,
            revoked: RwLock::new(revoked),
            order: RwLock::new(lines),
            log: Arc::new(Mutex::new(log)),
            revoke_lock: tokio::sync::Mutex::new(()),
            seq,
            limiter: RateLimiter::default(),
            cache: TokenCache::default(),
            limits: RunLimits::default(),
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// The registry identity's denials are counted in; serve it with the server's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The group whose members may issue and revoke (and read `identity.metrics`).
    pub fn admin_group(&self) -> &str {
        &self.config.admin_group
    }

    /// The public key every verifier uses.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// `<runtime_dir>/identity.sock`.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(&self.config.runtime_dir, "identity")
    }

    /// The number of revocations (the current sequence number).
    pub fn revocation_seq(&self) -> u64 {
        *self.seq.borrow()
    }

    fn service_known(&self, service: &str) -> bool {
        CORE_SERVICES.contains(&service) || self.config.services.contains(service)
    }

    /// Decides whether the caller may `action` (issue or revoke).
    async fn admit(
        &self,
        peer: &Peer,
        token: Option<&str>,
        action: &str,
    ) -> Result<Admission, RpcError> {
        if let Some(admitted) = admin_by_credentials(peer, &self.config.admin_group).await? {
            return Ok(admitted);
        }
        let uid = peer.uid;
        let req = AuthzRequest {
            service: "identity",
            action,
            path: None,
        };
        let denial = match token {
            None => None,
            Some(t) => match self.decide(t, &req) {
                Ok(grant) => {
                    tracing::info!(
                        STRATA_EVENT = "authz.allowed",
                        STRATA_CAP_ID = &*grant.cap_id,
                        STRATA_SERVICE = "identity",
                        action,
                        "allowed identity.{action}"
                    );
                    return Ok(Admission::Token {
                        cap_id: grant.cap_id.to_string(),
                    });
                }
                Err(d) => Some(d),
            },
        };
        let mut e = RpcError::permission_denied(format!(
            "identity.{action} needs uid 0, membership in group `{}`, or a token with the right identity.{action}{}",
            self.config.admin_group,
            denial
                .as_ref()
                .map(|d| format!(" (the token given was refused: {})", d.message))
                .unwrap_or_default()
        ))
        .with_detail("uid", uid);
        if let Some(d) = &denial {
            e = e.with_detail("reason", d.reason.as_str());
        }
        self.metrics.record_rejected(
            denial
                .as_ref()
                .map_or(DenyReason::MissingToken, |d| d.reason)
                .as_str(),
        );
        tracing::warn!(STRATA_EVENT = "authz.denied",
            STRATA_CAP_ID = denial.as_ref().and_then(|d| d.cap_id.as_deref()).unwrap_or("-"),
            STRATA_SERVICE = "identity", action, uid, pid = ?peer.pid, "{}", e.message);
        Err(e)
    }

    fn decide(
        &self,
        token: &str,
        req: &AuthzRequest<'_>,
    ) -> Result<strata_core::authorize::Grant, Denial> {
        let revoked = self.revoked.read().unwrap_or_else(PoisonError::into_inner);
        let ctx = AuthzContext {
            root: &self.public,
            audience: &self.config.node_id,
            revocations: &*revoked,
            limiter: &self.limiter,
            cache: Some(&self.cache),
            limits: &self.limits,
        };
        authorize(&ctx, Some(token), req, SystemTime::now())
    }

    /// `identity.issue`.
    async fn issue(&self, peer: &Peer, req: &Request) -> Result<Value, RpcError> {
        let admitted = self.admit(peer, req.token.as_deref(), "issue").await?;
        let p: IssueParams = req.params()?;
        let invalid = |e: TokenError| RpcError::invalid_argument(e.to_string());
        if !self.service_known(&p.service) {
            let mut known: Vec<&str> = CORE_SERVICES.to_vec();
            known.extend(self.config.services.iter().map(String::as_str));
            return Err(RpcError::invalid_argument(format!(
                "unknown service `{}` (known: {})",
                p.service,
                known.join(", ")
            ))
            .with_detail("field", "service"));
        }
        let actions = token::parse_rights(&p.service, &p.actions, &p.rights).map_err(invalid)?;
        let ttl = match p.ttl_seconds {
            None => self.config.default_ttl,
            Some(secs) => {
                let ttl = Duration::from_secs(secs);
                if ttl < token::MIN_TTL || ttl > self.config.max_ttl {
                    return Err(RpcError::invalid_argument(format!(
                        "ttl_seconds {secs} is outside the allowed range {}..={}",
                        token::MIN_TTL.as_secs(),
                        self.config.max_ttl.as_secs()
                    ))
                    .with_detail("field", "ttl_seconds"));
                }
                ttl
            }
        };
        let spec = TokenSpec {
            service: p.service,
            actions,
            path_prefix: p.path_prefix,
            rate_limit: p.rate_limit,
            ttl,
            issuer: self.issuer.clone(),
            audience: self.config.node_id.clone(),
        };
        let minted = token::mint(&self.keypair, &spec, SystemTime::now()).map_err(invalid)?;
        tracing::info!(
            STRATA_EVENT = "token.issued",
            STRATA_CAP_ID = minted.cap_id.as_str(),
            STRATA_SERVICE = spec.service.as_str(),
            by = admitted.describe(),
            expires = minted.expires,
            "issued a token for {}",
            spec.service
        );
        Ok(json!({"token": minted.token, "cap_id": minted.cap_id, "expires": minted.expires}))
    }

    /// Revokes `id` durably; true when it was not revoked before.
    pub async fn revoke_id(&self, id: &str) -> Result<bool, RpcError> {
        let id = normalize_revocation_id(id)?;
        let _serial = self.revoke_lock.lock().await;
        let raw = unhex(&id).unwrap_or_default();
        if self
            .revoked
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_revoked(&raw)
        {
            return Ok(false);
        }
        // Durable before anyone hears of it.
        let line = id.clone();
        let log = Arc::clone(&self.log);
        tokio::task::spawn_blocking(move || {
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .append(&line)
        })
        .await
        .map_err(|e| RpcError::internal(format!("revocation writer task failed: {e}")))?
        .map_err(|e| RpcError::unavailable(format!("cannot record the revocation durably: {e}")))?;
        self.revoked
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(&raw);
        let seq = {
            let mut order = self.order.write().unwrap_or_else(PoisonError::into_inner);
            order.push(id.clone());
            order.len() as u64
        };
        self.seq.send_replace(seq);
        tracing::info!(
            STRATA_EVENT = "token.revoked",
            STRATA_CAP_ID = id.as_str(),
            seq,
            "revoked {id}"
        );
        Ok(true)
    }

    async fn revoke(&self, peer: &Peer, req: &Request) -> Result<Value, RpcError> {
        let admitted = self.admit(peer, req.token.as_deref(), "revoke").await?;
        let p: RevokeParams = req.params()?;
        let fresh = self.revoke_id(&p.cap_id).await?;
        tracing::info!(
            STRATA_EVENT = "token.revoke_requested",
            by = admitted.describe(),
            fresh,
            "revoke of {} by {}",
            p.cap_id,
            admitted.describe()
        );
        Ok(json!({"status": "revoked", "seq": self.revocation_seq()}))
    }

    /// `identity.introspect`: what the token is and whether it is valid now.
    pub fn introspect(&self, token_text: &str, now: SystemTime) -> Value {
        let verified = match token::verify(token_text.trim(), &self.public, &self.limits) {
            Ok(v) => v,
            Err(e) => {
                let reason = match e {
                    TokenError::Signature(_) => "bad_signature",
                    TokenError::NotStrata(_) => "unsupported_token",
                    _ => "malformed_token",
                };
                return json!({"valid": false, "reason": reason, "message": e.to_string(), "revoked": false});
            }
        };
        let info = &verified.info;
        let revoked = {
            let set = self.revoked.read().unwrap_or_else(PoisonError::into_inner);
            info.revocation_ids
                .iter()
                .filter_map(|id| unhex(id))
                .any(|raw| set.is_revoked(&raw))
        };
        let now_secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let expired = now_secs > info.expires;
        let foreign = info.audience != self.config.node_id;
        let reason = if revoked {
            Some("revoked")
        } else if expired {
            Some("expired")
        } else if foreign {
            Some("wrong_audience")
        } else {
            None
        };
        json!({
            "valid": reason.is_none(),
            "reason": reason,
            "cap_id": info.cap_id,
            "service": info.service,
            "rights": info.rights.to_list(),
            "constraints": {
                "path_prefix": info.path_prefix,
                "rate_limit": info.rate_limit,
                "attenuated_rate_limit": info.attenuated_rate_limit,
                "conflicting_prefixes": info.conflicting_prefixes,
                "foreign_checks": info.foreign_checks,
            },
            "expires": info.expires,
            "issued_at": info.issued_at,
            "issuer": info.issuer,
            "audience": info.audience,
            "revoked": revoked,
            "revocation_ids": info.revocation_ids,
            "blocks": info.blocks,
        })
    }

    /// `identity.revocations`: ids after `since`, waiting up to `wait` for news.
    pub async fn revocations_since(&self, since: u64, wait: Duration) -> Value {
        if !wait.is_zero() {
            let mut rx = self.seq.subscribe();
            let _ = tokio::time::timeout(wait.min(MAX_WAIT), rx.wait_for(|s| *s > since)).await;
        }
        let order = self.order.read().unwrap_or_else(PoisonError::into_inner);
        let len = order.len() as u64;
        if since > len {
            // The verifier saw more than this log holds (state lost): send everything.
            return json!({"revocations": *order, "seq": len, "reset": true});
        }
        let start = usize::try_from(since)
            .unwrap_or(usize::MAX)
            .min(order.len());
        json!({"revocations": order[start..], "seq": len})
    }
}

impl Handler for Identity {
    fn methods(&self) -> &[&str] {
        &METHODS
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.method.as_str() {
            "identity.issue" => self.issue(peer, &req).await,
            "identity.revoke" => self.revoke(peer, &req).await,
            "identity.introspect" => {
                let p: IntrospectParams = req.params()?;
                Ok(self.introspect(&p.token, SystemTime::now()))
            }
            "identity.revocations" => {
                let p: RevocationsParams = req.params()?;
                Ok(self
                    .revocations_since(p.since, Duration::from_millis(p.wait_ms))
                    .await)
            }
            other => Err(RpcError::not_found(format!("unknown method `{other}`"))),
        }
    }
}

/// Group membership from the user database (NSS), as polkit and D-Bus resolve it.
pub mod unix_groups {
    use super::{CStr, CString, io};

    const MAX_BUF: usize = 1 << 20;

    /// The gid of group `name`, if it exists.
    pub fn group_gid(name: &str) -> io::Result<Option<u32>> {
        let cname = CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "group name contains NUL"))?;
        let mut buf: Vec<libc::c_char> = vec![0; 1024];
        loop {
            // SAFETY: an all-zero `group` is a valid value for an out-parameter.
            let mut grp: libc::group = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::group = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call; `buf.len()` is its real size.
            let rc = unsafe {
                libc::getgrnam_r(
                    cname.as_ptr(),
                    &mut grp,
                    buf.as_mut_ptr(),
                    buf.len(),
                    &mut result,
                )
            };
            if rc == libc::ERANGE && buf.len() < MAX_BUF {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            return Ok((!result.is_null()).then_some(grp.gr_gid));
        }
    }

    /// The user name and primary gid of `uid`, if it has a passwd entry.
    pub fn user(uid: u32) -> io::Result<Option<(CString, u32)>> {
        let mut buf: Vec<libc::c_char> = vec![0; 1024];
        loop {
            // SAFETY: an all-zero `passwd` is a valid value for an out-parameter.
            let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
            let mut result: *mut libc::passwd = std::ptr::null_mut();
            // SAFETY: every pointer is valid for the call; `buf.len()` is its real size.
            let rc = unsafe {
                libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result)
            };
            if rc == libc::ERANGE && buf.len() < MAX_BUF {
                buf.resize(buf.len() * 2, 0);
                continue;
            }
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            if result.is_null() || pwd.pw_name.is_null() {
                return Ok(None);
            }
            // SAFETY: getpwuid_r succeeded, so pw_name points to a NUL-terminated string in buf.
            let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_owned();
            return Ok(Some((name, pwd.pw_gid)));
        }
    }

    /// Every group of user `name` (primary gid included).
    pub fn groups_of(name: &CStr, primary: u32) -> io::Result<Vec<u32>> {
        let mut cap: libc::c_int = 64;
        loop {
            let mut groups: Vec<libc::gid_t> = vec![0; usize::try_from(cap).unwrap_or(64)];
            let mut count = cap;
            // SAFETY: `groups` holds `count` elements; getgrouplist writes at most that many
            // and reports the real number in `count`.
            let rc = unsafe {
                libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count)
            };
            if rc >= 0 {
                groups.truncate(usize::try_from(count).unwrap_or(0));
                return Ok(groups);
            }
            if cap >= 65_536 {
                return Err(io::Error::other("user belongs to too many groups"));
            }
            cap = if count > cap { count } else { cap * 2 };
        }
    }

    /// True when `uid` belongs to group `group` (as primary or supplementary group).
    pub fn is_member(uid: u32, group: &str) -> io::Result<bool> {
        let Some(gid) = group_gid(group)? else {
            return Ok(false);
        };
        let Some((name, primary)) = user(uid)? else {
            return Ok(false);
        };
        if primary == gid {
            return Ok(true);
        }
        Ok(groups_of(&name, primary)?.contains(&gid))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn resolves_the_users_of_this_machine() {
            assert_eq!(group_gid("root").expect("lookup"), Some(0));
            assert_eq!(group_gid("no-such-group-strata").expect("lookup"), None);
            let (name, gid) = user(0).expect("lookup").expect("root exists");
            assert_eq!((name.to_str().expect("utf-8"), gid), ("root", 0));
            assert!(is_member(0, "root").expect("lookup"));
            assert!(
                is_member(65534, "nogroup").expect("lookup"),
                "nobody's primary group"
            );
            assert!(!is_member(65534, "root").expect("lookup"));
            assert!(!is_member(65534, "no-such-group-strata").expect("lookup"));
            assert_eq!(user(4_000_000_000).expect("lookup"), None);
        }
    }
}
