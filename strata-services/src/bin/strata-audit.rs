//! strata-audit: receives every service's authorization events (`audit.record`), journals
//! them and appends them to the hash-chained log in its state directory, on
//! `<runtime_dir>/audit.sock`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_services::audit::{AuditService, own_sink};
use strata_services::bootstrap::{init_logging, listen_path, shutdown_signal, start_verifier};
use strata_services::ipc::{ServerConfig, ServiceMetrics, bind, serve};

/// The Strata audit service.
#[derive(Debug, Parser)]
#[command(name = "strata-audit", version)]
struct Args {
    /// This node's id, the audience every token must name.
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: String,
    /// Sockets and the published identity.pub.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    runtime_dir: PathBuf,
    /// Durable state: audit.log and audit.head (systemd's $STATE_DIRECTORY by default).
    #[arg(long, env = "STATE_DIRECTORY")]
    state_dir: PathBuf,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// How long to wait for identity's public key and first revocation list, in seconds.
    #[arg(long, default_value_t = 30)]
    identity_wait: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging("audit");
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let (sink, own) = own_sink();
    let setup = start_verifier(
        &args.runtime_dir,
        &args.node_id,
        Duration::from_secs(args.identity_wait),
        Some(sink),
        false,
    )
    .await
    .context("setting up token verification")?;
    let audit = Arc::new(
        AuditService::open(&args.state_dir, Some(Arc::clone(&setup.verifier)))
            .context("opening the audit log")?,
    );
    tokio::spawn(Arc::clone(&audit).record_own(own));
    let socket = listen_path(&args.runtime_dir, "audit");
    let listener = bind(&socket).with_context(|| format!("listening on {}", socket.display()))?;
    tracing::info!(STRATA_EVENT = "service.ready", socket = %socket.display(), "audit serving");
    strata_services::bootstrap::notify_ready("audit serving");
    let shutdown = shutdown_signal("audit").context("installing signal handlers")?;
    let server = ServerConfig {
        max_connections: args.max_connections,
        // The verifier counts its denials in the registry served on `audit.metrics`.
        metrics: Some(ServiceMetrics::new(
            "audit",
            Arc::clone(setup.verifier.metrics()),
        )),
        ..ServerConfig::default()
    };
    serve(listener, audit, server, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    drop(setup);
    Ok(())
}
