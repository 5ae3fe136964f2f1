//! The identity service measured over its real socket: identity.issue per second (one
//! client, then four concurrent), and revoke-to-denied latency — from sending
//! identity.revoke until a verifier with its own revocation follower denies the token —
//! as p50/p99. State lives on the disk (ext4 here), so every revoke pays a real fsync.
//!
//! `cargo bench -p strata-services --bench identity` (full); without `--bench`, as
//! `cargo test --all-targets` runs it, a short smoke run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::json;
use strata_core::authorize::{AuthzRequest, DenyReason};
use strata_services::identity::{Identity, IdentityConfig, PUBLIC_KEY_FILE};
use strata_services::ipc::{Client, ServerConfig, bind, serve};
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
    runtime.block_on(async {
        let config = IdentityConfig::new(dir.join("state"), dir.join("run"), "node-1");
        let identity = Arc::new(Identity::open(config).expect("identity"));
        let sock = identity.socket_path();
        let listener = bind(&sock).expect("bind");
        tokio::spawn(serve(
            listener,
            Arc::clone(&identity),
            ServerConfig::default(),
            std::future::pending(),
        ));

        // identity.issue per second, one client.
        let mut c = Client::connect(&sock).await.expect("connect");
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
        let key = read_public_key(&dir.join("run").join(PUBLIC_KEY_FILE)).expect("key");
        let set = shared_set();
        let follower = RevocationFollower::spawn(FollowerConfig::new(&sock), Arc::clone(&set));
        assert!(
            follower.wait_ready(Duration::from_secs(5)).await,
            "follower ready"
        );
        let verifier = Verifier::new(key, "node-1", set).log_allowed(false);
        let req = AuthzRequest {
            service: "fs",
            action: "read",
            path: Some("a"),
        };
        let mut acks = Vec::new();
        let mut denied = Vec::new();
        for _ in 0..revokes {
            let t = issue(&mut c).await;
            let token = t["token"].as_str().expect("token").to_owned();
            verifier
                .decide(Some(&token), &req, SystemTime::now())
                .expect("allowed before");
            let start = Instant::now();
            c.call("identity.revoke", json!({"cap_id": t["cap_id"]}), None)
                .await
                .expect("revoke");
            acks.push(start.elapsed());
            loop {
                match verifier.decide(Some(&token), &req, SystemTime::now()) {
                    Err(d) if d.reason == DenyReason::Revoked => break,
                    Err(d) => panic!("unexpected denial {d:?}"),
                    Ok(_) if start.elapsed() > Duration::from_secs(5) => panic!("never denied"),
                    Ok(_) => tokio::task::yield_now().await,
                }
            }
            denied.push(start.elapsed());
        }
        report("identity.revoke acknowledged (durable)", acks);
        report("revoke-to-denied at a verifier", denied);
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
    let _ = std::fs::remove_dir_all(&dir);
}
