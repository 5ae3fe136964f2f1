//! strata-registry: where each service of the node answers (`registry.register`, `resolve`,
//! `list`, `unregister`), kept durably, on `<runtime_dir>/registry.sock`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_services::bootstrap::{
    init_logging, listen_path, shutdown_signal, start_audit_sender, start_verifier,
};
use strata_services::ipc::{ServerConfig, ServiceMetrics, bind, serve};
use strata_services::registry::Registry;

/// The Strata registry service.
#[derive(Debug, Parser)]
#[command(name = "strata-registry", version)]
struct Args {
    /// This node's id, the audience every token must name.
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: String,
    /// Sockets and the published identity.pub.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    runtime_dir: PathBuf,
    /// Durable state: registry.json (systemd's $STATE_DIRECTORY by default).
    #[arg(long, env = "STATE_DIRECTORY")]
    state_dir: PathBuf,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// How long to wait for identity's public key and first revocation list, in seconds.
    #[arg(long, default_value_t = 30)]
    identity_wait: u64,
    /// Do not ship authorization events to strata-audit.
    #[arg(long)]
    no_audit: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging("registry");
    std::fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let sender = if args.no_audit {
        None
    } else {
        Some(
            start_audit_sender(&args.runtime_dir, "registry")
                .context("starting the audit sender")?,
        )
    };
    let setup = start_verifier(
        &args.runtime_dir,
        &args.node_id,
        Duration::from_secs(args.identity_wait),
        sender.as_ref().map(|(s, _)| s.sink()),
        true,
    )
    .await
    .context("setting up token verification")?;
    let registry = Registry::open(&args.state_dir, Some(Arc::clone(&setup.verifier)))
        .context("loading the registrations")?;
    let socket = listen_path(&args.runtime_dir, "registry");
    let listener = bind(&socket).with_context(|| format!("listening on {}", socket.display()))?;
    tracing::info!(STRATA_EVENT = "service.ready", socket = %socket.display(),
        services = registry.entries().len(), "registry serving");
    strata_services::bootstrap::notify_ready("registry serving");
    let shutdown = shutdown_signal("registry").context("installing signal handlers")?;
    let server = ServerConfig {
        max_connections: args.max_connections,
        // The verifier counts its denials in the registry served on `registry.metrics`.
        metrics: Some(ServiceMetrics::new(
            "registry",
            Arc::clone(setup.verifier.metrics()),
        )),
        ..ServerConfig::default()
    };
    serve(listener, Arc::new(registry), server, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    drop(setup);
    Ok(())
}
