//! Supervisor commands over D-Bus: status, start, stop, restart, release, reload, logs, events.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Args;
use futures_util::StreamExt;
use strata_systemd::control::{ServiceInfo, Supervisor1Proxy};

/// Exit status when the supervisor refused the request (unknown service, access denied, …).
pub const EXIT_REFUSED: u8 = 1;
/// Exit status when the supervisor cannot be reached on the system bus.
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Only this service.
    pub name: Option<String>,
}

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The service name as declared in the manifest (`web`, not `strata-web.service`).
    pub name: String,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub name: String,
    /// Follow the journal.
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: u32,
}

/// What a supervisor command does.
#[derive(Debug, Clone, Copy)]
pub enum Verb {
    Start,
    Stop,
    Restart,
    Release,
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connects to the supervisor; an unreachable supervisor is reported with what to check.
pub(crate) async fn connect() -> Result<Supervisor1Proxy<'static>, ExitCode> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        eprintln!("strata-ctl: {what}: {e}");
        eprintln!("hint: is strata-supervisor running? `systemctl status strata-supervisor`");
        ExitCode::from(EXIT_UNREACHABLE)
    };
    let conn = zbus::Connection::system()
        .await
        .map_err(|e| fail("cannot reach the system bus", &e))?;
    let proxy = Supervisor1Proxy::new(&conn)
        .await
        .map_err(|e| fail("cannot reach org.strata.Supervisor1", &e))?;
    Ok(proxy)
}

/// Reports a refused or failed D-Bus call and picks the exit status.
pub(crate) fn refused(what: &str, e: &zbus::Error) -> ExitCode {
    match e {
        zbus::Error::MethodError(name, msg, _) => {
            let msg = msg.as_deref().unwrap_or("");
            eprintln!("strata-ctl: {what}: {msg} ({name})");
            match name.as_str() {
                "org.freedesktop.DBus.Error.ServiceUnknown"
                | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
                    eprintln!(
                        "hint: strata-supervisor is not running: `systemctl status strata-supervisor`"
                    );
                    ExitCode::from(EXIT_UNREACHABLE)
                }
                "org.strata.Supervisor1.Error.AccessDenied"
                | "org.freedesktop.DBus.Error.AccessDenied" => {
                    eprintln!("hint: run as root or as a member of group strata-admin");
                    ExitCode::from(EXIT_REFUSED)
                }
                "org.strata.Supervisor1.Error.UnknownService" => {
                    eprintln!("hint: `strata-ctl status` lists the declared services");
                    ExitCode::from(EXIT_REFUSED)
                }
                _ => ExitCode::from(EXIT_REFUSED),
            }
        }
        other => {
            eprintln!("strata-ctl: {what}: {other}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

pub fn status(args: &StatusArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let proxy = match connect().await {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        let services = match &args.name {
            Some(name) => proxy.get_service(name).await.map(|s| vec![s]),
            None => proxy.list_services().await,
        };
        let services = match services {
            Ok(s) => s,
            Err(e) => return Ok(refused("status", &e)),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&services)?);
        } else {
            print!("{}", render_table(&services, now_usec()));
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn now_usec() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// "3m12s" style age.
fn age(since_usec: u64, now_usec: u64) -> String {
    if since_usec == 0 || since_usec > now_usec {
        return "-".into();
    }
    let s = (now_usec - since_usec) / 1_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The status table: service, state, pid, restarts, time in state, reason.
pub fn render_table(services: &[ServiceInfo], now_usec: u64) -> String {
    let rows: Vec<[String; 6]> = services
        .iter()
        .map(|s| {
            let reason = match (s.reason.is_empty(), s.last_exit.is_empty()) {
                (false, _) => s.reason.clone(),
                (true, false) => format!("last: {}", s.last_exit),
                (true, true) => String::new(),
            };
            [
                s.name.clone(),
                s.state.clone(),
                if s.main_pid == 0 {
                    "-".into()
                } else {
                    s.main_pid.to_string()
                },
                s.restarts.to_string(),
                age(s.since_usec, now_usec),
                reason,
            ]
        })
        .collect();
    let header = ["SERVICE", "STATE", "PID", "RESTARTS", "SINCE", "REASON"];
    let mut width = header.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut l = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  ", w = width[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

pub fn act(verb: Verb, args: &NameArgs) -> Result<ExitCode> {
    runtime()?.block_on(async {
        let proxy = match connect().await {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        let name = args.name.as_str();
        let (what, r) = match verb {
            Verb::Start => ("start", proxy.start(name).await),
            Verb::Stop => ("stop", proxy.stop(name).await),
            Verb::Restart => ("restart", proxy.restart(name).await),
            Verb::Release => ("release", proxy.release(name).await),
        };
        match r {
            Ok(()) => {
                println!("{what} {name}: requested (follow with `strata-ctl events`)");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(refused(&format!("{what} {name}"), &e)),
        }
    })
}

pub fn reload() -> Result<ExitCode> {
    runtime()?.block_on(async {
        let proxy = match connect().await {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        match proxy.reload().await {
            Ok(v) => {
                println!("reloaded: configuration version {v}");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Ok(refused("reload", &e)),
        }
    })
}

/// The service's journal, through journalctl (every service is a real unit).
pub fn logs(args: &LogsArgs) -> Result<ExitCode> {
    let unit = strata_core::reconcile::unit_name(&args.name);
    let mut cmd = std::process::Command::new("journalctl");
    cmd.args(["--no-pager", "-u", &unit, "-n", &args.lines.to_string()]);
    if args.follow {
        cmd.arg("-f");
    }
    let status = cmd.status().context("cannot run journalctl")?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REFUSED)
    })
}

/// Follows the supervisor's signals and prints one line per event until interrupted.
pub fn events() -> Result<ExitCode> {
    runtime()?.block_on(async {
        let proxy = match connect().await {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        let mut changed = proxy.receive_service_state_changed().await?;
        let mut crashed = proxy.receive_service_crashed().await?;
        let mut health = proxy.receive_health().await?;
        let mut config = proxy.receive_config_updated().await?;
        let mut shutdown = proxy.receive_shutdown().await?;
        loop {
            tokio::select! {
                Some(s) = changed.next() => {
                    let a = s.args()?;
                    println!("state   {}: {} -> {} ({})", a.name, a.old, a.new, a.reason);
                }
                Some(s) = crashed.next() => {
                    let a = s.args()?;
                    println!("crashed {}: {}", a.service, a.reason);
                }
                Some(s) = health.next() => {
                    let a = s.args()?;
                    println!("health  {}: {}", a.service, if a.ok { "ok" } else { "down" });
                }
                Some(s) = config.next() => {
                    println!("config  version {}", s.args()?.version);
                }
                Some(_) = shutdown.next() => {
                    println!("shutdown: the supervisor is stopping (services keep running)");
                }
                else => return Ok(ExitCode::SUCCESS),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_shows_reasons() {
        let s = |name: &str, state: &str, pid, reason: &str, last: &str| ServiceInfo {
            name: name.into(),
            unit: format!("strata-{name}.service"),
            state: state.into(),
            main_pid: pid,
            restarts: 2,
            since_usec: 1_000_000,
            reason: reason.into(),
            last_exit: last.into(),
        };
        let t = render_table(
            &[
                s("web", "running", 42, "", ""),
                s(
                    "crashy",
                    "quarantined",
                    0,
                    "5 failures within 10m",
                    "exited with status 1",
                ),
                s("db", "exited", 0, "", "exited with status 0"),
            ],
            125_000_000,
        );
        expect_test::expect![[r#"
            SERVICE  STATE        PID  RESTARTS  SINCE  REASON
            web      running      42   2         2m4s
            crashy   quarantined  -    2         2m4s   5 failures within 10m
            db       exited       -    2         2m4s   last: exited with status 0
        "#]]
        .assert_eq(&t);
    }
}
