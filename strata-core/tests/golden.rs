//! Golden vectors: tokens minted with a fixed key, checked in with their expected
//! authorization outcomes under `tests/golden/`.
//!
//! Biscuit signs every block with a fresh random key, so tokens cannot be re-derived: they
//! are stored. `golden_vectors_hold` verifies them; `regenerate_golden_vectors` (ignored)
//! rewrites them: `cargo test -p strata-core --test golden -- --ignored regenerate`.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Algorithm, Biscuit, KeyPair, PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};
use strata_core::authorize::{
    AuthzContext, AuthzRequest, RateLimiter, RevocationSet, TokenCache, authorize,
};
use strata_core::token::{Attenuation, RunLimits, TokenSpec, attenuate, hex, mint, unhex};

const T0: u64 = 1_800_000_000;
const NODE: &str = "node-1";

#[derive(Debug, Serialize, Deserialize)]
struct Golden {
    /// The public key every token verifies with.
    public_key: String,
    audience: String,
    vectors: Vec<Vector>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Vector {
    name: String,
    token: String,
    /// Hex revocation ids revoked before the requests.
    #[serde(default)]
    revoked: Vec<String>,
    /// Evaluated in order against one rate limiter.
    requests: Vec<Expect>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Expect {
    now: u64,
    service: String,
    action: String,
    #[serde(default)]
    path: Option<String>,
    /// `allow` or a deny reason (`revoked`, `path_outside_prefix`, …).
    expect: String,
    /// For allowed requests with a path: the resolved base and relative path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scoped: Option<(String, String)>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn key_path() -> PathBuf {
    dir().join("root.key")
}

fn vectors_path() -> PathBuf {
    dir().join("vectors.json")
}

fn req(now: u64, service: &str, action: &str, path: Option<&str>, expect: &str) -> Expect {
    Expect {
        now,
        service: service.into(),
        action: action.into(),
        path: path.map(str::to_owned),
        expect: expect.into(),
        scoped: None,
    }
}

fn scoped(mut e: Expect, base: &str, relative: &str) -> Expect {
    e.scoped = Some((base.into(), relative.into()));
    e
}

/// Evaluates one vector; returns a description of every mismatch.
fn evaluate(root: &PublicKey, v: &Vector) -> Vec<String> {
    let mut revoked = RevocationSet::ready();
    for id in &v.revoked {
        if revoked.insert_hex(id).is_none() {
            return vec![format!("{}: revoked id `{id}` is not hex", v.name)];
        }
    }
    let limiter = RateLimiter::default();
    let cache = TokenCache::default();
    let limits = RunLimits::default();
    let ctx = AuthzContext {
        root,
        audience: NODE,
        revocations: &revoked,
        limiter: &limiter,
        cache: Some(&cache),
        limits: &limits,
    };
    let mut problems = Vec::new();
    for (i, e) in v.requests.iter().enumerate() {
        let r = AuthzRequest {
            service: &e.service,
            action: &e.action,
            path: e.path.as_deref(),
        };
        let now = UNIX_EPOCH + Duration::from_secs(e.now);
        let got = authorize(&ctx, Some(&v.token), &r, now);
        let (outcome, scope) = match &got {
            Ok(g) => (
                "allow".to_owned(),
                g.path
                    .as_ref()
                    .map(|p| (p.base.clone(), p.relative.clone())),
            ),
            Err(d) => (d.reason.as_str().to_owned(), None),
        };
        if outcome != e.expect || (e.expect == "allow" && scope != e.scoped) {
            problems.push(format!(
                "{} request {i} ({}.{} {:?} at {}): expected {} {:?}, got {outcome} {scope:?} ({:?})",
                v.name,
                e.service,
                e.action,
                e.path,
                e.now,
                e.expect,
                e.scoped,
                got.err().map(|d| d.message)
            ));
        }
    }
    problems
}

#[test]
fn golden_vectors_hold() {
    let text = std::fs::read_to_string(vectors_path()).expect("tests/golden/vectors.json");
    let golden: Golden = serde_json::from_str(&text).expect("vectors.json parses");
    assert_eq!(golden.audience, NODE);
    let root: PublicKey = golden.public_key.parse().expect("public key parses");
    // The checked-in private key is the one the public key belongs to.
    let key_hex = std::fs::read_to_string(key_path()).expect("tests/golden/root.key");
    let private = PrivateKey::from_bytes_hex(key_hex.trim(), Algorithm::Ed25519).expect("key");
    assert_eq!(KeyPair::from(&private).public(), root);
    assert!(
        golden.vectors.len() >= 15,
        "too few vectors: {}",
        golden.vectors.len()
    );
    let mut problems = Vec::new();
    let (mut allows, mut denies) = (0, 0);
    for v in &golden.vectors {
        problems.extend(evaluate(&root, v));
        for e in &v.requests {
            if e.expect == "allow" {
                allows += 1;
            } else {
                denies += 1;
            }
        }
    }
    assert!(
        problems.is_empty(),
        "golden mismatches:\n{}",
        problems.join("\n")
    );
    assert!(
        allows >= 10 && denies >= 15,
        "allows {allows}, denies {denies}"
    );
}

fn spec(service: &str, actions: &[&str], prefix: Option<&str>, rate: Option<f64>) -> TokenSpec {
    TokenSpec {
        service: service.into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        path_prefix: prefix.map(str::to_owned),
        rate_limit: rate,
        ttl: Duration::from_secs(3600),
        issuer: "strata-identity@node-1".into(),
        audience: NODE.into(),
    }
}

fn append_raw(kp: &KeyPair, token: &str, code: &str) -> String {
    Biscuit::from_base64(token, kp.public())
        .and_then(|b| b.append(BlockBuilder::new().code(code)?))
        .and_then(|b| b.to_base64())
        .expect("append raw block")
}

#[test]
#[ignore = "rewrites tests/golden; run by hand when the token format changes on purpose"]
fn regenerate_golden_vectors() {
    // A fixed key, derived from a constant, so the public key never changes.
    let seed = blake3::hash(b"strata golden vectors v1");
    let private = PrivateKey::from_bytes(seed.as_bytes(), Algorithm::Ed25519).expect("key");
    let kp = KeyPair::from(&private);
    let now = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
    let t0: SystemTime = now(T0);
    let m = |s: &TokenSpec| mint(&kp, s, t0).expect("mint");
    let limits = RunLimits::default();
    let att = |token: &str, a: Attenuation| {
        attenuate(token, &kp.public(), &a, t0, &limits)
            .expect("attenuate")
            .token
    };
    let a = T0 + 1;

    let fs = m(&spec(
        "fs",
        &["open", "read", "list"],
        Some("/srv/www"),
        None,
    ));
    let fs_read_only = att(
        &fs.token,
        Attenuation {
            actions: Some(BTreeSet::from(["read".to_string()])),
            ..Default::default()
        },
    );
    let fs_narrow = att(
        &fs.token,
        Attenuation {
            path_prefix: Some("/srv/www/static".into()),
            ttl: Some(Duration::from_secs(60)),
            ..Default::default()
        },
    );
    let revoked = m(&spec("fs", &["read"], Some("/srv/www"), None));
    let revoked_child = att(
        &revoked.token,
        Attenuation {
            ttl: Some(Duration::from_secs(120)),
            ..Default::default()
        },
    );
    let slow = m(&spec("fs", &["read"], None, Some(0.5)));
    let admin = m(&spec("identity", &["issue", "revoke"], None, None));
    let any = m(&spec("supervisor", &["*"], None, None));
    let mut other_node_spec = spec("fs", &["read"], None, None);
    other_node_spec.audience = "node-2".into();
    let other_node = m(&other_node_spec);
    let foreign_key = mint(&KeyPair::new(), &spec("fs", &["read"], None, None), t0)
        .expect("mint")
        .token;
    let widen_rights = append_raw(&kp, &fs.token, r#"right("fs", "write"); right("fs", "*");"#);
    let widen_service = append_raw(
        &kp,
        &fs.token,
        r#"service("identity"); right("identity", "issue");"#,
    );
    let widen_time = append_raw(
        &kp,
        &fs.token,
        "check if time($t), $t <= 2100-01-01T00:00:00Z;",
    );
    let widen_path = append_raw(
        &kp,
        &fs.token,
        r#"check if request_pathless(true) or request_path($p), $p.starts_with("/");"#,
    );
    let opaque = append_raw(
        &kp,
        &fs.token,
        r#"check if request_action($a), $a == "list";"#,
    );

    let vectors = vec![
        Vector {
            name: "fs token inside its prefix".into(),
            token: fs.token.clone(),
            revoked: vec![],
            requests: vec![
                scoped(
                    req(a, "fs", "read", Some("a/b.txt"), "allow"),
                    "/srv/www",
                    "a/b.txt",
                ),
                scoped(
                    req(a, "fs", "list", Some("/srv/www/a"), "allow"),
                    "/srv/www",
                    "a",
                ),
                scoped(req(a, "fs", "open", Some("."), "allow"), "/srv/www", ""),
                req(a, "fs", "read", None, "allow"),
            ],
        },
        Vector {
            name: "fs token: traversal and outside paths".into(),
            token: fs.token.clone(),
            revoked: vec![],
            requests: vec![
                req(
                    a,
                    "fs",
                    "read",
                    Some("../etc/passwd"),
                    "path_outside_prefix",
                ),
                req(a, "fs", "read", Some("a/../../x"), "path_outside_prefix"),
                req(a, "fs", "read", Some("/etc/passwd"), "path_outside_prefix"),
                req(a, "fs", "read", Some("/srv/wwwx"), "path_outside_prefix"),
                req(a, "fs", "read", Some("a\u{0}b"), "invalid_path"),
            ],
        },
        Vector {
            name: "fs token: wrong action, service, expired".into(),
            token: fs.token.clone(),
            revoked: vec![],
            requests: vec![
                req(a, "fs", "write", Some("a"), "action_not_granted"),
                req(a, "registry", "list", None, "wrong_service"),
                req(T0 + 3600, "fs", "read", None, "allow"),
                req(T0 + 3601, "fs", "read", None, "expired"),
            ],
        },
        Vector {
            name: "attenuated to read only".into(),
            token: fs_read_only,
            revoked: vec![],
            requests: vec![
                scoped(req(a, "fs", "read", Some("x"), "allow"), "/srv/www", "x"),
                req(a, "fs", "list", Some("x"), "action_not_granted"),
            ],
        },
        Vector {
            name: "attenuated to a narrower prefix and 60 s".into(),
            token: fs_narrow,
            revoked: vec![],
            requests: vec![
                scoped(
                    req(a, "fs", "read", Some("app.js"), "allow"),
                    "/srv/www/static",
                    "app.js",
                ),
                req(
                    a,
                    "fs",
                    "read",
                    Some("/srv/www/index.html"),
                    "path_outside_prefix",
                ),
                req(T0 + 61, "fs", "read", None, "expired"),
            ],
        },
        Vector {
            name: "revoked cap_id".into(),
            token: revoked.token.clone(),
            revoked: vec![revoked.cap_id.clone()],
            requests: vec![req(a, "fs", "read", None, "revoked")],
        },
        Vector {
            name: "child of a revoked cap_id".into(),
            token: revoked_child,
            revoked: vec![revoked.cap_id.clone()],
            requests: vec![req(a, "fs", "read", None, "revoked")],
        },
        Vector {
            name: "not revoked when another id is".into(),
            token: revoked.token.clone(),
            revoked: vec![hex(&[7u8; 64])],
            requests: vec![req(a, "fs", "read", None, "allow")],
        },
        Vector {
            name: "sub-1 rate limit".into(),
            token: slow.token,
            revoked: vec![],
            requests: vec![
                req(a, "fs", "read", None, "allow"),
                req(a, "fs", "read", None, "rate_limited"),
                req(a + 1, "fs", "read", None, "rate_limited"),
                req(a + 2, "fs", "read", None, "allow"),
            ],
        },
        Vector {
            name: "identity admin token".into(),
            token: admin.token,
            revoked: vec![],
            requests: vec![
                req(a, "identity", "issue", None, "allow"),
                req(a, "identity", "revoke", None, "allow"),
                req(a, "identity", "introspect", None, "action_not_granted"),
                req(a, "fs", "read", Some("/x"), "wrong_service"),
            ],
        },
        Vector {
            name: "every action of a service".into(),
            token: any.token,
            revoked: vec![],
            requests: vec![
                req(a, "supervisor", "svc.list", None, "allow"),
                req(a, "supervisor", "status", None, "allow"),
                req(a, "fs", "read", None, "wrong_service"),
            ],
        },
        Vector {
            name: "another node's token".into(),
            token: other_node.token,
            revoked: vec![],
            requests: vec![req(a, "fs", "read", None, "wrong_audience")],
        },
        Vector {
            name: "signed by another key".into(),
            token: foreign_key,
            revoked: vec![],
            requests: vec![req(a, "fs", "read", None, "bad_signature")],
        },
        Vector {
            name: "not a token".into(),
            token: "En0KEwoEZnMuKg".into(),
            revoked: vec![],
            requests: vec![req(a, "fs", "read", None, "malformed_token")],
        },
        Vector {
            name: "widening: rights added in a later block".into(),
            token: widen_rights,
            revoked: vec![],
            requests: vec![
                req(a, "fs", "write", None, "action_not_granted"),
                req(a, "fs", "read", None, "allow"),
            ],
        },
        Vector {
            name: "widening: service added in a later block".into(),
            token: widen_service,
            revoked: vec![],
            requests: vec![req(a, "identity", "issue", None, "wrong_service")],
        },
        Vector {
            name: "widening: later expiry".into(),
            token: widen_time,
            revoked: vec![],
            requests: vec![
                req(T0 + 3600, "fs", "read", None, "allow"),
                req(T0 + 3601, "fs", "read", None, "expired"),
            ],
        },
        Vector {
            name: "widening: root path prefix".into(),
            token: widen_path,
            revoked: vec![],
            requests: vec![
                req(a, "fs", "read", Some("/etc/passwd"), "path_outside_prefix"),
                scoped(req(a, "fs", "read", Some("ok"), "allow"), "/srv/www", "ok"),
            ],
        },
        Vector {
            name: "opaque check evaluated by the engine".into(),
            token: opaque,
            revoked: vec![],
            requests: vec![
                scoped(req(a, "fs", "list", Some("d"), "allow"), "/srv/www", "d"),
                req(a, "fs", "read", Some("d"), "check_failed"),
            ],
        },
    ];
    let golden = Golden {
        public_key: kp.public().to_string(),
        audience: NODE.into(),
        vectors,
    };
    // The expectations above are written by hand; refuse to store vectors that fail them.
    let problems: Vec<String> = golden
        .vectors
        .iter()
        .flat_map(|v| evaluate(&kp.public(), v))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(unhex(&golden.vectors[5].revoked[0]).is_some());
    std::fs::create_dir_all(dir()).expect("mkdir tests/golden");
    std::fs::write(key_path(), format!("{}\n", private.to_bytes_hex())).expect("write key");
    let json = serde_json::to_string_pretty(&golden).expect("json");
    std::fs::write(vectors_path(), json + "\n").expect("write vectors");
}
