//! authorize() per request: cold (signature verification + Datalog every time) versus with
//! the verified-token cache, for a minted token and an attenuated one; and minting (the core
//! of identity.issue). `cargo bench -p strata-core --bench authorize`.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::{Duration, SystemTime};

use criterion::{Criterion, criterion_group, criterion_main};
use strata_core::authorize::{
    AuthzContext, AuthzRequest, RateLimiter, RevocationSet, TokenCache, authorize,
};
use strata_core::token::{Attenuation, KeyPair, RunLimits, TokenSpec, attenuate, mint};

fn spec(rate: Option<f64>) -> TokenSpec {
    TokenSpec {
        service: "fs".into(),
        actions: ["open", "read", "list"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        path_prefix: Some("/srv/www".into()),
        rate_limit: rate,
        ttl: Duration::from_secs(3600),
        issuer: "strata-identity@node-1".into(),
        audience: "node-1".into(),
    }
}

fn bench(c: &mut Criterion) {
    let kp = KeyPair::new();
    let root = kp.public();
    let now = SystemTime::now();
    let limits = RunLimits::default();
    let one = mint(&kp, &spec(None), now).expect("mint").token;
    let two = attenuate(
        &one,
        &root,
        &Attenuation {
            actions: Some(BTreeSet::from(["read".to_string()])),
            path_prefix: Some("/srv/www/static".into()),
            ..Default::default()
        },
        now,
        &limits,
    )
    .expect("attenuate")
    .token;
    let limited = mint(&kp, &spec(Some(1e12)), now).expect("mint").token;
    let mut revoked = RevocationSet::ready();
    // A realistic revocation set: lookups stay O(1).
    for i in 0..1000u32 {
        revoked.insert(&[i.to_be_bytes().as_slice(), &[0u8; 60]].concat());
    }
    let req = AuthzRequest {
        service: "fs",
        action: "read",
        path: Some("index.html"),
    };
    let (limiter_cold, limiter_warm) = (RateLimiter::default(), RateLimiter::default());
    let cache = TokenCache::default();
    let cold = AuthzContext {
        root: &root,
        audience: "node-1",
        revocations: &revoked,
        limiter: &limiter_cold,
        cache: None,
        limits: &limits,
    };
    let warm = AuthzContext {
        limiter: &limiter_warm,
        cache: Some(&cache),
        ..cold
    };

    let mut g = c.benchmark_group("authorize");
    for (name, token) in [
        ("1-block", &one),
        ("2-block", &two),
        ("rate-limited", &limited),
    ] {
        g.bench_function(format!("cold/{name}"), |b| {
            b.iter(|| authorize(&cold, Some(black_box(token)), &req, now).expect("allowed"));
        });
        authorize(&warm, Some(token), &req, now).expect("warm-up");
        g.bench_function(format!("cached/{name}"), |b| {
            b.iter(|| authorize(&warm, Some(black_box(token)), &req, now).expect("allowed"));
        });
    }
    g.finish();

    c.bench_function("mint", |b| {
        b.iter(|| mint(&kp, black_box(&spec(None)), now).expect("mint"));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
