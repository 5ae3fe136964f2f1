//! strata-fs: capability-guarded file access (`fs.open`, `fs.read`, `fs.list`, `fs.stat`,
//! `fs.close`) over protocol v1 on `<runtime_dir>/fs.sock`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use strata_services::bootstrap::{
    init_logging, listen_path, shutdown_signal, start_audit_sender, start_verifier,
};
use strata_services::fs::{DEFAULT_MAX_PER_CAP, DEFAULT_MAX_TOTAL, FsConfig, FsService};
use strata_services::ipc::{ServerConfig, ServiceMetrics, bind, serve};

/// The Strata fs service.
#[derive(Debug, Parser)]
#[command(name = "strata-fs", version)]
struct Args {
    /// This node's id, the audience every token must name.
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: String,
    /// Sockets and the published identity.pub.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    runtime_dir: PathBuf,
    /// A directory served (repeatable); nothing outside the roots is ever opened (without
    /// any, every path is refused).
    #[arg(long = "root")]
    roots: Vec<String>,
    /// The roots are writable (granted by the manifest's `[core.fs] writable`); protocol v1
    /// has no write methods, so this only documents the sandbox.
    #[arg(long)]
    writable: bool,
    /// Open handles one capability may hold.
    #[arg(long, default_value_t = DEFAULT_MAX_PER_CAP)]
    max_handles_per_cap: usize,
    /// Open handles in total.
    #[arg(long, default_value_t = DEFAULT_MAX_TOTAL)]
    max_handles: usize,
    /// Connections served at once.
    #[arg(long, default_value_t = 256)]
    max_connections: usize,
    /// How long to wait for identity's public key and first revocation list, in seconds.
    #[arg(long, default_value_t = 30)]
    identity_wait: u64,
    /// Do not ship authorization events to strata-audit (they still reach the journal when
    /// denied).
    #[arg(long)]
    no_audit: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging("fs");
    if args.roots.is_empty() {
        tracing::warn!("no --root given ([core.fs] roots is empty): every path will be refused");
    }
    let wait = Duration::from_secs(args.identity_wait);
    let sender = if args.no_audit {
        None
    } else {
        Some(start_audit_sender(&args.runtime_dir, "fs").context("starting the audit sender")?)
    };
    // Allowed reads are far too many for the journal; they go to audit, coalesced.
    let setup = start_verifier(
        &args.runtime_dir,
        &args.node_id,
        wait,
        sender.as_ref().map(|(s, _)| s.sink()),
        false,
    )
    .await
    .context("setting up token verification")?;
    let mut config = FsConfig::new(args.roots.clone());
    config.max_handles_per_cap = args.max_handles_per_cap;
    config.max_handles_total = args.max_handles;
    let fs = Arc::new(
        FsService::new(&config, Arc::clone(&setup.verifier)).context("checking the roots")?,
    );
    tokio::spawn(Arc::clone(&fs).maintain(setup.follower.subscribe(), Duration::from_secs(30)));
    let socket = listen_path(&args.runtime_dir, "fs");
    let listener = bind(&socket).with_context(|| format!("listening on {}", socket.display()))?;
    tracing::info!(STRATA_EVENT = "service.ready", socket = %socket.display(),
        roots = ?args.roots, writable = args.writable, "fs serving");
    strata_services::bootstrap::notify_ready("fs serving");
    let shutdown = shutdown_signal("fs").context("installing signal handlers")?;
    let server = ServerConfig {
        max_connections: args.max_connections,
        // The verifier counts its denials in the registry served on `fs.metrics`.
        metrics: Some(ServiceMetrics::new(
            "fs",
            Arc::clone(setup.verifier.metrics()),
        )),
        ..ServerConfig::default()
    };
    serve(listener, fs, server, shutdown).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
