//! What every protected handler uses to decide: the identity public key, the shared
//! revocation set, rate limiters and the verified-token cache around the one
//! `strata_core::authorize::authorize`, with each decision logged as an audit event and each
//! denial counted in `rejected_total{reason}`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use strata_core::authorize::{
    AuthzContext, AuthzEvent, AuthzRequest, Decision, Denial, Grant, RateLimiter, TokenCache,
    authorize,
};
use strata_core::metrics::Metrics;
use strata_core::protocol::RpcError;
use strata_core::token::{PublicKey, RunLimits};

use crate::revocation::SharedRevocations;

/// Receives every authorization decision (the audit service's client, a metrics counter).
pub type AuditSink = Arc<dyn Fn(&AuthzEvent) + Send + Sync>;

/// Why the identity public key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    /// The file could not be read.
    #[error("cannot read the identity public key {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file does not hold `ed25519/<hex>`.
    #[error("identity public key {path} is malformed: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file did not appear in time.
    #[error("identity public key {path} did not appear within {after:?}")]
    Missing {
        /// The file.
        path: PathBuf,
        /// How long was waited.
        after: Duration,
    },
}

/// Reads `<runtime_dir>/identity.pub` (`ed25519/<hex>`).
pub fn read_public_key(path: &Path) -> Result<PublicKey, PublicKeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PublicKeyError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.trim()
        .parse::<PublicKey>()
        .map_err(|e| PublicKeyError::Malformed {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

/// Waits for the identity service to publish its key (services may start before it).
pub async fn wait_for_public_key(
    path: &Path,
    after: Duration,
) -> Result<PublicKey, PublicKeyError> {
    let deadline = tokio::time::Instant::now() + after;
    loop {
        match read_public_key(path) {
            Ok(k) => return Ok(k),
            Err(PublicKeyError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(PublicKeyError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(PublicKeyError::Missing {
                    path: path.to_owned(),
                    after,
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// A service's verifier.
pub struct Verifier {
    root: PublicKey,
    audience: String,
    revocations: SharedRevocations,
    limiter: RateLimiter,
    cache: TokenCache,
    limits: RunLimits,
    sink: Option<AuditSink>,
    log_allowed: bool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("root", &self.root.to_string())
            .field("audience", &self.audience)
            .field("cached_tokens", &self.cache.len())
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for tokens of the identity key `root` on node `audience`.
    pub fn new(
        root: PublicKey,
        audience: impl Into<String>,
        revocations: SharedRevocations,
    ) -> Self {
        Self {
            root,
            audience: audience.into(),
            revocations,
            limiter: RateLimiter::default(),
            cache: TokenCache::default(),
            limits: RunLimits::default(),
            sink: None,
            log_allowed: true,
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// Counts denials in `metrics` (by default the verifier has a registry of its own).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The registry every denial is counted in (`rejected_total{reason}`, the reason's stable
    /// name): the service serves it on `<service>.metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Sends every decision to `sink` as well.
    #[must_use]
    pub fn with_audit_sink(mut self, sink: AuditSink) -> Self {
        self.sink = Some(sink);
        self
    }

    /// Whether allowed decisions are logged to the journal (denials always are). Hot paths
    /// serving tens of thousands of requests per second may send them to the sink only.
    #[must_use]
    pub fn log_allowed(mut self, on: bool) -> Self {
        self.log_allowed = on;
        self
    }

    /// Datalog run limits (defaults: 1000 facts, 100 iterations, 50 ms).
    #[must_use]
    pub fn with_limits(mut self, limits: RunLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The shared revocation set this verifier consults.
    pub fn revocations(&self) -> &SharedRevocations {
        &self.revocations
    }

    /// The identity public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.root
    }

    /// Decides at `now` without logging (tests, benchmarks).
    pub fn decide(
        &self,
        token: Option<&str>,
        req: &AuthzRequest<'_>,
        now: SystemTime,
    ) -> Result<Grant, Denial> {
        let revocations = self
            .revocations
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let ctx = AuthzContext {
            root: &self.root,
            audience: &self.audience,
            revocations: &*revocations,
            limiter: &self.limiter,
            cache: Some(&self.cache),
            limits: &self.limits,
        };
        authorize(&ctx, token, req, now)
    }

    /// Decides now, records the audit event, and maps a denial to the error to answer.
    pub fn authorize(
        &self,
        token: Option<&str>,
        req: &AuthzRequest<'_>,
    ) -> Result<Grant, RpcError> {
        match self.decide(token, req, SystemTime::now()) {
            Ok(grant) => {
                if self.log_allowed || self.sink.is_some() {
                    self.record(&grant.audit_event());
                }
                Ok(grant)
            }
            Err(denial) => {
                self.metrics.record_rejected(denial.reason.as_str());
                self.record(&denial.audit_event());
                Err(denial.to_rpc_error())
            }
        }
    }

    fn record(&self, event: &AuthzEvent) {
        let cap = event.cap_id.as_deref().unwrap_or("-");
        match event.decision {
            Decision::Allow if self.log_allowed => tracing::info!(
                STRATA_EVENT = "authz.allowed",
                STRATA_CAP_ID = cap,
                STRATA_SERVICE = event.service.as_str(),
                action = event.action.as_str(),
                "allowed {}.{}",
                event.service,
                event.action
            ),
            Decision::Allow => {}
            Decision::Deny => tracing::warn!(
                STRATA_EVENT = "authz.denied",
                STRATA_CAP_ID = cap,
                STRATA_SERVICE = event.service.as_str(),
                action = event.action.as_str(),
                reason = event.reason.map_or("", |r| r.as_str()),
                "denied {}.{}: {}",
                event.service,
                event.action,
                event.message.as_deref().unwrap_or("")
            ),
        }
        if let Some(sink) = &self.sink {
            sink(event);
        }
    }
}
