//! strata-identity: the identity service (root key, token issuance, revocation) on
//! `<runtime_dir>/identity.sock`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_services::identity::{ADMIN_GROUP, Identity, IdentityConfig};
use strata_services::ipc::{ServerConfig, ServiceMetrics, bind, serve};
use tokio::signal::unix::{SignalKind, signal};

/// The Strata identity service.
#[derive(Debug, Parser)]
#[command(name = "strata-identity", version)]
struct Args {
    /// Durable state: root.key and revocations.log (systemd's $STATE_DIRECTORY by default).
    #[arg(long, env = "STATE_DIRECTORY")]
    state_dir: PathBuf,
    /// Sockets and the published identity.pub.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    runtime_dir: PathBuf,
    /// This node's id, the audience of every token.
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: String,
    /// A service tokens may be issued for, besides the core ones (repeatable, or comma
    /// separated).
    #[arg(long = "service", value_delimiter = ',')]
    services: Vec<String>,
    /// Group whose members may issue and revoke.
    #[arg(long, default_value = ADMIN_GROUP)]
    admin_group: String,
    /// Longest lifetime of an issued token, in seconds.
    #[arg(long, alias = "token-ttl-max", default_value_t = strata_core::token::MAX_TTL.as_secs())]
    max_ttl: u64,
    /// Lifetime of a token issued without `ttl_seconds`, in seconds.
    #[arg(long, alias = "token-ttl-default", default_value_t = strata_core::token::DEFAULT_TTL.as_secs())]
    default_ttl: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
}

fn init_logging() {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    match tracing_journald::layer() {
        Ok(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("strata-identity".to_owned())
                    .with_custom_fields([("STRATA_SERVICE", "identity")]),
            )
            .init(),
        Err(_) => tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging();
    // Under the supervisor, identity is a DynamicUser unit that may write only its own
    // RuntimeDirectory (<runtime_dir>/identity): its socket and identity.pub live there, and
    // the supervisor links <runtime_dir>/identity.{sock,pub} to them.
    let own_dir = std::env::var_os("RUNTIME_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|v| v.split(':').next())
                .map(PathBuf::from)
        })
        .filter(|p| !p.as_os_str().is_empty());
    let runtime_dir = own_dir.unwrap_or(args.runtime_dir);
    let mut config = IdentityConfig::new(&args.state_dir, &runtime_dir, &args.node_id);
    config.services = args.services.into_iter().collect::<BTreeSet<_>>();
    config.admin_group = args.admin_group;
    config.max_ttl = Duration::from_secs(args.max_ttl);
    config.default_ttl = Duration::from_secs(args.default_ttl);
    let identity = Identity::open(config).context("starting the identity service")?;
    let socket = identity.socket_path();
    let listener = bind(&socket).with_context(|| format!("listening on {}", socket.display()))?;
    tracing::info!(STRATA_EVENT = "service.ready", socket = %socket.display(),
        public = %identity.public_key(), "identity serving");
    strata_services::bootstrap::notify_ready("identity serving");
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!(STRATA_EVENT = "service.stopping", "identity stopping");
    };
    let server = ServerConfig {
        max_connections: args.max_connections,
        metrics: Some(
            ServiceMetrics::new("identity", Arc::clone(identity.metrics()))
                .with_admin_group(identity.admin_group()),
        ),
        ..ServerConfig::default()
    };
    serve(listener, Arc::new(identity), server, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
