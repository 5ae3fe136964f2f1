//! `strata-ctl metrics [--service S] [--runtime-dir D]`: Prometheus text (format 0.0.4).
//!
//! Without `--service`: the supervisor's metrics (D-Bus `Metrics()`, readable by everyone)
//! followed by those of every core service that answers `<service>.metrics` on
//! `<runtime_dir>/<service>.sock` (uid 0 or group `strata-admin`), merged into one exposition
//! with `strata_service="<name>"` on every sample. A service that is not running is skipped
//! with a note on stderr; one that refuses or fails makes the exit status 1 (what could be read
//! is still printed). An unreachable supervisor exits 3 and prints nothing.
//!
//! With `--service S`: only that process's text, as it exposes it (`supervisor` over D-Bus).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::json;
use strata_core::capability::check_service_name;
use strata_core::manifest::CoreService;
use strata_core::metrics::merge;
use strata_services::ipc::{Client, ClientConfig, ClientError, socket_path};

use super::service::{EXIT_REFUSED, connect, refused, runtime};

/// The name `--service` takes for the supervisor itself.
pub const SUPERVISOR: &str = "supervisor";

/// Arguments of `strata-ctl metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Only this process: `supervisor` or a service (`fs`, `identity`, …), printed as it
    /// exposes them, without the `strata_service` label.
    #[arg(long)]
    pub service: Option<String>,
    /// The runtime directory holding the services' sockets.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    pub runtime_dir: PathBuf,
}

/// What reading one service's metrics gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scrape {
    /// The exposition text.
    Text(String),
    /// Nothing listens on its socket (not running, or disabled): skipped.
    Unreachable(String),
    /// It answered with an error (e.g. PERMISSION_DENIED) or could not be read.
    Failed(String),
}

/// The merged exposition of the supervisor and the services that answered, the notes to print
/// on stderr, and whether any service failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Combined {
    pub text: String,
    pub notes: Vec<String>,
    pub failed: bool,
}

/// Merges the supervisor's text with each service's (in the order given), labelling every
/// sample with its source.
pub fn combine(supervisor: &str, services: &[(&str, Scrape)]) -> Result<Combined> {
    let mut parts: Vec<(&str, &str)> = vec![(SUPERVISOR, supervisor)];
    let mut notes = Vec::new();
    let mut failed = false;
    for (name, scrape) in services {
        match scrape {
            Scrape::Text(text) => parts.push((name, text.as_str())),
            Scrape::Unreachable(why) => {
                notes.push(format!("{name}: not reachable, skipped ({why})"));
            }
            Scrape::Failed(why) => {
                failed = true;
                notes.push(format!("{name}: {why}"));
            }
        }
    }
    let text = merge(&parts).context("cannot merge the metrics")?;
    Ok(Combined {
        text,
        notes,
        failed,
    })
}

/// Calls `<service>.metrics` on `<runtime_dir>/<service>.sock`.
async fn scrape_service(runtime_dir: &Path, service: &str) -> Scrape {
    let socket = socket_path(runtime_dir, service);
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(2),
        call_timeout: Duration::from_secs(10),
    };
    let mut client = match Client::connect_with(&socket, config).await {
        Ok(c) => c,
        Err(e @ ClientError::Connect { .. }) => return Scrape::Unreachable(e.to_string()),
        Err(e) => return Scrape::Failed(e.to_string()),
    };
    let method = format!("{service}.metrics");
    match client.call(&method, json!({}), None).await {
        Ok(v) => match v["text"].as_str() {
            Some(text) => Scrape::Text(text.to_owned()),
            None => Scrape::Failed(format!("{method} answered without a `text` field: {v}")),
        },
        Err(ClientError::Rpc(e)) => Scrape::Failed(format!(
            "{method} refused: {} ({})",
            e.message,
            e.code.name()
        )),
        Err(e) => Scrape::Failed(format!("{method} failed: {e}")),
    }
}

pub fn run(args: &MetricsArgs) -> Result<ExitCode> {
    if let Some(name) = &args.service {
        // The manifest's rule, so that the name is also a safe file name under runtime_dir.
        check_service_name(name).with_context(|| format!("`{name}` is not a service name"))?;
    }
    runtime()?.block_on(async {
        match args.service.as_deref() {
            Some(SUPERVISOR) => {
                let proxy = match connect().await {
                    Ok(p) => p,
                    Err(code) => return Ok(code),
                };
                match proxy.metrics().await {
                    Ok(text) => {
                        print!("{text}");
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => Ok(refused("metrics", &e)),
                }
            }
            Some(name) => match scrape_service(&args.runtime_dir, name).await {
                Scrape::Text(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                Scrape::Unreachable(why) => bail!("{name} is not reachable: {why}"),
                Scrape::Failed(why) => {
                    eprintln!("strata-ctl: {why}");
                    if why.contains("PERMISSION_DENIED") {
                        eprintln!("hint: run as root or as a member of group strata-admin");
                    }
                    Ok(ExitCode::from(EXIT_REFUSED))
                }
            },
            None => {
                let proxy = match connect().await {
                    Ok(p) => p,
                    Err(code) => return Ok(code),
                };
                let supervisor = match proxy.metrics().await {
                    Ok(text) => text,
                    Err(e) => return Ok(refused("metrics", &e)),
                };
                let mut services = Vec::new();
                for core in CoreService::ALL {
                    let name = core.name();
                    services.push((name, scrape_service(&args.runtime_dir, name).await));
                }
                let combined = combine(&supervisor, &services)?;
                print!("{}", combined.text);
                for note in &combined.notes {
                    eprintln!("strata-ctl: {note}");
                }
                if combined.failed {
                    eprintln!(
                        "hint: service metrics need uid 0 or membership in group strata-admin"
                    );
                    return Ok(ExitCode::from(EXIT_REFUSED));
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::metrics::{Metrics, parse_exposition};

    #[test]
    fn merges_the_answers_and_reports_the_rest() {
        let supervisor = Metrics::new();
        supervisor.set_restarts_total("web", 2);
        let fs = Metrics::new();
        fs.observe_latency("fs.stat", Duration::from_micros(80));
        fs.record_rejected("revoked");
        let c = combine(
            &supervisor.render(),
            &[
                ("identity", Scrape::Unreachable("no socket".into())),
                ("fs", Scrape::Text(fs.render())),
                ("audit", Scrape::Failed("audit.metrics refused".into())),
            ],
        )
        .expect("merge");
        let exp = parse_exposition(&c.text).expect("one valid exposition");
        assert_eq!(
            exp.value(
                "service_restarts_total",
                &[("strata_service", "supervisor"), ("service", "web")]
            ),
            Some(2.0)
        );
        assert_eq!(
            exp.value(
                "request_latency_seconds_count",
                &[("strata_service", "fs"), ("method", "fs.stat")]
            ),
            Some(1.0)
        );
        assert_eq!(
            exp.value(
                "rejected_total",
                &[("strata_service", "fs"), ("reason", "revoked")]
            ),
            Some(1.0)
        );
        assert!(
            exp.samples
                .iter()
                .all(|s| s.label("strata_service").is_some()),
            "{}",
            c.text
        );
        assert!(c.failed);
        assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
        assert!(c.notes[0].starts_with("identity: not reachable"));
        assert!(c.notes[1].starts_with("audit: "));
    }

    #[test]
    fn reachable_services_only_is_a_success() {
        let c = combine(
            &Metrics::new().render(),
            &[("fs", Scrape::Unreachable("no socket".into()))],
        )
        .expect("merge");
        assert!(!c.failed);
        assert!(parse_exposition(&c.text).is_ok());
    }

    #[test]
    fn service_names_cannot_leave_the_runtime_directory() {
        // The manifest's rule (strata_core::capability::check_service_name): no `_` either.
        for bad in ["", "../fs", "fs/x", "FS", "a.b", "svc_2", "-fs"] {
            assert!(check_service_name(bad).is_err(), "{bad:?}");
        }
        for good in ["fs", "my-svc", "svc2", "supervisor"] {
            assert!(check_service_name(good).is_ok(), "{good:?}");
        }
    }
}
