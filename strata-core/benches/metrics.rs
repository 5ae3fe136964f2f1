//! What the metrics cost a request: one `observe_latency` on an existing series (what the
//! protocol v1 server adds around every handler call, besides one clock read), the same with
//! the clock read, and `render` of a registry the size of a busy service's.
//! `cargo bench -p strata-core --bench metrics`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use strata_core::metrics::Metrics;

fn bench(c: &mut Criterion) {
    let m = Metrics::new();
    for method in [
        "fs.open",
        "fs.read",
        "fs.list",
        "fs.stat",
        "fs.close",
        "fs.metrics",
    ] {
        m.observe_latency(method, Duration::from_micros(30));
    }
    c.bench_function("observe_latency (existing series)", |b| {
        b.iter(|| m.observe_latency(black_box("fs.read"), black_box(Duration::from_micros(30))));
    });
    c.bench_function("clock read + observe_latency", |b| {
        b.iter(|| {
            let started = Instant::now();
            m.observe_latency(black_box("fs.read"), started.elapsed());
        });
    });
    for reason in ["missing_token", "revoked", "expired", "action_not_granted"] {
        m.record_rejected(reason);
    }
    c.bench_function("render (6 methods, 4 reasons)", |b| {
        b.iter(|| black_box(m.render()));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
