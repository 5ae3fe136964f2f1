//! strata-supervisor: reconciles the declared service graph against systemd.
//!
//! Reads the manifest, connects to systemd over the system bus, serves
//! `org.strata.Supervisor1`, and runs the supervisor loop until SIGTERM/SIGINT. Stopping the
//! supervisor leaves the services' units running: they are independent transient units, and
//! the next supervisor adopts them (same spec hash) instead of restarting them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use strata_core::manifest::CoreService;
use strata_systemd::control::{
    AdminPolicy, BUS_NAME, ControlRequest, DEFAULT_ADMIN_GROUP, OBJECT_PATH, SupervisorInterface,
};
use strata_systemd::control_v1::{SocketConfig, SupervisorSocket};
use strata_systemd::supervisor::publish::BusPublisher;
use strata_systemd::supervisor::{
    LaunchSettings, NodeHooks, QuarantineStore, Signal, Supervisor, SupervisorConfig, load_manifest,
};
use strata_systemd::systemd::SystemdDriver;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Strata's node supervisor: runs the declared services as sandboxed transient systemd units"
)]
struct Args {
    /// The manifest (TOML).
    #[arg(long, default_value = "/etc/strata/strata.toml")]
    config: PathBuf,
    /// The strata-launch binary that wraps every service (default: in the manifest's
    /// `binaries_dir`).
    #[arg(long)]
    launcher: Option<PathBuf>,
    /// Members of this group may call mutating D-Bus methods (besides root).
    #[arg(long, default_value = DEFAULT_ADMIN_GROUP)]
    admin_group: String,
    /// Log filter (tracing-subscriber EnvFilter syntax), also read from STRATA_LOG.
    #[arg(long, env = "STRATA_LOG", default_value = "info")]
    log_level: String,
}

fn init_logging(filter: &str) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid log filter `{filter}`"))?;
    let registry = tracing_subscriber::registry().with(filter);
    // Log to the journal when it is there (structured STRATA_* fields), else to stderr.
    match tracing_journald::layer() {
        Ok(layer) => registry
            .with(
                layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("strata-supervisor".into()),
            )
            .init(),
        Err(_) => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .init(),
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_logging(&args.log_level)?;
    match run(args).await {
        Ok(()) => Ok(()),
        Err(e) => {
            tracing::error!(
                STRATA_EVENT = "supervisor.failed",
                "{}",
                strata_core::report::error_chain(e.as_ref())
            );
            Err(e)
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let manifest = load_manifest(&args.config)
        .with_context(|| format!("manifest {} rejected", args.config.display()))?;
    let launch = LaunchSettings {
        launcher: args.launcher.map(|p| p.display().to_string()),
    };
    let store_dir = PathBuf::from(&manifest.node.state_dir).join("supervisor");
    let store = QuarantineStore::open(&store_dir)?;

    let driver = SystemdDriver::connect()
        .await
        .context("cannot connect to systemd")?;
    let (control_tx, control_rx) = mpsc::channel::<ControlRequest>(64);
    // One registry for both front ends: D-Bus `Metrics()` renders what supervisor.sock counts.
    let socket_config = SocketConfig::from_manifest(&manifest, &args.admin_group);
    let iface = SupervisorInterface::new(
        control_tx.clone(),
        AdminPolicy::resolve(&args.admin_group),
        manifest.node.id.clone(),
    )
    .with_driver_metrics(driver.metrics())
    .with_registry(Arc::clone(&socket_config.metrics));
    let conn = zbus::connection::Builder::system()
        .context("cannot reach the system bus")?
        .name(BUS_NAME)?
        .serve_at(OBJECT_PATH, iface)?
        .build()
        .await
        .with_context(|| {
            format!("cannot own {BUS_NAME} on the system bus (is the D-Bus policy installed?)")
        })?;
    let publisher = BusPublisher::new(&conn)?;
    // Protocol v1 on <runtime_dir>/supervisor.sock, bound once the bus name is ours (so no other
    // supervisor runs), feeding the same control channel as the D-Bus interface.
    let v1 = SupervisorSocket::start(socket_config, control_tx)
        .context("cannot serve protocol v1 on the supervisor socket")?;
    let publisher = v1.tap(publisher);

    let config = SupervisorConfig {
        manifest_path: args.config.clone(),
        launch,
        seed: rand_seed(),
        watchdog: sd_notify::watchdog_enabled(),
    };
    let hooks = NodeHooks::new(
        &manifest.node.runtime_dir,
        manifest.core.enabled(CoreService::Registry),
    );
    let supervisor = Supervisor::with_hooks(driver, publisher, hooks, config, &manifest, store)?;

    let (sig_tx, sig_rx) = mpsc::channel(8);
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = hup.recv() => Signal::Reload,
                _ = term.recv() => Signal::Shutdown,
                _ = int.recv() => Signal::Shutdown,
            };
            if sig_tx.send(sig).await.is_err() {
                break;
            }
        }
    });
    tracing::info!(
        STRATA_EVENT = "supervisor.started",
        node = manifest.node.id.as_str(),
        "supervising {} services from {}",
        manifest.all_services().len(),
        args.config.display()
    );
    let ended = supervisor.run(control_rx, sig_rx).await;
    v1.shutdown().await;
    ended?;
    Ok(())
}

/// A seed for the backoff jitter; need not be cryptographic.
fn rand_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}
