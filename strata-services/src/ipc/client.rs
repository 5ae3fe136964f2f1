//! Protocol v1 client over a Unix socket, used by strata-ctl and by services calling others.
//!
//! One request at a time with [`Client::call`], or pipelined with [`Client::send`] and
//! [`Client::recv`] (responses come back in request order).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use strata_core::protocol::{
    FrameDecoder, FrameError, Request, Response, ResponseError, RpcError, encode_frame,
    parse_response,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::timeout;

/// Timeouts of a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time allowed for a response to arrive.
    pub call_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("connection to {path} failed: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No response in time.
    #[error("no response from {path} within {after:?}")]
    Timeout {
        /// The socket path.
        path: PathBuf,
        /// The timeout.
        after: Duration,
    },
    /// The server closed the connection before answering.
    #[error("{path} closed the connection before answering")]
    Closed {
        /// The socket path.
        path: PathBuf,
    },
    /// The request is too large to send, or the server sent an oversized frame.
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    /// The server's response could not be read.
    #[error("{0}")]
    Response(#[from] ResponseError),
    /// The response answers another request.
    #[error("response for req_id `{got}` while waiting for `{expected}`")]
    MismatchedReqId {
        /// The req_id sent.
        expected: String,
        /// The req_id received.
        got: String,
    },
    /// The server answered with an error.
    #[error("{0}")]
    Rpc(#[from] RpcError),
}

impl ClientError {
    /// The server's error, when it answered with one.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc(e) => Some(e),
            _ => None,
        }
    }
}

/// A connection to one service.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    decoder: FrameDecoder,
    buf: Vec<u8>,
    next_id: u64,
    config: ClientConfig,
}

impl Client {
    /// Connects with default timeouts.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::connect_with(path, ClientConfig::default()).await
    }

    /// Connects with the given timeouts.
    pub async fn connect_with(
        path: impl AsRef<Path>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let path = path.as_ref().to_owned();
        let stream = match timeout(config.connect_timeout, UnixStream::connect(&path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => return Err(ClientError::Connect { path, source }),
            Err(_) => {
                return Err(ClientError::Connect {
                    path,
                    source: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                });
            }
        };
        Ok(Self {
            stream,
            path,
            decoder: FrameDecoder::new(),
            buf: vec![0u8; 64 * 1024],
            next_id: 1,
            config,
        })
    }

    /// The socket path this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A fresh req_id for this connection.
    pub fn next_req_id(&mut self) -> String {
        let id = format!("c{}-{}", std::process::id(), self.next_id);
        self.next_id += 1;
        id
    }

    /// Calls `method` with `params` and an optional token; the result, or the server's
    /// error as [`ClientError::Rpc`].
    pub async fn call(
        &mut self,
        method: &str,
        params: Value,
        token: Option<&str>,
    ) -> Result<Value, ClientError> {
        let timeout = self.config.call_timeout;
        self.call_with_timeout(method, params, token, timeout).await
    }

    /// [`Client::call`] with a per-call response timeout (long polls).
    pub async fn call_with_timeout(
        &mut self,
        method: &str,
        params: Value,
        token: Option<&str>,
        after: Duration,
    ) -> Result<Value, ClientError> {
        let mut req = Request::new(self.next_req_id(), method);
        req.token = token.map(str::to_owned);
        req.params = params;
        self.send(&req).await?;
        let resp = self.recv_within(after).await?;
        if resp.req_id != req.req_id {
            return Err(ClientError::MismatchedReqId {
                expected: req.req_id,
                got: resp.req_id,
            });
        }
        Ok(resp.outcome?)
    }

    /// Sends one request without waiting (pipelining).
    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut frame = Vec::new();
        encode_frame(&req.to_json(), &mut frame)?;
        self.send_raw(&frame).await
    }

    /// Sends raw bytes (tests of malformed input).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
    }

    /// Receives the next response.
    pub async fn recv(&mut self) -> Result<Response, ClientError> {
        let after = self.config.call_timeout;
        self.recv_within(after).await
    }

    async fn recv_within(&mut self, after: Duration) -> Result<Response, ClientError> {
        let path = self.path.clone();
        match timeout(after, self.read_response()).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout { path, after }),
        }
    }

    async fn read_response(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some(payload) = self.decoder.next_frame()? {
                return Ok(parse_response(payload)?);
            }
            let n = self
                .stream
                .read(&mut self.buf)
                .await
                .map_err(|source| ClientError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(ClientError::Closed {
                    path: self.path.clone(),
                });
            }
            self.decoder.push(&self.buf[..n]);
        }
    }

    /// Closes the sending half (the server finishes what is in flight, then closes).
    pub async fn shutdown_write(&mut self) -> Result<(), ClientError> {
        self.stream
            .shutdown()
            .await
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })
    }
}
