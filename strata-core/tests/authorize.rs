//! Every denial reason of `authorize`, attenuation narrowing and widening, the token cache,
//! and a property: the compiled (cached) decision equals the Biscuit engine's decision.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::BlockBuilder;
use biscuit_auth::{Biscuit, KeyPair};
use strata_core::authorize::{
    AuthzContext, AuthzRequest, DenyReason, RateLimiter, RevocationSet, TokenCache, authorize,
    scope_path,
};
use strata_core::protocol::Code;
use strata_core::token::{
    Attenuation, Minted, RunLimits, TokenSpec, attenuate, attenuate_unverified, mint, unhex,
};

const NODE: &str = "node-1";

fn t(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

const T0: u64 = 1_800_000_000;

fn spec(service: &str, actions: &[&str], prefix: Option<&str>) -> TokenSpec {
    TokenSpec {
        service: service.into(),
        actions: actions.iter().map(|s| s.to_string()).collect(),
        path_prefix: prefix.map(str::to_owned),
        rate_limit: None,
        ttl: Duration::from_secs(600),
        issuer: "strata-identity@node-1".into(),
        audience: NODE.into(),
    }
}

struct Fixture {
    kp: KeyPair,
    revoked: RevocationSet,
    limiter: RateLimiter,
    cache: TokenCache,
    limits: RunLimits,
    use_cache: bool,
}

impl Fixture {
    fn new() -> Self {
        Self {
            kp: KeyPair::new(),
            revoked: RevocationSet::ready(),
            limiter: RateLimiter::default(),
            cache: TokenCache::new(64),
            limits: RunLimits::default(),
            use_cache: true,
        }
    }

    fn mint(&self, s: &TokenSpec) -> Minted {
        mint(&self.kp, s, t(T0)).expect("mint")
    }

    fn with_ctx<R>(&self, f: impl FnOnce(&AuthzContext<'_>) -> R) -> R {
        let root = self.kp.public();
        let ctx = AuthzContext {
            root: &root,
            audience: NODE,
            revocations: &self.revoked,
            limiter: &self.limiter,
            cache: self.use_cache.then_some(&self.cache),
            limits: &self.limits,
        };
        f(&ctx)
    }

    fn check(
        &self,
        token: &str,
        service: &str,
        action: &str,
        path: Option<&str>,
        now: u64,
    ) -> Result<strata_core::authorize::Grant, strata_core::authorize::Denial> {
        let req = AuthzRequest {
            service,
            action,
            path,
        };
        self.with_ctx(|ctx| authorize(ctx, Some(token), &req, t(now)))
    }

    fn reason(&self, token: &str, service: &str, action: &str, path: Option<&str>) -> DenyReason {
        self.check(token, service, action, path, T0 + 1)
            .expect_err("must be denied")
            .reason
    }

    fn allowed(&self, token: &str, service: &str, action: &str, path: Option<&str>) {
        if let Err(d) = self.check(token, service, action, path, T0 + 1) {
            panic!("{service}.{action} {path:?} must be allowed, got {d:?}");
        }
    }
}

fn append(f: &Fixture, token: &str, code: &str) -> String {
    let b = Biscuit::from_base64(token, f.kp.public()).expect("parse");
    b.append(BlockBuilder::new().code(code).expect("block source"))
        .expect("append")
        .to_base64()
        .expect("b64")
}

#[test]
fn missing_malformed_bad_signature_and_foreign_tokens() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], Some("/srv")));
    f.allowed(&m.token, "fs", "read", Some("a"));

    let req = AuthzRequest {
        service: "fs",
        action: "read",
        path: None,
    };
    for missing in [None, Some(""), Some("  ")] {
        let d = f
            .with_ctx(|ctx| authorize(ctx, missing, &req, t(T0)))
            .expect_err("no token");
        assert_eq!(
            (d.reason, d.code),
            (DenyReason::MissingToken, Code::Unauthenticated)
        );
        assert!(
            d.message.contains("needs a capability token"),
            "{}",
            d.message
        );
    }
    let d = f
        .check("garbage!", "fs", "read", None, T0)
        .expect_err("garbage");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::MalformedToken, Code::Unauthenticated)
    );

    let other = KeyPair::new();
    let forged = mint(&other, &spec("fs", &["read"], Some("/srv")), t(T0)).expect("mint");
    let d = f
        .check(&forged.token, "fs", "read", None, T0)
        .expect_err("other key");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::BadSignature, Code::Unauthenticated)
    );

    let foreign = Biscuit::builder()
        .code(r#"service("fs"); right("fs", "read");"#)
        .expect("code")
        .build(&f.kp)
        .expect("build")
        .to_base64()
        .expect("b64");
    let d = f
        .check(&foreign, "fs", "read", None, T0)
        .expect_err("not strata");
    assert_eq!(d.reason, DenyReason::UnsupportedToken, "{}", d.message);
}

#[test]
fn revocations_not_ready_deny_with_unavailable() {
    let mut f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], None));
    f.revoked = RevocationSet::new();
    let d = f
        .check(&m.token, "fs", "read", None, T0)
        .expect_err("not ready");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::RevocationsUnavailable, Code::Unavailable)
    );
    f.revoked.set_ready(true);
    f.allowed(&m.token, "fs", "read", None);
}

#[test]
fn revoking_the_cap_id_kills_every_derived_token_even_when_cached() {
    let mut f = Fixture::new();
    let m = f.mint(&spec("fs", &["read", "list"], Some("/srv")));
    let att = Attenuation {
        actions: Some(BTreeSet::from(["read".to_string()])),
        ..Default::default()
    };
    let child = attenuate(&m.token, &f.kp.public(), &att, t(T0), &f.limits).expect("attenuate");
    f.allowed(&m.token, "fs", "read", None);
    f.allowed(&child.token, "fs", "read", None);
    assert_eq!(f.cache.len(), 2, "both verified tokens are cached");

    f.revoked.insert_hex(&m.cap_id).expect("hex");
    for tok in [&m.token, &child.token] {
        let d = f
            .check(tok, "fs", "read", None, T0 + 1)
            .expect_err("revoked");
        assert_eq!(
            (d.reason, d.code),
            (DenyReason::Revoked, Code::Unauthenticated)
        );
        assert!(d.message.contains("revoked"), "{}", d.message);
        assert_eq!(d.cap_id.as_deref(), Some(m.cap_id.as_str()));
        assert_eq!(d.to_rpc_error().details["reason"], "revoked");
    }
}

#[test]
fn revoking_an_attenuated_block_kills_only_that_branch() {
    let mut f = Fixture::new();
    let m = f.mint(&spec("fs", &["read", "list"], None));
    let att = Attenuation {
        actions: Some(BTreeSet::from(["read".to_string()])),
        ..Default::default()
    };
    let child = attenuate(&m.token, &f.kp.public(), &att, t(T0), &f.limits).expect("attenuate");
    f.revoked
        .insert(&unhex(&child.revocation_ids[1]).expect("hex"));
    assert_eq!(
        f.reason(&child.token, "fs", "read", None),
        DenyReason::Revoked
    );
    f.allowed(&m.token, "fs", "read", None);
}

#[test]
fn expiry_is_checked_on_every_call_including_cached() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], None));
    f.check(&m.token, "fs", "read", None, T0 + 600)
        .expect("valid until and including the expiry second");
    let d = f
        .check(&m.token, "fs", "read", None, T0 + 601)
        .expect_err("expired");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::Expired, Code::Unauthenticated)
    );
    assert!(d.message.contains("expired 1 s ago"), "{}", d.message);
}

#[test]
fn audience_service_and_action_are_enforced() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], None));
    f.allowed(&m.token, "fs", "read", None);

    let d = f
        .check(&m.token, "registry", "read", None, T0)
        .expect_err("service");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::WrongService, Code::PermissionDenied)
    );
    assert_eq!(d.message, "token is for service `fs`, not `registry`");

    let d = f
        .check(&m.token, "fs", "list", None, T0)
        .expect_err("action");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::ActionNotGranted, Code::PermissionDenied)
    );
    assert_eq!(d.message, "token does not grant fs.list (granted: read)");

    let mut s = spec("fs", &["read"], None);
    s.audience = "node-2".into();
    let other_node = f.mint(&s);
    assert_eq!(
        f.reason(&other_node.token, "fs", "read", None),
        DenyReason::WrongAudience
    );

    let any = f.mint(&spec("fs", &["*"], None));
    f.allowed(&any.token, "fs", "list", None);
    f.allowed(&any.token, "fs", "stat", None);
    assert_eq!(
        f.reason(&any.token, "registry", "list", None),
        DenyReason::WrongService
    );
}

#[test]
fn paths_are_relative_to_the_prefix_and_cannot_leave_it() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], Some("/srv/www")));
    let g = f
        .check(&m.token, "fs", "read", Some("a/./b.txt"), T0)
        .expect("inside");
    let p = g.path.expect("path");
    assert_eq!(
        (p.base.as_str(), p.relative.as_str()),
        ("/srv/www", "a/b.txt")
    );
    assert_eq!(g.path_prefix.as_deref(), Some("/srv/www"));

    // The original clients send absolute paths beneath the prefix.
    let g = f
        .check(&m.token, "fs", "read", Some("/srv/www/a"), T0)
        .expect("absolute inside");
    assert_eq!(g.path.expect("path").relative, "a");
    let g = f
        .check(&m.token, "fs", "read", Some("/srv/www"), T0)
        .expect("the prefix");
    assert_eq!(g.path.expect("path").relative, "");
    let g = f
        .check(&m.token, "fs", "read", Some(""), T0)
        .expect("empty = prefix");
    assert_eq!(g.path.expect("path").relative, "");
    // A path-less action (a read by handle) is fine under a path-confined token.
    f.allowed(&m.token, "fs", "read", None);

    for escape in [
        "..",
        "../etc/passwd",
        "a/../../etc",
        "a/..",
        "/srv/www/../x",
        "/etc/passwd",
        "/srv/wwwx/a",
        "/srv",
        "/",
    ] {
        let d = f
            .check(&m.token, "fs", "read", Some(escape), T0)
            .expect_err(escape);
        assert_eq!(
            (d.reason, d.code),
            (DenyReason::PathOutsidePrefix, Code::PermissionDenied),
            "{escape}: {}",
            d.message
        );
    }
    let long = "a/".repeat(2100);
    for bad in ["a\0b", long.as_str()] {
        let d = f
            .check(&m.token, "fs", "read", Some(bad), T0)
            .expect_err("invalid");
        assert_eq!(
            (d.reason, d.code),
            (DenyReason::InvalidPath, Code::InvalidArgument)
        );
    }

    // Without a prefix: absolute paths only, still no `..`.
    let free = f.mint(&spec("fs", &["read"], None));
    let g = f
        .check(&free.token, "fs", "read", Some("/etc/hosts"), T0)
        .expect("absolute");
    let p = g.path.expect("path");
    assert_eq!((p.base.as_str(), p.relative.as_str()), ("/", "etc/hosts"));
    assert_eq!(
        f.reason(&free.token, "fs", "read", Some("etc/hosts")),
        DenyReason::InvalidPath
    );
    assert_eq!(
        f.reason(&free.token, "fs", "read", Some("/a/../b")),
        DenyReason::PathOutsidePrefix
    );
}

#[test]
fn root_prefix_scopes_everything() {
    let p = scope_path("/etc/hosts", Some("/")).expect("beneath root");
    assert_eq!((p.base.as_str(), p.relative.as_str()), ("/", "etc/hosts"));
    assert_eq!(p.absolute(), "/etc/hosts");
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], Some("/")));
    f.allowed(&m.token, "fs", "read", Some("etc/hosts"));
    f.allowed(&m.token, "fs", "read", Some("/"));
}

#[test]
fn sub_one_rate_limits_allow_one_request_per_period() {
    let f = Fixture::new();
    let mut s = spec("fs", &["read"], None);
    s.rate_limit = Some(0.5);
    let m = f.mint(&s);
    f.check(&m.token, "fs", "read", None, T0)
        .expect("first request");
    let d = f
        .check(&m.token, "fs", "read", None, T0)
        .expect_err("second at once");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::RateLimited, Code::ResourceExhausted)
    );
    assert_eq!(d.retry_after, Some(Duration::from_secs(2)));
    assert_eq!(d.to_rpc_error().details["retry_after_ms"], 2000);
    let d = f
        .check(&m.token, "fs", "read", None, T0 + 1)
        .expect_err("half refilled");
    assert_eq!(d.reason, DenyReason::RateLimited);
    f.check(&m.token, "fs", "read", None, T0 + 2)
        .expect("refilled after 1/rate s");
}

#[test]
fn rate_limits_above_one_allow_a_burst_then_refill() {
    let f = Fixture::new();
    let mut s = spec("fs", &["read"], None);
    s.rate_limit = Some(3.0);
    let m = f.mint(&s);
    for i in 0..3 {
        f.check(&m.token, "fs", "read", None, T0)
            .unwrap_or_else(|d| panic!("burst {i}: {d:?}"));
    }
    assert_eq!(
        f.check(&m.token, "fs", "read", None, T0)
            .expect_err("4th")
            .reason,
        DenyReason::RateLimited
    );
    f.check(&m.token, "fs", "read", None, T0 + 1)
        .expect("refilled");
}

#[test]
fn attenuated_tokens_share_the_parent_bucket_and_add_their_own() {
    let f = Fixture::new();
    let mut s = spec("fs", &["read"], None);
    s.rate_limit = Some(2.0);
    let m = f.mint(&s);
    let slow = Attenuation {
        rate_limit: Some(0.5),
        ..Default::default()
    };
    let child = attenuate(&m.token, &f.kp.public(), &slow, t(T0), &f.limits).expect("attenuate");
    f.check(&child.token, "fs", "read", None, T0)
        .expect("child first");
    assert_eq!(
        f.check(&child.token, "fs", "read", None, T0)
            .expect_err("child's own bucket")
            .reason,
        DenyReason::RateLimited
    );
    // The parent still has one token of its burst of 2; the child's attempt took none.
    f.check(&m.token, "fs", "read", None, T0)
        .expect("parent second");
    assert_eq!(
        f.check(&m.token, "fs", "read", None, T0)
            .expect_err("parent exhausted")
            .reason,
        DenyReason::RateLimited
    );
}

#[test]
fn attenuation_narrows_rights_expiry_and_path() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read", "list", "open"], Some("/srv")));
    let att = Attenuation {
        actions: Some(BTreeSet::from(["read".to_string(), "list".to_string()])),
        ttl: Some(Duration::from_secs(60)),
        path_prefix: Some("/srv/www".into()),
        rate_limit: None,
    };
    let n = attenuate(&m.token, &f.kp.public(), &att, t(T0), &f.limits).expect("attenuate");
    let g = f
        .check(&n.token, "fs", "read", Some("index.html"), T0 + 1)
        .expect("narrowed read");
    let p = g.path.expect("path");
    assert_eq!(
        (p.base.as_str(), p.relative.as_str()),
        ("/srv/www", "index.html")
    );
    assert_eq!(g.expires, T0 + 60);
    assert_eq!(
        f.reason(&n.token, "fs", "open", None),
        DenyReason::ActionNotGranted
    );
    f.allowed(&m.token, "fs", "open", None);
    assert_eq!(
        f.reason(&n.token, "fs", "read", Some("/srv/other")),
        DenyReason::PathOutsidePrefix
    );
    f.allowed(&m.token, "fs", "read", Some("/srv/other"));
    assert_eq!(
        f.check(&n.token, "fs", "read", None, T0 + 61)
            .expect_err("shorter ttl")
            .reason,
        DenyReason::Expired
    );
    f.check(&m.token, "fs", "read", None, T0 + 61)
        .expect("parent lives on");
}

#[test]
fn widening_blocks_fail_at_authorize() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], Some("/srv/www")));
    // Facts in later blocks are invisible to the verifier's policies.
    let more_rights = append(&f, &m.token, r#"right("fs", "write"); right("fs", "*");"#);
    f.allowed(&more_rights, "fs", "read", None);
    assert_eq!(
        f.reason(&more_rights, "fs", "write", None),
        DenyReason::ActionNotGranted
    );
    let other_service = append(
        &f,
        &m.token,
        r#"service("identity"); right("identity", "issue");"#,
    );
    assert_eq!(
        f.reason(&other_service, "identity", "issue", None),
        DenyReason::WrongService
    );
    // A later expiry does not extend the authority's.
    let longer = append(
        &f,
        &m.token,
        "check if time($t), $t <= 2100-01-01T00:00:00Z;",
    );
    assert_eq!(
        f.check(&longer, "fs", "read", None, T0 + 601)
            .expect_err("still expires")
            .reason,
        DenyReason::Expired
    );
    // A wider prefix does not widen: the narrowest prefix wins.
    let wider = append(
        &f,
        &m.token,
        r#"path_prefix("/"); check if request_pathless(true) or request_path($p), $p.starts_with("/");"#,
    );
    assert_eq!(
        f.reason(&wider, "fs", "read", Some("/etc/passwd")),
        DenyReason::PathOutsidePrefix
    );
    f.allowed(&wider, "fs", "read", Some("a"));
    // Prefixes that do not nest allow no path at all (but path-less actions still work).
    let disjoint = append(
        &f,
        &m.token,
        r#"check if request_pathless(true) or request_path($p), $p.starts_with("/etc/");"#,
    );
    assert_eq!(
        f.reason(&disjoint, "fs", "read", Some("a")),
        DenyReason::PathOutsidePrefix
    );
    assert_eq!(
        f.reason(&disjoint, "fs", "read", Some("/etc/passwd")),
        DenyReason::PathOutsidePrefix
    );
    f.allowed(&disjoint, "fs", "read", None);
    // A block asserting what the verifier supplies only fools itself; the token is opaque
    // and the Rust checks still apply.
    let liar = append(
        &f,
        &m.token,
        r#"request_pathless(true); request_action("write");"#,
    );
    assert_eq!(
        f.reason(&liar, "fs", "read", Some("/etc/passwd")),
        DenyReason::PathOutsidePrefix
    );
    assert_eq!(
        f.reason(&liar, "fs", "write", None),
        DenyReason::ActionNotGranted
    );
    f.allowed(&liar, "fs", "read", Some("a"));
}

#[test]
fn unverified_attenuation_that_widens_is_refused_at_authorize() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], Some("/srv/www")));
    let att = Attenuation {
        actions: Some(BTreeSet::from(["write".to_string()])),
        path_prefix: Some("/".into()),
        ..Default::default()
    };
    let w = attenuate_unverified(&m.token, &att, t(T0)).expect("offline append");
    assert_eq!(
        f.reason(&w.token, "fs", "write", None),
        DenyReason::ActionNotGranted
    );
    // The narrowing check on `write` also removes `read`: nothing is left.
    assert_eq!(
        f.reason(&w.token, "fs", "read", None),
        DenyReason::ActionNotGranted
    );
}

#[test]
fn opaque_checks_are_evaluated_by_the_engine_on_every_call() {
    let mut f = Fixture::new();
    let m = f.mint(&spec("fs", &["read", "list"], None));
    let opaque = append(
        &f,
        &m.token,
        r#"check if request_action($a), $a == "read";"#,
    );
    for _ in 0..3 {
        f.allowed(&opaque, "fs", "read", None);
        let d = f
            .check(&opaque, "fs", "list", None, T0 + 1)
            .expect_err("engine denies");
        assert_eq!(
            (d.reason, d.code),
            (DenyReason::CheckFailed, Code::PermissionDenied)
        );
        assert!(d.message.contains("token check failed"), "{}", d.message);
    }
    // Run limits apply to opaque tokens: a tiny fact budget fails the run.
    f.limits = RunLimits {
        max_facts: 2,
        ..RunLimits::default()
    };
    let rules = append(
        &f,
        &m.token,
        r#"x($a) <- request_action($a); check if x("read");"#,
    );
    let d = f
        .check(&rules, "fs", "read", None, T0 + 1)
        .expect_err("run limit");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::RunLimit, Code::PermissionDenied),
        "{}",
        d.message
    );
    // A time budget that cannot be met is a busy machine, not a bad token: UNAVAILABLE, and
    // nothing about the token is remembered (with a normal budget it is allowed next).
    f.limits = RunLimits {
        max_time: Duration::ZERO,
        ..RunLimits::default()
    };
    let d = f
        .check(&rules, "fs", "read", None, T0 + 1)
        .expect_err("time budget");
    assert_eq!(
        (d.reason, d.code),
        (DenyReason::EvaluationTimeout, Code::Unavailable),
        "{}",
        d.message
    );
    assert!(d.message.contains("retry"), "{}", d.message);
    f.limits = RunLimits::default();
    f.allowed(&rules, "fs", "read", None);
}

#[test]
fn denials_and_grants_carry_audit_events() {
    let f = Fixture::new();
    let m = f.mint(&spec("fs", &["read"], None));
    let g = f.check(&m.token, "fs", "read", None, T0).expect("grant");
    let e = g.audit_event();
    assert_eq!(e.cap_id.as_deref(), Some(m.cap_id.as_str()));
    assert_eq!(
        serde_json::to_value(&e).expect("json"),
        serde_json::json!({"cap_id": m.cap_id, "service": "fs", "action": "read",
                           "decision": "allow", "reason": null, "message": null})
    );
    let d = f.check(&m.token, "fs", "list", None, T0).expect_err("deny");
    let e = d.audit_event();
    assert_eq!(
        serde_json::to_value(&e).expect("json")["reason"],
        "action_not_granted"
    );
    assert_eq!(e.cap_id.as_deref(), Some(m.cap_id.as_str()));
}

#[test]
fn the_cache_is_bounded() {
    let mut f = Fixture::new();
    f.cache = TokenCache::new(3);
    for _ in 0..5 {
        let m = f.mint(&spec("fs", &["read"], None));
        f.allowed(&m.token, "fs", "read", None);
    }
    assert_eq!(f.cache.len(), 3);
}

mod engine_agreement {
    use super::*;
    use proptest::prelude::*;

    const ACTIONS: [&str; 4] = ["read", "list", "open", "stat"];
    const PATHS: [&str; 9] = [
        "a",
        "a/b",
        "/srv/a/b",
        "/srv",
        "/srv/ab",
        "/etc/x",
        "..",
        "/srv/a/../b",
        "",
    ];

    fn attenuation() -> impl Strategy<Value = Attenuation> {
        (
            proptest::option::of(proptest::sample::subsequence(ACTIONS.to_vec(), 1..=4)),
            proptest::option::of(1u64..1200),
            proptest::option::of(proptest::sample::select(vec!["/srv/a", "/srv/a/b", "/srv"])),
        )
            .prop_map(|(actions, ttl, prefix)| Attenuation {
                actions: actions.map(|a| a.into_iter().map(str::to_owned).collect()),
                ttl: ttl.map(Duration::from_secs),
                path_prefix: prefix.map(str::to_owned),
                rate_limit: None,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        /// The first call cross-checks with the engine; later calls use the compiled view.
        /// Both must always agree (unverified attenuation may widen on purpose).
        #[test]
        fn compiled_view_agrees_with_the_engine(
            authority in proptest::sample::subsequence(ACTIONS.to_vec(), 1..=4),
            chain in proptest::collection::vec(attenuation(), 0..3),
            service in proptest::sample::select(vec!["fs", "fs", "fs", "registry"]),
            action in proptest::sample::select(ACTIONS.to_vec()),
            path in proptest::option::of(proptest::sample::select(PATHS.to_vec())),
            at in prop_oneof![3 => 0u64..60, 1 => 0u64..1300],
        ) {
            let f = Fixture::new();
            let mut token = f.mint(&spec("fs", &authority, Some("/srv"))).token;
            for att in &chain {
                if att == &Attenuation::default() { continue; }
                token = attenuate_unverified(&token, att, t(T0)).expect("append").token;
            }
            let mut uncached = Fixture::new();
            uncached.kp = KeyPair::from(&f.kp.private());
            uncached.use_cache = false;
            let engine = uncached.check(&token, service, action, path, T0 + at).map_err(|d| d.reason);
            // Cache the token through a request denied before the engine runs, so the next
            // calls use the compiled view alone.
            let warm = f.check(&token, "warmup", "read", None, T0).map_err(|d| d.reason);
            prop_assert_eq!(warm.err(), Some(DenyReason::WrongService));
            let compiled = f.check(&token, service, action, path, T0 + at).map_err(|d| d.reason);
            prop_assert_eq!(
                engine.as_ref().map(|g| g.path.clone()),
                compiled.as_ref().map(|g| g.path.clone())
            );
        }
    }
}
