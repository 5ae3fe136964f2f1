//! Start-up shared by the strata-fs, strata-registry and strata-audit binaries: logging to the
//! journal, where to listen, the verifier with its revocation follower, the token for
//! shipping audit events, and shutdown on SIGTERM/SIGINT.
//!
//! Socket location: under the supervisor a core service is a DynamicUser unit that cannot
//! write `<runtime_dir>` itself; systemd creates its `RuntimeDirectory=`
//! (`<runtime_dir>/<svc>`, announced in `$RUNTIME_DIRECTORY`) and the service listens on
//! `<runtime_dir>/<svc>/<svc>.sock`; the supervisor links the documented
//! `<runtime_dir>/<svc>.sock` to it. Outside systemd the service listens on
//! `<runtime_dir>/<svc>.sock` directly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use crate::audit::sender::{AuditSender, SenderConfig};
use crate::ipc::socket_path;
use crate::revocation::{FollowerConfig, RevocationFollower, shared_set};
use crate::verifier::{PublicKeyError, Verifier, wait_for_public_key};

/// File name of the identity public key in the runtime directory.
pub const PUBLIC_KEY_FILE: &str = "identity.pub";

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The identity public key is not available.
    #[error(transparent)]
    PublicKey(#[from] PublicKeyError),
    /// The revocation follower did not catch up in time.
    #[error(
        "revocations not received from identity at {socket} within {after:?}: every request would be refused"
    )]
    RevocationsUnavailable {
        /// The identity socket.
        socket: PathBuf,
        /// How long was waited.
        after: Duration,
    },
    /// A signal handler could not be installed.
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        /// The signal.
        signal: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The token credential exists but cannot be read.
    #[error("cannot read the credential {path}: {source}")]
    Credential {
        /// The credential file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// Logs to the journal (fields `STRATA_SERVICE=<service>`, `SYSLOG_IDENTIFIER=strata-<service>`)
/// or, without a journal, to stderr. `RUST_LOG` filters (default `info`).
pub fn init_logging(service: &'static str) {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match tracing_journald::layer() {
        Ok(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(format!("strata-{service}"))
                    .with_custom_fields([("STRATA_SERVICE", service)]),
            )
            .init(),
        Err(_) => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

/// Where `service` listens: `$RUNTIME_DIRECTORY/<service>.sock` when systemd created a runtime
/// directory for the unit (the first one, if several), else `<runtime_dir>/<service>.sock`.
pub fn listen_path(runtime_dir: &Path, service: &str) -> PathBuf {
    listen_path_with(
        runtime_dir,
        service,
        std::env::var_os("RUNTIME_DIRECTORY").as_deref(),
    )
}

fn listen_path_with(
    runtime_dir: &Path,
    service: &str,
    runtime_directory: Option<&std::ffi::OsStr>,
) -> PathBuf {
    let own = runtime_directory
        .and_then(|v| v.to_str())
        .and_then(|v| v.split(':').find(|d| !d.is_empty()))
        .map(PathBuf::from);
    match own {
        Some(dir) => dir.join(format!("{service}.sock")),
        None => socket_path(runtime_dir, service),
    }
}

/// Tells systemd the service is ready (`READY=1`, for the `Type=notify` units the supervisor
/// gives core services): called once the socket listens, so that "running" means reachable.
/// Outside systemd (no `NOTIFY_SOCKET`) this does nothing.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]) {
        tracing::warn!(error = %e, "cannot notify systemd of readiness");
    }
}

/// Reads the token systemd delivered for this service's `call:<target>` capability
/// (`$CREDENTIALS_DIRECTORY/strata-token-<target>`); `None` when there is none.
pub fn call_token(target: &str) -> Result<Option<String>, BootstrapError> {
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else {
        return Ok(None);
    };
    let path = Path::new(&dir).join(strata_core::derive::token_credential_id(target));
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().is_empty() => Ok(None),
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(BootstrapError::Credential { path, source }),
    }
}

/// A verifier and the follower keeping its revocations current.
#[derive(Debug)]
pub struct VerifierSetup {
    /// The verifier every handler decides with.
    pub verifier: Arc<Verifier>,
    /// The follower (dropping it stops following).
    pub follower: RevocationFollower,
}

/// Waits for `<runtime_dir>/identity.pub`, starts following revocations from
/// `<runtime_dir>/identity.sock` and waits for the first catch-up; decisions go to `sender`
/// (and allowed ones to the journal only when `log_allowed`).
pub async fn start_verifier(
    runtime_dir: &Path,
    node_id: &str,
    wait: Duration,
    sink: Option<crate::verifier::AuditSink>,
    log_allowed: bool,
) -> Result<VerifierSetup, BootstrapError> {
    let key = wait_for_public_key(&runtime_dir.join(PUBLIC_KEY_FILE), wait).await?;
    let set = shared_set();
    let socket = socket_path(runtime_dir, "identity");
    let follower = RevocationFollower::spawn(FollowerConfig::new(&socket), Arc::clone(&set));
    if !follower.wait_ready(wait).await {
        return Err(BootstrapError::RevocationsUnavailable {
            socket,
            after: wait,
        });
    }
    let mut verifier = Verifier::new(key, node_id, set).log_allowed(log_allowed);
    if let Some(sink) = sink {
        verifier = verifier.with_audit_sink(sink);
    }
    Ok(VerifierSetup {
        verifier: Arc::new(verifier),
        follower,
    })
}

/// Starts shipping decisions to `<runtime_dir>/audit.sock` with this service's audit token.
pub fn start_audit_sender(
    runtime_dir: &Path,
    source: &str,
) -> Result<(AuditSender, tokio::task::JoinHandle<()>), BootstrapError> {
    let mut config = SenderConfig::new(socket_path(runtime_dir, "audit"));
    config.token = call_token("audit")?;
    if config.token.is_none() {
        tracing::info!(
            "no audit token among the credentials: events are sent under this process's uid"
        );
    }
    Ok(AuditSender::spawn(config, source))
}

/// Completes on SIGTERM or SIGINT.
pub fn shutdown_signal(
    service: &'static str,
) -> Result<impl std::future::Future<Output = ()>, BootstrapError> {
    let mut term = signal(SignalKind::terminate()).map_err(|source| BootstrapError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| BootstrapError::Signal {
        signal: "SIGINT",
        source,
    })?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(STRATA_EVENT = "service.stopping", "{service} stopping");
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn listens_in_the_unit_runtime_directory_when_systemd_made_one() {
        let rt = Path::new("/run/strata");
        assert_eq!(
            listen_path_with(rt, "fs", None),
            PathBuf::from("/run/strata/fs.sock")
        );
        assert_eq!(
            listen_path_with(rt, "fs", Some(OsStr::new("/run/strata/fs"))),
            PathBuf::from("/run/strata/fs/fs.sock")
        );
        assert_eq!(
            listen_path_with(rt, "fs", Some(OsStr::new("/run/strata/fs:/run/other"))),
            PathBuf::from("/run/strata/fs/fs.sock")
        );
        assert_eq!(
            listen_path_with(rt, "fs", Some(OsStr::new(""))),
            PathBuf::from("/run/strata/fs.sock")
        );
    }
}
