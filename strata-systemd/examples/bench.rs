//! Strata's supervisor benchmarks against raw systemd, measured in the same run on a private
//! systemd (strata-testkit): cold start of N services, crash → new MainPID latency, and the
//! supervisor at rest. Entry point: `scripts/bench.sh` (`--quick` for CI's short mode).
//!
//! Every figure is printed next to the raw systemd figure of the same run and their ratio:
//! - cold start: the same derived, hardened unit specs (strata-launch + Landlock), once started
//!   directly with StartTransientUnit (all submitted, then awaited), once by strata-supervisor
//!   from a manifest; time until every unit is active, per unit;
//! - crash → new process: SIGKILL of the main process until a new MainPID is active, through
//!   the supervisor (zero backoff) and through systemd's own Restart=always, RestartSec=0 with
//!   the same properties;
//! - at rest: voluntary context switches, CPU time, RSS and D-Bus messages of the supervisor
//!   with 100 running services over a quiet interval.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use strata_core::derive::{LaunchConfig, derive_unit, render_property};
use strata_core::manifest::Manifest;
use strata_core::observed::UnitPhase;
use strata_core::unit::UnitSpec;
use strata_systemd::driver::{DriverEvent, UnitDriver};
use strata_systemd::systemd::SystemdDriver;
use strata_testkit::{BIN_DIR, BootOptions, PrivateSystemd};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
struct Args {
    /// Short mode for CI: N = 10 and 50, 5 crashes, 5 s at rest.
    #[arg(long)]
    quick: bool,
    /// Seconds of the at-rest measurement (default 30, quick 5).
    #[arg(long)]
    rest_seconds: Option<u64>,
    /// Run only these phases (repeatable; default: all).
    #[arg(long, value_enum)]
    only: Vec<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    /// Cold start of N services.
    Cold,
    /// Crash -> new MainPID.
    Crash,
    /// The supervisor at rest with 100 services.
    Rest,
}

const MANIFEST: &str = "/run/strata-bench/strata.toml";

fn manifest_text(n: usize, prefix: &str, restart: &str) -> String {
    let mut m = format!(
        "[node]\nid = \"bench\"\nstate_dir = \"/var/lib/strata-test/state\"\nbinaries_dir = \"{BIN_DIR}\"\n\
         [core.identity]\nenable = false\n[core.registry]\nenable = false\n[core.fs]\nenable = false\n[core.audit]\nenable = false\n"
    );
    for i in 0..n {
        m.push_str(&format!(
            "[services.{prefix}{i}]\nexec = [\"/bin/sleep\", \"infinity\"]\n{restart}\n"
        ));
    }
    m
}

struct Bench {
    sd: PrivateSystemd,
    driver: SystemdDriver,
    events: mpsc::Receiver<DriverEvent>,
}

impl Bench {
    /// Waits until every unit in `units` has been seen active; returns the time from `t0`.
    async fn until_active(&mut self, units: &BTreeSet<String>, t0: Instant) -> Result<Duration> {
        let mut pending = units.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
        while !pending.is_empty() {
            let ev = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .context("units did not all become active within 600 s")?
                .context("driver events ended")?;
            if std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!("{ev:?}");
            }
            match ev {
                DriverEvent::Changed(o) if o.phase == UnitPhase::Running => {
                    pending.remove(&o.unit);
                }
                DriverEvent::Changed(o) if pending.contains(&o.unit) => {
                    if let UnitPhase::Failed(reason) = &o.phase {
                        bail!("{} failed instead of starting: {reason}", o.unit);
                    }
                }
                DriverEvent::Resync(all) => {
                    for o in all.into_iter().filter(|o| o.phase == UnitPhase::Running) {
                        pending.remove(&o.unit);
                    }
                }
                _ => {}
            }
        }
        Ok(t0.elapsed())
    }

    /// Waits until `unit` is active with a main PID other than `old`.
    async fn until_new_pid(&mut self, unit: &str, old: u32) -> Result<u32> {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                .await
                .with_context(|| format!("{unit} did not come back within 30 s"))?
                .context("driver events ended")?;
            if std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!("{ev:?}");
            }
            if let DriverEvent::Changed(o) = ev {
                if o.unit == unit
                    && o.phase == UnitPhase::Running
                    && o.main_pid != 0
                    && o.main_pid != old
                {
                    return Ok(o.main_pid);
                }
            }
        }
    }

    /// `crashes` times: SIGKILL the main process of the active `unit` and time until it is
    /// active again with a new MainPID (Type=exec: exec'd, sandbox set up). With `restart`,
    /// this client restarts the failed unit itself (StartUnit) the moment it fails; without,
    /// whoever owns the unit's restarts (systemd's `Restart=`, the supervisor) does.
    async fn crash_times(
        &mut self,
        unit: &str,
        crashes: usize,
        restart: Option<&UnitSpec>,
    ) -> Result<Vec<f64>> {
        self.until_active(&BTreeSet::from([unit.to_owned()]), Instant::now())
            .await?;
        let mut pid = self.driver.unit_details(unit).await?.main_pid;
        let mut ms = Vec::new();
        for _ in 0..crashes {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let t0 = Instant::now();
            self.driver.kill(unit, libc::SIGKILL).await?;
            if let Some(spec) = restart {
                self.until_failed(unit).await?;
                self.driver.restart(spec).await?;
            }
            pid = self.until_new_pid(unit, pid).await?;
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        Ok(ms)
    }

    async fn until_failed(&mut self, unit: &str) -> Result<()> {
        loop {
            let ev = tokio::time::timeout(Duration::from_secs(30), self.events.recv())
                .await
                .with_context(|| format!("{unit} did not fail within 30 s"))?
                .context("driver events ended")?;
            if let DriverEvent::Changed(o) = ev {
                if o.unit == unit && matches!(o.phase, UnitPhase::Failed(_)) {
                    return Ok(());
                }
            }
        }
    }

    /// Stops and clears every unit, and drops the events of what was stopped, so that the
    /// next phase (which reuses unit names) cannot take them for its own.
    fn stop_all(&mut self) -> Result<()> {
        for args in [&["stop", "strata.slice"][..], &["reset-failed"][..]] {
            let out = self.sd.systemctl(args)?;
            if !out.status.success() {
                bail!(
                    "systemctl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        while self.events.try_recv().is_ok() {}
        Ok(())
    }

    fn write_manifest(&self, text: &str) -> Result<()> {
        self.sd.write_file(Path::new(MANIFEST), text.as_bytes())?;
        Ok(())
    }

    fn spawn_supervisor(&self) -> Result<Child> {
        host_bin("strata-supervisor")?;
        let bin = Path::new(BIN_DIR).join("strata-supervisor");
        Ok(self
            .sd
            .command(bin)
            .args(["--config", MANIFEST, "--log-level", "warn"])
            .stdin(Stdio::null())
            .spawn()?)
    }
}

fn host_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/bench → target/<profile>/NAME
    let dir = exe.parent().and_then(Path::parent).context("target dir")?;
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} is not built: run `cargo build --release --workspace --bins` first",
            p.display()
        );
    }
    Ok(p)
}

/// The host PID of the process nsenter forked (the supervisor itself).
fn inner_pid(nsenter: &Child) -> Result<u32> {
    for _ in 0..200 {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", nsenter.id()))?;
        if let Some(pid) = children.split_whitespace().next() {
            return Ok(pid.parse()?);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("nsenter did not fork the supervisor")
}

fn stop_supervisor(mut child: Child) -> Result<()> {
    let pid = inner_pid(&child)?;
    // SAFETY: plain kill(2) of a PID we spawned (through nsenter).
    if unsafe { libc::kill(pid as i32, libc::SIGTERM) } != 0 {
        bail!(
            "cannot stop the supervisor {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("the supervisor ended badly on SIGTERM: {status}");
    }
    Ok(())
}

fn proc_status(pid: u32, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

/// Messages the bus daemon counted for the connection owning `name` (Debug.Stats).
fn bus_messages(sd: &PrivateSystemd, name: &str) -> Result<u64> {
    let owner = sd
        .command("busctl")
        .args([
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus",
            "GetNameOwner",
            "s",
            name,
        ])
        .output()?;
    let owner = String::from_utf8_lossy(&owner.stdout);
    let unique = owner.split('"').nth(1).context("GetNameOwner")?.to_owned();
    let out = sd
        .command("busctl")
        .args([
            "--json=short",
            "call",
            "org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.Debug.Stats",
            "GetConnectionStats",
            "s",
            &unique,
        ])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("Debug.Stats: {}", String::from_utf8_lossy(&out.stderr)))?;
    let stats = &v["data"][0];
    let get = |k: &str| stats[k]["data"].as_u64().unwrap_or(0);
    Ok(get("IncomingMessages") + get("OutgoingMessages"))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let sizes: &[usize] = if args.quick {
        &[10, 50]
    } else {
        &[10, 100, 500]
    };
    let crashes = if args.quick { 5 } else { 20 };
    let rest = Duration::from_secs(args.rest_seconds.unwrap_or(if args.quick { 5 } else { 30 }));

    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.strata.Supervisor1.conf");
    let bin_dir = host_bin("strata-launch")?
        .parent()
        .context("bin dir")?
        .to_owned();
    let opts = BootOptions::new()
        .without_cargo_bin_dir()
        .bind_ro(bin_dir, BIN_DIR);
    let sd = PrivateSystemd::boot_with(opts.dbus_policy(policy))
        .context("cannot boot a private systemd")?;
    let driver = SystemdDriver::connect_address(&sd.bus_address()).await?;
    let events = driver.events().await?;
    let mut b = Bench { sd, driver, events };
    println!(
        "machine: {} cores, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );

    let wants = |p: Phase| args.only.is_empty() || args.only.contains(&p);
    if wants(Phase::Cold) {
        // 1. Cold start.
        println!("\n## cold start (hardened units via strata-launch, Type=exec)");
        println!(
            "{:>5}  {:>12}  {:>12}  {:>12}  {:>12}  {:>6}",
            "N", "raw total", "raw /unit", "strata total", "strata /unit", "ratio"
        );
        for &n in sizes {
            let manifest = Manifest::parse("bench.toml", &manifest_text(n, "s", ""))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let launch = LaunchConfig::for_manifest(&manifest);
            let specs: Vec<_> = manifest
                .all_services()
                .keys()
                .map(|name| derive_unit(&manifest, name, &launch))
                .collect::<Result<_, _>>()?;
            let units: BTreeSet<String> = specs.iter().map(|s| s.unit.clone()).collect();

            let t0 = Instant::now();
            for spec in &specs {
                b.driver.start(spec).await?;
            }
            let raw = b.until_active(&units, t0).await?;
            b.stop_all()?;

            b.write_manifest(&manifest_text(n, "s", ""))?;
            let t0 = Instant::now();
            let sup = b.spawn_supervisor()?;
            let strata = b.until_active(&units, t0).await?;
            stop_supervisor(sup)?;
            b.stop_all()?;
            let per = |d: Duration| d.as_secs_f64() * 1e3 / n as f64;
            println!(
                "{n:>5}  {:>10.1}ms  {:>10.2}ms  {:>10.1}ms  {:>10.2}ms  {:>6.2}",
                raw.as_secs_f64() * 1e3,
                per(raw),
                strata.as_secs_f64() * 1e3,
                per(strata),
                strata.as_secs_f64() / raw.as_secs_f64()
            );
        }
    }
    if wants(Phase::Crash) {
        // 2. Crash → new MainPID.
        println!("\n## crash -> new MainPID ({crashes} SIGKILLs each)");
        let manifest_text1 = manifest_text(
            1,
            "crash",
            "restart = { initial = \"0s\", max = \"0s\", quarantine = { crashes = 1000 } }",
        );
        let manifest =
            Manifest::parse("bench.toml", &manifest_text1).map_err(|e| anyhow::anyhow!("{e}"))?;
        let spec = derive_unit(&manifest, "crash0", &LaunchConfig::for_manifest(&manifest))?;
        // systemd's own restart, same properties, through systemd-run.
        let mut run = b.sd.command("systemd-run");
        run.args([
            "--unit=strata-sysrestart.service",
            "--slice=strata.slice",
            "-p",
            "Restart=always",
            "-p",
            "RestartSec=0",
            "-p",
            "StartLimitIntervalSec=0",
        ]);
        for prop in spec.properties.iter().filter(|p| p.name != "Restart") {
            for line in render_property(prop) {
                run.arg("-p").arg(line);
            }
        }
        run.arg("--").args(&spec.exec);
        let out = run.output()?;
        if !out.status.success() {
            bail!(
                "systemd-run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // All three are timed until the unit is active again with a new MainPID. systemd
        // announces the new MainPID already at fork, before the namespace setup that
        // dominates a hardened start, so stopping the clock there would flatter systemd.
        let mut systemd_ms = b
            .crash_times("strata-sysrestart.service", crashes, None)
            .await?;
        b.stop_all()?;

        // The floor for any supervisor that restarts with StartUnit: a minimal client that
        // restarts the failed unit (Restart=no, same spec) the moment it sees the failure.
        // Against systemd's own restart it shows what StartUnit on a failed unit costs
        // systemd; against the supervisor, what the supervisor adds.
        b.driver.start(&spec).await?;
        let mut in_place_ms = b.crash_times(&spec.unit, crashes, Some(&spec)).await?;
        b.stop_all()?;

        b.write_manifest(&manifest_text1)?;
        let sup = b.spawn_supervisor()?;
        let mut strata_ms = b.crash_times(&spec.unit, crashes, None).await?;
        stop_supervisor(sup)?;
        b.stop_all()?;
        for v in [&mut systemd_ms, &mut in_place_ms, &mut strata_ms] {
            v.sort_by(f64::total_cmp);
        }
        println!("{:>28}  {:>8}  {:>8}", "", "p50", "p90");
        for (label, v) in [
            ("systemd Restart=always", &systemd_ms),
            ("StartUnit on failure (raw)", &in_place_ms),
            ("strata-supervisor", &strata_ms),
        ] {
            println!(
                "{label:>28}  {:>6.1}ms  {:>6.1}ms",
                pct(v, 0.5),
                pct(v, 0.9)
            );
        }
        println!(
            "{:>28}  {:>8.2}",
            "ratio strata/systemd (p50)",
            pct(&strata_ms, 0.5) / pct(&systemd_ms, 0.5)
        );
        println!(
            "{:>28}  {:>8.2}",
            "ratio strata/raw (p50)",
            pct(&strata_ms, 0.5) / pct(&in_place_ms, 0.5)
        );
    }
    if wants(Phase::Rest) {
        // 3. At rest with 100 services.
        println!(
            "\n## supervisor at rest with 100 services, {} s",
            rest.as_secs()
        );
        b.write_manifest(&manifest_text(100, "r", ""))?;
        let sup = b.spawn_supervisor()?;
        let units: BTreeSet<String> = (0..100).map(|i| format!("strata-r{i}.service")).collect();
        b.until_active(&units, Instant::now()).await?;
        tokio::time::sleep(Duration::from_secs(2)).await; // let the last signals settle
        let spid = inner_pid(&sup)?;
        let (cs0, cpu0, msg0) = (
            proc_status(spid, "voluntary_ctxt_switches:")?,
            cpu_ticks(spid)?,
            bus_messages(&b.sd, "org.strata.Supervisor1")?,
        );
        tokio::time::sleep(rest).await;
        let (cs1, cpu1, msg1) = (
            proc_status(spid, "voluntary_ctxt_switches:")?,
            cpu_ticks(spid)?,
            bus_messages(&b.sd, "org.strata.Supervisor1")?,
        );
        let rss_kib = proc_status(spid, "VmRSS:")?;
        let hz = 100.0; // USER_HZ on Linux
        println!(
            "voluntary context switches: {} ({:.2}/s)",
            cs1 - cs0,
            (cs1 - cs0) as f64 / rest.as_secs_f64()
        );
        println!("CPU time: {:.2} s", (cpu1 - cpu0) as f64 / hz);
        println!(
            "D-Bus messages to/from the supervisor: {}",
            msg1.saturating_sub(msg0)
        );
        println!("RSS: {:.1} MiB", rss_kib as f64 / 1024.0);
        stop_supervisor(sup)?;
        b.stop_all()?;
        b.sd.shutdown()?;
    }
    Ok(())
}
