//! strata-load: a load client for any server speaking protocol v1 at `<runtime_dir>/fs.sock`.
//! Each client connects, opens PATH once with `fs.open`, then calls `fs.read` of `--size`
//! bytes at offset 0 in a closed loop for `--seconds`; the totals, requests per second and
//! the latency distribution are printed (one line of `key=value`, or JSON with `--json`).
//!
//! The request frame is encoded once per client and responses are checked with a borrowed,
//! field-skipping parse, so that the client spends as little of the machine as it can.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;
use strata_core::protocol::{FrameDecoder, Request, encode_frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// Drives fs.read load against a protocol v1 server.
#[derive(Debug, Parser)]
#[command(name = "strata-load", version)]
struct Args {
    /// The runtime directory holding `<service>.sock`.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    runtime_dir: PathBuf,
    /// The capability token (fs open+read for PATH).
    #[arg(long, env = "STRATA_TOKEN")]
    token: String,
    /// Concurrent clients (one connection each).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Duration of the measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before measuring (caches warm, connections settled).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Bytes per fs.read.
    #[arg(long, default_value_t = 4096)]
    size: u64,
    /// The service socket name (`fs` → `<runtime_dir>/fs.sock`).
    #[arg(long, default_value = "fs")]
    service: String,
    /// Worker threads of the load client (the server has its own).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print one JSON object instead of key=value.
    #[arg(long)]
    json: bool,
    /// The file to read (as fs.open expects it: relative to the token's path_prefix, or
    /// absolute).
    path: String,
}

#[derive(Deserialize)]
struct ReadResult {
    bytes_read: u64,
    #[serde(default)]
    #[allow(dead_code)]
    data_b64: IgnoredAny,
}

#[derive(Deserialize)]
struct WireError<'a> {
    name: &'a str,
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

#[derive(Deserialize)]
struct ReadResponse<'a> {
    ok: bool,
    #[serde(default)]
    result: Option<ReadResult>,
    #[serde(borrow, default)]
    error: Option<WireError<'a>>,
}

/// What one client measured.
#[derive(Debug, Default)]
struct ClientReport {
    /// Latencies of the measured requests, in nanoseconds.
    latencies: Vec<u64>,
    /// Failed responses (ok=false or short reads) during measurement.
    errors: u64,
    /// The first failure seen.
    first_error: Option<String>,
}

struct Conn {
    stream: UnixStream,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl Conn {
    async fn connect(path: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(path)
            .await
            .with_context(|| format!("connecting to {}", path.display()))?;
        Ok(Self {
            stream,
            decoder: FrameDecoder::new(),
            buf: vec![0u8; 256 * 1024],
        })
    }

    /// Sends one frame and returns the next response payload.
    async fn roundtrip(&mut self, frame: &[u8]) -> anyhow::Result<Vec<u8>> {
        self.stream.write_all(frame).await.context("sending")?;
        loop {
            if let Some(payload) = self.decoder.next_frame()? {
                return Ok(payload.to_vec());
            }
            let n = self.stream.read(&mut self.buf).await.context("receiving")?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.decoder.push(&self.buf[..n]);
        }
    }

    /// Like `roundtrip`, but checks the response in place without copying it. Once one
    /// response parsed as a full success, later ones that have its exact length and the
    /// same bytes up to the data (`{"v":1,"req_id":…,"ok":true,"result":{"bytes_read":N,`)
    /// are accepted without parsing the data again: the server answers an identical request
    /// identically, and anything else falls back to the full parse.
    async fn read_call(
        &mut self,
        frame: &[u8],
        want: u64,
        known: &mut Option<(usize, Vec<u8>)>,
    ) -> anyhow::Result<Result<(), String>> {
        self.stream.write_all(frame).await.context("sending")?;
        loop {
            if let Some(payload) = self.decoder.next_frame()? {
                if let Some((len, prefix)) = known.as_ref()
                    && payload.len() == *len
                    && payload.starts_with(prefix)
                {
                    return Ok(Ok(()));
                }
                let r: ReadResponse<'_> =
                    serde_json::from_slice(payload).context("malformed response")?;
                return Ok(match (r.ok, r.result, r.error) {
                    (true, Some(res), _) if res.bytes_read == want => {
                        let data_at = payload.windows(5).position(|w| w == b"\"data".as_slice());
                        *known = data_at.map(|at| (payload.len(), payload[..at].to_vec()));
                        Ok(())
                    }
                    (true, Some(res), _) => Err(format!(
                        "short read: {} bytes instead of {want}",
                        res.bytes_read
                    )),
                    (_, _, Some(e)) => Err(format!("{}: {}", e.name, e.message)),
                    _ => Err("response without result or error".to_owned()),
                });
            }
            let n = self.stream.read(&mut self.buf).await.context("receiving")?;
            if n == 0 {
                bail!("server closed the connection");
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

fn frame(req: &Request) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    encode_frame(&req.to_json(), &mut out)?;
    Ok(out)
}

async fn open(conn: &mut Conn, id: usize, token: &str, path: &str) -> anyhow::Result<String> {
    let mut req = Request::new(format!("open-{id}"), "fs.open");
    req.token = Some(token.to_owned());
    req.params = json!({"path": path});
    let payload = conn.roundtrip(&frame(&req)?).await?;
    let resp = strata_core::protocol::parse_response(&payload)?;
    let result = resp
        .outcome
        .map_err(|e| anyhow::anyhow!("fs.open {path} refused: {e}"))?;
    let handle = result
        .get("handle")
        .and_then(|h| h.as_str())
        .context("fs.open answered without a handle")?;
    Ok(handle.to_owned())
}

async fn client(
    id: usize,
    socket: PathBuf,
    token: String,
    path: String,
    size: u64,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<ClientReport> {
    let mut conn = Conn::connect(&socket).await?;
    let handle = open(&mut conn, id, &token, &path).await?;
    let mut req = Request::new(format!("r{id}"), "fs.read");
    req.token = Some(token);
    req.params = json!({"handle": handle, "offset": 0, "size": size});
    let frame = frame(&req)?;
    let mut report = ClientReport {
        latencies: Vec::with_capacity(1 << 20),
        ..ClientReport::default()
    };
    let mut known = None;
    loop {
        let start = Instant::now();
        if start >= until {
            break;
        }
        let outcome = conn.read_call(&frame, size, &mut known).await?;
        let end = Instant::now();
        if start < measure_from {
            continue;
        }
        match outcome {
            Ok(()) => report
                .latencies
                .push(u64::try_from((end - start).as_nanos()).unwrap_or(u64::MAX)),
            Err(e) => {
                report.errors += 1;
                report.first_error.get_or_insert(e);
            }
        }
    }
    Ok(report)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients == 0 || args.seconds == 0 {
        bail!("--clients and --seconds must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let socket = args.runtime_dir.join(format!("{}.sock", args.service));
    let measure_from = Instant::now() + Duration::from_secs(args.warmup);
    let until = measure_from + Duration::from_secs(args.seconds);
    let reports: Vec<ClientReport> = runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..args.clients {
            tasks.spawn(client(
                id,
                socket.clone(),
                args.token.clone(),
                args.path.clone(),
                args.size,
                measure_from,
                until,
            ));
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.context("a client task failed")??);
        }
        anyhow::Ok(out)
    })?;
    let mut all: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.latencies.iter().copied())
        .collect();
    all.sort_unstable();
    let errors: u64 = reports.iter().map(|r| r.errors).sum();
    let first_error = reports.iter().find_map(|r| r.first_error.clone());
    let requests = all.len() as u64;
    let rps = requests as f64 / args.seconds as f64;
    let us = |ns: u64| ns as f64 / 1000.0;
    let (p50, p99, p999, max) = (
        us(percentile(&all, 50.0)),
        us(percentile(&all, 99.0)),
        us(percentile(&all, 99.9)),
        us(all.last().copied().unwrap_or(0)),
    );
    if args.json {
        println!(
            "{}",
            json!({
                "clients": args.clients, "seconds": args.seconds, "size": args.size,
                "requests": requests, "errors": errors, "rps": rps.round(),
                "p50_us": p50, "p99_us": p99, "p999_us": p999, "max_us": max,
                "first_error": first_error,
            })
        );
    } else {
        println!(
            "clients={} seconds={} size={} requests={requests} errors={errors} rps={rps:.0} p50_us={p50:.1} p99_us={p99:.1} p999_us={p999:.1} max_us={max:.1}",
            args.clients, args.seconds, args.size
        );
        if let Some(e) = &first_error {
            println!("first_error={e}");
        }
    }
    if errors > 0 || requests == 0 {
        std::process::exit(1);
    }
    Ok(())
}
