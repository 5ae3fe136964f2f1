//! The one authorization decision: every protected handler of every service calls
//! [`authorize`], which verifies the token and decides, denying by default.
//!
//! Order of the checks (the first failing one is the reason): token present → revocations
//! known → signature and format → revoked → expired → audience → service → action → path →
//! token checks (the Biscuit engine, for opaque tokens and on first sight of any token) →
//! rate limit. Verified tokens are cached by a hash of their text; expiry, revocation, the
//! request and the rate limit are still checked on every call. Pure: time is passed in.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{self, Term};
use biscuit_auth::{AuthorizerBuilder, PublicKey};
use serde::Serialize;

use crate::capability::path_is_beneath;
use crate::protocol::{Code, RpcError};
use crate::token::{self, RunLimits, TokenError, VerifiedToken, prefix_with_slash, unhex};

/// Longest path accepted in a request (PATH_MAX - 1).
pub const MAX_PATH_LEN: usize = 4095;

/// Answers whether a revocation id is revoked (the shared set kept up to date by the
/// revocation follower of each service).
pub trait RevocationView {
    /// True when `id` (raw bytes of a block's revocation id) has been revoked.
    fn is_revoked(&self, id: &[u8]) -> bool;
    /// False until the view has caught up with the identity service at least once; a
    /// verifier that does not know the revocations must not let anything through.
    fn is_ready(&self) -> bool {
        true
    }
}

/// A set of revoked ids.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    ids: HashSet<Box<[u8]>>,
    ready: bool,
}

impl RevocationSet {
    /// An empty set that is not ready yet (denies everything until marked ready).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set that is ready (the identity service itself, tests).
    pub fn ready() -> Self {
        Self {
            ids: HashSet::new(),
            ready: true,
        }
    }

    /// Adds a raw id; true when it was new.
    pub fn insert(&mut self, id: &[u8]) -> bool {
        self.ids.insert(id.into())
    }

    /// Adds a hex id; `None` when it is not hex, else whether it was new.
    pub fn insert_hex(&mut self, id: &str) -> Option<bool> {
        unhex(id).map(|raw| self.insert(&raw))
    }

    /// Marks the set as caught up (or not).
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Number of revoked ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

impl RevocationView for RevocationSet {
    fn is_revoked(&self, id: &[u8]) -> bool {
        self.ids.contains(id)
    }

    fn is_ready(&self) -> bool {
        self.ready
    }
}

/// Token buckets keyed by capability: `rate` tokens per second, a burst of max(1, rate).
/// Pure: the caller passes the time. Sub-1 rates allow one request, then one per 1/rate s.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
    max_keys: usize,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    /// Seconds since the epoch of the last refill.
    last: f64,
    rate: f64,
}

impl Bucket {
    fn burst(rate: f64) -> f64 {
        rate.max(1.0)
    }

    fn refill(&mut self, now: f64, rate: f64) {
        self.rate = rate;
        let elapsed = (now - self.last).max(0.0);
        self.tokens = (self.tokens + elapsed * rate).min(Self::burst(rate));
        self.last = self.last.max(now);
    }
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(100_000)
    }
}

impl RateLimiter {
    /// A limiter tracking at most `max_keys` buckets (full buckets are forgotten first).
    pub fn new(max_keys: usize) -> Self {
        Self {
            buckets: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// Takes one token from every `(key, rate)` bucket, or none of them; on refusal returns
    /// how long until all would have one.
    pub fn try_acquire(&self, limits: &[(&str, f64)], now: SystemTime) -> Result<(), Duration> {
        if limits.is_empty() {
            return Ok(());
        }
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut wait: f64 = 0.0;
        for &(key, rate) in limits {
            if !(rate.is_finite() && rate > 0.0) {
                // Validated at issue time; an invalid rate here denies rather than panics.
                return Err(Duration::MAX);
            }
            let bucket = match buckets.get_mut(key) {
                Some(b) => b,
                None => {
                    if buckets.len() >= self.max_keys {
                        Self::evict(&mut buckets, now, self.max_keys);
                    }
                    buckets.entry(key.to_owned()).or_insert(Bucket {
                        tokens: Bucket::burst(rate),
                        last: now,
                        rate,
                    })
                }
            };
            bucket.refill(now, rate);
            if bucket.tokens < 1.0 {
                wait = wait.max((1.0 - bucket.tokens) / rate);
            }
        }
        if wait > 0.0 {
            return Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX));
        }
        for &(key, _) in limits {
            if let Some(b) = buckets.get_mut(key) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }

    fn evict(buckets: &mut HashMap<String, Bucket>, now: f64, max_keys: usize) {
        // A bucket that has refilled completely is the same as no bucket.
        buckets.retain(|_, b| {
            let mut b = *b;
            b.refill(now, b.rate);
            b.tokens < Bucket::burst(b.rate)
        });
        while buckets.len() >= max_keys {
            let Some(key) = buckets.keys().next().cloned() else {
                break;
            };
            buckets.remove(&key);
        }
    }

    /// Number of buckets tracked.
    pub fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no bucket is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A verified token with what the hot path needs, shared between calls.
#[derive(Debug)]
struct CachedToken {
    token: VerifiedToken,
    cap_id: Arc<str>,
    revocation_ids: Arc<[String]>,
    path_prefix: Option<Arc<str>>,
    /// Key of the attenuated rate bucket: the last block's revocation id.
    last_id: String,
}

impl CachedToken {
    fn new(token: VerifiedToken) -> Self {
        let info = &token.info;
        Self {
            cap_id: Arc::from(info.cap_id.as_str()),
            revocation_ids: Arc::from(info.revocation_ids.clone()),
            path_prefix: info.path_prefix.as_deref().map(Arc::from),
            last_id: info.revocation_ids.last().cloned().unwrap_or_default(),
            token,
        }
    }
}

/// A bounded cache of verified tokens, keyed by the BLAKE3 hash of the token text.
/// Holds no verdicts: only the outcome of signature verification and claim compilation.
#[derive(Debug)]
pub struct TokenCache {
    inner: Mutex<CacheInner>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct CacheInner {
    map: HashMap<[u8; 32], Arc<CachedToken>>,
    order: VecDeque<[u8; 32]>,
}

impl Default for TokenCache {
    fn default() -> Self {
        Self::new(4096)
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (oldest evicted first).
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(CacheInner::default()),
            capacity: capacity.max(1),
        }
    }

    fn get(&self, key: &[u8; 32]) -> Option<Arc<CachedToken>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.map.get(key).cloned()
    }

    fn insert(&self, key: [u8; 32], value: Arc<CachedToken>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.map.entry(key) {
            Entry::Occupied(mut e) => {
                e.insert(value);
                return;
            }
            Entry::Vacant(e) => {
                e.insert(value);
            }
        }
        inner.order.push_back(key);
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }

    /// Forgets `key` (a rare path: linear in the capacity).
    fn remove(&self, key: &[u8; 32]) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if inner.map.remove(key).is_some() {
            inner.order.retain(|k| k != key);
        }
    }

    /// Number of cached tokens.
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a verifier needs to decide.
#[derive(Clone, Copy)]
pub struct AuthzContext<'a> {
    /// The identity service's public key (`<runtime_dir>/identity.pub`).
    pub root: &'a PublicKey,
    /// This node's id: tokens must name it as their audience.
    pub audience: &'a str,
    /// The revocations known to this verifier.
    pub revocations: &'a dyn RevocationView,
    /// Rate limit buckets of this verifier.
    pub limiter: &'a RateLimiter,
    /// Verified-token cache (`None` verifies every time).
    pub cache: Option<&'a TokenCache>,
    /// Datalog run limits.
    pub limits: &'a RunLimits,
}

impl std::fmt::Debug for AuthzContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthzContext")
            .field("root", &self.root.to_string())
            .field("audience", &self.audience)
            .field("revocations_ready", &self.revocations.is_ready())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What is being asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthzRequest<'a> {
    /// The service asked (`fs`).
    pub service: &'a str,
    /// The action asked (`read`).
    pub action: &'a str,
    /// The path the action is about, if any (relative to the token's prefix, or absolute
    /// and beneath it).
    pub path: Option<&'a str>,
}

/// A path resolved against the token's prefix: open `relative` beneath `base` (with
/// openat2 and RESOLVE_BENEATH from a directory handle of `base`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScopedPath {
    /// The token's effective path prefix, or `/` for a token without one.
    pub base: String,
    /// Normalized components below `base` joined by `/`; empty for `base` itself. Never
    /// absolute, never containing `.` or `..`.
    pub relative: String,
}

impl ScopedPath {
    /// `base` joined with `relative`, for messages and the Datalog check.
    pub fn absolute(&self) -> String {
        match (self.base.as_str(), self.relative.is_empty()) {
            (base, true) => base.to_owned(),
            ("/", false) => format!("/{}", self.relative),
            (base, false) => format!("{base}/{}", self.relative),
        }
    }
}

/// A positive decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The capability that allowed it (hex of revocation id 0).
    pub cap_id: Arc<str>,
    /// Every revocation id of the token (a handle dies when any of them is revoked).
    pub revocation_ids: Arc<[String]>,
    /// The service asked.
    pub service: String,
    /// The action asked.
    pub action: String,
    /// The token's effective path prefix.
    pub path_prefix: Option<Arc<str>>,
    /// The request's path, resolved against the prefix.
    pub path: Option<ScopedPath>,
    /// Effective expiry of the token, seconds since the epoch.
    pub expires: u64,
}

impl Grant {
    /// The audit record of this decision.
    pub fn audit_event(&self) -> AuthzEvent {
        AuthzEvent {
            cap_id: Some(self.cap_id.to_string()),
            service: self.service.clone(),
            action: self.action.clone(),
            decision: Decision::Allow,
            reason: None,
            message: None,
        }
    }
}

/// Why a request was denied (stable names for metrics, the journal and the audit log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No token in the request.
    MissingToken,
    /// Not a Biscuit.
    MalformedToken,
    /// A signature does not verify with the identity key.
    BadSignature,
    /// A Biscuit, but not a Strata capability.
    UnsupportedToken,
    /// The verifier has not caught up with the revocations yet.
    RevocationsUnavailable,
    /// One of the token's revocation ids is revoked.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Minted for another node.
    WrongAudience,
    /// Minted for another service.
    WrongService,
    /// The action is not among the token's rights.
    ActionNotGranted,
    /// The path is outside the token's path prefix.
    PathOutsidePrefix,
    /// The path itself is invalid (NUL byte, too long, relative without a prefix).
    InvalidPath,
    /// A check of the token (from an attenuation block) failed.
    CheckFailed,
    /// Evaluating the token exceeded the run limits on facts or iterations (the token is too
    /// complex: retrying does not help).
    RunLimit,
    /// Evaluating the token ran out of its time budget (a busy machine: retrying may help).
    EvaluationTimeout,
    /// Over the token's rate limit.
    RateLimited,
    /// The verifier itself failed.
    Internal,
}

impl DenyReason {
    /// The stable name (`revoked`, `path_outside_prefix`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::MalformedToken => "malformed_token",
            DenyReason::BadSignature => "bad_signature",
            DenyReason::UnsupportedToken => "unsupported_token",
            DenyReason::RevocationsUnavailable => "revocations_unavailable",
            DenyReason::Revoked => "revoked",
            DenyReason::Expired => "expired",
            DenyReason::WrongAudience => "wrong_audience",
            DenyReason::WrongService => "wrong_service",
            DenyReason::ActionNotGranted => "action_not_granted",
            DenyReason::PathOutsidePrefix => "path_outside_prefix",
            DenyReason::InvalidPath => "invalid_path",
            DenyReason::CheckFailed => "check_failed",
            DenyReason::RunLimit => "run_limit",
            DenyReason::EvaluationTimeout => "evaluation_timeout",
            DenyReason::RateLimited => "rate_limited",
            DenyReason::Internal => "internal",
        }
    }

    /// The protocol code a denial for this reason is answered with.
    pub fn code(self) -> Code {
        match self {
            DenyReason::MissingToken
            | DenyReason::MalformedToken
            | DenyReason::BadSignature
            | DenyReason::UnsupportedToken
            | DenyReason::Revoked
            | DenyReason::Expired => Code::Unauthenticated,
            DenyReason::WrongAudience
            | DenyReason::WrongService
            | DenyReason::ActionNotGranted
            | DenyReason::PathOutsidePrefix
            | DenyReason::CheckFailed
            | DenyReason::RunLimit => Code::PermissionDenied,
            DenyReason::InvalidPath => Code::InvalidArgument,
            DenyReason::RateLimited => Code::ResourceExhausted,
            DenyReason::RevocationsUnavailable | DenyReason::EvaluationTimeout => Code::Unavailable,
            DenyReason::Internal => Code::Internal,
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A negative decision, with everything the error response and the audit event need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The protocol code to answer with.
    pub code: Code,
    /// Why.
    pub reason: DenyReason,
    /// A message naming the cause (contains "revoked" for a revoked token).
    pub message: String,
    /// The token's cap_id when it could be read.
    pub cap_id: Option<String>,
    /// The service asked.
    pub service: String,
    /// The action asked.
    pub action: String,
    /// For `rate_limited`: when to retry.
    pub retry_after: Option<Duration>,
}

impl Denial {
    fn new(req: &AuthzRequest<'_>, reason: DenyReason, message: String) -> Self {
        Self {
            code: reason.code(),
            reason,
            message,
            cap_id: None,
            service: req.service.to_owned(),
            action: req.action.to_owned(),
            retry_after: None,
        }
    }

    fn with_cap(mut self, cap_id: &str) -> Self {
        self.cap_id = Some(cap_id.to_owned());
        self
    }

    /// The audit record of this decision.
    pub fn audit_event(&self) -> AuthzEvent {
        AuthzEvent {
            cap_id: self.cap_id.clone(),
            service: self.service.clone(),
            action: self.action.clone(),
            decision: Decision::Deny,
            reason: Some(self.reason),
            message: Some(self.message.clone()),
        }
    }

    /// The error to answer: code, message, and details `{reason, cap_id?, retry_after_ms?}`.
    pub fn to_rpc_error(&self) -> RpcError {
        let mut e = RpcError::new(self.code, self.message.clone())
            .with_detail("reason", self.reason.as_str());
        if let Some(cap) = &self.cap_id {
            e = e.with_detail("cap_id", cap.as_str());
        }
        if let Some(after) = self.retry_after {
            e = e.with_detail(
                "retry_after_ms",
                u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
            );
        }
        e
    }
}

impl From<Denial> for RpcError {
    fn from(d: Denial) -> Self {
        d.to_rpc_error()
    }
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Granted.
    Allow,
    /// Denied.
    Deny,
}

/// One authorization decision, for the journal and the audit service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuthzEvent {
    /// The capability presented, when it could be read.
    pub cap_id: Option<String>,
    /// The service asked.
    pub service: String,
    /// The action asked.
    pub action: String,
    /// Allowed or denied.
    pub decision: Decision,
    /// Why it was denied.
    pub reason: Option<DenyReason>,
    /// The denial message.
    pub message: Option<String>,
}

fn token_error_denial(req: &AuthzRequest<'_>, e: &TokenError) -> Denial {
    let reason = match e {
        TokenError::Signature(_) => DenyReason::BadSignature,
        TokenError::NotStrata(_) => DenyReason::UnsupportedToken,
        _ => DenyReason::MalformedToken,
    };
    Denial::new(req, reason, e.to_string())
}

/// Resolves a request path against the token's prefix.
///
/// With a prefix, a relative path is relative to it and an absolute path must lie beneath
/// it (the original clients send absolute paths); without one, the path must be absolute.
/// `..` components are refused outright, whatever they would resolve to.
pub fn scope_path(path: &str, prefix: Option<&str>) -> Result<ScopedPath, (DenyReason, String)> {
    if path.len() > MAX_PATH_LEN {
        return Err((
            DenyReason::InvalidPath,
            format!(
                "path is {} bytes long, at most {MAX_PATH_LEN} are allowed",
                path.len()
            ),
        ));
    }
    if path.contains('\0') {
        return Err((
            DenyReason::InvalidPath,
            "path contains a NUL byte".to_owned(),
        ));
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err((
                    DenyReason::PathOutsidePrefix,
                    format!("path `{path}` contains `..`, which may not leave the path prefix"),
                ));
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    let absolute = path.starts_with('/');
    match prefix {
        Some(prefix) if absolute => {
            let normalized = format!("/{joined}");
            if !path_is_beneath(&normalized, prefix) {
                return Err((
                    DenyReason::PathOutsidePrefix,
                    format!("path `{path}` is outside the token's path prefix `{prefix}`"),
                ));
            }
            let relative = if prefix == "/" {
                joined
            } else {
                normalized[prefix.len()..]
                    .trim_start_matches('/')
                    .to_owned()
            };
            Ok(ScopedPath {
                base: prefix.to_owned(),
                relative,
            })
        }
        Some(prefix) => Ok(ScopedPath {
            base: prefix.to_owned(),
            relative: joined,
        }),
        None if absolute => Ok(ScopedPath {
            base: "/".to_owned(),
            relative: joined,
        }),
        None => Err((
            DenyReason::InvalidPath,
            format!(
                "relative path `{path}` needs a token with a path_prefix; give an absolute path"
            ),
        )),
    }
}

/// The verifier's policies, parsed once.
fn base_authorizer() -> Result<&'static AuthorizerBuilder, TokenError> {
    static BASE: OnceLock<Result<AuthorizerBuilder, TokenError>> = OnceLock::new();
    BASE.get_or_init(|| {
        AuthorizerBuilder::new()
            .code(
                r#"check if audience($a), verifier_audience($a);
                   allow if request_service($s), service($s), request_action($a), right($s, $a);
                   allow if request_service($s), service($s), right($s, "*");
                   deny if true;"#,
            )
            .map_err(TokenError::from)
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// Runs the Biscuit engine on the request: the verdict of record for every check.
fn run_datalog(
    ctx: &AuthzContext<'_>,
    token: &VerifiedToken,
    req: &AuthzRequest<'_>,
    path: Option<&ScopedPath>,
    now_secs: u64,
) -> Result<(), (DenyReason, String)> {
    let internal = |e: TokenError| (DenyReason::Internal, format!("verifier policy: {e}"));
    let fact = |name: &str, t: Term| builder::fact(name, &[t]);
    let mut b = base_authorizer()
        .map_err(internal)?
        .clone()
        .set_limits(ctx.limits.to_biscuit());
    let mut facts = vec![
        fact("time", Term::Date(now_secs)),
        fact("request_service", Term::Str(req.service.to_owned())),
        fact("request_action", Term::Str(req.action.to_owned())),
        fact("verifier_audience", Term::Str(ctx.audience.to_owned())),
    ];
    facts.push(match path {
        Some(p) => fact("request_path", Term::Str(prefix_with_slash(&p.absolute()))),
        None => fact("request_pathless", Term::Bool(true)),
    });
    for f in facts {
        b = b.fact(f).map_err(|e| internal(e.into()))?;
    }
    let mut a = b.build(&token.biscuit).map_err(|e| {
        (
            DenyReason::CheckFailed,
            format!("token cannot be evaluated: {e}"),
        )
    })?;
    match a.authorize() {
        Ok(_) => Ok(()),
        Err(biscuit_auth::error::Token::RunLimit(biscuit_auth::error::RunLimit::Timeout)) => Err((
            DenyReason::EvaluationTimeout,
            format!(
                "evaluating the token took longer than its {} ms budget (machine busy?); retry",
                ctx.limits.max_time.as_millis()
            ),
        )),
        Err(biscuit_auth::error::Token::RunLimit(e)) => Err((
            DenyReason::RunLimit,
            format!("evaluating the token exceeded the run limits: {e}"),
        )),
        Err(biscuit_auth::error::Token::FailedLogic(
            biscuit_auth::error::Logic::Unauthorized { checks, .. }
            | biscuit_auth::error::Logic::NoMatchingPolicy { checks },
        )) => match checks.first() {
            Some(check) => Err((
                DenyReason::CheckFailed,
                format!("token check failed: {check}"),
            )),
            None => Err((
                DenyReason::ActionNotGranted,
                format!("token does not grant {}.{}", req.service, req.action),
            )),
        },
        Err(e) => Err((
            DenyReason::CheckFailed,
            format!("token cannot be evaluated: {e}"),
        )),
    }
}

/// Decides whether `token` allows `req` at `now`. Deny by default: only a token that passes
/// every check is granted.
pub fn authorize(
    ctx: &AuthzContext<'_>,
    token: Option<&str>,
    req: &AuthzRequest<'_>,
    now: SystemTime,
) -> Result<Grant, Denial> {
    let deny = |reason: DenyReason, message: String| Denial::new(req, reason, message);
    let token = token
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            deny(
                DenyReason::MissingToken,
                format!(
                    "{}.{} needs a capability token in auth.token",
                    req.service, req.action
                ),
            )
        })?;
    if !ctx.revocations.is_ready() {
        return Err(deny(
            DenyReason::RevocationsUnavailable,
            "revocation list not yet received from the identity service; retry shortly".to_owned(),
        ));
    }
    let now_secs = token::unix_secs(now).unwrap_or(0);

    let key = *blake3::hash(token.as_bytes()).as_bytes();
    let (cached, first_sight) = match ctx.cache.and_then(|c| c.get(&key)) {
        Some(c) => (c, false),
        None => {
            let verified = token::verify(token, ctx.root, ctx.limits)
                .map_err(|e| token_error_denial(req, &e))?;
            let c = Arc::new(CachedToken::new(verified));
            if let Some(cache) = ctx.cache {
                cache.insert(key, Arc::clone(&c));
            }
            (c, true)
        }
    };
    let info = &cached.token.info;
    let deny_cap =
        |reason: DenyReason, message: String| deny(reason, message).with_cap(&info.cap_id);

    if let Some(i) = cached
        .token
        .revocation_ids_raw
        .iter()
        .position(|id| ctx.revocations.is_revoked(id))
    {
        let which = if i == 0 {
            format!("cap_id {}", info.cap_id)
        } else {
            format!("block {i} of cap_id {}", info.cap_id)
        };
        return Err(deny_cap(
            DenyReason::Revoked,
            format!("capability revoked ({which})"),
        ));
    }
    if now_secs > info.expires {
        return Err(deny_cap(
            DenyReason::Expired,
            format!(
                "token expired {} s ago (expires {})",
                now_secs - info.expires,
                info.expires
            ),
        ));
    }
    if info.audience != ctx.audience {
        return Err(deny_cap(
            DenyReason::WrongAudience,
            format!(
                "token is for node `{}`, this is node `{}`",
                info.audience, ctx.audience
            ),
        ));
    }
    if info.service != req.service {
        return Err(deny_cap(
            DenyReason::WrongService,
            format!(
                "token is for service `{}`, not `{}`",
                info.service, req.service
            ),
        ));
    }
    if !info.rights.allows(req.action) {
        return Err(deny_cap(
            DenyReason::ActionNotGranted,
            format!(
                "token does not grant {}.{} (granted: {})",
                req.service,
                req.action,
                info.rights.to_list().join(", ")
            ),
        ));
    }
    let path = match req.path {
        None => None,
        Some(p) => {
            if let Some((a, b)) = &info.conflicting_prefixes {
                return Err(deny_cap(
                    DenyReason::PathOutsidePrefix,
                    format!(
                        "token's path prefixes `{a}` and `{b}` do not nest: no path is allowed"
                    ),
                ));
            }
            Some(scope_path(p, info.path_prefix.as_deref()).map_err(|(r, m)| deny_cap(r, m))?)
        }
    };
    if info.opaque || first_sight {
        // Opaque tokens are decided by the engine every time; compiled ones are
        // cross-checked once, when first seen.
        if let Err((reason, message)) =
            run_datalog(ctx, &cached.token, req, path.as_ref(), now_secs)
        {
            if reason == DenyReason::EvaluationTimeout {
                // Nothing was learned about the token. A compiled one whose first-sight
                // cross-check did not finish is seen anew next time; an opaque one is
                // evaluated on every request anyway, so its verified entry stays.
                if !info.opaque {
                    if let Some(cache) = ctx.cache {
                        cache.remove(&key);
                    }
                }
            } else if !info.opaque {
                // The compiled view allowed what the engine denies: never trust it again.
                if let Some(cache) = ctx.cache {
                    let mut token = cached.token.clone();
                    token.info.opaque = true;
                    cache.insert(key, Arc::new(CachedToken::new(token)));
                }
            }
            return Err(deny_cap(reason, message));
        }
    }
    let mut limits: [(&str, f64); 2] = [("", 0.0); 2];
    let mut n = 0;
    if let Some(rate) = info.rate_limit {
        limits[n] = (&cached.cap_id, rate);
        n += 1;
    }
    if let Some(rate) = info.attenuated_rate_limit {
        limits[n] = (&cached.last_id, rate);
        n += 1;
    }
    if let Err(after) = ctx.limiter.try_acquire(&limits[..n], now) {
        let mut d = deny_cap(
            DenyReason::RateLimited,
            format!(
                "rate limit of {} requests/s exceeded; retry in {} ms",
                info.effective_rate_limit().unwrap_or(0.0),
                after.as_millis()
            ),
        );
        d.retry_after = Some(after);
        return Err(d);
    }
    Ok(Grant {
        cap_id: Arc::clone(&cached.cap_id),
        revocation_ids: Arc::clone(&cached.revocation_ids),
        service: req.service.to_owned(),
        action: req.action.to_owned(),
        path_prefix: cached.path_prefix.clone(),
        path,
        expires: info.expires,
    })
}
