//! The protocol v1 server's metrics over a real Unix socket: a latency observation per
//! request (also for failing and panicking handlers), refusals counted by reason, and
//! `<service>.metrics` readable by root and refused to `nobody` (a real setpriv'd client).

mod as_nobody;

use std::sync::Arc;

use serde_json::{Value, json};
use strata_core::metrics::{Exposition, Metrics, parse_exposition};
use strata_core::protocol::{Code, Request, RpcError};
use strata_services::ipc::{Client, Handler, Peer, ServerConfig, ServiceMetrics, bind, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use as_nobody::{TestDir, call_as_nobody};

struct Svc;

impl Handler for Svc {
    fn methods(&self) -> &[&str] {
        &["svc.echo", "svc.fail", "svc.panic"]
    }

    async fn handle(&self, _peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.method.as_str() {
            "svc.echo" => Ok(req.params),
            "svc.fail" => Err(RpcError::invalid_argument("deliberately refused")),
            "svc.panic" => panic!("deliberate panic in a test handler"),
            other => Err(RpcError::internal(format!("unexpected method {other}"))),
        }
    }
}

/// One length-prefixed JSON frame read from a raw connection.
async fn read_frame(raw: &mut UnixStream) -> Value {
    let mut header = [0u8; 4];
    raw.read_exact(&mut header).await.expect("an answer");
    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
    raw.read_exact(&mut body).await.expect("the answer's body");
    serde_json::from_slice(&body).expect("the answer is JSON")
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(payload.len())
        .expect("small payload")
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(payload);
    f
}

async fn scrape(c: &mut Client) -> Exposition {
    let v = c
        .call("svc.metrics", json!({}), None)
        .await
        .expect("root reads");
    parse_exposition(v["text"].as_str().expect("text")).expect("valid exposition")
}

fn count(exp: &Exposition, method: &str) -> Option<f64> {
    exp.value("request_latency_seconds_count", &[("method", method)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_timed_and_every_refusal_counted() {
    let dir = TestDir::new("ipc-metrics");
    let sock = dir.0.join("svc.sock");
    let listener = bind(&sock).expect("bind");
    let registry = Arc::new(Metrics::new());
    let config = ServerConfig {
        metrics: Some(ServiceMetrics::new("svc", Arc::clone(&registry))),
        ..ServerConfig::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, Arc::new(Svc), config, async {
        let _ = stopped.await;
    }));

    let mut c = Client::connect(&sock).await.expect("connect");
    for i in 0..5 {
        c.call("svc.echo", json!({ "i": i }), None)
            .await
            .expect("echo");
    }
    for _ in 0..2 {
        let e = c.call("svc.fail", json!({}), None).await.expect_err("fail");
        assert_eq!(e.rpc().map(|e| e.code), Some(Code::InvalidArgument));
    }
    let e = c
        .call("svc.panic", json!({}), None)
        .await
        .expect_err("panic");
    assert_eq!(e.rpc().map(|e| e.code), Some(Code::Internal));
    let e = c
        .call("svc.nope", json!({}), None)
        .await
        .expect_err("unknown");
    assert_eq!(e.rpc().map(|e| e.code), Some(Code::NotFound));

    // A malformed request on a raw connection: answered, counted, connection kept.
    let mut raw = UnixStream::connect(&sock).await.expect("connect raw");
    raw.write_all(&frame(b"{not json")).await.expect("write");
    let answer = read_frame(&mut raw).await;
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"]["name"], "INVALID_ARGUMENT", "{answer}");
    // The connection still serves a well-formed request (counted as the sixth echo).
    raw.write_all(&frame(
        br#"{"v":1,"req_id":"r6","method":"svc.echo","params":{"i":6}}"#,
    ))
    .await
    .expect("write");
    let answer = read_frame(&mut raw).await;
    assert_eq!(answer["ok"], true, "{answer}");

    // Refused to nobody (exact code), then read by root (positive control).
    let denied = call_as_nobody(&sock, "svc.metrics", &json!({}), None);
    assert_eq!(denied["ok"], false, "{denied}");
    assert_eq!(denied["error"]["name"], "PERMISSION_DENIED", "{denied}");
    assert_eq!(denied["error"]["details"]["uid"], 65534, "{denied}");

    let exp = scrape(&mut c).await;
    assert_eq!(count(&exp, "svc.echo"), Some(6.0));
    assert_eq!(count(&exp, "svc.fail"), Some(2.0));
    assert_eq!(count(&exp, "svc.panic"), Some(1.0));
    // Refused before any handler ran: no latency series of their own.
    assert_eq!(count(&exp, "svc.nope"), None);
    // nobody's refused scrape was a request too; this scrape is observed after rendering.
    assert_eq!(count(&exp, "svc.metrics"), Some(1.0));
    for (reason, n) in [
        ("unknown_method", 1.0),
        ("invalid_request", 1.0),
        ("not_admin", 1.0),
    ] {
        assert_eq!(
            exp.value("rejected_total", &[("reason", reason)]),
            Some(n),
            "rejected_total{{reason={reason}}}"
        );
    }
    let echo_inf = exp.value(
        "request_latency_seconds_bucket",
        &[("method", "svc.echo"), ("le", "+Inf")],
    );
    assert_eq!(echo_inf, Some(6.0));
    let _ = stop.send(());
}

#[test]
#[ignore = "helper run by other tests as another user"]
fn child_client() {
    as_nobody::child_client_main();
}
