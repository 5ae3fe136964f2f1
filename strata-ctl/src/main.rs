//! strata-ctl: the command-line client of Strata.
//!
//! Each subcommand lives in its own module under `cmd/`. Exit codes: 0 success, 1 the
//! command ran and found a problem or was refused (invalid manifest, unknown service, access
//! denied), 2 usage or I/O error, 3 the supervisor is unreachable.

mod cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "strata-ctl",
    version,
    about = "Control and inspect Strata, the capability-first service runtime",
    after_help = "Exit status: 0 success; 1 the command found a problem or was refused (invalid manifest, unknown service, access denied); 2 usage or I/O error; 3 the supervisor is unreachable."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate a manifest; with --explain, show the unit each service would run as.
    Check(cmd::check::CheckArgs),
    /// Show the declared services: state, main PID, restarts, time in state, reason.
    Status(cmd::service::StatusArgs),
    /// Start a stopped or exited service.
    Start(cmd::service::NameArgs),
    /// Stop a service; it stays stopped until started.
    Stop(cmd::service::NameArgs),
    /// Restart a service.
    Restart(cmd::service::NameArgs),
    /// Take a service out of quarantine and clear its crash history.
    Release(cmd::service::NameArgs),
    /// Make the supervisor re-read its manifest.
    Reload,
    /// Show a service's journal.
    Logs(cmd::service::LogsArgs),
    /// Follow the supervisor's events (state changes, crashes, health, reloads).
    Events,
    /// Send one protocol v1 request (`strata-ctl call fs.list '{"path":"."}' --token T`;
    /// the original `strata-ctl -token T fs.list '{…}'` works too).
    Call(cmd::call::CallArgs),
    /// Verify or show the audit log.
    Audit(cmd::audit::AuditArgs),
    /// Capability tokens: issue, attenuate (offline), inspect, revoke.
    Token(cmd::token::TokenArgs),
    /// Print metrics in Prometheus text: the supervisor's and every core service's, each
    /// sample labelled `strata_service="<name>"` (or one process's with --service).
    Metrics(cmd::metrics::MetricsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(cmd::call::rewrite_legacy_args(
        std::env::args_os().collect(),
    ));
    let result = match cli.command {
        Command::Check(args) => cmd::check::run(&args),
        Command::Status(args) => cmd::service::status(&args),
        Command::Start(args) => cmd::service::act(cmd::service::Verb::Start, &args),
        Command::Stop(args) => cmd::service::act(cmd::service::Verb::Stop, &args),
        Command::Restart(args) => cmd::service::act(cmd::service::Verb::Restart, &args),
        Command::Release(args) => cmd::service::act(cmd::service::Verb::Release, &args),
        Command::Reload => cmd::service::reload(),
        Command::Logs(args) => cmd::service::logs(&args),
        Command::Events => cmd::service::events(),
        Command::Call(args) => cmd::call::run(&args),
        Command::Audit(args) => cmd::audit::run(&args),
        Command::Token(args) => cmd::token::run(&args),
        Command::Metrics(args) => cmd::metrics::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!(
                "strata-ctl: {}",
                strata_core::report::error_chain(err.as_ref())
            );
            ExitCode::from(2)
        }
    }
}
