//! The identity service measured as deployed: the `strata-identity` binary in its own
//! process, its state on disk (ext4 here, so every revoke pays a real fsync). Measured:
//! identity.issue per second (one client, then four concurrent), and revoke-to-denied
//! latency — from sending identity.revoke until a verifier in this process, kept current by
//! its own revocation follower, denies the token — as p50/p99.
//!
//! `cargo bench -p strata-services --bench identity` (full); without `--bench`, as
//! `cargo test --all-targets` runs it, a short smoke run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use strata_core::authorize::{AuthzRequest, DenyReason};
use strata_services::identity::PUBLIC_KEY_FILE;
use strata_services::ipc::Client;
use strata_services::revocation::{FollowerConfig, RevocationFollower, shared_set};
use strata_services::verifier::{Verifier, read_public_key};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} p50={:?} p90={:?} p99={:?} max={:?}",
        samples.len(),
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or_default()
    );
}

async fn issue(c: &mut Client) -> serde_json::Value {
    c.call(
        "identity.issue",
        json!({"service": "fs", "actions": ["read"], "path_prefix": "/srv"}),
        None,
    )
    .await
    .expect("issue")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (issues, revokes) = if full { (3000, 400) } else { (40, 10) };
    let dir: PathBuf =
        std::env::temp_dir().join(format!("strata-bench-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let state = dir.join("state");
    let run = dir.join("run");
    std::fs::create_dir_all(&run).expect("runtime dir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata-identity"))
        .args(["--node-id", "node-1", "--state-dir"])
        .arg(&state)
        .arg("--runtime-dir")
        .arg(&run)
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start strata-identity");
    let sock = run.join("identity.sock");
    runtime.block_on(async {
        let mut waited = Duration::ZERO;
        let mut c = loop {
            match Client::connect(&sock).await {
                Ok(c) => break c,
                Err(_) if waited < Duration::from_secs(10) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    waited += Duration::from_millis(20);
                }
                Err(e) => panic!("strata-identity did not come up: {e}"),
            }
        };
        // identity.issue per second, one client.
        issue(&mut c).await;
        let start = Instant::now();
        for _ in 0..issues {
            issue(&mut c).await;
        }
        let el = start.elapsed();
        println!(
            "identity.issue, 1 client: {issues} in {el:?} = {:.0}/s ({:?} each)",
            issues as f64 / el.as_secs_f64(),
            el / issues
        );

        // Four concurrent clients.
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let sock = sock.clone();
            tasks.push(tokio::spawn(async move {
                let mut c = Client::connect(&sock).await.expect("connect");
                for _ in 0..issues / 4 {
                    issue(&mut c).await;
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
        let el = start.elapsed();
        let n = (issues / 4) * 4;
        println!(
            "identity.issue, 4 clients: {n} in {el:?} = {:.0}/s",
            n as f64 / el.as_secs_f64()
        );

        // Revoke-to-denied.
        let key = read_public_key(&run.join(PUBLIC_KEY_FILE)).expect("key");
        let set = shared_set();
        let follower = RevocationFollower::spawn(FollowerConfig::new(&sock), Arc::clone(&set));
        assert!(
            follower.wait_ready(Duration::from_secs(5)).await,
            "follower ready"
        );
        let verifier = Arc::new(Verifier::new(key, "node-1", set).log_allowed(false));
        let req = AuthzRequest {
            service: "fs",
            action: "read",
            path: Some("a"),
        };
        // Revocations back to back, then spaced out as in real life: a revoke that comes
        // alone pays the file system's journal commit (an mtime change), one that follows
        // another within the same clock tick often only a cache flush.
        for (label, gap) in [
            ("back-to-back", Duration::ZERO),
            ("spaced 20 ms", Duration::from_millis(20)),
        ] {
            let mut acks = Vec::new();
            let mut denied = Vec::new();
            let mut applied = Vec::new();
            let mut news = follower.subscribe();
            for _ in 0..revokes {
                let t = issue(&mut c).await;
                let token = t["token"].as_str().expect("token").to_owned();
                verifier
                    .decide(Some(&token), &req, SystemTime::now())
                    .expect("allowed before");
                tokio::time::sleep(gap).await;
                let start = Instant::now();
                // A request arriving at the verifier every 50 µs, from a thread of its own.
                let v = Arc::clone(&verifier);
                let probe = std::thread::spawn(move || {
                    loop {
                        match v.decide(Some(&token), &req, SystemTime::now()) {
                            Err(d) if d.reason == DenyReason::Revoked => return start.elapsed(),
                            Err(d) => panic!("unexpected denial {d:?}"),
                            Ok(_) if start.elapsed() > Duration::from_secs(5) => {
                                panic!("never denied")
                            }
                            Ok(_) => std::thread::sleep(Duration::from_micros(50)),
                        }
                    }
                });
                c.call("identity.revoke", json!({"cap_id": t["cap_id"]}), None)
                    .await
                    .expect("revoke");
                acks.push(start.elapsed());
                let _ = news.recv().await;
                applied.push(start.elapsed());
                denied.push(
                    tokio::task::spawn_blocking(move || probe.join().expect("probe"))
                        .await
                        .expect("join"),
                );
            }
            report(
                &format!("identity.revoke acknowledged (durable), {label}"),
                acks,
            );
            report(
                &format!(
                    "revoke-to-applied at the verifier (any later request is denied), {label}"
                ),
                applied,
            );
            report(
                &format!("revoke-to-denied seen by a request every 50 us, {label}"),
                denied,
            );
        }
        let cold = {
            let t = issue(&mut c).await;
            let token = t["token"].as_str().expect("token").to_owned();
            let start = Instant::now();
            verifier
                .decide(Some(&token), &req, SystemTime::now())
                .expect("allowed");
            let cold = start.elapsed();
            let start = Instant::now();
            for _ in 0..1000 {
                verifier
                    .decide(Some(&token), &req, SystemTime::now())
                    .expect("allowed");
            }
            (cold, start.elapsed() / 1000)
        };
        println!(
            "verifier.decide: first sight {:?}, cached {:?} (with 1 revocation set lock)",
            cold.0, cold.1
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
