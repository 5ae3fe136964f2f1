//! Strata's metrics and their Prometheus text rendering (exposition format 0.0.4).
//!
//! [`Metrics`] is a small registry for the four families Strata exports:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `service_restarts_total` | counter | `service` |
//! | `request_latency_seconds` | histogram | `method` |
//! | `rejected_total` | counter | `reason` |
//! | `bus_lagged_total` | counter | — |
//!
//! It is pure (no clock reads, no I/O): callers measure durations themselves and hand them in.
//! [`Metrics::render`] produces the text a Prometheus server scrapes; [`parse_exposition`]
//! reads such text back (for `strata-ctl metrics` and for tests).
//!
//! Label values come from requests (a method name) or the manifest (a service name), so a
//! family holds at most [`MAX_SERIES_PER_FAMILY`] label values: further ones are counted under
//! [`OVERFLOW_LABEL`] instead of growing memory without bound (nothing is dropped).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histogram's buckets: fine below 10 ms, where a
/// local protocol v1 request should answer, coarse up to the 10 s request timeout.
pub const DEFAULT_LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Distinct label values one family keeps; later values are counted under [`OVERFLOW_LABEL`].
pub const MAX_SERIES_PER_FAMILY: usize = 256;

/// The label value that collects every series beyond [`MAX_SERIES_PER_FAMILY`].
pub const OVERFLOW_LABEL: &str = "_other";

/// The `Content-Type` of the rendered text, for an HTTP endpoint.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counter: restarts of a service by the supervisor, label `service`.
pub const SERVICE_RESTARTS_TOTAL: &str = "service_restarts_total";
/// Histogram: protocol v1 request latency, label `method`.
pub const REQUEST_LATENCY_SECONDS: &str = "request_latency_seconds";
/// Counter: refused requests, label `reason`.
pub const REJECTED_TOTAL: &str = "rejected_total";
/// Counter: systemd events dropped by the supervisor's event channel.
pub const BUS_LAGGED_TOTAL: &str = "bus_lagged_total";

const RESTARTS_HELP: &str = "Restarts of a service by the supervisor after it exited or failed.";
const LATENCY_HELP: &str = "Time from reading a protocol v1 request to writing its response.";
const REJECTED_HELP: &str =
    "Requests refused, by reason (authorization denials, malformed input, limits).";
const LAGGED_HELP: &str =
    "systemd events the supervisor dropped because it fell behind (a full resync followed each).";

/// Why histogram bucket bounds were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketsError {
    #[error("histogram buckets: at least one upper bound is needed")]
    Empty,
    #[error("histogram buckets: bound {bound} is not a finite positive number")]
    NotFinitePositive { bound: f64 },
    #[error(
        "histogram buckets: bound {bound} does not follow {previous} in strictly increasing order"
    )]
    NotIncreasing { previous: f64, bound: f64 },
}

/// One histogram series: per-bucket counts (not cumulative; the last slot is `+Inf`).
#[derive(Debug, Clone, PartialEq)]
struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum_nanos: u128,
}

impl Histogram {
    fn new(buckets: usize) -> Self {
        Self {
            counts: vec![0; buckets + 1],
            count: 0,
            sum_nanos: 0,
        }
    }
}

/// A label value → series map that stops growing at [`MAX_SERIES_PER_FAMILY`].
#[derive(Debug, Clone, PartialEq)]
struct Family<T> {
    series: BTreeMap<String, T>,
}

impl<T> Default for Family<T> {
    fn default() -> Self {
        Self {
            series: BTreeMap::new(),
        }
    }
}

impl<T> Family<T> {
    /// Applies `update` to the series for `label`, created with `make` if there is room, else
    /// to the overflow series. An existing series is found without allocating: this runs once
    /// per request on a service's hot path.
    fn update(&mut self, label: &str, make: impl FnOnce() -> T, update: impl FnOnce(&mut T)) {
        if let Some(v) = self.series.get_mut(label) {
            update(v);
            return;
        }
        let key = if self.series.len() < MAX_SERIES_PER_FAMILY || label == OVERFLOW_LABEL {
            label
        } else {
            OVERFLOW_LABEL
        };
        if let Some(v) = self.series.get_mut(key) {
            update(v);
            return;
        }
        let mut v = make();
        update(&mut v);
        self.series.insert(key.to_owned(), v);
    }
}

#[derive(Debug, Default)]
struct Inner {
    restarts: Family<u64>,
    latency: Family<Histogram>,
    rejected: Family<u64>,
    bus_lagged: u64,
}

/// The registry of Strata's metrics. Share it behind an `Arc`; every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    buckets: Vec<f64>,
    inner: Mutex<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with [`DEFAULT_LATENCY_BUCKETS`].
    pub fn new() -> Self {
        Self {
            buckets: DEFAULT_LATENCY_BUCKETS.to_vec(),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// An empty registry whose latency histogram uses these upper bounds (seconds, finite,
    /// positive, strictly increasing; `+Inf` is always added).
    pub fn with_latency_buckets(bounds: &[f64]) -> Result<Self, BucketsError> {
        if bounds.is_empty() {
            return Err(BucketsError::Empty);
        }
        let mut previous: Option<f64> = None;
        for &bound in bounds {
            if !bound.is_finite() || bound <= 0.0 {
                return Err(BucketsError::NotFinitePositive { bound });
            }
            if let Some(p) = previous
                && bound <= p
            {
                return Err(BucketsError::NotIncreasing { previous: p, bound });
            }
            previous = Some(bound);
        }
        Ok(Self {
            buckets: bounds.to_vec(),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The latency histogram's upper bounds (without `+Inf`).
    pub fn latency_buckets(&self) -> &[f64] {
        &self.buckets
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves consistent counters behind: every
        // update is a single assignment.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Mirrors a restart count kept elsewhere (the reconciler's): `service_restarts_total
    /// {service}` becomes `total` unless it is already higher, as a counter must only move up.
    /// The series exists from then on, also at 0, so that a scraper sees every service.
    pub fn set_restarts_total(&self, service: &str, total: u64) {
        self.lock()
            .restarts
            .update(service, || 0, |n| *n = (*n).max(total));
    }

    /// One `request_latency_seconds{method}` observation.
    pub fn observe_latency(&self, method: &str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        // The first bucket whose bound is >= the value; `+Inf` (index len) otherwise.
        let slot = self
            .buckets
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(self.buckets.len());
        let buckets = self.buckets.len();
        self.lock().latency.update(
            method,
            || Histogram::new(buckets),
            |h| {
                if let Some(c) = h.counts.get_mut(slot) {
                    *c = c.saturating_add(1);
                }
                h.count = h.count.saturating_add(1);
                h.sum_nanos = h.sum_nanos.saturating_add(elapsed.as_nanos());
            },
        );
    }

    /// `rejected_total{reason}` += 1 (use the stable reason names, e.g. `DenyReason::as_str`).
    pub fn record_rejected(&self, reason: &str) {
        self.lock()
            .rejected
            .update(reason, || 0, |n| *n = n.saturating_add(1));
    }

    /// `bus_lagged_total` += `dropped`.
    pub fn add_bus_lagged(&self, dropped: u64) {
        let mut inner = self.lock();
        inner.bus_lagged = inner.bus_lagged.saturating_add(dropped);
    }

    /// Mirrors a counter kept elsewhere (the driver's `DriverMetrics::bus_lagged_total`): the
    /// value only ever moves up, as a counter must.
    pub fn set_bus_lagged_total(&self, total: u64) {
        let mut inner = self.lock();
        inner.bus_lagged = inner.bus_lagged.max(total);
    }

    /// The metrics in Prometheus text format. Every family is present (with its `# HELP` and
    /// `# TYPE` lines) even before its first sample; series are sorted by label value.
    pub fn render(&self) -> String {
        let inner = self.lock();
        let mut out = String::with_capacity(1024);
        header(&mut out, SERVICE_RESTARTS_TOTAL, RESTARTS_HELP, "counter");
        for (service, n) in &inner.restarts.series {
            sample(
                &mut out,
                SERVICE_RESTARTS_TOTAL,
                &[("service", service)],
                &n.to_string(),
            );
        }
        header(&mut out, REQUEST_LATENCY_SECONDS, LATENCY_HELP, "histogram");
        let bucket_name = format!("{REQUEST_LATENCY_SECONDS}_bucket");
        let sum_name = format!("{REQUEST_LATENCY_SECONDS}_sum");
        let count_name = format!("{REQUEST_LATENCY_SECONDS}_count");
        for (method, h) in &inner.latency.series {
            let mut cumulative = 0u64;
            for (i, c) in h.counts.iter().enumerate() {
                cumulative = cumulative.saturating_add(*c);
                let le = self
                    .buckets
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| format_float(*b));
                sample(
                    &mut out,
                    &bucket_name,
                    &[("method", method), ("le", &le)],
                    &cumulative.to_string(),
                );
            }
            // u128 nanoseconds → f64 seconds: exact below 2^53 ns (104 days of summed time).
            #[allow(clippy::cast_precision_loss)]
            let sum = h.sum_nanos as f64 / 1e9;
            sample(
                &mut out,
                &sum_name,
                &[("method", method)],
                &format_float(sum),
            );
            sample(
                &mut out,
                &count_name,
                &[("method", method)],
                &h.count.to_string(),
            );
        }
        header(&mut out, REJECTED_TOTAL, REJECTED_HELP, "counter");
        for (reason, n) in &inner.rejected.series {
            sample(
                &mut out,
                REJECTED_TOTAL,
                &[("reason", reason)],
                &n.to_string(),
            );
        }
        header(&mut out, BUS_LAGGED_TOTAL, LAGGED_HELP, "counter");
        sample(
            &mut out,
            BUS_LAGGED_TOTAL,
            &[],
            &inner.bus_lagged.to_string(),
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    // Infallible: writing to a String.
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            out.push_str(&escape_label_value(v));
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A float as Prometheus writes it: shortest round-trip decimal, `+Inf`, `-Inf`, `NaN`.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

/// Label value escaping of the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
pub fn escape_label_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// One sample line of an exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (`request_latency_seconds_bucket`).
    pub name: String,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition: the declared family types and every sample, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposition {
    /// `# TYPE` declarations: family name → `counter`, `gauge`, `histogram`, `summary`,
    /// `untyped`.
    pub types: BTreeMap<String, String>,
    /// `# HELP` texts, unescaped.
    pub help: BTreeMap<String, String>,
    /// Family names in the order they first appear (a `# HELP`, `# TYPE` or sample line).
    pub families: Vec<String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    fn note_family(&mut self, name: &str) {
        if !self.families.iter().any(|f| f == name) {
            self.families.push(name.to_owned());
        }
    }

    /// The family a sample belongs to: a declared histogram's or summary's for its suffixed
    /// samples, else its own name.
    pub fn family_of_sample(&self, sample: &str) -> String {
        self.types
            .iter()
            .find(|(f, kind)| family_of(sample, kind) == f.as_str())
            .map_or_else(|| sample.to_owned(), |(f, _)| f.clone())
    }

    /// Samples named `name`.
    pub fn samples_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The value of the sample `name` whose labels are exactly `labels` (any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples_named(name)
            .find(|s| {
                s.labels.len() == labels.len() && labels.iter().all(|(k, v)| s.label(k) == Some(*v))
            })
            .map(|s| s.value)
    }
}

/// Why a text is not a valid exposition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics text, line {line}: {problem}")]
pub struct ExpositionError {
    /// 1-based line.
    pub line: usize,
    pub problem: String,
}

/// Parses Prometheus text format 0.0.4 strictly: metric and label names checked, label values
/// quoted with only `\\`, `\"` and `\n` escapes, values as floats (`+Inf`, `-Inf`, `NaN`),
/// an optional integer timestamp, at most one `# TYPE` per family and before its samples.
pub fn parse_exposition(text: &str) -> Result<Exposition, ExpositionError> {
    let mut out = Exposition::default();
    for (i, line) in text.lines().enumerate() {
        let err = |problem: String| ExpositionError {
            line: i + 1,
            problem,
        };
        let line = line.trim_start();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    check_metric_name(name).map_err(&err)?;
                    let kind = kind.trim();
                    if !matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ) {
                        return Err(err(format!("unknown metric type `{kind}` for `{name}`")));
                    }
                    if out.samples.iter().any(|s| family_of(&s.name, kind) == name) {
                        return Err(err(format!("`# TYPE {name}` after samples of `{name}`")));
                    }
                    if out.types.insert(name.to_owned(), kind.to_owned()).is_some() {
                        return Err(err(format!("second `# TYPE` line for `{name}`")));
                    }
                    out.note_family(name);
                }
                (Some("HELP"), Some(name), help) => {
                    check_metric_name(name).map_err(&err)?;
                    let help = unescape_help(help.unwrap_or("")).map_err(&err)?;
                    if out.help.insert(name.to_owned(), help).is_some() {
                        return Err(err(format!("second `# HELP` line for `{name}`")));
                    }
                    out.note_family(name);
                }
                // Any other comment is allowed by the format.
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(err)?;
        let family = out.family_of_sample(&sample.name);
        out.note_family(&family);
        out.samples.push(sample);
    }
    Ok(out)
}

/// The family a sample name belongs to, given the family's declared type.
fn family_of<'a>(sample: &'a str, kind: &str) -> &'a str {
    let suffixes: &[&str] = match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["_sum", "_count"],
        _ => &[],
    };
    suffixes
        .iter()
        .find_map(|s| sample.strip_suffix(s))
        .unwrap_or(sample)
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        return Err(format!("`{name}` is not a valid metric name"));
    }
    Ok(())
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("`{name}` is not a valid label name"));
    }
    Ok(())
}

fn unescape_help(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                other => {
                    return Err(format!(
                        "bad escape `\\{}` in a HELP text",
                        other.unwrap_or(' ')
                    ));
                }
            }
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

fn parse_float(text: &str) -> Result<f64, String> {
    match text {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        t if t
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
            && !t.is_empty() =>
        {
            t.parse().map_err(|_| format!("`{t}` is not a number"))
        }
        t => Err(format!("`{t}` is not a number")),
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or_else(|| format!("sample line `{line}` has no value"))?;
    let (name, mut rest) = line.split_at(name_end);
    check_metric_name(name)?;
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest
                .find('=')
                .ok_or_else(|| format!("label without `=` in `{line}`"))?;
            let key = rest[..eq].trim();
            check_label_name(key)?;
            if labels.iter().any(|(k, _): &(String, String)| k == key) {
                return Err(format!("label `{key}` given twice in `{line}`"));
            }
            rest = rest[eq + 1..].trim_start();
            rest = rest
                .strip_prefix('"')
                .ok_or_else(|| format!("value of label `{key}` is not quoted in `{line}`"))?;
            let mut value = String::new();
            let mut closed = None;
            let mut chars = rest.char_indices();
            while let Some((i, c)) = chars.next() {
                match c {
                    '"' => {
                        closed = Some(i + 1);
                        break;
                    }
                    '\\' => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => {
                            return Err(format!(
                                "bad escape `\\{}` in label `{key}`",
                                other.map_or(' ', |(_, c)| c)
                            ));
                        }
                    },
                    c => value.push(c),
                }
            }
            let end = closed.ok_or_else(|| format!("unterminated value of label `{key}`"))?;
            labels.push((key.to_owned(), value));
            rest = rest[end..].trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err(format!(
                    "expected `,` or `}}` after label `{key}` in `{line}`"
                ));
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("sample `{name}` has no value"))?;
    let value = parse_float(value)?;
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err(format!("timestamp `{ts}` of `{name}` is not an integer"));
    }
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the sample `{name}`"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Why expositions could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("metrics of `{source_name}` do not parse: {error}")]
    Parse {
        source_name: String,
        error: ExpositionError,
    },
    #[error(
        "metric family `{family}` is a {first} in one source and a {second} in `{source_name}`"
    )]
    TypeConflict {
        family: String,
        first: String,
        second: String,
        source_name: String,
    },
    #[error("metrics of `{source_name}` already carry a `{label}` label")]
    LabelClash { source_name: String, label: String },
}

/// The label [`merge`] adds to every sample: which process the sample came from.
pub const SOURCE_LABEL: &str = "strata_service";

/// Merges the expositions of several processes (`(source, text)`, e.g. `("supervisor", …)`,
/// `("fs", …)`) into one valid exposition: each family's `# HELP`/`# TYPE` once, then its
/// samples from every source with a `strata_service="<name>"` label ([`SOURCE_LABEL`]) added
/// first. Families keep the order in which they first appear. This is what `strata-ctl
/// metrics` prints.
pub fn merge(parts: &[(&str, &str)]) -> Result<String, MergeError> {
    #[derive(Default)]
    struct Merged {
        kind: Option<String>,
        help: Option<String>,
        samples: Vec<Sample>,
    }
    let mut order: Vec<String> = Vec::new();
    let mut families: BTreeMap<String, Merged> = BTreeMap::new();
    for (source_name, text) in parts {
        let source_name = *source_name;
        let exp = parse_exposition(text).map_err(|error| MergeError::Parse {
            source_name: source_name.to_owned(),
            error,
        })?;
        for family in &exp.families {
            if !families.contains_key(family) {
                order.push(family.clone());
            }
            let entry = families.entry(family.clone()).or_default();
            match (&entry.kind, exp.types.get(family)) {
                (Some(first), Some(second)) if first != second => {
                    return Err(MergeError::TypeConflict {
                        family: family.clone(),
                        first: first.clone(),
                        second: second.clone(),
                        source_name: source_name.to_owned(),
                    });
                }
                (None, Some(kind)) => entry.kind = Some(kind.clone()),
                _ => {}
            }
            if entry.help.is_none() {
                entry.help = exp.help.get(family).cloned();
            }
        }
        for sample in &exp.samples {
            if sample.label(SOURCE_LABEL).is_some() {
                return Err(MergeError::LabelClash {
                    source_name: source_name.to_owned(),
                    label: SOURCE_LABEL.to_owned(),
                });
            }
            let mut labelled = sample.clone();
            labelled
                .labels
                .insert(0, (SOURCE_LABEL.to_owned(), source_name.to_owned()));
            families
                .entry(exp.family_of_sample(&sample.name))
                .or_default()
                .samples
                .push(labelled);
        }
    }
    let mut out = String::new();
    for family in &order {
        let Some(m) = families.get(family) else {
            continue;
        };
        if let Some(help) = &m.help {
            let _ = writeln!(out, "# HELP {family} {}", escape_help(help));
        }
        if let Some(kind) = &m.kind {
            let _ = writeln!(out, "# TYPE {family} {kind}");
        }
        for s in &m.samples {
            let labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            sample(&mut out, &s.name, &labels, &format_float(s.value));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_empty_registry_renders_every_family() {
        let text = Metrics::new().render();
        let exp = parse_exposition(&text).expect("own output parses");
        assert_eq!(
            exp.types.get(SERVICE_RESTARTS_TOTAL).map(String::as_str),
            Some("counter")
        );
        assert_eq!(
            exp.types.get(REQUEST_LATENCY_SECONDS).map(String::as_str),
            Some("histogram")
        );
        assert_eq!(
            exp.types.get(REJECTED_TOTAL).map(String::as_str),
            Some("counter")
        );
        assert_eq!(
            exp.types.get(BUS_LAGGED_TOTAL).map(String::as_str),
            Some("counter")
        );
        assert_eq!(exp.help.len(), 4);
        // Only the unlabelled counter has a sample before anything happened.
        assert_eq!(exp.samples.len(), 1);
        assert_eq!(exp.value(BUS_LAGGED_TOTAL, &[]), Some(0.0));
    }

    #[test]
    fn renders_exactly_this_text() {
        let m = Metrics::with_latency_buckets(&[0.001, 0.01]).expect("valid buckets");
        m.set_restarts_total("web", 2);
        m.set_restarts_total("db", 1);
        m.observe_latency("fs.read", Duration::from_micros(500));
        m.observe_latency("fs.read", ms(5));
        m.observe_latency("fs.read", ms(50));
        m.record_rejected("expired");
        m.add_bus_lagged(3);
        let want = "\
# HELP service_restarts_total Restarts of a service by the supervisor after it exited or failed.
# TYPE service_restarts_total counter
service_restarts_total{service=\"db\"} 1
service_restarts_total{service=\"web\"} 2
# HELP request_latency_seconds Time from reading a protocol v1 request to writing its response.
# TYPE request_latency_seconds histogram
request_latency_seconds_bucket{method=\"fs.read\",le=\"0.001\"} 1
request_latency_seconds_bucket{method=\"fs.read\",le=\"0.01\"} 2
request_latency_seconds_bucket{method=\"fs.read\",le=\"+Inf\"} 3
request_latency_seconds_sum{method=\"fs.read\"} 0.0555
request_latency_seconds_count{method=\"fs.read\"} 3
# HELP rejected_total Requests refused, by reason (authorization denials, malformed input, limits).
# TYPE rejected_total counter
rejected_total{reason=\"expired\"} 1
# HELP bus_lagged_total systemd events the supervisor dropped because it fell behind (a full resync followed each).
# TYPE bus_lagged_total counter
bus_lagged_total 3
";
        assert_eq!(m.render(), want);
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_consistent() {
        let m = Metrics::new();
        let observed = [0u64, 1, 2, 3, 7, 40, 900, 20_000, 12_000_000];
        for us in observed {
            m.observe_latency("fs.read", Duration::from_micros(us));
        }
        m.observe_latency("identity.issue", ms(3));
        let exp = parse_exposition(&m.render()).expect("parses");
        let buckets: Vec<&Sample> = exp
            .samples_named("request_latency_seconds_bucket")
            .filter(|s| s.label("method") == Some("fs.read"))
            .collect();
        assert_eq!(buckets.len(), DEFAULT_LATENCY_BUCKETS.len() + 1);
        // Each bucket counts exactly the observations <= its bound.
        for b in &buckets {
            let le = parse_float(b.label("le").expect("le label")).expect("le is a number");
            let want = observed
                .iter()
                .filter(|&&us| Duration::from_micros(us).as_secs_f64() <= le)
                .count();
            assert_eq!(b.value, want as f64, "bucket le={le}");
        }
        assert_eq!(buckets.last().and_then(|b| b.label("le")), Some("+Inf"));
        assert_eq!(
            exp.value("request_latency_seconds_count", &[("method", "fs.read")]),
            Some(observed.len() as f64)
        );
        let sum_us: u64 = observed.iter().sum();
        let sum = exp
            .value("request_latency_seconds_sum", &[("method", "fs.read")])
            .expect("sum");
        assert!((sum - sum_us as f64 / 1e6).abs() < 1e-12, "sum {sum}");
        assert_eq!(
            exp.value(
                "request_latency_seconds_bucket",
                &[("method", "identity.issue"), ("le", "0.0025")]
            ),
            Some(0.0)
        );
        assert_eq!(
            exp.value(
                "request_latency_seconds_bucket",
                &[("method", "identity.issue"), ("le", "0.005")]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn label_values_are_escaped_and_read_back() {
        let m = Metrics::new();
        let nasty = "a\"b\\c\nd}{,=";
        m.record_rejected(nasty);
        let text = m.render();
        assert!(
            text.contains(r#"rejected_total{reason="a\"b\\c\nd}{,="} 1"#),
            "{text}"
        );
        let exp = parse_exposition(&text).expect("parses");
        assert_eq!(exp.value(REJECTED_TOTAL, &[("reason", nasty)]), Some(1.0));
    }

    #[test]
    fn series_beyond_the_cap_are_counted_under_other() {
        let m = Metrics::new();
        for i in 0..MAX_SERIES_PER_FAMILY + 10 {
            m.observe_latency(&format!("m{i}"), ms(1));
        }
        m.observe_latency("m0", ms(1));
        let exp = parse_exposition(&m.render()).expect("parses");
        let counts: Vec<&Sample> = exp.samples_named("request_latency_seconds_count").collect();
        assert_eq!(counts.len(), MAX_SERIES_PER_FAMILY + 1);
        assert_eq!(
            exp.value(
                "request_latency_seconds_count",
                &[("method", OVERFLOW_LABEL)]
            ),
            Some(10.0)
        );
        assert_eq!(
            exp.value("request_latency_seconds_count", &[("method", "m0")]),
            Some(2.0)
        );
        let total: f64 = counts.iter().map(|s| s.value).sum();
        assert_eq!(
            total,
            (MAX_SERIES_PER_FAMILY + 11) as f64,
            "nothing dropped"
        );
    }

    #[test]
    fn bus_lagged_mirror_only_moves_up() {
        let m = Metrics::new();
        m.set_bus_lagged_total(5);
        m.set_bus_lagged_total(2);
        m.add_bus_lagged(1);
        let exp = parse_exposition(&m.render()).expect("parses");
        assert_eq!(exp.value(BUS_LAGGED_TOTAL, &[]), Some(6.0));
    }

    #[test]
    fn restart_mirror_shows_zero_and_only_moves_up() {
        let m = Metrics::new();
        m.set_restarts_total("idle", 0);
        m.set_restarts_total("web", 3);
        m.set_restarts_total("web", 1);
        let exp = parse_exposition(&m.render()).expect("parses");
        assert_eq!(
            exp.value(SERVICE_RESTARTS_TOTAL, &[("service", "idle")]),
            Some(0.0)
        );
        assert_eq!(
            exp.value(SERVICE_RESTARTS_TOTAL, &[("service", "web")]),
            Some(3.0)
        );
    }

    #[test]
    fn bad_buckets_are_refused() {
        assert_eq!(
            Metrics::with_latency_buckets(&[]).err(),
            Some(BucketsError::Empty)
        );
        assert!(matches!(
            Metrics::with_latency_buckets(&[0.1, f64::NAN]),
            Err(BucketsError::NotFinitePositive { .. })
        ));
        assert!(matches!(
            Metrics::with_latency_buckets(&[-1.0]),
            Err(BucketsError::NotFinitePositive { .. })
        ));
        assert_eq!(
            Metrics::with_latency_buckets(&[0.1, 0.1]).err(),
            Some(BucketsError::NotIncreasing {
                previous: 0.1,
                bound: 0.1
            })
        );
    }

    #[test]
    fn the_parser_rejects_malformed_text() {
        for (text, line) in [
            ("x{a=\"1\" 1\n", 1),
            ("x{a=1} 1\n", 1),
            ("x{a=\"\\t\"} 1\n", 1),
            ("1x 1\n", 1),
            ("x one\n", 1),
            ("x\n", 1),
            ("x 1 2 3\n", 1),
            ("x 1 1.5\n", 1),
            ("x{a=\"1\",a=\"2\"} 1\n", 1),
            ("# TYPE x counter\n# TYPE x counter\n", 2),
            ("# TYPE x sideways\n", 1),
            ("x_sum 1\n# TYPE x histogram\n", 2),
        ] {
            let e = parse_exposition(text).expect_err(text);
            assert_eq!(e.line, line, "{text:?}: {e}");
        }
        let ok = parse_exposition("# a comment\nx{a=\"1\",} 1 1700000000000\ny NaN\nz -Inf\n")
            .expect("valid text");
        assert_eq!(ok.samples.len(), 3);
        assert!(ok.samples[1].value.is_nan());
    }

    #[test]
    fn concurrent_updates_are_all_counted() {
        let m = std::sync::Arc::new(Metrics::new());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = std::sync::Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 1..=1000 {
                        m.observe_latency("fs.read", Duration::from_micros(50));
                        m.set_restarts_total("web", i);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let exp = parse_exposition(&m.render()).expect("parses");
        assert_eq!(
            exp.value("request_latency_seconds_count", &[("method", "fs.read")]),
            Some(4000.0)
        );
        assert_eq!(
            exp.value(SERVICE_RESTARTS_TOTAL, &[("service", "web")]),
            Some(1000.0)
        );
    }

    #[test]
    fn merged_sources_form_one_valid_exposition() {
        let supervisor = Metrics::new();
        supervisor.set_restarts_total("web", 1);
        supervisor.add_bus_lagged(2);
        let fs = Metrics::new();
        fs.observe_latency("fs.read", ms(1));
        fs.record_rejected("expired");
        let identity = Metrics::new();
        identity.observe_latency("identity.issue", ms(2));
        let text = merge(&[
            ("supervisor", &supervisor.render()),
            ("fs", &fs.render()),
            ("identity", &identity.render()),
        ])
        .expect("merge");
        let exp = parse_exposition(&text).expect("the merged text parses");
        assert_eq!(exp.types.len(), 4, "each family declared once:\n{text}");
        assert_eq!(
            exp.value(
                SERVICE_RESTARTS_TOTAL,
                &[(SOURCE_LABEL, "supervisor"), ("service", "web")]
            ),
            Some(1.0)
        );
        assert_eq!(
            exp.value(
                "request_latency_seconds_count",
                &[(SOURCE_LABEL, "identity"), ("method", "identity.issue")]
            ),
            Some(1.0)
        );
        assert_eq!(
            exp.value(
                REJECTED_TOTAL,
                &[(SOURCE_LABEL, "fs"), ("reason", "expired")]
            ),
            Some(1.0)
        );
        assert_eq!(
            exp.value(BUS_LAGGED_TOTAL, &[(SOURCE_LABEL, "supervisor")]),
            Some(2.0)
        );
        assert_eq!(
            exp.value(BUS_LAGGED_TOTAL, &[(SOURCE_LABEL, "fs")]),
            Some(0.0)
        );
        // All histogram lines of one family stay together, after its single TYPE line.
        let type_line = text
            .lines()
            .position(|l| l == "# TYPE request_latency_seconds histogram")
            .expect("type line");
        let lines: Vec<&str> = text.lines().collect();
        let last_bucket = lines
            .iter()
            .rposition(|l| l.starts_with("request_latency_seconds_"))
            .expect("samples");
        let next_type = text
            .lines()
            .position(|l| l == "# TYPE rejected_total counter")
            .expect("type line");
        assert!(type_line < last_bucket && last_bucket < next_type, "{text}");
    }

    #[test]
    fn merging_refuses_conflicts() {
        assert!(matches!(
            merge(&[
                ("a", "# TYPE x counter\nx 1\n"),
                ("b", "# TYPE x gauge\nx 1\n")
            ]),
            Err(MergeError::TypeConflict { .. })
        ));
        assert!(matches!(
            merge(&[("a", "x{strata_service=\"y\"} 1\n")]),
            Err(MergeError::LabelClash { .. })
        ));
        assert!(matches!(
            merge(&[("a", "x{ 1\n")]),
            Err(MergeError::Parse { .. })
        ));
    }
}
