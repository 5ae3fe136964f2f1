//! The protocol v1 runtime over a real Unix socket: malformed and oversized frames,
//! timeouts, pipelining, the connection limit, panics, and peer credentials (also of a
//! client running as `nobody`, via setpriv).

mod as_nobody;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use strata_core::protocol::{Code, MAX_FRAME_LEN, Request, RpcError, parse_response};
use strata_services::ipc::{Client, ClientError, Handler, Peer, ServerConfig, bind, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Notify;

use as_nobody::{TestDir, call_as_nobody};

struct TestHandler {
    gate: Notify,
}

impl Handler for TestHandler {
    fn methods(&self) -> &[&str] {
        &[
            "test.echo",
            "test.peer",
            "test.panic",
            "test.big",
            "test.wait",
            "test.release",
        ]
    }

    async fn handle(&self, peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.method.as_str() {
            "test.echo" => Ok(req.params),
            "test.peer" => Ok(json!({"uid": peer.uid, "gid": peer.gid, "pid": peer.pid})),
            "test.panic" => panic!("deliberate panic in a test handler"),
            "test.big" => {
                let size = req.params["size"].as_u64().unwrap_or(0) as usize;
                Ok(json!({"data": "x".repeat(size)}))
            }
            "test.wait" => {
                self.gate.notified().await;
                Ok(json!({"waited": true}))
            }
            "test.release" => {
                self.gate.notify_one();
                Ok(json!({"released": true}))
            }
            other => Err(RpcError::internal(format!("unexpected method {other}"))),
        }
    }
}

fn quick_config() -> ServerConfig {
    ServerConfig {
        max_connections: 8,
        max_in_flight: 8,
        read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(500),
        write_timeout: Duration::from_secs(2),
        metrics: None,
    }
}

struct Running {
    _dir: TestDir,
    sock: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn start(config: ServerConfig) -> Running {
    let dir = TestDir::new("ipc-srv");
    let sock = dir.0.join("test.sock");
    let listener = bind(&sock).expect("bind");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handler = Arc::new(TestHandler {
        gate: Notify::new(),
    });
    tokio::spawn(serve(listener, handler, config, async {
        let _ = rx.await;
    }));
    Running {
        _dir: dir,
        sock,
        stop: Some(tx),
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

/// Reads one response frame from a raw stream; `None` on EOF.
async fn read_frame(s: &mut UnixStream) -> Option<strata_core::protocol::Response> {
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.ok()?;
    let len = u32::from_be_bytes(header) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.expect("frame body");
    Some(parse_response(&body).expect("response parses"))
}

async fn assert_eof(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b))
        .await
        .expect("server closes within 3 s")
        .expect("clean close, not a reset");
    assert_eq!(n, 0, "expected EOF after the final error");
}

#[tokio::test]
async fn calls_work_and_handlers_see_peer_credentials() {
    let srv = start(quick_config());
    let mut c = Client::connect(&srv.sock).await.expect("connect");
    let r = c
        .call("test.echo", json!({"a": [1, 2]}), Some("tok"))
        .await
        .expect("echo");
    assert_eq!(r, json!({"a": [1, 2]}));
    let p = c.call("test.peer", json!({}), None).await.expect("peer");
    assert_eq!(p["uid"], json!(rustix::process::getuid().as_raw()));
    assert_eq!(p["gid"], json!(rustix::process::getgid().as_raw()));
    assert_eq!(p["pid"], json!(std::process::id()));
}

#[tokio::test]
async fn malformed_requests_get_errors_and_the_connection_survives() {
    let srv = start(quick_config());
    let mut s = UnixStream::connect(&srv.sock).await.expect("connect");
    let cases: Vec<(&[u8], Code, &str, &str)> = vec![
        (b"{nope", Code::InvalidArgument, "", "malformed JSON"),
        (b"", Code::InvalidArgument, "", "empty request"),
        (
            br#"{"v":2,"req_id":"r2","method":"test.echo"}"#,
            Code::InvalidArgument,
            "r2",
            "unsupported protocol version 2",
        ),
        (
            br#"{"v":1,"req_id":"r3","method":"test.nope"}"#,
            Code::NotFound,
            "r3",
            "unknown method `test.nope`",
        ),
        (
            br#"{"v":1,"req_id":"r4","method":"test.echo","params":[]}"#,
            Code::InvalidArgument,
            "r4",
            "field `params` must be an object",
        ),
        (
            br#"{"v":1,"req_id":"r5","method":"test.panic"}"#,
            Code::Internal,
            "r5",
            "the handler of test.panic failed unexpectedly",
        ),
        (
            br#"{"v":1,"req_id":"r6","method":"test.big","params":{"size":1048576}}"#,
            Code::ResourceExhausted,
            "r6",
            "exceeds the frame limit",
        ),
    ];
    for (payload, code, req_id, fragment) in cases {
        s.write_all(&frame(payload)).await.expect("write");
        let resp = read_frame(&mut s).await.expect("an answer, not a close");
        assert_eq!(resp.req_id, req_id);
        let e = resp.outcome.expect_err("error response");
        assert_eq!(e.code, code, "{}", e.message);
        assert!(
            e.message.contains(fragment),
            "{} lacks {fragment}",
            e.message
        );
    }
    // Positive control on the same connection.
    s.write_all(&frame(
        br#"{"v":1,"req_id":"ok","method":"test.echo","params":{"x":1}}"#,
    ))
    .await
    .expect("write");
    let resp = read_frame(&mut s).await.expect("answer");
    assert_eq!(
        (resp.req_id.as_str(), resp.outcome),
        ("ok", Ok(json!({"x": 1})))
    );
}

#[tokio::test]
async fn oversized_length_is_answered_then_closed() {
    let srv = start(quick_config());
    let mut s = UnixStream::connect(&srv.sock).await.expect("connect");
    // A valid request first: it is answered before the error.
    s.write_all(&frame(br#"{"v":1,"req_id":"a","method":"test.echo"}"#))
        .await
        .expect("write");
    s.write_all(&((MAX_FRAME_LEN as u32) + 1).to_be_bytes())
        .await
        .expect("write");
    s.write_all(&[b'x'; 1000]).await.expect("write");
    let first = read_frame(&mut s).await.expect("first answer");
    assert_eq!((first.req_id.as_str(), first.outcome), ("a", Ok(json!({}))));
    let resp = read_frame(&mut s).await.expect("error before close");
    assert_eq!(resp.req_id, "");
    let e = resp.outcome.expect_err("error");
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(
        e.message,
        "frame length 1048577 exceeds the limit of 1048576 bytes; closing the connection"
    );
    assert_eq!(e.details["limit"], json!(MAX_FRAME_LEN));
    assert_eq!(e.details["length"], json!(MAX_FRAME_LEN + 1));
    assert_eq!(
        read_frame(&mut s).await,
        None,
        "connection closed deliberately"
    );

    // Exactly the limit is accepted (the request is a valid envelope padded with spaces).
    let mut payload = br#"{"v":1,"req_id":"max","method":"test.echo"}"#.to_vec();
    payload.resize(MAX_FRAME_LEN, b' ');
    let mut s = UnixStream::connect(&srv.sock).await.expect("connect");
    s.write_all(&frame(&payload)).await.expect("write");
    let resp = read_frame(&mut s).await.expect("answer");
    assert_eq!((resp.req_id.as_str(), resp.outcome), ("max", Ok(json!({}))));
}

#[tokio::test]
async fn a_stalled_frame_hits_the_read_timeout() {
    let srv = start(quick_config());
    let mut s = UnixStream::connect(&srv.sock).await.expect("connect");
    s.write_all(&100u32.to_be_bytes()).await.expect("write");
    s.write_all(b"{\"v\":1").await.expect("write");
    let resp = tokio::time::timeout(Duration::from_secs(3), read_frame(&mut s))
        .await
        .expect("answered within 3 s")
        .expect("error before close");
    let e = resp.outcome.expect_err("error");
    assert_eq!(e.code, Code::InvalidArgument);
    assert!(
        e.message.starts_with("incomplete frame: 10 bytes received"),
        "{}",
        e.message
    );
    assert_eof(&mut s).await;
}

#[tokio::test]
async fn a_frame_cut_by_eof_is_answered() {
    let srv = start(quick_config());
    let mut s = UnixStream::connect(&srv.sock).await.expect("connect");
    s.write_all(&50u32.to_be_bytes()).await.expect("write");
    s.write_all(b"{").await.expect("write");
    s.shutdown().await.expect("half-close");
    let resp = read_frame(&mut s).await.expect("error before close");
    let e = resp.outcome.expect_err("error");
    assert_eq!(e.code, Code::InvalidArgument);
    assert_eq!(
        e.message,
        "connection closed in the middle of a frame (5 bytes received)"
    );
}

#[tokio::test]
async fn idle_connections_are_closed_and_active_ones_kept() {
    let srv = start(quick_config());
    // Positive control: activity every 200 ms keeps a connection open past the idle timeout.
    let mut c = Client::connect(&srv.sock).await.expect("connect");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.call("test.echo", json!({}), None)
            .await
            .expect("still open");
    }
    let mut s = UnixStream::connect(&srv.sock).await.expect("connect");
    let started = std::time::Instant::now();
    assert_eof(&mut s).await;
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "closed too early"
    );
}

#[tokio::test]
async fn pipelined_requests_run_concurrently_and_answer_in_order() {
    let srv = start(quick_config());
    let mut c = Client::connect(&srv.sock).await.expect("connect");
    // `wait` only finishes once `release`, sent after it on the same connection, has run:
    // a server handling one request at a time would never answer.
    let mut reqs = Vec::new();
    for (i, m) in ["test.wait", "test.echo", "test.release"]
        .iter()
        .enumerate()
    {
        let mut r = Request::new(format!("p{i}"), *m);
        r.params = json!({"i": i});
        c.send(&r).await.expect("send");
        reqs.push(r);
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(c.recv().await.expect("response"));
    }
    let ids: Vec<&str> = got.iter().map(|r| r.req_id.as_str()).collect();
    assert_eq!(ids, vec!["p0", "p1", "p2"]);
    assert_eq!(got[0].outcome, Ok(json!({"waited": true})));
    assert_eq!(got[1].outcome, Ok(json!({"i": 1})));
    assert_eq!(got[2].outcome, Ok(json!({"released": true})));
}

#[tokio::test]
async fn over_the_connection_limit_clients_get_unavailable() {
    let mut cfg = quick_config();
    cfg.max_connections = 2;
    cfg.idle_timeout = Duration::from_secs(30);
    let srv = start(cfg);
    let mut a = Client::connect(&srv.sock).await.expect("a");
    let mut b = Client::connect(&srv.sock).await.expect("b");
    a.call("test.echo", json!({}), None)
        .await
        .expect("a served");
    b.call("test.echo", json!({}), None)
        .await
        .expect("b served");
    let mut s = UnixStream::connect(&srv.sock).await.expect("connect c");
    let resp = read_frame(&mut s).await.expect("refusal");
    let e = resp.outcome.expect_err("unavailable");
    assert_eq!(e.code, Code::Unavailable);
    assert_eq!(e.message, "connection limit of 2 reached; retry later");
    assert_eq!(read_frame(&mut s).await, None);
    // Once a slot frees up, new clients are served again.
    drop(a);
    let mut served = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut c = Client::connect(&srv.sock).await.expect("connect");
        if c.call("test.echo", json!({}), None).await.is_ok() {
            served = true;
            break;
        }
    }
    assert!(served, "a freed slot must be reusable");
}

#[tokio::test]
async fn bind_refuses_a_live_socket_and_replaces_a_stale_one() {
    let srv = start(quick_config());
    let e = bind(&srv.sock).expect_err("live server");
    assert!(
        e.to_string()
            .starts_with("another server is already listening on"),
        "{e}"
    );
    let dir = TestDir::new("ipc-stale");
    let stale = dir.0.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind std"));
    assert!(stale.exists(), "the dead listener leaves its socket file");
    let _l = bind(&stale).expect("stale socket replaced");
    let mode = std::fs::metadata(&stale)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);
    let file = dir.0.join("file");
    std::fs::write(&file, b"x").expect("write");
    assert!(matches!(
        bind(&file),
        Err(strata_services::ipc::BindError::NotASocket { .. })
    ));
}

#[tokio::test]
async fn client_reports_server_errors_and_closed_connections() {
    let srv = start(quick_config());
    let mut c = Client::connect(&srv.sock).await.expect("connect");
    let e = c
        .call("test.nope", json!({}), None)
        .await
        .expect_err("unknown");
    assert_eq!(e.rpc().map(|e| e.code), Some(Code::NotFound));
    let missing = srv.sock.with_file_name("missing.sock");
    let e = Client::connect(&missing).await.expect_err("no socket");
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_credentials_of_another_user() {
    let srv = start(quick_config());
    let sock = srv.sock.clone();
    let got =
        tokio::task::spawn_blocking(move || call_as_nobody(&sock, "test.peer", &json!({}), None))
            .await
            .expect("join");
    assert_eq!(got["ok"], json!(true), "{got}");
    assert_eq!(got["result"]["uid"], json!(65534));
    assert_eq!(got["result"]["gid"], json!(65534));
    assert_ne!(got["result"]["pid"], json!(std::process::id()));
}

/// Helper process for `call_as_nobody`, not a test of its own: without its environment it
/// does nothing.
#[test]
#[ignore = "helper run by other tests as another user"]
fn child_client() {
    as_nobody::child_client_main();
}
