//! The verifier side of revocation: a task that keeps a service's shared revocation set up
//! to date from the identity service.
//!
//! It long-polls `identity.revocations {since, wait_ms}`, so a revocation reaches it as soon
//! as identity has made it durable; after a reconnect or a restart it catches up from the
//! sequence number it last saw (from 0 after a restart). Until the first answer the set is
//! not ready and `authorize` denies everything with `UNAVAILABLE`: a verifier that may have
//! missed revocations lets nothing through.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use strata_core::authorize::RevocationSet;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::ipc::{Client, ClientConfig};

/// The revocation set shared by a service's handlers and its follower.
pub type SharedRevocations = Arc<RwLock<RevocationSet>>;

/// A fresh, not yet ready, shared set.
pub fn shared_set() -> SharedRevocations {
    Arc::new(RwLock::new(RevocationSet::new()))
}

/// Where and how to follow.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// The identity socket (`<runtime_dir>/identity.sock`).
    pub socket: PathBuf,
    /// How long one long poll waits for news.
    pub wait: Duration,
    /// First reconnect delay (doubles up to `retry_max`).
    pub retry_min: Duration,
    /// Longest reconnect delay during the first `fast_for` of an outage.
    pub retry_max: Duration,
    /// How long after identity went away reconnects stay fast (a restart takes well under it).
    pub fast_for: Duration,
    /// Reconnect delay once the outage has lasted `fast_for` (identity stopped, quarantined).
    pub retry_slow: Duration,
}

impl FollowerConfig {
    /// Defaults: 25 s polls, reconnects after 10 ms, then every 25 ms for 10 s, then every
    /// 500 ms. The reconnect delay is how long a revocation made by a restarted identity can
    /// go unseen here (identity answers the revoke while this follower still waits to
    /// reconnect), so it stays short while a restart is likely: with a 2 s cap, strata-fs
    /// accepted revoked tokens for up to 1.9 s after their revoke returned
    /// (strata-systemd/tests/chaos.rs). A failed connect to a Unix socket costs microseconds;
    /// the slow tier only keeps a long outage (identity stopped or quarantined) from waking
    /// every verifier 40 times a second.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            wait: Duration::from_secs(25),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(25),
            fast_for: Duration::from_secs(10),
            retry_slow: Duration::from_millis(500),
        }
    }

    /// The delay before the next reconnect, `down_for` into an outage, after `previous`.
    fn next_retry(&self, previous: Duration, down_for: Duration) -> Duration {
        if down_for >= self.fast_for {
            self.retry_slow
        } else {
            (previous * 2).min(self.retry_max)
        }
    }
}

#[derive(Debug, Deserialize)]
struct Batch {
    revocations: Vec<String>,
    seq: u64,
    #[serde(default)]
    reset: bool,
}

/// A running follower; dropping it stops the task (the set keeps what it learnt).
#[derive(Debug)]
pub struct RevocationFollower {
    set: SharedRevocations,
    seq: watch::Receiver<u64>,
    ready: watch::Receiver<bool>,
    revoked: broadcast::Sender<Arc<[String]>>,
    task: JoinHandle<()>,
}

impl Drop for RevocationFollower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RevocationFollower {
    /// Starts following into `set` (marked ready after the first answer).
    pub fn spawn(config: FollowerConfig, set: SharedRevocations) -> Self {
        let (seq_tx, seq) = watch::channel(0);
        let (ready_tx, ready) = watch::channel(false);
        let (revoked, _) = broadcast::channel(1024);
        let task = tokio::spawn(follow(
            config,
            Arc::clone(&set),
            seq_tx,
            ready_tx,
            revoked.clone(),
        ));
        Self {
            set,
            seq,
            ready,
            revoked,
            task,
        }
    }

    /// The set kept up to date.
    pub fn set(&self) -> &SharedRevocations {
        &self.set
    }

    /// Newly revoked ids (hex), as they arrive: close handles opened under them.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[String]>> {
        self.revoked.subscribe()
    }

    /// The identity sequence number caught up to.
    pub fn seq(&self) -> u64 {
        *self.seq.borrow()
    }

    /// Waits until the first catch-up; false if it did not happen within `after`.
    pub async fn wait_ready(&self, after: Duration) -> bool {
        let mut ready = self.ready.clone();
        matches!(
            tokio::time::timeout(after, ready.wait_for(|r| *r)).await,
            Ok(Ok(_))
        )
    }
}

async fn follow(
    config: FollowerConfig,
    set: SharedRevocations,
    seq_tx: watch::Sender<u64>,
    ready_tx: watch::Sender<bool>,
    revoked: broadcast::Sender<Arc<[String]>>,
) {
    let mut since = 0u64;
    let mut backoff = config.retry_min;
    let mut failures = 0u32;
    // The start of the current outage: when the follower started, or when a working
    // connection to identity broke.
    let mut last_ok = tokio::time::Instant::now();
    let client_config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        call_timeout: config.wait + Duration::from_secs(5),
    };
    loop {
        let mut client = match Client::connect_with(&config.socket, client_config.clone()).await {
            Ok(c) => c,
            Err(e) => {
                failures += 1;
                log_failure(failures, &e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = config.next_retry(backoff, last_ok.elapsed());
                continue;
            }
        };
        // Whether this connection delivered anything: one that is accepted and then fails
        // (identity at its connection limit, a broken answer) does not end the outage.
        let mut got_batch = false;
        loop {
            // Identity answers at once when it has news beyond `since` (a reconnect catches
            // up immediately); the very first poll never waits, so readiness comes quickly.
            let wait = if *ready_tx.borrow() {
                config.wait
            } else {
                Duration::ZERO
            };
            let params = json!({"since": since, "wait_ms": wait.as_millis() as u64});
            let answer = client
                .call_with_timeout(
                    "identity.revocations",
                    params,
                    None,
                    client_config.call_timeout,
                )
                .await;
            let batch: Batch = match answer.map_err(|e| e.to_string()).and_then(|v| {
                serde_json::from_value(v).map_err(|e| format!("malformed answer: {e}"))
            }) {
                Ok(b) => b,
                Err(e) => {
                    failures += 1;
                    log_failure(failures, &e);
                    break;
                }
            };
            got_batch = true;
            if failures > 0 {
                tracing::info!(
                    STRATA_EVENT = "revocation.follow_resumed",
                    seq = batch.seq,
                    "following revocations again"
                );
            }
            failures = 0;
            backoff = config.retry_min;
            let mut fresh = Vec::new();
            {
                let mut s = set.write().unwrap_or_else(PoisonError::into_inner);
                for id in &batch.revocations {
                    match s.insert_hex(id) {
                        Some(true) => fresh.push(id.clone()),
                        Some(false) => {}
                        None => tracing::error!(
                            id = id.as_str(),
                            "identity sent a revocation id that is not hex"
                        ),
                    }
                }
                s.set_ready(true);
            }
            if batch.reset {
                tracing::warn!(
                    STRATA_EVENT = "revocation.reset",
                    since,
                    seq = batch.seq,
                    "identity's revocation log is shorter than what this verifier saw; kept the union"
                );
            }
            since = batch.seq;
            seq_tx.send_replace(since);
            ready_tx.send_replace(true);
            if !fresh.is_empty() {
                tracing::info!(
                    STRATA_EVENT = "revocation.applied",
                    count = fresh.len(),
                    seq = since,
                    "applied revocations"
                );
                let _ = revoked.send(Arc::from(fresh));
            }
        }
        if got_batch {
            // The connection broke: identity was reachable until now.
            last_ok = tokio::time::Instant::now();
        }
        tokio::time::sleep(backoff).await;
        backoff = config.next_retry(backoff, last_ok.elapsed());
    }
}

fn log_failure(failures: u32, e: &str) {
    // Loud once, then quiet while identity stays away.
    if failures == 1 {
        tracing::warn!(STRATA_EVENT = "revocation.follow_failed", error = %e,
            "cannot follow revocations from the identity service, reconnecting");
    } else {
        tracing::debug!(error = %e, failures, "identity still unreachable");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnects_stay_fast_through_a_restart_and_slow_down_in_a_long_outage() {
        let c = FollowerConfig::new("/run/strata/identity.sock");
        let mut delay = c.retry_min;
        let mut seen = vec![delay];
        for _ in 0..4 {
            delay = c.next_retry(delay, Duration::from_millis(200));
            seen.push(delay);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [10, 20, 25, 25, 25]);
        assert_eq!(
            c.next_retry(delay, c.fast_for - Duration::from_millis(1)),
            c.retry_max
        );
        assert_eq!(c.next_retry(delay, c.fast_for), c.retry_slow);
        assert_eq!(
            c.next_retry(c.retry_slow, Duration::from_secs(3600)),
            c.retry_slow
        );
    }
}
