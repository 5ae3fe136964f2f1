//! strata-testns: boots a private systemd for scripts and the README demo.
//!
//! `strata-testns boot [--bind HOST:INSIDE]...` prints `STRATA_TESTNS_PID=<pid>` and
//! `DBUS_SYSTEM_BUS_ADDRESS=<addr>` and stays in the foreground until SIGINT/SIGTERM (or until
//! the namespace ends), then shuts it down. `strata-testns stop PID` stops a namespace started
//! by strata-testns (its instance token is checked first). `strata-testns gc` stops namespaces
//! whose owner process was killed.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use strata_testkit::{BootOptions, PrivateSystemd};

#[derive(Debug, Parser)]
#[command(
    name = "strata-testns",
    version,
    about = "Boot a private systemd in a PID+mount namespace"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Boot, print the PID and bus address, stay until SIGINT/SIGTERM, then shut down.
    Boot {
        /// Bind HOST read-only at INSIDE (absolute); repeatable.
        #[arg(long = "bind", value_name = "HOST:INSIDE", value_parser = parse_bind)]
        binds: Vec<(PathBuf, PathBuf)>,
        /// Accept a degraded boot (failed units are listed on stderr).
        #[arg(long)]
        allow_degraded: bool,
        /// Seconds to wait for the boot to finish.
        #[arg(long, default_value_t = 30)]
        boot_timeout: u64,
    },
    /// Stop namespaces whose owner (a test binary, a `strata-testns boot`) was killed.
    Gc,
    /// Stop a namespace started by strata-testns.
    Stop {
        /// Host PID of the namespace's systemd (STRATA_TESTNS_PID).
        pid: u32,
        /// Seconds systemd gets to exit before that PID is SIGKILLed.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
}

fn parse_bind(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (host, inside) = s
        .split_once(':')
        .ok_or_else(|| format!("expected HOST:INSIDE, got {s:?}"))?;
    if host.is_empty() || inside.is_empty() {
        return Err(format!("expected HOST:INSIDE, got {s:?}"));
    }
    Ok((PathBuf::from(host), PathBuf::from(inside)))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Boot {
            binds,
            allow_degraded,
            boot_timeout,
        } => boot(binds, allow_degraded, boot_timeout),
        Cmd::Gc => gc(),
        Cmd::Stop { pid, timeout } => {
            strata_testkit::stop_instance(pid, Duration::from_secs(timeout))
                .with_context(|| format!("stopping private systemd {pid}"))
        }
    }
}

fn gc() -> anyhow::Result<()> {
    let mut failed = 0;
    for (pid, outcome) in strata_testkit::reap_orphans() {
        match outcome {
            Ok(()) => println!("stopped orphaned private systemd {pid}"),
            Err(e) => {
                failed += 1;
                eprintln!("strata-testns: stopping orphaned private systemd {pid}: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} orphaned namespace(s) could not be stopped cleanly");
    }
    Ok(())
}

fn boot(
    binds: Vec<(PathBuf, PathBuf)>,
    allow_degraded: bool,
    boot_timeout: u64,
) -> anyhow::Result<()> {
    // Block the stop signals before any thread exists so that every thread inherits the mask
    // and sigtimedwait below is the only place they are received (children get a clean mask).
    let stop_signals = signal_set(&[libc::SIGINT, libc::SIGTERM, libc::SIGHUP]);
    // SAFETY: a valid, initialised sigset; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &stop_signals, std::ptr::null_mut()) };
    if rc != 0 {
        bail!(
            "blocking SIGINT/SIGTERM failed: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }

    let mut opts = BootOptions::new().boot_timeout(Duration::from_secs(boot_timeout));
    if allow_degraded {
        opts = opts.allow_degraded();
    }
    for (host, inside) in binds {
        opts = opts.bind_ro(host, inside);
    }
    let sd = PrivateSystemd::boot_with(opts).context("booting private systemd")?;
    for unit in sd.failed_units() {
        eprintln!("strata-testns: failed unit {unit}");
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "STRATA_TESTNS_PID={}", sd.pid())
        .and_then(|()| writeln!(stdout, "DBUS_SYSTEM_BUS_ADDRESS={}", sd.bus_address()))
        .and_then(|()| stdout.flush())
        .context("writing PID and bus address to stdout")?;
    drop(stdout);

    loop {
        let timeout = libc::timespec {
            tv_sec: 1,
            tv_nsec: 0,
        };
        // SAFETY: valid sigset and timespec; no siginfo wanted.
        let sig = unsafe { libc::sigtimedwait(&stop_signals, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            eprintln!("strata-testns: signal {sig}, shutting down");
            break;
        }
        if !sd.is_running() {
            // Stopped from elsewhere (strata-testns stop): clean up and report it.
            eprintln!("strata-testns: private systemd {} has exited", sd.pid());
            break;
        }
    }
    let pid = sd.pid();
    match sd.shutdown() {
        Ok(()) => Ok(()),
        // `strata-testns stop` already ended it cleanly: not an error here.
        Err(strata_testkit::BootError::ExitedEarly {
            exit_code: Some(0), ..
        }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("shutting down private systemd {pid}")),
    }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set before sigaddset uses it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}
