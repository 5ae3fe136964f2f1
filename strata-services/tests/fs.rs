//! strata-fs on real sockets and real files, with a real identity service and revocation
//! follower: list → open → read → revoke → denied ("revoked") with the handles freed;
//! binary files round-trip byte for byte; every traversal spelling is refused with a
//! positive control beside it; handles are bound to their capability and limited.

mod as_nobody;
mod node;

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Value, json};
use strata_core::protocol::{Code, RpcError};
use strata_core::token::{Attenuation, RunLimits, attenuate};
use strata_services::fs::{FsConfig, FsService};
use strata_services::ipc::ClientError;

use node::{Node, Served, eventually};

const ALL: [&str; 5] = ["open", "read", "list", "stat", "close"];

struct Fs {
    node: Node,
    fs: Arc<FsService>,
    _served: Served,
    _follower: strata_services::revocation::RevocationFollower,
    /// The served root.
    root: PathBuf,
    /// `<root>/pub`, the prefix of most tokens.
    prefix: PathBuf,
}

/// root/
///   secret.txt
///   pub/ file.txt, sub/inner.txt, empty/, in_link -> sub/inner.txt,
///        link_out -> /etc/passwd, rel_out -> ../secret.txt, proc_link -> /proc/self/root,
///        rel_proc -> ../../../../../../../../proc/self/root, dir_out -> ..
async fn start(tag: &str, per_cap: usize) -> Fs {
    let node = Node::start(tag).await;
    let root = node.path("root");
    let prefix = root.join("pub");
    std::fs::create_dir_all(prefix.join("sub")).expect("mkdir");
    std::fs::create_dir_all(prefix.join("empty")).expect("mkdir");
    std::fs::write(root.join("secret.txt"), "top secret\n").expect("write");
    std::fs::write(prefix.join("file.txt"), "hello strata\n").expect("write");
    std::fs::write(prefix.join("sub/inner.txt"), "inner\n").expect("write");
    symlink("sub/inner.txt", prefix.join("in_link")).expect("symlink");
    symlink("/etc/passwd", prefix.join("link_out")).expect("symlink");
    symlink("../secret.txt", prefix.join("rel_out")).expect("symlink");
    symlink("/proc/self/root", prefix.join("proc_link")).expect("symlink");
    symlink(
        "../../../../../../../../proc/self/root",
        prefix.join("rel_proc"),
    )
    .expect("symlink");
    symlink("..", prefix.join("dir_out")).expect("symlink");
    let setup = node.verifier().await;
    let mut config = FsConfig::new(vec![root.to_string_lossy().into_owned()]);
    config.max_handles_per_cap = per_cap;
    let fs = Arc::new(FsService::new(&config, Arc::clone(&setup.verifier)).expect("fs"));
    tokio::spawn(Arc::clone(&fs).maintain(setup.follower.subscribe(), Duration::from_secs(30)));
    let served = node.serve("fs", Arc::clone(&fs));
    Fs {
        node,
        fs,
        _served: served,
        _follower: setup.follower,
        root,
        prefix,
    }
}

impl Fs {
    async fn token(&self, prefix: Option<&PathBuf>) -> (String, String) {
        let mut p = json!({"service": "fs", "actions": ALL});
        if let Some(prefix) = prefix {
            p["path_prefix"] = json!(prefix.to_string_lossy());
        }
        self.node.issue(p).await
    }

    async fn call(&self, method: &str, params: Value, token: &str) -> Result<Value, RpcError> {
        match self.node.call("fs", method, params, Some(token)).await {
            Ok(v) => Ok(v),
            Err(ClientError::Rpc(e)) => Err(e),
            Err(e) => panic!("{method}: transport failure: {e}"),
        }
    }

    async fn open(&self, path: &str, token: &str) -> Result<String, RpcError> {
        self.call("fs.open", json!({"path": path}), token)
            .await
            .map(|v| v["handle"].as_str().expect("handle").to_owned())
    }
}

#[track_caller]
fn expect_code(r: Result<Value, RpcError>, code: Code, fragment: &str, what: &str) -> RpcError {
    let e = r.expect_err(&format!("{what}: must be refused"));
    assert_eq!(e.code, code, "{what}: {e}");
    assert!(
        e.message.contains(fragment),
        "{what}: message `{}` lacks `{fragment}`",
        e.message
    );
    e
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v["data_b64"].as_str().expect("data_b64 always present"))
        .expect("valid base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_open_read_revoke_denies_and_frees_handles() {
    let t = start("fs-revoke", 64).await;
    let (token, cap) = t.token(Some(&t.prefix)).await;
    let (other, _) = t.token(Some(&t.prefix)).await;

    // list "." is the prefix, not the process's working directory.
    let listing = t
        .call("fs.list", json!({"path": "."}), &token)
        .await
        .expect("list");
    let names: Vec<&str> = listing["entries"]
        .as_array()
        .expect("entries is an array")
        .iter()
        .map(|e| e["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        names,
        vec![
            "dir_out",
            "empty",
            "file.txt",
            "in_link",
            "link_out",
            "proc_link",
            "rel_out",
            "rel_proc",
            "sub"
        ]
    );
    let sub = &listing["entries"][8];
    assert_eq!(
        (sub["is_dir"].as_bool(), sub["type"].as_str()),
        (Some(true), Some("dir"))
    );
    let file = &listing["entries"][2];
    assert_eq!(
        (file["is_dir"].as_bool(), file["size"].as_u64()),
        (Some(false), Some(13))
    );
    // An empty directory lists as an empty array, never null.
    let empty = t
        .call("fs.list", json!({"path": "empty"}), &token)
        .await
        .expect("list");
    assert_eq!(empty["entries"], json!([]));

    let h = t.open("file.txt", &token).await.expect("open");
    let h2 = t.open("sub/inner.txt", &token).await.expect("open");
    let r = t
        .call(
            "fs.read",
            json!({"handle": h, "offset": 0, "size": 4096}),
            &token,
        )
        .await
        .expect("read");
    assert_eq!(r["data"], "hello strata\n");
    assert_eq!(b64(&r), b"hello strata\n");
    assert_eq!(
        (r["bytes_read"].as_u64(), r["eof"].as_bool()),
        (Some(13), Some(true))
    );
    let h_other = t.open("file.txt", &other).await.expect("other cap opens");
    assert_eq!(t.fs.handles().count_for(&cap), 2);

    t.node.revoke(&cap).await;
    // The follower pushes the revocation: the capability's handles are freed at once.
    assert!(
        eventually(Duration::from_secs(2), || t.fs.handles().count_for(&cap)
            == 0)
        .await,
        "handles of the revoked capability were not freed"
    );
    for (method, params) in [
        ("fs.read", json!({"handle": h, "offset": 0})),
        ("fs.read", json!({"handle": h2})),
        ("fs.open", json!({"path": "file.txt"})),
        ("fs.list", json!({"path": "."})),
        ("fs.stat", json!({"path": "file.txt"})),
    ] {
        let e = expect_code(
            t.call(method, params, &token).await,
            Code::Unauthenticated,
            "revoked",
            method,
        );
        assert_eq!(e.details["reason"], "revoked", "{method}");
        assert_eq!(e.details["cap_id"], json!(cap), "{method}");
    }
    // Positive control: another capability is untouched, its handle still reads.
    let r = t
        .call("fs.read", json!({"handle": h_other, "offset": 6}), &other)
        .await
        .expect("other capability unaffected");
    assert_eq!(r["data"], "strata\n");
    assert_eq!(t.fs.handles().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_are_bound_limited_and_checked_against_the_presenting_token() {
    let t = start("fs-handles", 3).await;
    let (a, cap_a) = t.token(Some(&t.prefix)).await;
    let (b, _) = t.token(Some(&t.prefix)).await;
    let hs: Vec<String> = open_n(&t, &a, 3).await;
    expect_code(
        t.call("fs.open", json!({"path": "file.txt"}), &a).await,
        Code::ResourceExhausted,
        "already holds 3 open handles",
        "4th handle",
    );
    // Another capability has its own budget.
    let hb = t.open("file.txt", &b).await.expect("b opens");
    // A's handle is A's: B can neither read nor close it.
    expect_code(
        t.call("fs.read", json!({"handle": hs[0]}), &b).await,
        Code::PermissionDenied,
        "opened by another capability",
        "foreign read",
    );
    expect_code(
        t.call("fs.close", json!({"handle": hs[0]}), &b).await,
        Code::PermissionDenied,
        "opened by another capability",
        "foreign close",
    );
    let closed = t
        .call("fs.close", json!({"handle": hs[0]}), &a)
        .await
        .expect("close");
    assert_eq!(closed["status"], "closed");
    assert_eq!(t.fs.handles().count_for(&cap_a), 2);
    t.open("file.txt", &a)
        .await
        .expect("room again after close");
    expect_code(
        t.call("fs.read", json!({"handle": hs[0]}), &a).await,
        Code::NotFound,
        "no open handle",
        "closed handle",
    );
    for bad in ["", "h", "1", "hx", "h-1", "h1 ", "../h1"] {
        expect_code(
            t.call("fs.read", json!({"handle": bad}), &a).await,
            Code::InvalidArgument,
            "malformed handle",
            bad,
        );
    }
    expect_code(
        t.call("fs.read", json!({"handle": "h999999"}), &a).await,
        Code::NotFound,
        "no open handle `h999999`",
        "unknown handle",
    );
    // Without a token nothing is revealed about handles.
    let e = t
        .node
        .call("fs", "fs.read", json!({"handle": hb}), None)
        .await;
    let e = e.expect_err("no token").rpc().cloned().expect("rpc error");
    assert_eq!(e.code, Code::Unauthenticated, "{e}");

    // An attenuated token (same cap_id, narrower prefix) may not read a handle its parent
    // opened outside its prefix; inside its prefix it may open and read.
    let key = t.node.identity.public_key();
    let narrow = attenuate(
        &a,
        &key,
        &Attenuation {
            path_prefix: Some(t.prefix.join("sub").to_string_lossy().into_owned()),
            ..Attenuation::default()
        },
        SystemTime::now(),
        &RunLimits::default(),
    )
    .expect("attenuate");
    expect_code(
        t.call("fs.read", json!({"handle": hs[1]}), &narrow.token)
            .await,
        Code::PermissionDenied,
        "outside the token's path prefix",
        "narrower token on the parent's handle",
    );
    // The attenuated token shares its capability's handle budget: make room first.
    expect_code(
        t.call("fs.open", json!({"path": "inner.txt"}), &narrow.token)
            .await,
        Code::ResourceExhausted,
        "already holds 3",
        "attenuated token shares the budget",
    );
    t.call("fs.close", json!({"handle": hs[2]}), &a)
        .await
        .expect("close");
    let hn = t
        .open("inner.txt", &narrow.token)
        .await
        .expect("narrow opens inside its prefix");
    let r = t
        .call("fs.read", json!({"handle": hn}), &narrow.token)
        .await
        .expect("read");
    assert_eq!(r["data"], "inner\n");
    // Revoking only the attenuation block closes the handle opened with it, not the parent's.
    let block = narrow.revocation_ids.last().expect("block id").clone();
    t.node.revoke(&block).await;
    assert!(
        eventually(Duration::from_secs(2), || t
            .fs
            .handles()
            .peek(&hn)
            .is_none())
        .await,
        "handle of the revoked block still open"
    );
    let r = t
        .call("fs.read", json!({"handle": hs[1]}), &a)
        .await
        .expect("parent still reads");
    assert_eq!(r["data"], "hello strata\n");
    let e = expect_code(
        t.call("fs.read", json!({"handle": hn}), &a).await,
        Code::PermissionDenied,
        "revoked",
        "handle opened by the revoked block, presented by the parent",
    );
    assert_eq!(e.details["reason"], "revoked");
}

async fn open_n(t: &Fs, token: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            t.open("file.txt", token)
                .await
                .expect("open within the limit"),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_and_text_files_round_trip_byte_for_byte() {
    let t = start("fs-binary", 64).await;
    let (token, _) = t.token(Some(&t.prefix)).await;
    // Every byte value, in a pattern that is not valid UTF-8, larger than one read.
    let binary: Vec<u8> = (0..700_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(t.prefix.join("blob.bin"), &binary).expect("write");
    // UTF-8 text with multi-byte characters and control characters, larger than one read.
    let text = "αβγ \"quoted\" \\ tab\t nul\u{0} ünïcødé 🦀\n".repeat(20_000);
    std::fs::write(t.prefix.join("text.txt"), &text).expect("write");

    for (name, want, utf8) in [
        ("blob.bin", binary.clone(), false),
        ("text.txt", text.clone().into_bytes(), true),
    ] {
        let h = t.open(name, &token).await.expect("open");
        let mut got = Vec::new();
        let mut reads = 0;
        loop {
            // No offset: the handle's cursor continues; a size over the maximum is a short read.
            let r = t
                .call("fs.read", json!({"handle": h, "size": 1_048_576}), &token)
                .await
                .expect("read");
            reads += 1;
            let chunk = b64(&r);
            assert_eq!(r["bytes_read"].as_u64(), Some(chunk.len() as u64));
            assert_eq!(r["offset"].as_u64(), Some(got.len() as u64));
            if utf8 {
                assert_eq!(
                    r["data"].as_str().map(str::as_bytes),
                    Some(chunk.as_slice()),
                    "{name}"
                );
            } else {
                assert!(
                    r.get("data").is_none(),
                    "{name}: data present for binary bytes"
                );
            }
            got.extend_from_slice(&chunk);
            if r["eof"] == true {
                break;
            }
            assert!(!chunk.is_empty(), "{name}: empty read before eof");
        }
        assert!(reads > 1, "{name} must take several reads");
        assert_eq!(got.len(), want.len(), "{name}");
        assert!(got == want, "{name}: content differs");
    }
    // Reading past the end: nothing, eof.
    let h = t.open("file.txt", &token).await.expect("open");
    let r = t
        .call("fs.read", json!({"handle": h, "offset": 1000}), &token)
        .await
        .expect("read");
    assert_eq!(
        (
            r["bytes_read"].as_u64(),
            r["eof"].as_bool(),
            r["data"].as_str()
        ),
        (Some(0), Some(true), Some(""))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_attempts_are_refused_with_positive_controls() {
    let t = start("fs-traversal", 64).await;
    let (token, _) = t.token(Some(&t.prefix)).await;
    let prefix = t.prefix.to_string_lossy().into_owned();
    let root = t.root.to_string_lossy().into_owned();
    let long_component = "a".repeat(300);
    let long_path = "a/".repeat(2100);

    // (path, expected code, message fragment)
    let refused: Vec<(String, Code, &str)> = vec![
        (
            "../secret.txt".into(),
            Code::PermissionDenied,
            "contains `..`",
        ),
        (
            "./../secret.txt".into(),
            Code::PermissionDenied,
            "contains `..`",
        ),
        (
            "sub/../../secret.txt".into(),
            Code::PermissionDenied,
            "contains `..`",
        ),
        (
            "sub/./../../secret.txt".into(),
            Code::PermissionDenied,
            "contains `..`",
        ),
        ("..".into(), Code::PermissionDenied, "contains `..`"),
        (
            "sub//..//..//secret.txt".into(),
            Code::PermissionDenied,
            "contains `..`",
        ),
        (
            format!("{prefix}/../secret.txt"),
            Code::PermissionDenied,
            "contains `..`",
        ),
        (
            "/etc/passwd".into(),
            Code::PermissionDenied,
            "outside the token's path prefix",
        ),
        (
            format!("{root}/secret.txt"),
            Code::PermissionDenied,
            "outside the token's path prefix",
        ),
        (
            format!("{prefix}x/file.txt"),
            Code::PermissionDenied,
            "outside the token's path prefix",
        ),
        (
            "/proc/self/root/etc/passwd".into(),
            Code::PermissionDenied,
            "outside the token's path prefix",
        ),
        (
            "/proc/self/cwd/file.txt".into(),
            Code::PermissionDenied,
            "outside the token's path prefix",
        ),
        (
            "link_out".into(),
            Code::PermissionDenied,
            "resolves outside",
        ),
        ("rel_out".into(), Code::PermissionDenied, "resolves outside"),
        (
            "proc_link/etc/passwd".into(),
            Code::PermissionDenied,
            "resolves outside",
        ),
        (
            "rel_proc/etc/passwd".into(),
            Code::PermissionDenied,
            "resolves outside",
        ),
        (
            "dir_out/secret.txt".into(),
            Code::PermissionDenied,
            "resolves outside",
        ),
        (
            "file.txt\0/../../etc/passwd".into(),
            Code::InvalidArgument,
            "NUL byte",
        ),
        ("\0".into(), Code::InvalidArgument, "NUL byte"),
        (long_path.clone(), Code::InvalidArgument, "at most 4095"),
        (long_component.clone(), Code::InvalidArgument, "too long"),
    ];
    for (path, code, fragment) in &refused {
        for (method, params) in [
            ("fs.open", json!({"path": path})),
            ("fs.stat", json!({"path": path})),
            ("fs.list", json!({"path": path})),
        ] {
            let shown: String = path.chars().take(60).collect();
            expect_code(
                t.call(method, params, &token).await,
                *code,
                fragment,
                &format!("{method} {shown:?}"),
            );
        }
    }
    // Positive controls: the same kinds of spelling that stay inside are served.
    for ok in [
        "file.txt".to_owned(),
        "./file.txt".to_owned(),
        "sub//inner.txt".to_owned(),
        "sub/./inner.txt".to_owned(),
        "in_link".to_owned(),
        format!("{prefix}/file.txt"),
        format!("{prefix}/sub/inner.txt"),
    ] {
        let h = t
            .open(&ok, &token)
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        let r = t
            .call("fs.read", json!({"handle": h}), &token)
            .await
            .expect("read");
        assert!(r["bytes_read"].as_u64().unwrap_or(0) > 0, "{ok}");
    }
    t.call("fs.list", json!({"path": prefix}), &token)
        .await
        .expect("absolute prefix lists");
    t.call("fs.stat", json!({"path": "proc_link"}), &token)
        .await
        .expect_err("a magic link target is refused even for stat");
    // Literal names that look like encodings are not decoded: simply absent.
    for literal in ["..%2fsecret.txt", "..\\secret.txt", "....//secret.txt"] {
        expect_code(
            t.call("fs.open", json!({"path": literal}), &token).await,
            Code::NotFound,
            "no such file",
            literal,
        );
    }
    // A long name inside the limits but absent is NOT_FOUND (the limit is not a blanket refusal).
    expect_code(
        t.call("fs.open", json!({"path": "b".repeat(255)}), &token)
            .await,
        Code::NotFound,
        "no such file",
        "255-byte name",
    );
    // Kinds that are not files.
    expect_code(
        t.call("fs.open", json!({"path": "sub"}), &token).await,
        Code::InvalidArgument,
        "is a directory",
        "open dir",
    );
    expect_code(
        t.call("fs.list", json!({"path": "file.txt"}), &token).await,
        Code::InvalidArgument,
        "is not a directory",
        "list file",
    );
    expect_code(
        t.call("fs.open", json!({"path": "missing"}), &token).await,
        Code::NotFound,
        "no such file",
        "missing",
    );

    // Without a path_prefix the token is limited to the served roots.
    let (wide, _) = t.token(None).await;
    for (path, code, fragment) in [
        (
            "/etc/passwd".to_owned(),
            Code::PermissionDenied,
            "outside the roots served",
        ),
        (
            "/".to_owned(),
            Code::PermissionDenied,
            "outside the roots served",
        ),
        (
            format!("{root}/../etc/passwd"),
            Code::PermissionDenied,
            "contains `..`",
        ),
        (
            format!("{prefix}/link_out"),
            Code::PermissionDenied,
            "resolves outside",
        ),
        (
            format!("{prefix}/rel_proc/etc/passwd"),
            Code::PermissionDenied,
            "resolves outside",
        ),
        (
            "secret.txt".to_owned(),
            Code::InvalidArgument,
            "needs a token with a path_prefix",
        ),
    ] {
        expect_code(
            t.call("fs.open", json!({"path": path}), &wide).await,
            code,
            fragment,
            &path,
        );
    }
    let h = t
        .open(&format!("{root}/secret.txt"), &wide)
        .await
        .expect("inside the root");
    let r = t
        .call("fs.read", json!({"handle": h}), &wide)
        .await
        .expect("read");
    assert_eq!(r["data"], "top secret\n");
    // rel_out stays inside the root (it only leaves the prefix): served for the wide token.
    t.open(&format!("{prefix}/rel_out"), &wide)
        .await
        .expect("inside the root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_for_other_actions_services_or_paths_are_refused() {
    let t = start("fs-authz", 64).await;
    let (list_only, _) = t
        .node
        .issue(json!({"service": "fs", "actions": ["list"], "path_prefix": t.prefix.to_string_lossy()}))
        .await;
    t.call("fs.list", json!({"path": "."}), &list_only)
        .await
        .expect("list allowed");
    expect_code(
        t.call("fs.open", json!({"path": "file.txt"}), &list_only)
            .await,
        Code::PermissionDenied,
        "does not grant fs.open",
        "open with a list-only token",
    );
    let (web, _) = t
        .node
        .issue(json!({"service": "web", "actions": ["*"]}))
        .await;
    expect_code(
        t.call("fs.list", json!({"path": "/"}), &web).await,
        Code::PermissionDenied,
        "token is for service `web`",
        "token of another service",
    );
    expect_code(
        t.call("fs.list", json!({"path": "."}), "not-a-token").await,
        Code::Unauthenticated,
        "not a valid Biscuit",
        "garbage token",
    );
    expect_code(
        t.call(
            "fs.open",
            json!({"path": "file.txt", "extra": 1}),
            &list_only,
        )
        .await,
        Code::InvalidArgument,
        "unknown field `extra`",
        "unknown parameter",
    );
}
