//! `strata-ctl audit verify|tail`: check the audit log's hash chain (against its head file),
//! and show its last records. Reads the files directly (root, or whoever may read the audit
//! service's state directory), with the same chain logic the audit service uses.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use strata_core::audit_chain::{self, AuditDecision, AuditRecord, ChainHead};

/// Arguments of `strata-ctl audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Verify the hash chain: report the first altered, removed or reordered record.
    Verify(VerifyArgs),
    /// Show the last records.
    Tail(TailArgs),
}

/// Where the log is.
#[derive(Debug, Args)]
pub struct LogLocation {
    /// The log file (default `<state_dir>/audit/audit.log`).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The node's state directory.
    #[arg(long, env = "STRATA_STATE_DIR", default_value = "/var/lib/strata")]
    pub state_dir: PathBuf,
}

impl LogLocation {
    fn log(&self) -> PathBuf {
        self.file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit").join("audit.log"))
    }
}

/// Arguments of `audit verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub location: LogLocation,
    /// The head file (default: `audit.head` beside the log, when present).
    #[arg(long)]
    pub head: Option<PathBuf>,
    /// Ignore the head file (records cut off the end then go unnoticed).
    #[arg(long, conflicts_with = "head")]
    pub no_head: bool,
}

/// Arguments of `audit tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub location: LogLocation,
    /// Number of records.
    #[arg(short = 'n', long = "lines", default_value_t = 20)]
    pub n: usize,
    /// Print the records as stored (JSON lines).
    #[arg(long)]
    pub json: bool,
}

fn read(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    String::from_utf8(bytes).with_context(|| format!("{} is not UTF-8", path.display()))
}

/// Runs `strata-ctl audit …`.
pub fn run(args: &AuditArgs) -> Result<ExitCode> {
    match &args.command {
        AuditCommand::Verify(v) => verify(v),
        AuditCommand::Tail(t) => tail(t),
    }
}

fn verify(args: &VerifyArgs) -> Result<ExitCode> {
    let log = args.location.log();
    let text = read(&log)?;
    let head_path = match (&args.head, args.no_head) {
        (_, true) => None,
        (Some(h), false) => Some(h.clone()),
        (None, false) => {
            let beside = log.with_file_name("audit.head");
            beside.exists().then_some(beside)
        }
    };
    let head: Option<ChainHead> = match &head_path {
        None => None,
        Some(p) => {
            let t = read(p)?;
            match ChainHead::parse(&t) {
                Ok(h) => Some(h),
                Err(e) => {
                    println!("{}: head file {}: {e}", log.display(), p.display());
                    return Ok(ExitCode::from(1));
                }
            }
        }
    };
    match audit_chain::verify_log(&text, head.as_ref()) {
        Ok(v) => {
            let head_note = match (&head_path, v.head_file_behind) {
                (None, _) => "no head file: records cut off the end would go unnoticed".to_owned(),
                (Some(_), false) => "matches the head file".to_owned(),
                (Some(_), true) => {
                    "the head file lags behind the log (a crash between a write and its head update)"
                        .to_owned()
                }
            };
            let last = v
                .head
                .map_or("empty".to_owned(), |h| format!("last seq {}", h.seq));
            println!(
                "{}: intact: {} records ({} decisions), {last}, {head_note}",
                log.display(),
                v.records,
                v.decisions
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(brk) => {
            println!("{}: BROKEN: {brk}", log.display());
            Ok(ExitCode::from(1))
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch (UTC).
pub fn format_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

fn render(r: &AuditRecord) -> String {
    let e = &r.event;
    let mut line = format!(
        "{:>6} {} {} {}.{} by {} cap={}",
        r.seq,
        format_ms(e.time_ms),
        match e.decision {
            AuditDecision::Allow => "ALLOW",
            AuditDecision::Deny => "DENY ",
        },
        e.service,
        e.action,
        e.source,
        e.cap_id
            .as_deref()
            .map_or("-".to_owned(), |c| c.chars().take(16).collect()),
    );
    if e.count > 1 {
        line.push_str(&format!(" x{}", e.count));
    }
    if let Some(uid) = e.peer_uid {
        line.push_str(&format!(" uid={uid}"));
    }
    if let Some(reason) = &e.reason {
        line.push_str(&format!(" reason={reason}"));
    }
    if let Some(m) = &e.message {
        line.push_str(&format!(": {m}"));
    }
    line
}

fn tail(args: &TailArgs) -> Result<ExitCode> {
    let log = args.location.log();
    let text = read(&log)?;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(args.n);
    let mut bad = false;
    for line in &lines[start..] {
        if args.json {
            println!("{line}");
            continue;
        }
        match serde_json::from_str::<AuditRecord>(line) {
            Ok(r) => println!("{}", render(&r)),
            Err(e) => {
                bad = true;
                println!("(malformed record: {e})");
            }
        }
    }
    Ok(if bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rendered_in_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
    }
}
