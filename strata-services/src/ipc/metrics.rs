//! A service's metrics as the protocol v1 server keeps and serves them: the registry every
//! request's latency and every refusal is counted in, and the admin-only method
//! `<service>.metrics` that returns it as Prometheus text.

use std::sync::Arc;

use serde_json::{Value, json};
use strata_core::metrics::Metrics;
use strata_core::protocol::RpcError;

use super::server::Peer;
use crate::identity::{ADMIN_GROUP, admin_by_credentials};

/// `rejected_total` reason of a `<service>.metrics` call by a non-administrator.
pub const REASON_NOT_ADMIN: &str = "not_admin";
/// `rejected_total` reason of a request that does not parse (bad JSON, envelope, version).
pub const REASON_INVALID_REQUEST: &str = "invalid_request";
/// `rejected_total` reason of a request for a method the endpoint does not serve.
pub const REASON_UNKNOWN_METHOD: &str = "unknown_method";
/// `rejected_total` reason of a frame over the size limit (the connection is closed).
pub const REASON_FRAME_TOO_LARGE: &str = "frame_too_large";
/// `rejected_total` reason of a frame cut by EOF or the read timeout.
pub const REASON_INCOMPLETE_FRAME: &str = "incomplete_frame";
/// `rejected_total` reason of a connection refused at the connection limit.
pub const REASON_CONNECTION_LIMIT: &str = "connection_limit";

/// The metrics of one service, handed to the server in [`super::ServerConfig::metrics`].
#[derive(Debug, Clone)]
pub struct ServiceMetrics {
    method: String,
    registry: Arc<Metrics>,
    admin_group: String,
}

impl ServiceMetrics {
    /// Serves `registry` on `<service>.metrics` to uid 0 and members of `strata-admin`. Share
    /// the registry with the service's verifier so that its denials are counted in it.
    pub fn new(service: &str, registry: Arc<Metrics>) -> Self {
        Self {
            method: format!("{service}.metrics"),
            registry,
            admin_group: ADMIN_GROUP.to_owned(),
        }
    }

    /// Members of `group` (instead of `strata-admin`) may read the metrics.
    #[must_use]
    pub fn with_admin_group(mut self, group: impl Into<String>) -> Self {
        self.admin_group = group.into();
        self
    }

    /// The method that returns the metrics (`fs.metrics`).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The registry.
    pub fn registry(&self) -> &Metrics {
        &self.registry
    }

    /// Answers `<service>.metrics`: `{text}` for an administrator (by peer credentials, the
    /// rule `identity.issue` uses), `PERMISSION_DENIED` for anyone else.
    pub(crate) async fn answer(&self, peer: &Peer) -> Result<Value, RpcError> {
        if admin_by_credentials(peer, &self.admin_group)
            .await?
            .is_some()
        {
            return Ok(json!({ "text": self.registry.render() }));
        }
        self.registry.record_rejected(REASON_NOT_ADMIN);
        tracing::warn!(STRATA_EVENT = "authz.denied", method = self.method.as_str(),
            uid = peer.uid, pid = ?peer.pid, "refused {} to a non-administrator", self.method);
        Err(RpcError::permission_denied(format!(
            "{} needs uid 0 or membership in group `{}` (caller uid {})",
            self.method, self.admin_group, peer.uid
        ))
        .with_detail("uid", peer.uid)
        .with_detail("reason", REASON_NOT_ADMIN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::metrics::parse_exposition;
    use strata_core::protocol::Code;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: None,
        }
    }

    #[tokio::test]
    async fn root_reads_the_metrics_and_others_are_refused_and_counted() {
        let m = ServiceMetrics::new("fs", Arc::new(Metrics::new()))
            .with_admin_group("no-such-group-strata");
        assert_eq!(m.method(), "fs.metrics");
        let e = m.answer(&peer(65534)).await.expect_err("nobody is refused");
        assert_eq!(e.code, Code::PermissionDenied);
        assert!(
            e.message.contains("fs.metrics needs uid 0"),
            "{}",
            e.message
        );
        let v = m.answer(&peer(0)).await.expect("root reads");
        let text = v["text"].as_str().expect("text");
        let exp = parse_exposition(text).expect("valid exposition");
        assert_eq!(
            exp.value("rejected_total", &[("reason", REASON_NOT_ADMIN)]),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn members_of_the_admin_group_read_the_metrics() {
        // nobody's primary group is nogroup on Debian: the same lookup identity.issue uses.
        let m = ServiceMetrics::new("fs", Arc::new(Metrics::new())).with_admin_group("nogroup");
        assert!(m.answer(&peer(65534)).await.is_ok());
    }
}
