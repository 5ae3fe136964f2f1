//! Measures the cost of starting plain transient units through the driver.
//!
//! `cargo run --release -p strata-systemd --example start_units -- --address <bus> --count 100
//! --parallel 1 --parallel 16` starts COUNT `Type=exec` units of `/bin/sleep`, awaiting each
//! start job's completion (JobRemoved), first one at a time, then PARALLEL at a time, prints the
//! wall time per unit and the per-start latency percentiles, then stops the units.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use strata_core::unit::{LandlockRuleset, UnitSpec};
use strata_systemd::driver::UnitDriver;
use strata_systemd::systemd::SystemdDriver;

#[derive(Debug, Parser)]
struct Args {
    /// D-Bus address of the systemd to drive (default: the system bus).
    #[arg(long)]
    address: Option<String>,
    /// Units per run.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Starts in flight at once; repeat for several runs.
    #[arg(long = "parallel", default_values_t = [1usize, 16])]
    parallel: Vec<usize>,
    /// Also time the same sequential starts made with bare zbus calls (no driver), as the
    /// floor to compare the driver's numbers with in the same run.
    #[arg(long)]
    baseline: bool,
}

/// Sequential starts with bare zbus calls: StartTransientUnit with the same properties the
/// driver sends for a plain unit, awaiting each JobRemoved; then StopUnit + ResetFailedUnit.
async fn baseline(address: Option<&str>, count: usize) -> anyhow::Result<Duration> {
    use zbus::zvariant::{OwnedObjectPath, Value};
    let conn = match address {
        Some(a) => zbus::connection::Builder::address(a)?.build().await?,
        None => zbus::Connection::system().await?,
    };
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender("org.freedesktop.systemd1")?
        .interface("org.freedesktop.systemd1.Manager")?
        .member("JobRemoved")?
        .build();
    let mut jobs = zbus::MessageStream::for_match_rule(rule, &conn, Some(4096)).await?;
    conn.call_method(
        Some("org.freedesktop.systemd1"),
        "/org/freedesktop/systemd1",
        Some("org.freedesktop.systemd1.Manager"),
        "Subscribe",
        &(),
    )
    .await?;
    let started = Instant::now();
    for i in 0..count {
        let unit = format!("strata-baseline-{i}.service");
        let argv = vec!["/bin/sleep".to_string(), "600".to_string()];
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from("baseline")),
            ("Slice", Value::from("strata.slice")),
            (
                "ExecStart",
                Value::from(vec![("/bin/sleep".to_string(), argv, false)]),
            ),
            ("Restart", Value::from("no")),
            ("Type", Value::from("exec")),
            ("CollectMode", Value::from("inactive")),
            (
                "Environment",
                Value::from(vec!["STRATA_SPEC_HASH=bench".to_string()]),
            ),
        ];
        let aux: Vec<(&str, Vec<(&str, Value<'_>)>)> = Vec::new();
        let reply = conn
            .call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "StartTransientUnit",
                &(unit.as_str(), "fail", props, aux),
            )
            .await?;
        let job: OwnedObjectPath = reply.body().deserialize()?;
        let result = wait_job(&mut jobs, &job).await?;
        if result != "done" {
            bail!("baseline start of {unit} ended with {result}");
        }
    }
    let elapsed = started.elapsed();
    for i in 0..count {
        let unit = format!("strata-baseline-{i}.service");
        let reply = conn
            .call_method(
                Some("org.freedesktop.systemd1"),
                "/org/freedesktop/systemd1",
                Some("org.freedesktop.systemd1.Manager"),
                "StopUnit",
                &(unit.as_str(), "replace"),
            )
            .await?;
        let job: OwnedObjectPath = reply.body().deserialize()?;
        wait_job(&mut jobs, &job).await?;
    }
    Ok(elapsed)
}

/// Reads JobRemoved signals until `job`'s; returns its result.
async fn wait_job(
    jobs: &mut zbus::MessageStream,
    job: &zbus::zvariant::OwnedObjectPath,
) -> anyhow::Result<String> {
    loop {
        let Some(msg) = jobs.next().await else {
            bail!("the bus connection closed");
        };
        let (_, done, _, result): (u32, zbus::zvariant::OwnedObjectPath, String, String) =
            msg?.body().deserialize()?;
        if &done == job {
            return Ok(result);
        }
    }
}

fn spec(run: usize, i: usize) -> UnitSpec {
    UnitSpec {
        service: format!("bench-{run}-{i}"),
        unit: format!("strata-bench-{run}-{i}.service"),
        description: format!("Strata start benchmark unit {i}"),
        slice: "strata.slice".into(),
        exec: vec!["/bin/sleep".into(), "600".into()],
        properties: Vec::new(),
        landlock: LandlockRuleset::default(),
        spec_hash: "bench".into(),
    }
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.count == 0 || args.parallel.contains(&0) {
        bail!("--count and --parallel must be positive");
    }
    let driver = Arc::new(
        match &args.address {
            Some(a) => SystemdDriver::connect_address(a).await,
            None => SystemdDriver::connect().await,
        }
        .context("connecting to systemd")?,
    );

    if args.baseline {
        let t = baseline(args.address.as_deref(), args.count).await?;
        println!(
            "baseline (bare zbus, no driver) count={} parallel= 1: {:.2} ms/unit",
            args.count,
            t.as_secs_f64() * 1e3 / args.count as f64
        );
    }

    // Reference for this machine's current speed: one D-Bus round trip to systemd
    // (ListUnitsByPatterns while no strata unit exists).
    let mut trips = Vec::with_capacity(200);
    for _ in 0..200 {
        let t = Instant::now();
        let units = driver.list().await.context("listing units")?;
        trips.push(t.elapsed());
        if !units.is_empty() {
            bail!("strata units already exist: {units:?}");
        }
    }
    trips.sort();
    println!(
        "reference: one D-Bus round trip to systemd p50 {:.3} ms, p90 {:.3} ms",
        pct(&trips, 0.5),
        pct(&trips, 0.9)
    );

    for (run, &parallel) in args.parallel.iter().enumerate() {
        let mut latencies = Vec::with_capacity(args.count);
        let mut pending = FuturesUnordered::new();
        let started = Instant::now();
        for i in 0..args.count {
            if pending.len() >= parallel {
                if let Some(r) = pending.next().await {
                    latencies.push(r?);
                }
            }
            let d = Arc::clone(&driver);
            let s = spec(run, i);
            pending.push(async move {
                let t = Instant::now();
                let result = d
                    .start_and_wait(&s)
                    .await
                    .with_context(|| format!("starting {}", s.unit))?;
                if result != "done" {
                    bail!("start job of {} ended with {result}", s.unit);
                }
                anyhow::Ok(t.elapsed())
            });
        }
        while let Some(r) = pending.next().await {
            latencies.push(r?);
        }
        let total = started.elapsed();
        latencies.sort();
        println!(
            "start  count={} parallel={parallel:>2}: {:.2} ms/unit wall ({:.0} ms total); \
             per-start latency p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            args.count,
            total.as_secs_f64() * 1e3 / args.count as f64,
            total.as_secs_f64() * 1e3,
            pct(&latencies, 0.5),
            pct(&latencies, 0.9),
            pct(&latencies, 1.0),
        );

        let stopping = Instant::now();
        for i in 0..args.count {
            let unit = spec(run, i).unit;
            let result = driver
                .stop_and_wait(&unit)
                .await
                .with_context(|| format!("stopping {unit}"))?;
            if result != "done" {
                bail!("stop job of {unit} ended with {result}");
            }
            driver
                .reset_failed(&unit)
                .await
                .with_context(|| format!("resetting {unit}"))?;
        }
        println!(
            "stop   count={} sequential : {:.2} ms/unit",
            args.count,
            stopping.elapsed().as_secs_f64() * 1e3 / args.count as f64
        );
    }
    let left = driver.list().await.context("listing units")?;
    if !left.is_empty() {
        bail!("{} strata units left behind: {:?}", left.len(), left);
    }
    Ok(())
}
