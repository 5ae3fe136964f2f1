//! strata-audit: receives the authorization events of every service (`audit.record`),
//! writes each to the journal (`STRATA_EVENT=authz.allowed|authz.denied`, `STRATA_CAP_ID`,
//! `STRATA_SERVICE`, decision, reason) and appends it to the hash-chained log in its state
//! directory ([`log`]); [`sender`] is the client side every service ships events with.
//!
//! Who may record: a peer running as uid 0 (the supervisor, tests), or a caller presenting a
//! token with the right `audit.record` (what the supervisor mints for a `call:audit`
//! capability), decided by the one `authorize()`.

pub mod log;
pub mod sender;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::{Value, json};
use strata_core::audit_chain::{AuditDecision, AuditEvent, AuditRecord};
use strata_core::authorize::AuthzRequest;
use strata_core::protocol::{Request, RpcError};

use crate::ipc::{Handler, Peer};
use crate::verifier::Verifier;
use log::{AuditLog, AuditLogError, Recovery};

/// The methods strata-audit serves.
pub const METHODS: &[&str] = &["audit.record"];

/// Events one `audit.record` call may carry.
pub const MAX_EVENTS_PER_CALL: usize = 4096;

/// The audit service.
#[derive(Debug)]
pub struct AuditService {
    log: Arc<Mutex<AuditLog>>,
    verifier: Option<Arc<Verifier>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordParams {
    events: Vec<AuditEvent>,
    /// Events the sender had to drop since its last delivered batch.
    #[serde(default)]
    dropped: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes one record to the journal with the fields operators filter on.
pub fn journal(record: &AuditRecord) {
    let e = &record.event;
    let cap = e.cap_id.as_deref().unwrap_or("-");
    let reason = e.reason.as_deref().unwrap_or("");
    match e.decision {
        AuditDecision::Allow => tracing::info!(
            STRATA_EVENT = e.decision.event_name(),
            STRATA_CAP_ID = cap,
            STRATA_SERVICE = e.service.as_str(),
            STRATA_SOURCE = e.source.as_str(),
            STRATA_AUDIT_SEQ = record.seq,
            STRATA_AUDIT_HASH = record.hash.as_str(),
            action = e.action.as_str(),
            decision = e.decision.as_str(),
            reason,
            count = e.count,
            "allowed {}.{} for {cap} ({}x)",
            e.service,
            e.action,
            e.count
        ),
        AuditDecision::Deny => tracing::warn!(
            STRATA_EVENT = e.decision.event_name(),
            STRATA_CAP_ID = cap,
            STRATA_SERVICE = e.service.as_str(),
            STRATA_SOURCE = e.source.as_str(),
            STRATA_AUDIT_SEQ = record.seq,
            STRATA_AUDIT_HASH = record.hash.as_str(),
            action = e.action.as_str(),
            decision = e.decision.as_str(),
            reason,
            count = e.count,
            "denied {}.{} for {cap}: {}",
            e.service,
            e.action,
            e.message.as_deref().unwrap_or(reason)
        ),
    }
}

impl AuditService {
    /// Opens the log in `state_dir`; `verifier` decides tokens (without one, only uid 0
    /// may record).
    pub fn open(state_dir: &Path, verifier: Option<Arc<Verifier>>) -> Result<Self, AuditLogError> {
        let now = now_ms() / 1000;
        let (log, recovery) = AuditLog::open(state_dir, now)?;
        match &recovery {
            Recovery::Intact { records } => {
                tracing::info!(records, path = %log.path().display(), "audit log verified");
            }
            Recovery::TruncatedTornLine { bytes, records } => tracing::warn!(
                bytes,
                records,
                path = %log.path().display(),
                "audit log: dropped a torn last line (a write cut short by a crash, never acknowledged)"
            ),
            Recovery::Broken { found, kept_as } => tracing::error!(
                STRATA_EVENT = "audit.chain_broken",
                kind = found.kind.as_str(),
                index = found.index,
                kept_as = %kept_as.display(),
                "audit log does not verify: {found}; kept it as evidence and started a new chain"
            ),
        }
        Ok(Self {
            log: Arc::new(Mutex::new(log)),
            verifier,
        })
    }

    /// Appends already validated events, journals them; the records written.
    pub async fn append(&self, events: Vec<AuditEvent>) -> Result<Vec<AuditRecord>, RpcError> {
        let log = Arc::clone(&self.log);
        let written = tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            log.append(now_ms(), events)
        })
        .await
        .map_err(|e| RpcError::internal(format!("the audit writer failed: {e}")))?;
        let records = written.map_err(|e| {
            tracing::error!(error = %e, "writing the audit log failed");
            RpcError::unavailable(format!("the audit log cannot be written: {e}"))
        })?;
        for r in &records {
            journal(r);
        }
        Ok(records)
    }

    fn check_authority(&self, peer: &Peer, req: &Request) -> Result<(), RpcError> {
        if peer.uid == 0 {
            return Ok(());
        }
        let Some(verifier) = &self.verifier else {
            return Err(RpcError::permission_denied(format!(
                "audit.record is refused for uid {}: only uid 0 may record while the identity key is unknown",
                peer.uid
            )));
        };
        verifier
            .authorize(
                req.token.as_deref(),
                &AuthzRequest {
                    service: "audit",
                    action: "record",
                    path: None,
                },
            )
            .map(|_| ())
    }

    async fn record(&self, peer: &Peer, req: &Request) -> Result<Value, RpcError> {
        self.check_authority(peer, req)?;
        let p: RecordParams = req.params()?;
        if p.events.len() > MAX_EVENTS_PER_CALL {
            return Err(RpcError::invalid_argument(format!(
                "{} events in one call, at most {MAX_EVENTS_PER_CALL} are accepted",
                p.events.len()
            )));
        }
        for (i, e) in p.events.iter().enumerate() {
            e.validate().map_err(|err| {
                RpcError::invalid_argument(format!("events[{i}]: {err}")).with_detail("index", i)
            })?;
        }
        if p.dropped > 0 {
            tracing::warn!(
                STRATA_EVENT = "audit.sender_dropped",
                uid = peer.uid,
                pid = ?peer.pid,
                dropped = p.dropped,
                "a sender reports {} authorization events it could not deliver",
                p.dropped
            );
        }
        let n = p.events.len();
        let records = self.append(p.events).await?;
        let (first, last) = (
            records.first().map(|r| r.seq),
            records.last().map(|r| r.seq),
        );
        Ok(json!({"recorded": n, "first_seq": first, "last_seq": last}))
    }
}

/// A verifier sink for the audit service's own decisions, and the receiving end that
/// [`AuditService::record_own`] drains into the log (audit is a service like any other: its
/// decisions are audited too).
pub fn own_sink() -> (
    crate::verifier::AuditSink,
    tokio::sync::mpsc::Receiver<AuditEvent>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4096);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink: crate::verifier::AuditSink =
        Arc::new(move |e: &strata_core::authorize::AuthzEvent| {
            let event = AuditEvent::from_authz(e, "audit", now_ms(), None);
            if tx.try_send(event).is_err() {
                let n = dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                tracing::warn!(
                    STRATA_EVENT = "audit.dropped",
                    dropped = n,
                    "the audit service's own decision queue is full: event dropped (counted)"
                );
            }
        });
    (sink, rx)
}

impl AuditService {
    /// Appends the audit service's own decisions as they come (runs until the sink is gone).
    pub async fn record_own(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<AuditEvent>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while let Ok(e) = rx.try_recv() {
                batch.push(e);
            }
            let (events, _) = sender::coalesce(batch);
            if let Err(e) = self.append(events).await {
                tracing::error!(error = %e, "recording the audit service's own decisions failed");
            }
        }
    }
}

impl Handler for AuditService {
    fn methods(&self) -> &[&str] {
        METHODS
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.method.as_str() {
            "audit.record" => self.record(peer, &req).await,
            other => Err(RpcError::not_found(format!("unknown method `{other}`"))),
        }
    }
}
