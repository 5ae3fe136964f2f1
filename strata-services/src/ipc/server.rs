//! Protocol v1 server: accepts connections on a Unix socket and answers every frame.
//!
//! Per connection: requests are read and dispatched concurrently (pipelining, at most
//! `max_in_flight` at a time), responses are written in request order. A malformed request
//! gets an error response and the connection stays usable; an oversized length, a frame
//! left incomplete past the read timeout, or a frame cut by EOF gets one error response
//! (`req_id` empty) and then a deliberate close. Idle connections are closed after the idle
//! timeout. Over the connection limit a client gets `UNAVAILABLE` and is closed.
//!
//! With [`ServerConfig::metrics`] set, the server observes `request_latency_seconds{method}`
//! around every handler call, counts refused input and connections in `rejected_total{reason}`,
//! and answers `<service>.metrics` itself (see [`super::metrics`]).

use std::future::{Future, ready};
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use strata_core::protocol::{
    Code, FrameDecoder, FrameError, Request, Response, RpcError, parse_request,
};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use super::metrics::{
    REASON_CONNECTION_LIMIT, REASON_FRAME_TOO_LARGE, REASON_INCOMPLETE_FRAME,
    REASON_INVALID_REQUEST, REASON_UNKNOWN_METHOD, ServiceMetrics,
};

/// Credentials of the connected process (SO_PEERCRED, taken when it connected).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective primary gid.
    pub gid: u32,
    /// Process id, when the kernel reports it.
    pub pid: Option<i32>,
}

/// A service's request handler.
pub trait Handler: Send + Sync + 'static {
    /// The methods served; any other method is answered `NOT_FOUND`.
    fn methods(&self) -> &[&str];

    /// Answers one well-formed request; errors become error responses.
    fn handle(
        &self,
        peer: &Peer,
        req: Request,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;
}

/// Limits and timeouts of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Connections served at once; more are answered `UNAVAILABLE` and closed.
    pub max_connections: usize,
    /// Requests of one connection handled at once (reading pauses beyond).
    pub max_in_flight: usize,
    /// Time allowed to receive the rest of a frame once its first byte arrived.
    pub read_timeout: Duration,
    /// A connection with nothing in flight and no request for this long is closed.
    pub idle_timeout: Duration,
    /// Time allowed to write a batch of responses.
    pub write_timeout: Duration,
    /// Where request latencies and refusals are counted, and the `<service>.metrics` method
    /// that serves them (None: no metrics, no such method).
    pub metrics: Option<ServiceMetrics>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_in_flight: 32,
            read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            metrics: None,
        }
    }
}

/// Why the listening socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A live server already answers on the path.
    #[error("another server is already listening on {path}")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something that is not a socket occupies the path.
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The stale socket of a dead server could not be removed.
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// bind(2) failed.
    #[error("cannot bind {path}: {source}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// chmod of the socket failed.
    #[error("cannot set permissions of {path}: {source}")]
    Permissions {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Binds `path` (mode 0666: access is decided per request, by peer credentials and
/// tokens), replacing the socket of a dead server but never a live one. Needs a tokio
/// runtime.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse {
                    path: path.to_owned(),
                });
            }
            std::fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                path: path.to_owned(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(BindError::NotASocket {
                path: path.to_owned(),
            });
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(|source| BindError::Bind {
        path: path.to_owned(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|source| {
        BindError::Permissions {
            path: path.to_owned(),
            source,
        }
    })?;
    Ok(listener)
}

/// Serves `handler` on `listener` until `shutdown` completes; then stops accepting and
/// aborts the open connections.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => {
                tasks.abort_all();
                return;
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        let handler = Arc::clone(&handler);
                        let config = Arc::clone(&config);
                        tasks.spawn(async move {
                            connection(stream, &*handler, &config).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        let config = Arc::clone(&config);
                        tasks.spawn(async move { refuse(stream, &config).await });
                    }
                },
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Tells a client over the connection limit why it is closed.
async fn refuse(mut stream: UnixStream, config: &ServerConfig) {
    tracing::warn!(
        max = config.max_connections,
        "connection limit reached, refusing a client"
    );
    reject(config, REASON_CONNECTION_LIMIT);
    let resp = Response::err(
        "",
        RpcError::unavailable(format!(
            "connection limit of {} reached; retry later",
            config.max_connections
        ))
        .with_detail("max_connections", config.max_connections),
    );
    let _ = timeout(config.write_timeout, stream.write_all(&resp.encode())).await;
    let _ = stream.shutdown().await;
}

type InFlight<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// Counts one refusal, when the server keeps metrics.
fn reject(config: &ServerConfig, reason: &str) {
    if let Some(m) = &config.metrics {
        m.registry().record_rejected(reason);
    }
}

async fn dispatch<H: Handler>(
    handler: &H,
    peer: &Peer,
    req: Request,
    metrics: Option<&ServiceMetrics>,
) -> Response {
    let req_id = req.req_id.clone();
    let method = req.method.clone();
    // One clock read and one short lock per request: nothing is allocated for it.
    let started = metrics.map(|_| std::time::Instant::now());
    let outcome = match metrics {
        Some(m) if method == m.method() => Ok(m.answer(peer).await),
        _ => {
            AssertUnwindSafe(handler.handle(peer, req))
                .catch_unwind()
                .await
        }
    };
    let resp = match outcome {
        Ok(Ok(result)) => Response::ok(req_id, result),
        Ok(Err(e)) => Response::err(req_id, e),
        Err(_) => {
            tracing::error!(%method, "handler panicked");
            Response::err(
                req_id,
                RpcError::internal(format!("the handler of {method} failed unexpectedly")),
            )
        }
    };
    if let (Some(m), Some(started)) = (metrics, started) {
        m.registry().observe_latency(&method, started.elapsed());
    }
    resp
}

async fn write_all_timeout(
    wr: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
    limit: Duration,
) -> io::Result<()> {
    match timeout(limit, wr.write_all(bytes)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "peer did not read {} bytes of responses within {limit:?}",
                bytes.len()
            ),
        )),
    }
}

/// Serves one connection until the peer leaves, a timeout fires or the stream breaks.
async fn connection<H: Handler>(mut stream: UnixStream, handler: &H, config: &ServerConfig) {
    let peer = match stream.peer_cred() {
        Ok(c) => Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read peer credentials, closing the connection");
            return;
        }
    };
    let (mut rd, mut wr) = stream.split();
    let peer = &peer;
    let metrics = config.metrics.as_ref();
    // The handler's methods, plus `<service>.metrics` when the server serves it (built once
    // per connection, not per request).
    let with_metrics: Vec<&str>;
    let methods: &[&str] = match metrics {
        Some(m) => {
            with_metrics = handler
                .methods()
                .iter()
                .copied()
                .chain([m.method()])
                .collect();
            &with_metrics
        }
        None => handler.methods(),
    };
    let mut decoder = FrameDecoder::new();
    let mut inflight: FuturesOrdered<InFlight<'_>> = FuturesOrdered::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::with_capacity(4096);
    let mut last_activity = Instant::now();
    let mut frame_started: Option<Instant> = None;
    let mut eof = false;
    // One last error to answer before closing deliberately.
    let mut fatal: Option<RpcError> = None;

    loop {
        while fatal.is_none() && inflight.len() < config.max_in_flight {
            match decoder.next_frame() {
                Ok(Some(payload)) => {
                    last_activity = Instant::now();
                    match parse_request(payload, methods) {
                        Ok(req) => {
                            inflight.push_back(Box::pin(dispatch(handler, peer, req, metrics)));
                        }
                        Err(e) => {
                            tracing::warn!(uid = peer.uid, pid = ?peer.pid, error = %e.error,
                                "malformed request");
                            reject(
                                config,
                                if e.error.code == Code::NotFound {
                                    REASON_UNKNOWN_METHOD
                                } else {
                                    REASON_INVALID_REQUEST
                                },
                            );
                            inflight.push_back(Box::pin(ready(e.into_response())));
                        }
                    }
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { length, limit }) => {
                    tracing::warn!(uid = peer.uid, pid = ?peer.pid, length, "oversized frame");
                    reject(config, REASON_FRAME_TOO_LARGE);
                    fatal = Some(
                        RpcError::invalid_argument(format!(
                            "frame length {length} exceeds the limit of {limit} bytes; closing the connection"
                        ))
                        .with_detail("length", length)
                        .with_detail("limit", limit),
                    );
                }
            }
        }
        frame_started = match (decoder.is_mid_frame(), frame_started) {
            (false, _) => None,
            (true, None) => Some(Instant::now()),
            (true, started) => started,
        };
        if eof && fatal.is_none() && decoder.is_mid_frame() && !decoder.is_poisoned() {
            reject(config, REASON_INCOMPLETE_FRAME);
            fatal = Some(RpcError::invalid_argument(format!(
                "connection closed in the middle of a frame ({} bytes received)",
                decoder.pending()
            )));
        }
        if (eof || fatal.is_some()) && inflight.is_empty() {
            if let Some(e) = fatal.take() {
                out.clear();
                Response::err("", e).encode_into(&mut out);
                let _ = write_all_timeout(&mut wr, &out, config.write_timeout).await;
                let _ = wr.shutdown().await;
                // Read what the peer still sends for a moment, so that closing with unread
                // data does not turn its read of our answer into a reset.
                let drain = async {
                    let mut total = 0usize;
                    while let Ok(n) = rd.read(&mut buf).await {
                        total += n;
                        if n == 0 || total > 4 * 1024 * 1024 {
                            break;
                        }
                    }
                };
                let _ = timeout(Duration::from_millis(200), drain).await;
            }
            return;
        }

        let deadline = match frame_started {
            Some(start) => Some(start + config.read_timeout),
            None if inflight.is_empty() && fatal.is_none() => {
                Some(last_activity + config.idle_timeout)
            }
            None => None,
        };
        let can_read = !eof && fatal.is_none() && inflight.len() < config.max_in_flight;
        let far = Instant::now() + Duration::from_secs(86_400);
        tokio::select! {
            biased;
            Some(resp) = inflight.next(), if !inflight.is_empty() => {
                out.clear();
                resp.encode_into(&mut out);
                // Batch whatever else is already answered into the same write.
                while let Some(Some(more)) = inflight.next().now_or_never() {
                    more.encode_into(&mut out);
                }
                if let Err(e) = write_all_timeout(&mut wr, &out, config.write_timeout).await {
                    tracing::debug!(uid = peer.uid, error = %e, "writing responses failed");
                    return;
                }
                last_activity = Instant::now();
            }
            read = rd.read(&mut buf), if can_read => match read {
                Ok(0) => eof = true,
                Ok(n) => decoder.push(&buf[..n]),
                Err(e) => {
                    tracing::debug!(uid = peer.uid, error = %e, "reading from the connection failed");
                    return;
                }
            },
            () = sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                if frame_started.is_some() {
                    tracing::warn!(uid = peer.uid, pid = ?peer.pid, "read timeout in the middle of a frame");
                    reject(config, REASON_INCOMPLETE_FRAME);
                    fatal = Some(RpcError::invalid_argument(format!(
                        "incomplete frame: {} bytes received, the rest did not arrive within {:?}; closing the connection",
                        decoder.pending(),
                        config.read_timeout
                    )));
                } else {
                    tracing::debug!(uid = peer.uid, "closing idle connection");
                    return;
                }
            }
        }
    }
}
