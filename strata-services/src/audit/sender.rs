//! Ships a service's authorization events to strata-audit: batched, bounded, and never
//! blocking the request path. Recording is a `try_send` into a bounded queue; a background
//! task coalesces identical allowed decisions, sends batches with `audit.record`, and keeps
//! one batch while the audit service is away. Every event that cannot be queued or delivered
//! is counted, logged (rate-limited) and reported to the audit service with the next batch.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use strata_core::audit_chain::AuditEvent;
use strata_core::authorize::AuthzEvent;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ipc::{Client, ClientConfig};
use crate::verifier::AuditSink;

/// Where and how to ship events.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// The audit socket (`<runtime_dir>/audit.sock`).
    pub socket: PathBuf,
    /// A token with the right `audit.record` (not needed when running as uid 0).
    pub token: Option<String>,
    /// Events queued at most; beyond, events are dropped and counted.
    pub capacity: usize,
    /// Events per `audit.record` call at most (after coalescing).
    pub batch_max: usize,
    /// How long events wait to be batched.
    pub flush_after: Duration,
    /// Longest wait between delivery attempts while audit is unreachable.
    pub retry_max: Duration,
}

impl SenderConfig {
    /// Defaults: 16384 queued, batches of 1024, flushed every 100 ms.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            token: None,
            capacity: 16_384,
            batch_max: 1024,
            flush_after: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
        }
    }
}

/// Counters of a sender.
#[derive(Debug, Default)]
pub struct SenderStats {
    /// Events accepted into the queue.
    pub queued: AtomicU64,
    /// Decisions delivered (a coalesced event counts its `count`).
    pub delivered: AtomicU64,
    /// Events dropped because the queue was full.
    pub dropped_full: AtomicU64,
    /// Events dropped because a batch could not be delivered in time.
    pub dropped_undelivered: AtomicU64,
    /// Events merged into another by coalescing.
    pub merged: AtomicU64,
}

impl SenderStats {
    /// All drops so far.
    pub fn dropped(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed) + self.dropped_undelivered.load(Ordering::Relaxed)
    }
}

/// The handle services record through; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditSender {
    tx: mpsc::Sender<AuditEvent>,
    stats: Arc<SenderStats>,
    source: Arc<str>,
    last_warn: Arc<std::sync::Mutex<Option<Instant>>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl AuditSender {
    /// Starts the shipping task for service `source`. Needs a tokio runtime.
    pub fn spawn(config: SenderConfig, source: &str) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(SenderStats::default());
        let task = tokio::spawn(ship(config, rx, Arc::clone(&stats)));
        (
            Self {
                tx,
                stats,
                source: Arc::from(source),
                last_warn: Arc::new(std::sync::Mutex::new(None)),
            },
            task,
        )
    }

    /// The counters.
    pub fn stats(&self) -> &SenderStats {
        &self.stats
    }

    /// Queues one event without waiting; a full queue drops it (counted, logged).
    pub fn record(&self, event: AuditEvent) {
        match self.tx.try_send(event) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                let dropped = self.stats.dropped_full.fetch_add(1, Ordering::Relaxed) + 1;
                self.warn_dropped(dropped);
            }
        }
    }

    /// Queues the event of one `authorize()` decision.
    pub fn record_authz(&self, event: &AuthzEvent, peer_uid: Option<u32>) {
        self.record(AuditEvent::from_authz(
            event,
            &self.source,
            now_ms(),
            peer_uid,
        ));
    }

    /// A sink for [`crate::verifier::Verifier::with_audit_sink`].
    pub fn sink(&self) -> AuditSink {
        let me = self.clone();
        Arc::new(move |event: &AuthzEvent| me.record_authz(event, None))
    }

    fn warn_dropped(&self, dropped_full: u64) {
        // At most one warning per 10 s, each with the running total.
        let mut last = self
            .last_warn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                STRATA_EVENT = "audit.dropped",
                dropped_queue_full = dropped_full,
                dropped_undelivered = self.stats.dropped_undelivered.load(Ordering::Relaxed),
                "audit queue full: authorization events are being dropped (counted)"
            );
        }
    }
}

/// What makes two allowed decisions the same: source, service, action, cap_id, peer uid.
type MergeKey = (String, String, String, Option<String>, Option<u32>);

/// Merges identical allowed decisions, keeping the order of first appearance.
pub fn coalesce(events: Vec<AuditEvent>) -> (Vec<AuditEvent>, u64) {
    let mut out: Vec<AuditEvent> = Vec::with_capacity(events.len());
    let mut index: HashMap<MergeKey, usize> = HashMap::new();
    let mut merged = 0;
    for e in events {
        if e.decision == strata_core::audit_chain::AuditDecision::Allow {
            let key = (
                e.source.clone(),
                e.service.clone(),
                e.action.clone(),
                e.cap_id.clone(),
                e.peer_uid,
            );
            if let Some(&i) = index.get(&key) {
                let into = &mut out[i];
                into.count = into.count.saturating_add(e.count);
                into.time_ms = into.time_ms.max(e.time_ms);
                merged += 1;
                continue;
            }
            index.insert(key, out.len());
        }
        out.push(e);
    }
    (out, merged)
}

async fn ship(config: SenderConfig, mut rx: mpsc::Receiver<AuditEvent>, stats: Arc<SenderStats>) {
    let client_config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(10),
    };
    let mut client: Option<Client> = None;
    let mut pending: Vec<AuditEvent> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    let mut reported_drops: u64 = 0;
    loop {
        if pending.is_empty() {
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + config.flush_after;
            while batch.len() < config.batch_max * 8 {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(e)) => batch.push(e),
                    Ok(None) | Err(_) => break,
                }
            }
            let (events, merged) = coalesce(batch);
            stats.merged.fetch_add(merged, Ordering::Relaxed);
            pending = events;
        }
        let take = pending.len().min(config.batch_max);
        let dropped_total = stats.dropped();
        let params = json!({
            "events": &pending[..take],
            "dropped": dropped_total - reported_drops,
        });
        if client.is_none() {
            client = Client::connect_with(&config.socket, client_config.clone())
                .await
                .ok();
        }
        let outcome = match client.as_mut() {
            Some(c) => c
                .call("audit.record", params, config.token.as_deref())
                .await
                .map_err(|e| e.to_string()),
            None => Err(format!("cannot connect to {}", config.socket.display())),
        };
        match outcome {
            Ok(_) => {
                let decisions: u64 = pending[..take].iter().map(|e| e.count).sum();
                stats.delivered.fetch_add(decisions, Ordering::Relaxed);
                pending.drain(..take);
                reported_drops = dropped_total;
                backoff = Duration::from_millis(100);
                if let Some(since) = failing_since.take() {
                    tracing::info!(
                        STRATA_EVENT = "audit.resumed",
                        after_ms = since.elapsed().as_millis() as u64,
                        "delivering authorization events to audit again"
                    );
                }
            }
            Err(e) => {
                client = None;
                if failing_since.is_none() {
                    failing_since = Some(Instant::now());
                    tracing::warn!(STRATA_EVENT = "audit.unreachable", error = %e,
                        "cannot deliver authorization events to audit; keeping one batch, dropping beyond (counted)");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_max);
                // Keep the pending batch, but make room: what queued meanwhile beyond the
                // queue's capacity is already counted by `record`; here the oldest batch is
                // dropped once it is older than the retry window allows.
                if failing_since.is_some_and(|t| t.elapsed() > config.retry_max * 6) {
                    let n = pending.len() as u64;
                    stats.dropped_undelivered.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(
                        STRATA_EVENT = "audit.dropped",
                        dropped = n,
                        dropped_total = stats.dropped(),
                        "audit unreachable for too long: dropped a batch of authorization events (counted)"
                    );
                    pending.clear();
                    failing_since = Some(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::audit_chain::AuditDecision;

    fn ev(cap: &str, action: &str, decision: AuditDecision, t: u64) -> AuditEvent {
        AuditEvent {
            time_ms: t,
            source: "fs".into(),
            service: "fs".into(),
            action: action.into(),
            cap_id: Some(cap.into()),
            decision,
            reason: None,
            message: None,
            peer_uid: None,
            count: 1,
        }
    }

    #[test]
    fn allowances_coalesce_denials_do_not() {
        let (out, merged) = coalesce(vec![
            ev("a", "read", AuditDecision::Allow, 1),
            ev("a", "read", AuditDecision::Deny, 2),
            ev("a", "read", AuditDecision::Allow, 3),
            ev("b", "read", AuditDecision::Allow, 4),
            ev("a", "read", AuditDecision::Deny, 5),
            ev("a", "list", AuditDecision::Allow, 6),
            ev("a", "read", AuditDecision::Allow, 7),
        ]);
        assert_eq!(merged, 2);
        let summary: Vec<(&str, &str, AuditDecision, u64, u64)> = out
            .iter()
            .map(|e| {
                (
                    e.cap_id.as_deref().unwrap_or(""),
                    e.action.as_str(),
                    e.decision,
                    e.count,
                    e.time_ms,
                )
            })
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", "read", AuditDecision::Allow, 3, 7),
                ("a", "read", AuditDecision::Deny, 1, 2),
                ("b", "read", AuditDecision::Allow, 1, 4),
                ("a", "read", AuditDecision::Deny, 1, 5),
                ("a", "list", AuditDecision::Allow, 1, 6),
            ]
        );
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_blocking() {
        // Nobody listens on this socket: nothing is delivered, the queue fills.
        let mut config = SenderConfig::new("/nonexistent/strata-audit-test.sock");
        config.capacity = 4;
        config.flush_after = Duration::from_secs(3600);
        let (sender, task) = AuditSender::spawn(config, "fs");
        let started = Instant::now();
        for i in 0..100 {
            sender.record(ev("a", "read", AuditDecision::Deny, i));
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "record blocked"
        );
        let s = sender.stats();
        let queued = s.queued.load(Ordering::Relaxed);
        let dropped = s.dropped_full.load(Ordering::Relaxed);
        assert_eq!(queued + dropped, 100);
        // The task took at most one event out before blocking on its batch window.
        assert!(dropped >= 95, "dropped {dropped}");
        task.abort();
    }
}
