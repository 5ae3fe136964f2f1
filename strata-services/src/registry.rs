//! strata-registry: where each service of the node answers (`registry.register`, `resolve`,
//! `list`, `unregister`).
//!
//! Registering and unregistering need authority: a peer running as uid 0 (the supervisor,
//! which registers every service once it is ready and again after a registry restart) or a
//! token with the right `registry.register`, decided by the one `authorize()`. Resolving and
//! listing are open to every local peer: endpoints are not secrets, and a client must find a
//! service before it can present that service's token. Every change is written atomically and
//! fsync'ed (`registry.json` in the state directory) before it is answered, so a restarted
//! registry loses nothing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use strata_core::authorize::AuthzRequest;
use strata_core::capability::{check_absolute_path, check_service_name};
use strata_core::protocol::{Request, RpcError};

use crate::durable::{DurableError, write_atomic};
use crate::ipc::{Handler, Peer};
use crate::verifier::Verifier;

/// The methods strata-registry serves.
pub const METHODS: &[&str] = &[
    "registry.register",
    "registry.resolve",
    "registry.list",
    "registry.unregister",
];

/// File name of the registrations in the state directory.
pub const STATE_FILE: &str = "registry.json";

/// Longest `sun_path` of a Unix socket address (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Highest `api_v` accepted.
const MAX_API_V: u32 = 1_000_000;

/// Why an endpoint is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Neither `unix://` nor `tcp://`.
    #[error(
        "endpoint `{0}` has an unknown scheme: expected unix:///absolute/path or tcp://host:port"
    )]
    Scheme(String),
    /// The socket path is not a normalized absolute path.
    #[error("endpoint `{endpoint}`: socket path {reason}")]
    SocketPath {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The socket path does not fit in a socket address.
    #[error(
        "endpoint `{endpoint}`: socket path is {len} bytes long, at most {MAX_SOCKET_PATH} fit in a socket address"
    )]
    SocketPathTooLong {
        /// The endpoint.
        endpoint: String,
        /// Its path's length.
        len: usize,
    },
    /// The host is not an IPv4 address, a bracketed IPv6 address or a DNS name.
    #[error(
        "endpoint `{endpoint}`: host `{host}` is not an IPv4 address, a [bracketed] IPv6 address or a DNS name"
    )]
    Host {
        /// The endpoint.
        endpoint: String,
        /// The host.
        host: String,
    },
    /// The port is missing, not decimal, or outside 1..=65535.
    #[error("endpoint `{endpoint}`: port `{port}` is not a number in 1..=65535")]
    Port {
        /// The endpoint.
        endpoint: String,
        /// The port text.
        port: String,
    },
}

/// A validated endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///path`.
    Unix(PathBuf),
    /// `tcp://host:port` (an IPv6 host without its brackets).
    Tcp {
        /// Address or DNS name.
        host: String,
        /// Port.
        port: u16,
    },
}

fn dns_name_ok(host: &str) -> bool {
    host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // A name of digits and dots only must be a valid IPv4 address instead.
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Parses and validates an endpoint.
pub fn parse_endpoint(text: &str) -> Result<Endpoint, EndpointError> {
    if let Some(path) = text.strip_prefix("unix://") {
        check_absolute_path(path).map_err(|e| EndpointError::SocketPath {
            endpoint: text.to_owned(),
            reason: e.to_string(),
        })?;
        if path.len() > MAX_SOCKET_PATH {
            return Err(EndpointError::SocketPathTooLong {
                endpoint: text.to_owned(),
                len: path.len(),
            });
        }
        return Ok(Endpoint::Unix(PathBuf::from(path)));
    }
    let Some(rest) = text.strip_prefix("tcp://") else {
        return Err(EndpointError::Scheme(text.chars().take(128).collect()));
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(EndpointError::Host {
                endpoint: text.to_owned(),
                host: rest.to_owned(),
            });
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(EndpointError::Host {
                endpoint: text.to_owned(),
                host: format!("[{addr}]"),
            });
        }
        let port = after.strip_prefix(':').unwrap_or(after);
        if !after.starts_with(':') {
            return Err(EndpointError::Port {
                endpoint: text.to_owned(),
                port: after.to_owned(),
            });
        }
        (addr.to_owned(), port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(EndpointError::Port {
                endpoint: text.to_owned(),
                port: String::new(),
            });
        };
        if host.parse::<Ipv4Addr>().is_err() && !dns_name_ok(host) {
            return Err(EndpointError::Host {
                endpoint: text.to_owned(),
                host: host.to_owned(),
            });
        }
        (host.to_owned(), port)
    };
    let bad_port = || EndpointError::Port {
        endpoint: text.to_owned(),
        port: port.to_owned(),
    };
    if port.is_empty()
        || port.len() > 5
        || port.starts_with('0')
        || !port.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad_port());
    }
    let port: u16 = port.parse().map_err(|_| bad_port())?;
    Ok(Endpoint::Tcp { host, port })
}

/// One registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The service name.
    pub service: String,
    /// `unix:///path` or `tcp://host:port`.
    pub endpoint: String,
    /// Protocol/API version the service speaks.
    pub api_v: u32,
    /// When it was (last) registered, milliseconds since the epoch.
    pub registered_ms: u64,
    /// The uid of the peer that registered it.
    pub registered_by_uid: u32,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    services: Vec<Registration>,
}

/// Why the registry cannot start or save.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The state directory or file could not be created or read.
    #[error("cannot read the registrations {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The state file does not hold registrations.
    #[error(
        "registrations {path} are corrupt ({reason}); refusing to start rather than forget them"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing the state file failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
}

/// The registry service.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    entries: Arc<Mutex<BTreeMap<String, Registration>>>,
    verifier: Option<Arc<Verifier>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterParams {
    service: String,
    endpoint: String,
    #[serde(default)]
    api_v: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceParams {
    service: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {}

/// Creates a directory (and its parents) readable by its owner only, if missing.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn check_name(service: &str) -> Result<(), RpcError> {
    if service == "supervisor" {
        return Ok(());
    }
    check_service_name(service).map_err(|e| {
        RpcError::invalid_argument(format!("service name {e}")).with_detail("field", "service")
    })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn public(r: &Registration) -> Value {
    json!({"service": r.service, "endpoint": r.endpoint, "api_v": r.api_v})
}

impl Registry {
    /// Loads the registrations kept in `state_dir`; `verifier` decides tokens (without one,
    /// only uid 0 may register).
    pub fn open(state_dir: &Path, verifier: Option<Arc<Verifier>>) -> Result<Self, RegistryError> {
        create_private_dir(state_dir).map_err(|source| RegistryError::Read {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(STATE_FILE);
        let entries = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| RegistryError::Corrupt {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if state.version != 1 {
                    return Err(RegistryError::Corrupt {
                        path,
                        reason: format!("unknown version {}", state.version),
                    });
                }
                let mut map = BTreeMap::new();
                for r in state.services {
                    if let Err(e) = parse_endpoint(&r.endpoint) {
                        return Err(RegistryError::Corrupt {
                            path,
                            reason: e.to_string(),
                        });
                    }
                    map.insert(r.service.clone(), r);
                }
                map
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(RegistryError::Read { path, source }),
        };
        tracing::info!(services = entries.len(), path = %path.display(), "registrations loaded");
        Ok(Self {
            path,
            entries: Arc::new(Mutex::new(entries)),
            verifier,
        })
    }

    /// A snapshot of the registrations.
    pub fn entries(&self) -> Vec<Registration> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    fn check_authority(&self, peer: &Peer, req: &Request) -> Result<(), RpcError> {
        if peer.uid == 0 {
            return Ok(());
        }
        let Some(verifier) = &self.verifier else {
            return Err(RpcError::permission_denied(format!(
                "{} is refused for uid {}: only uid 0 may register while the identity key is unknown",
                req.method, peer.uid
            )));
        };
        // One right covers both: who may say where a service is may also say it is gone.
        verifier
            .authorize(
                req.token.as_deref(),
                &AuthzRequest {
                    service: "registry",
                    action: "register",
                    path: None,
                },
            )
            .map(|_| ())
    }

    /// Applies `change` to a copy of the registrations, saves it durably, then publishes it.
    async fn update<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut BTreeMap<String, Registration>) -> Result<T, RpcError> + Send + 'static,
    ) -> Result<T, RpcError> {
        let entries = Arc::clone(&self.entries);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut current = entries.lock().unwrap_or_else(PoisonError::into_inner);
            let mut next = current.clone();
            let out = change(&mut next)?;
            let state = StateFile {
                version: 1,
                services: next.values().cloned().collect(),
            };
            let mut bytes = serde_json::to_vec_pretty(&state)
                .map_err(|e| RpcError::internal(format!("encoding registrations: {e}")))?;
            bytes.push(b'\n');
            write_atomic(&path, &bytes, 0o600).map_err(|e| {
                tracing::error!(error = %e, "saving registrations failed");
                RpcError::unavailable(format!("the registrations cannot be saved: {e}"))
            })?;
            *current = next;
            Ok(out)
        })
        .await
        .map_err(|e| RpcError::internal(format!("the registry writer failed: {e}")))?
    }

    async fn register(&self, peer: &Peer, req: &Request) -> Result<Value, RpcError> {
        self.check_authority(peer, req)?;
        let p: RegisterParams = req.params()?;
        check_name(&p.service)?;
        parse_endpoint(&p.endpoint).map_err(|e| {
            RpcError::invalid_argument(e.to_string()).with_detail("field", "endpoint")
        })?;
        let api_v = p.api_v.unwrap_or(1);
        if api_v == 0 || api_v > MAX_API_V {
            return Err(RpcError::invalid_argument(format!(
                "api_v {api_v} is outside 1..={MAX_API_V}"
            ))
            .with_detail("field", "api_v"));
        }
        let reg = Registration {
            service: p.service.clone(),
            endpoint: p.endpoint.clone(),
            api_v,
            registered_ms: now_ms(),
            registered_by_uid: peer.uid,
        };
        let previous = self
            .update(move |map| Ok(map.insert(reg.service.clone(), reg)))
            .await?;
        let changed = previous
            .as_ref()
            .is_none_or(|old| old.endpoint != p.endpoint || old.api_v != api_v);
        tracing::info!(
            STRATA_EVENT = "registry.registered",
            STRATA_SERVICE = p.service.as_str(),
            endpoint = p.endpoint.as_str(),
            api_v,
            uid = peer.uid,
            changed,
            "registered {}",
            p.service
        );
        let mut out = json!({
            "status": "registered",
            "service": p.service,
            "endpoint": p.endpoint,
            "api_v": api_v,
            "changed": changed,
        });
        if let Some(old) = previous.filter(|_| changed) {
            out["previous"] = public(&old);
        }
        Ok(out)
    }

    async fn unregister(&self, peer: &Peer, req: &Request) -> Result<Value, RpcError> {
        self.check_authority(peer, req)?;
        let p: ServiceParams = req.params()?;
        check_name(&p.service)?;
        let service = p.service.clone();
        let removed = self
            .update(move |map| {
                map.remove(&service).ok_or_else(|| {
                    RpcError::not_found(format!("service `{service}` is not registered"))
                        .with_detail("service", service.as_str())
                })
            })
            .await?;
        tracing::info!(
            STRATA_EVENT = "registry.unregistered",
            STRATA_SERVICE = p.service.as_str(),
            uid = peer.uid,
            "unregistered {}",
            p.service
        );
        Ok(json!({"status": "unregistered", "service": p.service, "endpoint": removed.endpoint}))
    }

    fn resolve(&self, req: &Request) -> Result<Value, RpcError> {
        let p: ServiceParams = req.params()?;
        check_name(&p.service)?;
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.get(&p.service).map(public).ok_or_else(|| {
            RpcError::not_found(format!("service `{}` is not registered", p.service))
                .with_detail("service", p.service.as_str())
        })
    }

    fn list(&self, req: &Request) -> Result<Value, RpcError> {
        let _: ListParams = req.params()?;
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let services: Vec<Value> = entries.values().map(public).collect();
        Ok(json!({"services": services}))
    }
}

impl Handler for Registry {
    fn methods(&self) -> &[&str] {
        METHODS
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.method.as_str() {
            "registry.register" => self.register(peer, &req).await,
            "registry.unregister" => self.unregister(peer, &req).await,
            "registry.resolve" => self.resolve(&req),
            "registry.list" => self.list(&req),
            other => Err(RpcError::not_found(format!("unknown method `{other}`"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_validated() {
        assert_eq!(
            parse_endpoint("unix:///run/strata/fs.sock"),
            Ok(Endpoint::Unix("/run/strata/fs.sock".into()))
        );
        assert_eq!(
            parse_endpoint("tcp://127.0.0.1:7000"),
            Ok(Endpoint::Tcp {
                host: "127.0.0.1".into(),
                port: 7000
            })
        );
        assert_eq!(
            parse_endpoint("tcp://[::1]:65535"),
            Ok(Endpoint::Tcp {
                host: "::1".into(),
                port: 65535
            })
        );
        assert_eq!(
            parse_endpoint("tcp://node-2.example.org:1"),
            Ok(Endpoint::Tcp {
                host: "node-2.example.org".into(),
                port: 1
            })
        );
        let long = format!("unix:///{}", "a".repeat(MAX_SOCKET_PATH));
        let bad = [
            ("http://x:1", "unknown scheme"),
            ("unix://run/fs.sock", "socket path"),
            ("unix:///run/../etc/x", "socket path"),
            ("unix:///run//x", "socket path"),
            (long.as_str(), "fit in a socket address"),
            ("tcp://host", "port ``"),
            ("tcp://host:0", "port `0`"),
            ("tcp://host:65536", "port `65536`"),
            ("tcp://host:08", "port `08`"),
            ("tcp://host:+8", "port `+8`"),
            ("tcp://:80", "host ``"),
            ("tcp://-bad-:80", "host `-bad-`"),
            ("tcp://a b:80", "host `a b`"),
            ("tcp://999.1.1.1:80", "host `999.1.1.1`"),
            ("tcp://[::g]:80", "host `[::g]`"),
            ("tcp://[::1]80", "port `80`"),
            ("tcp://user@host:80", "host `user@host`"),
            ("tcp://host:80/path", "port `80/path`"),
        ];
        for (text, fragment) in bad {
            let e = parse_endpoint(text).expect_err(text);
            assert!(e.to_string().contains(fragment), "{text}: {e}");
        }
    }
}
