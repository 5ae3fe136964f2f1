//! Chaos on a real node: while clients keep calling strata-fs with capability tokens, services
//! and the supervisor are SIGKILLed at random and tokens are revoked at random. Afterwards the
//! graph must have converged (every declared service running, exactly one unit each, nothing
//! else in strata.slice), no revocation may be lost (also across one more fs restart), and no
//! client may have had a success from a call that started after its token's revoke returned
//! (beyond the propagation budget below).
//!
//! Bounded: 45 s of chaos by default, `STRATA_CHAOS_SECS=N` for long runs. Every random choice
//! comes from one seeded generator, printed at the start; `STRATA_CHAOS_SEED=S` replays the same
//! schedule of kills, revocations and calls (the interleaving with systemd and the services is
//! still the machine's).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use common::Node;
use serde_json::{Value, json};
use strata_services::ipc::{Client, ClientConfig, ClientError};
use tokio::sync::watch;

/// What strata-fs serves; every token's prefix is `<FS_ROOT>/data`.
const FS_ROOT: &str = "/var/lib/strata-test/fsroot";
const FILE_TEXT: &str = "hello from the chaos fixture\n";
const CORE: [&str; 4] = ["identity", "registry", "fs", "audit"];
const USER: [&str; 3] = ["alpha", "beta", "gamma"];
const DEFAULT_CHAOS_SECS: u64 = 45;
/// Clients calling fs at once.
const CLIENTS: usize = 4;
/// Tokens issued before the chaos starts (positive controls from the first call on).
const INITIAL_TOKENS: usize = 4;
/// How long after the chaos the graph may take to converge and stay so for STABLE_FOR. The
/// longest backoff is 1 s, a hardened start takes 0.1-0.3 s, and the deepest chain is
/// identity → fs → beta → gamma: a few seconds at worst. Anything near a start timeout (30 s)
/// is a stuck state, not slowness.
const CONVERGE_WITHIN: Duration = Duration::from_secs(15);
/// A converged graph must stay as it is (same MainPIDs, no restarts) for this long.
const STABLE_FOR: Duration = Duration::from_secs(3);
/// A revoke that keeps failing for this long means identity never came back.
const REVOKE_GIVE_UP: Duration = Duration::from_secs(120);

/// A call that starts more than this after `strata-ctl token revoke` returned must be denied.
///
/// The revocation reaches fs by a push: identity wakes fs's long poll when the revocation is
/// durable, as it answers the revoke; the design's target is 10 ms p99 from revoke to denial.
/// After an identity restart, fs's follower reconnects within 25 ms and catches up. Measured
/// under this chaos (debug build, 2-core VM, 14 runs, one of 240 s): the latest success after
/// a revoke had returned started 25 ms after it (a follower reconnecting to a restarted
/// identity; 4 ms otherwise), and the first "revoked" denial came 1-3 ms (p50) after the
/// return. 100 ms is ten times the design target and four times the worst measured: room for
/// the scheduler of a loaded VM (systemd starting hardened units, four clients, a supervisor
/// resyncing), while a follower left behind shows as seconds (before its reconnect delay was
/// capped at 25 ms, fs accepted revoked tokens up to 1.86 s after the revoke returned) and a
/// lost revocation as forever.
const REVOKE_BUDGET: Duration = Duration::from_millis(100);

fn prefix() -> String {
    format!("{FS_ROOT}/data")
}

fn declared() -> Vec<&'static str> {
    CORE.iter().chain(USER.iter()).copied().collect()
}

fn unit_of(service: &str) -> String {
    format!("strata-{service}.service")
}

/// Every core service plus three sleepers (`beta` needs `alpha` and fs, `gamma` needs `beta`
/// and gets a `call:fs` token minted at each start), all with a short backoff and a
/// quarantine threshold the chaos cannot reach.
fn manifest() -> String {
    let restart = r#"restart = { initial = "100ms", max = "1s", quarantine = { crashes = 1000, window = "1m" } }"#;
    format!(
        r#"{node}
[core.identity]
{restart}

[core.registry]
{restart}

[core.fs]
roots = ["{FS_ROOT}"]
{restart}

[core.audit]
{restart}

[services.alpha]
exec = ["/bin/sleep", "infinity"]
{restart}

[services.beta]
exec = ["/bin/sleep", "infinity"]
requires = ["alpha"]
after = ["fs"]
{restart}

[services.gamma]
exec = ["/bin/sleep", "infinity"]
capabilities = ["call:fs"]
after = ["beta"]
{restart}
"#,
        node = common::node_section()
    )
}

/// SplitMix64: tiny, and the same sequence for a seed forever (no dependency whose algorithm
/// may change between versions).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias of a 64-bit draw is irrelevant here).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo + 1))
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    /// An independent stream for one actor, so each actor's schedule depends on the seed only.
    fn split(&mut self) -> Rng {
        Rng(self.next())
    }
}

/// `STRATA_CHAOS_SECS` and `STRATA_CHAOS_SEED` (decimal or 0x-hex); a malformed value fails
/// the test instead of being replaced by a default.
fn settings() -> (Duration, u64) {
    let secs = match std::env::var("STRATA_CHAOS_SECS") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("STRATA_CHAOS_SECS={s:?} is not a whole number of seconds")),
        Err(std::env::VarError::NotPresent) => DEFAULT_CHAOS_SECS,
        Err(e) => panic!("STRATA_CHAOS_SECS: {e}"),
    };
    let seed = match std::env::var("STRATA_CHAOS_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse::<u64>(),
            };
            parsed.unwrap_or_else(|_| panic!("STRATA_CHAOS_SEED={s:?} is not a u64"))
        }
        Err(std::env::VarError::NotPresent) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ u64::from(std::process::id()).rotate_left(32)
        }
        Err(e) => panic!("STRATA_CHAOS_SEED: {e}"),
    };
    (Duration::from_secs(secs), seed)
}

/// Sleeps `d`, or less when the chaos ends; true once it has ended.
async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let ended = tokio::select! {
        () = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    ended || *stop.borrow()
}

/// Runs a command (inside the namespace) off the async workers.
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.stdin(Stdio::null()).output())
        .await
        .expect("command task")
        .expect("spawn a command inside the namespace")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// `strata-ctl ARGS` as root inside the namespace.
async fn ctl(node: &Node, args: &[&str]) -> Output {
    let mut cmd = node.sd.command(node.inside_bin("strata-ctl"));
    cmd.args(args);
    output(cmd).await
}

/// What became of one call.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Ok,
    /// fs answered with an error: its code name and `details.reason` (empty when none).
    Refused {
        code: &'static str,
        reason: String,
    },
    /// No answer: connect refused, connection closed or reset, timeout.
    Unreachable(&'static str),
    /// An answer that must never happen (malformed, wrong req_id, wrong file content).
    Broken(String),
}

impl Outcome {
    fn is_revoked_denial(&self) -> bool {
        matches!(self, Outcome::Refused { reason, .. } if reason == "revoked")
    }
}

#[derive(Debug)]
struct CallRec {
    token: usize,
    method: &'static str,
    start: Instant,
    end: Instant,
    outcome: Outcome,
}

#[derive(Debug)]
struct TokenRec {
    token: Arc<str>,
    cap_id: String,
    /// When the first revoke attempt started: from here on the token may be revoked.
    revoke_started: Option<Instant>,
    /// When `strata-ctl token revoke` returned success (taken after it exited): from here on
    /// the token is revoked.
    revoked: Option<Instant>,
    revoke_attempts: u32,
}

/// What every actor shares: the tokens, the call log and where fs listens.
#[derive(Debug)]
struct Shared {
    tokens: Mutex<Vec<TokenRec>>,
    calls: Mutex<Vec<CallRec>>,
    /// Host path of the namespace's `/run/strata/fs.sock` (a relative symlink the supervisor
    /// keeps, so it resolves inside `/proc/<pid>/root`).
    socket: PathBuf,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn add_token(&self, token: String, cap_id: String) {
        lock(&self.tokens).push(TokenRec {
            token: token.into(),
            cap_id,
            revoke_started: None,
            revoked: None,
            revoke_attempts: 0,
        });
    }

    /// Indices of the tokens nobody has started to revoke.
    fn live(&self) -> Vec<usize> {
        lock(&self.tokens)
            .iter()
            .enumerate()
            .filter(|(_, t)| t.revoke_started.is_none())
            .map(|(i, _)| i)
            .collect()
    }

    /// A token for the next call: 40 % of the time one being or already revoked.
    fn pick(&self, rng: &mut Rng) -> Option<(usize, Arc<str>)> {
        let tokens = lock(&self.tokens);
        let (revoked, live): (Vec<usize>, Vec<usize>) =
            (0..tokens.len()).partition(|&i| tokens[i].revoke_started.is_some());
        let from = if !revoked.is_empty() && (live.is_empty() || rng.percent(40)) {
            revoked
        } else {
            live
        };
        if from.is_empty() {
            return None;
        }
        let i = from[rng.below(from.len())];
        Some((i, Arc::clone(&tokens[i].token)))
    }

    /// One call to fs on `conn` (connecting first when needed), logged with its instants. The
    /// start is taken before connecting, so it is never later than the request really left.
    async fn call(
        &self,
        conn: &mut Option<Client>,
        token_idx: usize,
        method: &'static str,
        params: Value,
        token: &str,
    ) -> (Outcome, Option<Value>) {
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_secs(3),
        };
        let start = Instant::now();
        let result = async {
            let client = match conn {
                Some(c) => c,
                None => conn.insert(Client::connect_with(&self.socket, config).await?),
            };
            client.call(method, params, Some(token)).await
        }
        .await;
        let end = Instant::now();
        let (outcome, value) = match result {
            Ok(v) if method == "fs.read" && v["data"] != FILE_TEXT => {
                (Outcome::Broken(format!("fs.read returned {v}")), None)
            }
            Ok(v) => (Outcome::Ok, Some(v)),
            Err(ClientError::Rpc(e)) => (
                Outcome::Refused {
                    code: e.code.name(),
                    reason: e.details.get("reason").map_or_else(String::new, |r| {
                        r.as_str().map_or_else(|| r.to_string(), str::to_owned)
                    }),
                },
                None,
            ),
            Err(ClientError::Connect { .. }) => (Outcome::Unreachable("connect"), None),
            Err(ClientError::Io { .. }) => (Outcome::Unreachable("io"), None),
            Err(ClientError::Closed { .. }) => (Outcome::Unreachable("closed"), None),
            Err(ClientError::Timeout { .. }) => (Outcome::Unreachable("timeout"), None),
            Err(e) => (Outcome::Broken(e.to_string()), None),
        };
        if !matches!(outcome, Outcome::Ok | Outcome::Refused { .. }) {
            // The connection is in an unknown state: the next call connects afresh.
            *conn = None;
        }
        lock(&self.calls).push(CallRec {
            token: token_idx,
            method,
            start,
            end,
            outcome: outcome.clone(),
        });
        (outcome, value)
    }
}

/// A client: fs.stat, or fs.open + fs.read + fs.close, with random tokens, until the chaos ends.
async fn client(shared: Arc<Shared>, mut rng: Rng, mut stop: watch::Receiver<bool>) {
    let mut conn: Option<Client> = None;
    loop {
        if rng.percent(10) {
            conn = None;
        }
        if let Some((idx, token)) = shared.pick(&mut rng) {
            if rng.percent(60) {
                let params = json!({"path": "file.txt"});
                shared.call(&mut conn, idx, "fs.stat", params, &token).await;
            } else {
                let params = json!({"path": "file.txt"});
                let (_, opened) = shared.call(&mut conn, idx, "fs.open", params, &token).await;
                if let Some(handle) = opened.as_ref().and_then(|v| v["handle"].as_str()) {
                    let params = json!({"handle": handle});
                    shared
                        .call(&mut conn, idx, "fs.read", params.clone(), &token)
                        .await;
                    if conn.is_some() {
                        shared
                            .call(&mut conn, idx, "fs.close", params, &token)
                            .await;
                    }
                }
            }
        }
        // Slower while fs is away: it comes back in 100 ms at the earliest.
        let wait = if conn.is_some() {
            rng.ms(0, 6)
        } else {
            rng.ms(10, 40)
        };
        if pause(&mut stop, wait).await {
            return;
        }
    }
}

#[derive(Debug, Default)]
struct KillStats {
    /// Successful `systemctl kill -s KILL` per service.
    kills: BTreeMap<&'static str, u32>,
    /// Kills systemctl refused (the unit was not loaded at that moment).
    misses: u32,
}

/// SIGKILLs services through systemd: one at a time, sometimes two or three at once.
async fn service_killer(
    node: Arc<Node>,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> KillStats {
    let all = declared();
    let mut stats = KillStats::default();
    while !pause(&mut stop, rng.ms(150, 1200)).await {
        let burst = if rng.percent(15) { 2 + rng.below(2) } else { 1 };
        for _ in 0..burst {
            let service = all[rng.below(all.len())];
            let mut cmd = node.sd.command("systemctl");
            cmd.args(["kill", "-s", "KILL", &unit_of(service)]);
            if output(cmd).await.status.success() {
                *stats.kills.entry(service).or_default() += 1;
            } else {
                stats.misses += 1;
            }
        }
    }
    stats
}

#[derive(Debug, Default)]
struct SupervisorStats {
    kills: u32,
    /// Supervisors that had exited on their own when the next kill came (each is a bug).
    exited_by_themselves: Vec<String>,
    down: Duration,
}

/// SIGKILLs the supervisor every few seconds and starts a new one after a short delay. Returns
/// the supervisor running at the end.
async fn supervisor_killer(
    node: Arc<Node>,
    mut child: Child,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
) -> (Child, SupervisorStats) {
    let mut stats = SupervisorStats::default();
    while !pause(&mut stop, rng.ms(1500, 6000)).await {
        let killed_at = Instant::now();
        if let Some(status) = node.kill_spawned_supervisor(child).await {
            stats.exited_by_themselves.push(status.to_string());
        }
        stats.kills += 1;
        // Not cut short by the end of the chaos: the restart is part of it.
        tokio::time::sleep(rng.ms(0, 1500)).await;
        child = node.spawn_supervisor().await;
        stats.down += killed_at.elapsed();
    }
    (child, stats)
}

#[derive(Debug, Default)]
struct RevokerStats {
    issued: u32,
    /// Failed `strata-ctl token issue` by exit status (identity down: skipped, not retried).
    issue_failures: BTreeMap<String, u32>,
    revoked: u32,
    /// Failed `strata-ctl token revoke` attempts by exit status (each retried until success).
    revoke_failures: BTreeMap<String, u32>,
    /// Revoke-return → end of the first denial seen by the prober right after it.
    latencies: Vec<Duration>,
    /// Revocations after which the prober could not reach fs (no latency sample).
    probes_unreachable: u32,
}

fn exit_kind(out: &Output) -> String {
    match out.status.code() {
        Some(c) => format!("exit {c}"),
        None => out.status.to_string(),
    }
}

/// `strata-ctl token issue` as root for fs, every action, beneath the prefix.
async fn issue(node: &Node, ttl: u64) -> Result<(String, String), Output> {
    let ttl = ttl.to_string();
    let prefix = prefix();
    let out = ctl(
        node,
        &[
            "token",
            "issue",
            "--service",
            "fs",
            "--action",
            "*",
            "--path-prefix",
            &prefix,
            "--ttl",
            &ttl,
        ],
    )
    .await;
    if !out.status.success() {
        return Err(out);
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "token issue succeeded but printed no JSON ({e}): {}",
            text(&out.stdout)
        )
    });
    match (v["token"].as_str(), v["cap_id"].as_str()) {
        (Some(t), Some(c)) => Ok((t.to_owned(), c.to_owned())),
        _ => panic!("token issue printed no token/cap_id: {v}"),
    }
}

/// Issues and revokes tokens at random times. A revoke is retried until it succeeds: a failed
/// attempt (identity down, or killed before answering) may or may not have taken effect, so
/// only the return of a successful attempt counts as "revoked".
async fn revoker(
    node: Arc<Node>,
    shared: Arc<Shared>,
    mut rng: Rng,
    mut stop: watch::Receiver<bool>,
    ttl: u64,
) -> RevokerStats {
    let mut stats = RevokerStats::default();
    let mut probe: Option<Client> = None;
    while !pause(&mut stop, rng.ms(200, 1200)).await {
        let live = shared.live();
        // Keep at least two live tokens: the positive controls.
        if live.len() < 3 || rng.percent(40) {
            match issue(&node, ttl).await {
                Ok((token, cap_id)) => {
                    shared.add_token(token, cap_id);
                    stats.issued += 1;
                }
                Err(out) => *stats.issue_failures.entry(exit_kind(&out)).or_default() += 1,
            }
            continue;
        }
        let idx = live[rng.below(live.len())];
        let (cap_id, token) = {
            let mut tokens = lock(&shared.tokens);
            tokens[idx].revoke_started = Some(Instant::now());
            (tokens[idx].cap_id.clone(), Arc::clone(&tokens[idx].token))
        };
        let first = Instant::now();
        let revoked_at = loop {
            let out = ctl(&node, &["token", "revoke", &cap_id]).await;
            let succeeded = {
                let mut tokens = lock(&shared.tokens);
                tokens[idx].revoke_attempts += 1;
                // Taken under the lock the analysis reads, after strata-ctl exited.
                let now = Instant::now();
                if out.status.success() {
                    tokens[idx].revoked = Some(now);
                }
                out.status.success().then_some(now)
            };
            if let Some(at) = succeeded {
                break at;
            }
            *stats.revoke_failures.entry(exit_kind(&out)).or_default() += 1;
            assert!(
                first.elapsed() < REVOKE_GIVE_UP,
                "revoking {cap_id} kept failing for {REVOKE_GIVE_UP:?}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            tokio::time::sleep(rng.ms(50, 300)).await;
        };
        stats.revoked += 1;
        // Probe at once, back to back, until fs says "revoked": the revoke→denied latency.
        loop {
            let params = json!({"path": "file.txt"});
            let (outcome, _) = shared
                .call(&mut probe, idx, "fs.stat", params, &token)
                .await;
            match outcome {
                o if o.is_revoked_denial() => {
                    stats.latencies.push(revoked_at.elapsed());
                    break;
                }
                Outcome::Unreachable(_) => {
                    stats.probes_unreachable += 1;
                    break;
                }
                _ if revoked_at.elapsed() > Duration::from_secs(3) => {
                    // Left to the analysis: every success here is a violation anyway.
                    break;
                }
                Outcome::Ok => {}
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
    stats
}

/// The last lines of the supervisor's journal and of the unit journals, for failure messages.
fn diagnostics(node: &Node) -> String {
    let mut out = String::new();
    let sup = node
        .sd
        .command("journalctl")
        .args([
            "-t",
            "strata-supervisor",
            "-o",
            "short-monotonic",
            "--no-pager",
            "-q",
            "-n",
            "120",
        ])
        .stdin(Stdio::null())
        .output();
    if let Ok(o) = sup {
        out.push_str("--- supervisor journal (tail) ---\n");
        out.push_str(&String::from_utf8_lossy(&o.stdout));
    }
    for s in declared() {
        let j = node.sd.journal(&unit_of(s)).unwrap_or_default();
        let tail: Vec<&str> = j.lines().rev().take(8).collect();
        out.push_str(&format!("--- {} (tail) ---\n", unit_of(s)));
        for l in tail.iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// `systemctl show -p Id -p ... UNITS` parsed into one map per unit, by Id.
fn show_units(
    node: &Node,
    units: &[String],
    props: &[&str],
) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut args: Vec<&str> = vec!["show", "-p", "Id"];
    for p in props {
        args.extend(["-p", p]);
    }
    args.extend(units.iter().map(String::as_str));
    let out = node.sd.systemctl(&args).expect("systemctl show");
    let mut all = BTreeMap::new();
    for block in String::from_utf8_lossy(&out.stdout).split("\n\n") {
        let map: BTreeMap<String, String> = block
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if let Some(id) = map.get("Id") {
            all.insert(id.clone(), map);
        }
    }
    all
}

/// MainPID and restart count of every service, as the supervisor reports them.
type Pids = BTreeMap<String, (u32, u32)>;

/// What keeps the graph from being converged (empty: converged), and the MainPID and restart
/// count of every service as the supervisor reports them.
async fn convergence(node: &Node) -> (Vec<String>, Pids) {
    let mut problems = Vec::new();
    let mut pids = BTreeMap::new();
    let list = match node.proxy().await.list_services().await {
        Ok(l) => l,
        Err(e) => return (vec![format!("ListServices failed: {e}")], pids),
    };
    let names: BTreeSet<&str> = list.iter().map(|s| s.name.as_str()).collect();
    let want: BTreeSet<&str> = declared().into_iter().collect();
    if names != want {
        problems.push(format!("ListServices names {names:?}, declared {want:?}"));
    }
    for s in &list {
        if s.state != "running" || s.main_pid == 0 {
            problems.push(format!(
                "{} is {} (pid {}): {}",
                s.name, s.state, s.main_pid, s.reason
            ));
        }
        pids.insert(s.name.clone(), (s.main_pid, s.restarts));
    }
    let units: Vec<String> = declared().into_iter().map(unit_of).collect();
    let shown = show_units(node, &units, &["ActiveState", "SubState", "MainPID"]);
    for unit in &units {
        let Some(p) = shown.get(unit) else {
            problems.push(format!("systemctl show knows no {unit}"));
            continue;
        };
        let field = |k: &str| p.get(k).map_or("", String::as_str);
        if field("ActiveState") != "active" || field("SubState") != "running" {
            problems.push(format!(
                "{unit} is {}/{} in systemd",
                field("ActiveState"),
                field("SubState")
            ));
        }
        let service = unit
            .trim_start_matches("strata-")
            .trim_end_matches(".service");
        let reported = pids.get(service).map_or(0, |(pid, _)| *pid);
        if field("MainPID") != reported.to_string() {
            problems.push(format!(
                "{unit}: systemd's MainPID {} but the supervisor reports {reported}",
                field("MainPID")
            ));
        }
    }
    (problems, pids)
}

/// Units and processes: exactly one `strata-<name>.service` per declared service, nothing else
/// in strata.slice, one process per unit cgroup (its MainPID), one supervisor.
fn orphans(node: &Node, pids: &Pids) -> Vec<String> {
    let mut problems = Vec::new();
    let want: BTreeSet<String> = declared().into_iter().map(unit_of).collect();

    // Every loaded unit named strata-* (the harness's own target excepted), in any state.
    let out = node
        .sd
        .systemctl(&["list-units", "--all", "--plain", "--no-legend", "--full"])
        .expect("list-units");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let all_units: Vec<String> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let strata: BTreeSet<String> = all_units
        .iter()
        .filter(|u| u.starts_with("strata-") && *u != "strata-testns.target")
        .cloned()
        .collect();
    if strata != want {
        problems.push(format!(
            "units named strata-*: {strata:?}, declared: {want:?}"
        ));
    }

    // Every loaded service or scope in strata.slice.
    let candidates: Vec<String> = all_units
        .iter()
        .filter(|u| u.ends_with(".service") || u.ends_with(".scope"))
        .cloned()
        .collect();
    let in_slice: BTreeSet<String> = show_units(node, &candidates, &["Slice"])
        .into_iter()
        .filter(|(_, p)| p.get("Slice").is_some_and(|s| s == "strata.slice"))
        .map(|(id, _)| id)
        .collect();
    if in_slice != want {
        problems.push(format!(
            "units in strata.slice: {in_slice:?}, declared: {want:?}"
        ));
    }

    // The kernel's view: strata.slice's cgroup in the name=systemd hierarchy.
    let subtrees = node.sd.cgroup_subtrees().expect("cgroup subtrees");
    let Some(tree) = subtrees.iter().find(|p| {
        p.parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == "systemd")
    }) else {
        problems.push(format!("no name=systemd cgroup subtree among {subtrees:?}"));
        return problems;
    };
    let slice = tree.join("strata.slice");
    let procs = |dir: &Path| -> Vec<u32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    };
    if !procs(&slice).is_empty() {
        problems.push(format!(
            "processes directly in strata.slice: {:?}",
            procs(&slice)
        ));
    }
    let children: BTreeSet<String> = std::fs::read_dir(&slice)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if children != want {
        problems.push(format!(
            "cgroups in {}: {children:?}, declared: {want:?}",
            slice.display()
        ));
    }
    for unit in &children {
        let host_pids = procs(&slice.join(unit));
        // The namespace's PID of each process: the last field of NSpid.
        let ns_pids: Vec<u32> = host_pids
            .iter()
            .filter_map(|p| {
                let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
                let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
                line.split_whitespace().last()?.parse().ok()
            })
            .collect();
        let service = unit
            .trim_start_matches("strata-")
            .trim_end_matches(".service");
        let main = pids.get(service).map_or(0, |(pid, _)| *pid);
        if ns_pids != [main] {
            problems.push(format!(
                "{unit}'s cgroup holds {ns_pids:?} (namespace PIDs), its MainPID is {main}"
            ));
        }
    }

    let out = node
        .sd
        .command("pgrep")
        .args(["-x", "strata-supervis"])
        .stdin(Stdio::null())
        .output()
        .expect("pgrep");
    let supervisors = String::from_utf8_lossy(&out.stdout).lines().count();
    if supervisors != 1 {
        problems.push(format!("{supervisors} strata-supervisor processes, want 1"));
    }
    problems
}

/// Waits until fs answers a live token with success (it is up and has its revocation list).
async fn wait_fs_serving(shared: &Shared, within: Duration) {
    let deadline = Instant::now() + within;
    let (idx, token) = {
        let tokens = lock(&shared.tokens);
        let i = tokens
            .iter()
            .position(|t| t.revoke_started.is_none())
            .expect("a live token");
        (i, Arc::clone(&tokens[i].token))
    };
    let mut conn = None;
    loop {
        let params = json!({"path": "file.txt"});
        let (outcome, _) = shared.call(&mut conn, idx, "fs.stat", params, &token).await;
        if outcome == Outcome::Ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "fs did not serve a live token within {within:?}: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every revoked token is denied as revoked, every live one succeeds (the positive control).
async fn revocations_hold(shared: &Shared, when: &str) -> Vec<String> {
    let tokens: Vec<(usize, Arc<str>, String, bool)> = lock(&shared.tokens)
        .iter()
        .enumerate()
        .map(|(i, t)| {
            (
                i,
                Arc::clone(&t.token),
                t.cap_id.clone(),
                t.revoked.is_some(),
            )
        })
        .collect();
    let mut problems = Vec::new();
    let mut conn = None;
    for (idx, token, cap_id, revoked) in tokens {
        for method in ["fs.stat", "fs.open"] {
            let params = json!({"path": "file.txt"});
            let (outcome, value) = shared.call(&mut conn, idx, method, params, &token).await;
            if method == "fs.open" {
                if let Some(h) = value.as_ref().and_then(|v| v["handle"].as_str()) {
                    let params = json!({"handle": h});
                    shared
                        .call(&mut conn, idx, "fs.close", params, &token)
                        .await;
                }
            }
            let want = if revoked {
                Outcome::Refused {
                    code: "UNAUTHENTICATED",
                    reason: "revoked".into(),
                }
            } else {
                Outcome::Ok
            };
            if outcome != want {
                problems.push(format!(
                    "{when}: {method} with {} token {cap_id}: {outcome:?}, want {want:?}",
                    if revoked { "revoked" } else { "live" }
                ));
            }
        }
    }
    problems
}

/// Percentile of sorted samples.
fn pct(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

/// CLOCK_MONOTONIC in seconds for an `Instant` (the journal's `short-monotonic` clock), so a
/// violation can be laid next to the services' log lines.
#[derive(Debug, Clone, Copy)]
struct Monotonic {
    base: Instant,
    base_secs: f64,
}

impl Monotonic {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
        Self {
            base: Instant::now(),
            base_secs: ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9,
        }
    }

    fn secs(&self, at: Instant) -> f64 {
        if at >= self.base {
            self.base_secs + (at - self.base).as_secs_f64()
        } else {
            self.base_secs - (self.base - at).as_secs_f64()
        }
    }
}

/// Lines of the journals (short-monotonic) of `units` and of the supervisor between `from` and
/// `to` seconds, in time order.
fn journal_window(node: &Node, units: &[&str], from: f64, to: f64) -> String {
    // Matches on different fields are ANDed by journalctl: one query per source.
    let mut queries: Vec<Vec<&str>> = units.iter().map(|u| vec!["-u", *u]).collect();
    queries.push(vec!["-t", "strata-supervisor"]);
    let mut lines: Vec<(f64, String)> = Vec::new();
    for q in queries {
        let out = node
            .sd
            .command("journalctl")
            .args(["-o", "short-monotonic", "--no-pager", "-q"])
            .args(&q)
            .stdin(Stdio::null())
            .output()
            .expect("journalctl");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            let t = l
                .strip_prefix('[')
                .and_then(|r| r.split(']').next())
                .and_then(|t| t.trim().parse::<f64>().ok());
            // The per-request decisions would drown the story.
            let chatter = l.contains("allowed fs.") || l.contains("denied fs.");
            if let Some(t) = t.filter(|t| *t >= from && *t <= to && !chatter) {
                lines.push((t, l.to_owned()));
            }
        }
    }
    lines.sort_by(|a, b| a.0.total_cmp(&b.0));
    lines.into_iter().map(|(_, l)| l + "\n").collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_kills_and_revocations_under_load() {
    let (chaos, seed) = settings();
    println!(
        "chaos: seed {seed} (replay with STRATA_CHAOS_SEED={seed}), {} s (STRATA_CHAOS_SECS)",
        chaos.as_secs()
    );
    let mut rng = Rng(seed);
    let clock = Monotonic::now();
    // Tokens outlive the run (identity's default maximum is a day).
    let ttl = (chaos.as_secs() + 600).min(86_400);

    let node = Node::boot().await;
    node.sd
        .write_file(
            Path::new(&format!("{FS_ROOT}/data/file.txt")),
            FILE_TEXT.as_bytes(),
        )
        .expect("write the fixture");
    let chmod = node
        .sd
        .command("chmod")
        .args(["-R", "a+rX", FS_ROOT])
        .status()
        .expect("chmod");
    assert!(chmod.success(), "chmod -R a+rX {FS_ROOT} failed");
    node.write_manifest(&manifest());
    let supervisor = node.spawn_supervisor().await;
    let up = Duration::from_secs(60);
    for s in declared() {
        node.wait_state(s, "running", up).await;
    }

    let shared = Arc::new(Shared {
        tokens: Mutex::new(Vec::new()),
        calls: Mutex::new(Vec::new()),
        socket: node.sd.root().join("run/strata/fs.sock"),
    });
    for _ in 0..INITIAL_TOKENS {
        let (token, cap_id) = issue(&node, ttl)
            .await
            .unwrap_or_else(|o| panic!("token issue: {}{}", text(&o.stdout), text(&o.stderr)));
        shared.add_token(token, cap_id);
    }
    // Positive control before any chaos: every token works.
    let before = revocations_hold(&shared, "before the chaos").await;
    assert!(before.is_empty(), "{before:#?}");
    lock(&shared.calls).clear();

    let node = Arc::new(node);
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(Arc::clone(&shared), rng.split(), stop.clone())))
        .collect();
    let killer = tokio::spawn(service_killer(Arc::clone(&node), rng.split(), stop.clone()));
    let sup_killer = tokio::spawn(supervisor_killer(
        Arc::clone(&node),
        supervisor,
        rng.split(),
        stop.clone(),
    ));
    let revoker = tokio::spawn(revoker(
        Arc::clone(&node),
        Arc::clone(&shared),
        rng.split(),
        stop.clone(),
        ttl,
    ));
    tokio::time::sleep(chaos).await;
    stop_tx.send_replace(true);
    let stopped = Instant::now();
    for c in clients {
        c.await.expect("client task");
    }
    let kills = killer.await.expect("service killer task");
    let (mut supervisor, sup) = sup_killer.await.expect("supervisor killer task");
    let revs = revoker.await.expect("revoker task");
    let actors_done = stopped.elapsed();

    // Convergence: the supervisor brings every service back, and the picture stays put for
    // STABLE_FOR (a kill issued just before the stop may still be on its way through systemd).
    // Each distinct set of problems on the way, with when it was first seen.
    let mut path: Vec<(Duration, Vec<String>)> = Vec::new();
    let mut stable: Option<(Instant, Pids)> = None;
    let (converged, pids) = loop {
        let (problems, pids) = convergence(&node).await;
        if problems.is_empty() {
            match &stable {
                Some((since, seen)) if *seen == pids => {
                    if since.elapsed() >= STABLE_FOR {
                        break (*since - stopped, pids);
                    }
                }
                _ => stable = Some((Instant::now(), pids.clone())),
            }
        } else {
            stable = None;
            if path.last().is_none_or(|(_, p)| *p != problems) {
                path.push((stopped.elapsed(), problems.clone()));
            }
        }
        if stopped.elapsed() >= CONVERGE_WITHIN {
            // The story of every service still in trouble, from shortly before the chaos ended.
            let from = clock.secs(stopped) - 5.0;
            let to = clock.secs(Instant::now());
            let mut story = String::new();
            for s in declared() {
                if problems
                    .iter()
                    .any(|p| p.contains(&unit_of(s)) || p.starts_with(&format!("{s} ")))
                {
                    let lines: String = journal_window(&node, &[&unit_of(s)], from, to)
                        .lines()
                        .filter(|l| l.contains(s))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    story.push_str(&format!(
                        "--- {s}, from 5 s before the chaos ended ---\n{lines}"
                    ));
                }
            }
            panic!(
                "seed {seed}: not converged and stable for {STABLE_FOR:?} within {CONVERGE_WITHIN:?} after the chaos:\n{path:#?}\nlast: {problems:#?} {pids:?}\n{story}\n{}",
                diagnostics(&node)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if converged > Duration::from_secs(5) {
        println!("slow convergence ({converged:?}), on the way: {path:#?}");
    }
    if let Some(status) = supervisor.try_wait().expect("waiting on the supervisor") {
        panic!("seed {seed}: the last supervisor exited: {status}");
    }
    let orphaned = orphans(&node, &pids);
    assert!(
        orphaned.is_empty(),
        "seed {seed}: duplicate or orphaned units:\n{orphaned:#?}\n{}",
        diagnostics(&node)
    );
    assert!(
        sup.exited_by_themselves.is_empty(),
        "seed {seed}: supervisors exited on their own: {:?}\n{}",
        sup.exited_by_themselves,
        diagnostics(&node)
    );

    // No revocation lost: now, and after one more fs restart (it catches up from identity).
    wait_fs_serving(&shared, Duration::from_secs(30)).await;
    let mut lost = revocations_hold(&shared, "after the chaos").await;
    let fs_pid = pids.get("fs").map_or(0, |(p, _)| *p);
    node.proxy().await.restart("fs").await.expect("restart fs");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info = node
            .proxy()
            .await
            .get_service("fs")
            .await
            .expect("GetService fs");
        if info.state == "running" && info.main_pid != fs_pid && info.main_pid != 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: fs did not come back after a restart: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_fs_serving(&shared, Duration::from_secs(30)).await;
    lost.extend(revocations_hold(&shared, "after restarting fs").await);
    assert!(
        lost.is_empty(),
        "seed {seed}: revocations lost:\n{lost:#?}\n{}",
        diagnostics(&node)
    );

    // No success after a revoke had returned; no "revoked" for a token never revoked.
    let tokens = std::mem::take(&mut *lock(&shared.tokens));
    let calls = std::mem::take(&mut *lock(&shared.calls));
    let mut violations = Vec::new();
    let mut leaks: Vec<Duration> = Vec::new();
    // Successes beyond the budget, per token: (count, earliest, latest after the revoke).
    let mut late_by_token: BTreeMap<usize, (u32, Duration, Duration)> = BTreeMap::new();
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    // Refusals of tokens nobody revoked: expected only while fs starts (UNAVAILABLE) or for
    // a handle a restarted fs no longer knows (NOT_FOUND); printed, and "revoked" fails below.
    let mut live_denials: BTreeMap<String, u32> = BTreeMap::new();
    for c in calls.iter() {
        let t = &tokens[c.token];
        let kind = match &c.outcome {
            Outcome::Ok => "ok".to_owned(),
            Outcome::Refused { code, reason } => format!("denied {code} {reason}"),
            Outcome::Unreachable(how) => format!("unreachable ({how})"),
            Outcome::Broken(why) => {
                violations.push(format!(
                    "{} with {}: broken answer: {why}",
                    c.method, t.cap_id
                ));
                "broken".to_owned()
            }
        };
        if t.revoke_started.is_none() && matches!(c.outcome, Outcome::Refused { .. }) {
            *live_denials.entry(kind.clone()).or_default() += 1;
        }
        *counts.entry(kind).or_default() += 1;
        if c.outcome == Outcome::Ok {
            if let Some(r) = t.revoked.filter(|r| c.start > *r) {
                let late = c.start - r;
                leaks.push(late);
                if late > REVOKE_BUDGET {
                    let e = late_by_token.entry(c.token).or_insert((0, late, late));
                    e.0 += 1;
                    e.1 = e.1.min(late);
                    e.2 = e.2.max(late);
                }
            }
        }
        if c.outcome.is_revoked_denial() {
            match t.revoke_started {
                None => violations.push(format!(
                    "{} with {}: denied as revoked, but it was never revoked",
                    c.method, t.cap_id
                )),
                Some(s) if c.end < s => violations.push(format!(
                    "{} with {}: denied as revoked {:?} before its revoke started",
                    c.method,
                    t.cap_id,
                    s - c.end
                )),
                Some(_) => {}
            }
        }
    }
    let mut latencies = revs.latencies.clone();
    latencies.sort();
    leaks.sort();
    let attempts: u32 = tokens.iter().map(|t| t.revoke_attempts).sum();

    println!(
        "chaos summary (seed {seed}, {} s of chaos):",
        chaos.as_secs()
    );
    println!(
        "  service kills: {:?} ({} total; {} refused by systemctl)",
        kills.kills,
        kills.kills.values().sum::<u32>(),
        kills.misses
    );
    println!(
        "  supervisor kills: {} (down {:?} in total; exited on its own: {})",
        sup.kills,
        sup.down,
        sup.exited_by_themselves.len()
    );
    println!("  calls: {} {counts:?}", calls.len());
    println!("  refusals of tokens never revoked: {live_denials:?}");
    println!(
        "  tokens: {} issued ({INITIAL_TOKENS} before the chaos), issue failures {:?}",
        revs.issued as usize + INITIAL_TOKENS,
        revs.issue_failures
    );
    println!(
        "  revocations: {} ({attempts} attempts, failed ones retried: {:?})",
        revs.revoked, revs.revoke_failures
    );
    println!(
        "  revoke-return -> first revoked denial (prober, includes fs restarting): n={} p50 {:?} p99 {:?} max {:?}; fs unreachable for {} probes",
        latencies.len(),
        pct(&latencies, 50),
        pct(&latencies, 99),
        latencies.last().copied().unwrap_or_default(),
        revs.probes_unreachable
    );
    println!(
        "  successes that started after their revoke returned: {} (latest {:?} after; budget {REVOKE_BUDGET:?})",
        leaks.len(),
        leaks.last().copied().unwrap_or_default()
    );
    println!(
        "  convergence: {converged:?} after the chaos stopped, then unchanged for {STABLE_FOR:?} (actors done after {actors_done:?}); run {:?}",
        started.elapsed()
    );

    let mut story = String::new();
    for (idx, (n, first, last)) in &late_by_token {
        let t = &tokens[*idx];
        let r = t.revoked.map_or(0.0, |r| clock.secs(r));
        violations.push(format!(
            "{n} successes with {} that started {first:?} to {last:?} after its revoke returned (at monotonic {r:.6}; budget {REVOKE_BUDGET:?})",
            t.cap_id
        ));
        story.push_str(&format!(
            "--- journal from 3 s before to 1 s after the revoke of {} returned at {r:.6} ---\n{}",
            t.cap_id,
            journal_window(
                &node,
                &["strata-fs.service", "strata-identity.service"],
                r - 3.0,
                r + 1.0
            )
        ));
    }
    assert!(
        violations.is_empty(),
        "seed {seed}: {} violations:\n{:#?}\n{story}",
        violations.len(),
        violations.iter().take(30).collect::<Vec<_>>()
    );
    // The run must have exercised what it claims to.
    let ok = counts.get("ok").copied().unwrap_or(0);
    let revoked_denials: u32 = calls
        .iter()
        .filter(|c| c.outcome.is_revoked_denial())
        .count() as u32;
    assert!(
        kills.kills.values().sum::<u32>() > 0 && sup.kills > 0 && revs.revoked > 0,
        "seed {seed}: the chaos did too little (service kills {:?}, supervisor kills {}, revocations {}): give STRATA_CHAOS_SECS >= 10",
        kills.kills,
        sup.kills,
        revs.revoked
    );
    assert!(
        ok > 0 && revoked_denials > 0,
        "seed {seed}: clients saw {ok} successes and {revoked_denials} revoked denials"
    );
    let exited = node.kill_spawned_supervisor(supervisor).await;
    assert!(
        exited.is_none(),
        "seed {seed}: the last supervisor exited on its own: {exited:?}"
    );
}
