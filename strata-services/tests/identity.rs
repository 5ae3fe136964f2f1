//! strata-identity end to end on a real socket in a temporary directory: issuing as root and
//! as nobody, validation at issue time, durable revocation reaching verifiers (also one that
//! was down during the revoke), restart keeping the key, tokens and revocations.

mod as_nobody;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use strata_core::authorize::{AuthzRequest, DenyReason};
use strata_core::protocol::Code;
use strata_services::identity::{
    Identity, IdentityConfig, KEY_FILE, PUBLIC_KEY_FILE, REVOCATIONS_FILE,
};
use strata_services::ipc::{Client, ServerConfig, bind, serve};
use strata_services::revocation::{FollowerConfig, RevocationFollower, shared_set};
use strata_services::verifier::{Verifier, read_public_key};
use tokio::sync::oneshot;

use as_nobody::{TestDir, call_as_nobody};

struct Node {
    _dir: TestDir,
    state: PathBuf,
    runtime: PathBuf,
}

impl Node {
    fn new(tag: &str) -> Self {
        let dir = TestDir::new(tag);
        let state = dir.0.join("state");
        let runtime = dir.0.join("run");
        std::fs::create_dir_all(&runtime).expect("runtime dir");
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self {
            _dir: dir,
            state,
            runtime,
        }
    }

    fn config(&self) -> IdentityConfig {
        let mut c = IdentityConfig::new(&self.state, &self.runtime, "node-1");
        c.services.insert("web".into());
        c
    }

    fn sock(&self) -> PathBuf {
        self.runtime.join("identity.sock")
    }
}

/// A running identity server; dropping it stops the server.
struct Running {
    identity: Arc<Identity>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            d.await.expect("server task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn start(config: IdentityConfig) -> Running {
    let identity = Arc::new(Identity::open(config).expect("identity opens"));
    let listener = bind(&identity.socket_path()).expect("bind identity.sock");
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(serve(
        listener,
        Arc::clone(&identity),
        ServerConfig::default(),
        async {
            let _ = rx.await;
        },
    ));
    Running {
        identity,
        stop: Some(tx),
        done: Some(done),
    }
}

async fn issue(sock: &PathBuf, params: Value) -> Result<Value, strata_services::ipc::ClientError> {
    let mut c = Client::connect(sock).await.expect("connect");
    c.call("identity.issue", params, None).await
}

fn verifier(node: &Node) -> (Verifier, RevocationFollower) {
    let key = read_public_key(&node.runtime.join(PUBLIC_KEY_FILE)).expect("identity.pub");
    let set = shared_set();
    let follower = RevocationFollower::spawn(FollowerConfig::new(node.sock()), Arc::clone(&set));
    (
        Verifier::new(key, "node-1", set).log_allowed(false),
        follower,
    )
}

const READ: AuthzRequest<'static> = AuthzRequest {
    service: "fs",
    action: "read",
    path: Some("a.txt"),
};

fn code_of(e: &strata_services::ipc::ClientError) -> Option<Code> {
    e.rpc().map(|e| e.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_as_root_works_and_the_token_verifies() {
    let node = Node::new("id-root");
    let _srv = start(node.config());
    let r = issue(
        &node.sock(),
        json!({"service":"fs","actions":["open","read","list"],"path_prefix":"/srv/www","ttl_seconds":600}),
    )
    .await
    .expect("root may issue");
    let token = r["token"].as_str().expect("token");
    let cap_id = r["cap_id"].as_str().expect("cap_id");
    assert_eq!(cap_id.len(), 128);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let expires = r["expires"].as_u64().expect("expires");
    assert!(
        (now + 599..=now + 601).contains(&expires),
        "{expires} vs {now}"
    );

    let (v, follower) = verifier(&node);
    assert!(
        follower.wait_ready(Duration::from_secs(5)).await,
        "follower caught up"
    );
    let g = v.authorize(Some(token), &READ).expect("fs.read allowed");
    assert_eq!(&*g.cap_id, cap_id);
    assert_eq!(g.path.expect("path").absolute(), "/srv/www/a.txt");
    let e = v
        .authorize(
            Some(token),
            &AuthzRequest {
                service: "fs",
                action: "write",
                path: None,
            },
        )
        .expect_err("write not granted");
    assert_eq!(e.code, Code::PermissionDenied);

    // Files: key 0600 in the state dir, public key 0644 in the runtime dir, socket 0666.
    let mode = |p: PathBuf| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(node.state.join(KEY_FILE)), 0o600);
    assert_eq!(mode(node.runtime.join(PUBLIC_KEY_FILE)), 0o644);
    assert_eq!(mode(node.sock()), 0o666);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_parameters_are_validated_at_issue_time() {
    let node = Node::new("id-valid");
    let _srv = start(node.config());
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"service":"nope","actions":["read"]}),
            "unknown service `nope`",
        ),
        (json!({"service":"fs"}), "at least one action or right"),
        (
            json!({"service":"fs","actions":["Read"]}),
            "action `Read` is malformed",
        ),
        (
            json!({"service":"fs","rights":["identity.issue"]}),
            "does not belong to service `fs`",
        ),
        (
            json!({"service":"fs","actions":["read"],"rate_limit":0}),
            "rate_limit 0 is not a finite positive rate",
        ),
        (
            json!({"service":"fs","actions":["read"],"rate_limit":-2.5}),
            "rate_limit -2.5 is not",
        ),
        (
            json!({"service":"fs","actions":["read"],"rate_limit":"fast"}),
            "invalid params for identity.issue",
        ),
        (
            json!({"service":"fs","actions":["read"],"ttl_seconds":0}),
            "ttl_seconds 0 is outside",
        ),
        (
            json!({"service":"fs","actions":["read"],"ttl_seconds":99999999}),
            "ttl_seconds 99999999 is outside",
        ),
        (
            json!({"service":"fs","actions":["read"],"path_prefix":"srv"}),
            "path_prefix `srv` is not absolute",
        ),
        (
            json!({"service":"fs","actions":["read"],"path_prefix":"/srv/../etc"}),
            "contains `..`",
        ),
        (
            json!({"service":"fs","actions":["read"],"path_prefx":"/srv"}),
            "unknown field `path_prefx`",
        ),
    ];
    for (params, fragment) in bad {
        let e = issue(&node.sock(), params.clone())
            .await
            .expect_err("invalid");
        let rpc = e
            .rpc()
            .unwrap_or_else(|| panic!("{params}: not an rpc error: {e}"));
        assert_eq!(rpc.code, Code::InvalidArgument, "{params}: {}", rpc.message);
        assert!(
            rpc.message.contains(fragment),
            "{params}: {} lacks {fragment}",
            rpc.message
        );
    }
    // Positive controls: a sub-1 rate, a configured service, qualified rights.
    let r = issue(
        &node.sock(),
        json!({"service":"fs","actions":["read"],"rate_limit":0.25}),
    )
    .await
    .expect("sub-1 rate");
    assert!(r["token"].is_string());
    issue(&node.sock(), json!({"service":"web","rights":["web.get"]}))
        .await
        .expect("configured service");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprivileged_callers_are_refused_unless_admin_or_holding_the_right() {
    let node = Node::new("id-nobody");
    let srv = start(node.config());
    let sock = node.sock();
    let params = json!({"service":"fs","actions":["read"]});
    let s = sock.clone();
    let p = params.clone();
    let got = tokio::task::spawn_blocking(move || call_as_nobody(&s, "identity.issue", &p, None))
        .await
        .expect("join");
    assert_eq!(got["ok"], json!(false), "{got}");
    assert_eq!(got["error"]["code"], json!(3));
    assert_eq!(got["error"]["name"], json!("PERMISSION_DENIED"));
    assert_eq!(got["error"]["details"]["uid"], json!(65534));

    // Revoke is guarded the same way.
    let victim = issue(&sock, params.clone()).await.expect("root issues");
    let s = sock.clone();
    let cap = victim["cap_id"].clone();
    let got = tokio::task::spawn_blocking(move || {
        call_as_nobody(&s, "identity.revoke", &json!({"cap_id": cap}), None)
    })
    .await
    .expect("join");
    assert_eq!(got["error"]["code"], json!(3), "{got}");
    assert_eq!(srv.identity.revocation_seq(), 0, "nothing was revoked");

    // A token with the right identity.issue admits an unprivileged caller…
    let admin = issue(
        &sock,
        json!({"service":"identity","rights":["identity.issue"]}),
    )
    .await
    .expect("admin token");
    let admin_token = admin["token"].as_str().expect("token").to_owned();
    let (s, p, t) = (sock.clone(), params.clone(), admin_token.clone());
    let got =
        tokio::task::spawn_blocking(move || call_as_nobody(&s, "identity.issue", &p, Some(&t)))
            .await
            .expect("join");
    assert_eq!(got["ok"], json!(true), "{got}");
    assert!(got["result"]["token"].is_string());
    // …but not to revoke (that right was not granted), and a token for fs admits nothing.
    let (s, t) = (sock.clone(), admin_token.clone());
    let cap = victim["cap_id"].clone();
    let got = tokio::task::spawn_blocking(move || {
        call_as_nobody(&s, "identity.revoke", &json!({"cap_id": cap}), Some(&t))
    })
    .await
    .expect("join");
    assert_eq!(got["error"]["code"], json!(3), "{got}");
    assert_eq!(
        got["error"]["details"]["reason"],
        json!("action_not_granted")
    );
    let fs_token = victim["token"].as_str().expect("token").to_owned();
    let (s, p) = (sock.clone(), params.clone());
    let got = tokio::task::spawn_blocking(move || {
        call_as_nobody(&s, "identity.issue", &p, Some(&fs_token))
    })
    .await
    .expect("join");
    assert_eq!(
        got["error"]["details"]["reason"],
        json!("wrong_service"),
        "{got}"
    );
    srv.stop().await;

    // Membership in the admin group admits (nobody's primary group, nogroup, as admin group).
    let mut cfg = node.config();
    cfg.admin_group = "nogroup".into();
    let _srv = start(cfg);
    let (s, p) = (sock.clone(), params.clone());
    let got = tokio::task::spawn_blocking(move || call_as_nobody(&s, "identity.issue", &p, None))
        .await
        .expect("join");
    assert_eq!(got["ok"], json!(true), "{got}");
}

async fn wait_denied(v: &Verifier, token: &str, within: Duration) -> (DenyReason, Duration) {
    let start = Instant::now();
    loop {
        match v.decide(Some(token), &READ, SystemTime::now()) {
            Err(d) if d.reason != DenyReason::RevocationsUnavailable => {
                return (d.reason, start.elapsed());
            }
            _ if start.elapsed() > within => panic!("token still not denied after {within:?}"),
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_is_durable_and_reaches_a_running_verifier() {
    let node = Node::new("id-revoke");
    let srv = start(node.config());
    let parent = issue(
        &node.sock(),
        json!({"service":"fs","actions":["read"],"path_prefix":"/srv"}),
    )
    .await
    .expect("issue");
    let other = issue(
        &node.sock(),
        json!({"service":"fs","actions":["read"],"path_prefix":"/srv"}),
    )
    .await
    .expect("issue");
    let token = parent["token"].as_str().expect("token");
    // A derived token dies with its parent's cap_id.
    let child = strata_core::token::attenuate_unverified(
        token,
        &strata_core::token::Attenuation {
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        },
        SystemTime::now(),
    )
    .expect("attenuate offline")
    .token;
    let (v, follower) = verifier(&node);
    assert!(follower.wait_ready(Duration::from_secs(5)).await);
    let mut news = follower.subscribe();
    v.authorize(Some(token), &READ)
        .expect("allowed before the revoke");
    v.authorize(Some(&child), &READ)
        .expect("child allowed before the revoke");

    let mut c = Client::connect(node.sock()).await.expect("connect");
    let r = c
        .call("identity.revoke", json!({"cap_id": parent["cap_id"]}), None)
        .await
        .expect("revoke");
    assert_eq!(r["status"], json!("revoked"));
    // Durable before the answer: the line is in the log now.
    let log = std::fs::read_to_string(node.state.join(REVOCATIONS_FILE)).expect("log");
    // The log is preallocated with zeros: its content ends at the first NUL.
    assert_eq!(
        log.trim_end_matches('\0'),
        format!("{}\n", parent["cap_id"].as_str().expect("cap"))
    );

    let (reason, _) = wait_denied(&v, token, Duration::from_secs(2)).await;
    assert_eq!(reason, DenyReason::Revoked);
    let e = v
        .authorize(Some(&child), &READ)
        .expect_err("child revoked too");
    assert_eq!(e.code, Code::Unauthenticated);
    assert!(e.message.contains("revoked"), "{}", e.message);
    v.authorize(other["token"].as_str(), &READ)
        .expect("another cap stays valid");
    let fresh = tokio::time::timeout(Duration::from_secs(2), news.recv())
        .await
        .expect("notified")
        .expect("broadcast");
    assert_eq!(
        &*fresh,
        &[parent["cap_id"].as_str().expect("cap").to_owned()]
    );

    // Revoking twice is fine and does not grow the log; garbage ids are refused.
    c.call("identity.revoke", json!({"cap_id": parent["cap_id"]}), None)
        .await
        .expect("idempotent");
    assert_eq!(srv.identity.revocation_seq(), 1);
    let e = c
        .call("identity.revoke", json!({"cap_id": "abc"}), None)
        .await
        .expect_err("not an id");
    assert_eq!(code_of(&e), Some(Code::InvalidArgument));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verifier_that_was_down_catches_up_and_denies_until_then() {
    let node = Node::new("id-down");
    let srv = start(node.config());
    let t = issue(
        &node.sock(),
        json!({"service":"fs","actions":["read"],"path_prefix":"/srv"}),
    )
    .await
    .expect("issue");
    let token = t["token"].as_str().expect("token");
    let (v, follower) = verifier(&node);
    assert!(follower.wait_ready(Duration::from_secs(5)).await);
    v.authorize(Some(token), &READ).expect("allowed");
    drop(follower);
    drop(v);

    // Revoked while the verifier is down.
    srv.identity
        .revoke_id(t["cap_id"].as_str().expect("cap"))
        .await
        .expect("revoke");

    // A restarted verifier knows nothing yet: it denies everything until it caught up.
    let key = read_public_key(&node.runtime.join(PUBLIC_KEY_FILE)).expect("key");
    let set = shared_set();
    let v = Verifier::new(key, "node-1", Arc::clone(&set)).log_allowed(false);
    let d = v
        .decide(Some(token), &READ, SystemTime::now())
        .expect_err("not ready");
    assert_eq!(d.reason, DenyReason::RevocationsUnavailable);
    assert_eq!(d.code, Code::Unavailable);
    let follower = RevocationFollower::spawn(FollowerConfig::new(node.sock()), set);
    assert!(follower.wait_ready(Duration::from_secs(5)).await);
    assert_eq!(follower.seq(), 1);
    let d = v
        .decide(Some(token), &READ, SystemTime::now())
        .expect_err("revoked");
    assert_eq!(d.reason, DenyReason::Revoked);

    // The follower also survives an identity restart and catches up on revocations made
    // while it was disconnected.
    let t2 = issue(
        &node.sock(),
        json!({"service":"fs","actions":["read"],"path_prefix":"/srv"}),
    )
    .await
    .expect("issue");
    srv.stop().await;
    let srv = start(node.config());
    srv.identity
        .revoke_id(t2["cap_id"].as_str().expect("cap"))
        .await
        .expect("revoke");
    let (reason, _) =
        wait_denied(&v, t2["token"].as_str().expect("t"), Duration::from_secs(5)).await;
    assert_eq!(reason, DenyReason::Revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_key_old_tokens_and_revocations() {
    let node = Node::new("id-restart");
    let srv = start(node.config());
    let keep = issue(
        &node.sock(),
        json!({"service":"fs","actions":["read"],"path_prefix":"/srv"}),
    )
    .await
    .expect("issue");
    let gone = issue(
        &node.sock(),
        json!({"service":"fs","actions":["read"],"path_prefix":"/srv"}),
    )
    .await
    .expect("issue");
    srv.identity
        .revoke_id(gone["cap_id"].as_str().expect("cap"))
        .await
        .expect("revoke");
    let public_before = std::fs::read_to_string(node.runtime.join(PUBLIC_KEY_FILE)).expect("pub");
    let key_before = std::fs::read(node.state.join(KEY_FILE)).expect("key");
    srv.stop().await;
    // The runtime dir is a tmpfs in production: a reboot empties it.
    std::fs::remove_file(node.runtime.join(PUBLIC_KEY_FILE)).expect("rm pub");

    let srv = start(node.config());
    assert_eq!(
        std::fs::read(node.state.join(KEY_FILE)).expect("key"),
        key_before
    );
    assert_eq!(
        std::fs::read_to_string(node.runtime.join(PUBLIC_KEY_FILE)).expect("pub republished"),
        public_before
    );
    assert_eq!(srv.identity.revocation_seq(), 1);
    let (v, follower) = verifier(&node);
    assert!(follower.wait_ready(Duration::from_secs(5)).await);
    v.authorize(keep["token"].as_str(), &READ)
        .expect("old token verifies after restart");
    let d = v
        .decide(gone["token"].as_str(), &READ, SystemTime::now())
        .expect_err("still revoked");
    assert_eq!(d.reason, DenyReason::Revoked);
    let mut c = Client::connect(node.sock()).await.expect("connect");
    let i = c
        .call("identity.introspect", json!({"token": keep["token"]}), None)
        .await
        .expect("introspect");
    assert_eq!(i["valid"], json!(true), "{i}");
    let i = c
        .call("identity.introspect", json!({"token": gone["token"]}), None)
        .await
        .expect("introspect");
    assert_eq!(
        (
            i["valid"].clone(),
            i["revoked"].clone(),
            i["reason"].clone()
        ),
        (json!(false), json!(true), json!("revoked"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introspect_reports_claims_and_validity() {
    let node = Node::new("id-introspect");
    let srv = start(node.config());
    let t = issue(
        &node.sock(),
        json!({"service":"fs","rights":["fs.read","fs.list"],"path_prefix":"/srv","rate_limit":0.5,"ttl_seconds":60}),
    )
    .await
    .expect("issue");
    let token = t["token"].as_str().expect("token");
    let i = srv.identity.introspect(token, SystemTime::now());
    assert_eq!(i["valid"], json!(true));
    assert_eq!(i["cap_id"], t["cap_id"]);
    assert_eq!(i["service"], json!("fs"));
    assert_eq!(i["rights"], json!(["list", "read"]));
    assert_eq!(i["constraints"]["path_prefix"], json!("/srv"));
    assert_eq!(i["constraints"]["rate_limit"], json!(0.5));
    assert_eq!(i["expires"], t["expires"]);
    assert_eq!(i["issuer"], json!("strata-identity@node-1"));
    assert_eq!(i["audience"], json!("node-1"));
    assert_eq!(i["revoked"], json!(false));
    let later = SystemTime::now() + Duration::from_secs(120);
    let i = srv.identity.introspect(token, later);
    assert_eq!(
        (i["valid"].clone(), i["reason"].clone()),
        (json!(false), json!("expired"))
    );
    let i = srv.identity.introspect("garbage", SystemTime::now());
    assert_eq!(
        (i["valid"].clone(), i["reason"].clone()),
        (json!(false), json!("malformed_token"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_long_poll_returns_as_soon_as_a_revoke_lands() {
    let node = Node::new("id-poll");
    let srv = start(node.config());
    let t = issue(&node.sock(), json!({"service":"fs","actions":["read"]}))
        .await
        .expect("issue");
    let mut c = Client::connect(node.sock()).await.expect("connect");
    let r = c
        .call("identity.revocations", json!({"since": 0}), None)
        .await
        .expect("list");
    assert_eq!(r, json!({"revocations": [], "seq": 0}));
    let sock = node.sock();
    let poll = tokio::spawn(async move {
        let mut c = Client::connect(sock).await.expect("connect");
        let started = Instant::now();
        let r = c
            .call(
                "identity.revocations",
                json!({"since": 0, "wait_ms": 10000}),
                None,
            )
            .await
            .expect("poll");
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    srv.identity
        .revoke_id(t["cap_id"].as_str().expect("cap"))
        .await
        .expect("revoke");
    let (r, waited) = poll.await.expect("join");
    assert_eq!(r["seq"], json!(1));
    assert_eq!(r["revocations"], json!([t["cap_id"]]));
    assert!(
        waited < Duration::from_secs(5),
        "the poll returned on news, not at its timeout"
    );
    // A verifier that saw more than the log holds gets everything, flagged.
    let r = c
        .call("identity.revocations", json!({"since": 7}), None)
        .await
        .expect("reset");
    assert_eq!(
        (r["seq"].clone(), r["reset"].clone()),
        (json!(1), json!(true))
    );
}

#[tokio::test]
async fn a_damaged_key_or_log_stops_the_service_instead_of_replacing_state() {
    let node = Node::new("id-damaged");
    drop(Identity::open(node.config()).expect("first start creates the key"));
    let key = node.state.join(KEY_FILE);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let e = Identity::open(node.config()).expect_err("world-readable key");
    assert!(e.to_string().contains("has mode 644"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let good = std::fs::read(&key).expect("key");
    std::fs::write(&key, b"not hex\n").expect("corrupt");
    let e = Identity::open(node.config()).expect_err("corrupt key");
    assert!(e.to_string().contains("is corrupt"), "{e}");
    assert_eq!(
        std::fs::read(&key).expect("key"),
        b"not hex\n",
        "never replaced"
    );
    std::fs::write(&key, &good).expect("restore");
    std::fs::write(node.state.join(REVOCATIONS_FILE), b"zz\n").expect("corrupt log");
    let e = Identity::open(node.config()).expect_err("corrupt log");
    assert!(e.to_string().contains("revocations.log line 1"), "{e}");
    std::fs::write(node.state.join(REVOCATIONS_FILE), b"").expect("empty log");
    Identity::open(node.config()).expect("positive control: restored state opens");
}

/// Helper process for `call_as_nobody`, not a test of its own.
#[test]
#[ignore = "helper run by other tests as another user"]
fn child_client() {
    as_nobody::child_client_main();
}
