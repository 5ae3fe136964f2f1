//! The protocol v1 runtime over Unix sockets: a tokio server with connection limits,
//! timeouts and pipelining whose handlers see the peer's credentials, and a client library
//! used by strata-ctl and the services. The server measures every request's latency and counts
//! refusals in a service's [`ServiceMetrics`], which it serves on `<service>.metrics`.

pub mod client;
pub mod metrics;
pub mod server;

use std::path::{Path, PathBuf};

pub use client::{Client, ClientConfig, ClientError};
pub use metrics::ServiceMetrics;
pub use server::{BindError, Handler, Peer, ServerConfig, bind, serve};

/// `<runtime_dir>/<service>.sock`, the endpoint of a service.
pub fn socket_path(runtime_dir: &Path, service: &str) -> PathBuf {
    runtime_dir.join(format!("{service}.sock"))
}
