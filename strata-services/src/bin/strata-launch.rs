//! strata-launch: the ExecStart wrapper of every Strata unit. Applies the service's Landlock
//! ruleset, drops its Linux capabilities to the declared set, then execs the service.
//!
//! `strata-launch --service NAME --ruleset-json JSON [--keep-caps CAP_A,CAP_B] -- /abs/program
//! args...`; behaviour and exit codes are documented in `strata_services::launch`.
//!
//! Deliberately single-threaded and free of any runtime or logging framework: Landlock and the
//! capability sets apply to the calling thread, so nothing may start a thread before exec.
//! Messages go to stderr, which systemd connects to the journal.

use std::process::ExitCode;

use strata_services::launch::{LaunchRequest, launch};

fn main() -> ExitCode {
    let request = match LaunchRequest::parse(std::env::args_os().skip(1)) {
        Ok(request) => request,
        Err(err) => {
            eprintln!("strata-launch: {err}");
            return ExitCode::from(err.exit_code());
        }
    };
    let service = request.service.as_str();
    let warn = |message: &str| eprintln!("strata-launch: {service}: warning: {message}");
    match launch(&request, warn) {
        Ok(never) => match never {},
        Err(err) => {
            eprintln!("strata-launch: {service}: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}
