//! The audit service's durable log: `audit.log` (JSON lines, hash-chained, append-only,
//! fdatasync'ed per batch) and `audit.head` (the last seq and hash, replaced atomically after
//! every batch, so that records cut off the end are noticed).
//!
//! At start the existing log is verified. A last line without its newline is a write cut
//! short by a crash (never acknowledged) and is truncated away. A log that does not verify
//! is kept as evidence under a new name and a new chain is started, so that auditing never
//! stops because someone tampered with the old log.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use strata_core::audit_chain::{self, AuditEvent, AuditRecord, Chain, ChainBreak, ChainHead};

use crate::durable::{DurableError, fsync_dir, write_atomic};

/// File name of the log in the state directory.
pub const LOG_FILE: &str = "audit.log";
/// File name of the head file in the state directory.
pub const HEAD_FILE: &str = "audit.head";

/// Why the audit log cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    /// An I/O step failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Replacing the head file failed.
    #[error(transparent)]
    Durable(#[from] DurableError),
}

fn io_err<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AuditLogError + 'a {
    move |source| AuditLogError::Io {
        step,
        path: path.to_owned(),
        source,
    }
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// The log verified (possibly empty).
    Intact {
        /// Records in it.
        records: usize,
    },
    /// A torn last line was truncated, then the rest verified.
    TruncatedTornLine {
        /// Bytes dropped.
        bytes: usize,
        /// Records kept.
        records: usize,
    },
    /// The log did not verify: it was renamed to `kept_as` and a new chain started.
    Broken {
        /// The first break.
        found: ChainBreak,
        /// Where the old log is now.
        kept_as: PathBuf,
    },
}

/// The open log.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    file: File,
    chain: Chain,
}

/// Reads the head file, if there is one.
pub fn read_head(path: &Path) -> Result<Option<ChainHead>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => ChainHead::parse(&text).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

impl AuditLog {
    /// Opens (creating) the log in `dir`, verifying what is there; `now_secs` names a
    /// broken log kept aside.
    pub fn open(dir: &Path, now_secs: u64) -> Result<(Self, Recovery), AuditLogError> {
        crate::registry::create_private_dir(dir).map_err(io_err("creating", dir))?;
        let path = dir.join(LOG_FILE);
        let head_path = dir.join(HEAD_FILE);
        let mut file = open_append(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(io_err("reading", &path))?;
        let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let torn = bytes.len() - complete;
        if torn > 0 {
            file.set_len(complete as u64)
                .map_err(io_err("truncating the torn last line of", &path))?;
            file.sync_all().map_err(io_err("fsyncing", &path))?;
        }
        let text = String::from_utf8_lossy(&bytes[..complete]);
        let head = read_head(&head_path);
        let verdict = match head {
            Ok(h) => audit_chain::verify_log(&text, h.as_ref()),
            Err(problem) => Err(ChainBreak {
                index: 0,
                kind: audit_chain::BreakKind::Malformed,
                detail: problem,
            }),
        };
        match verdict {
            Ok(v) => {
                let log = Self {
                    dir: dir.to_owned(),
                    file,
                    chain: Chain::resume(v.head),
                };
                let recovery = if torn > 0 {
                    Recovery::TruncatedTornLine {
                        bytes: torn,
                        records: v.records,
                    }
                } else {
                    Recovery::Intact { records: v.records }
                };
                Ok((log, recovery))
            }
            Err(found) => {
                drop(file);
                let kept_as = dir.join(format!("{LOG_FILE}.broken-{now_secs}"));
                std::fs::rename(&path, &kept_as).map_err(io_err("keeping aside", &path))?;
                if head_path.exists() {
                    let kept_head = dir.join(format!("{HEAD_FILE}.broken-{now_secs}"));
                    std::fs::rename(&head_path, &kept_head)
                        .map_err(io_err("keeping aside", &head_path))?;
                }
                fsync_dir(dir)?;
                let file = open_append(&path)?;
                fsync_dir(dir)?;
                Ok((
                    Self {
                        dir: dir.to_owned(),
                        file,
                        chain: Chain::new(),
                    },
                    Recovery::Broken { found, kept_as },
                ))
            }
        }
    }

    /// The last record written.
    pub fn head(&self) -> Option<ChainHead> {
        self.chain.head()
    }

    /// The log's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }

    /// Seals and appends `events` (one write, one fdatasync, then the head file); the
    /// records written. On failure nothing is acknowledged and the chain is not advanced.
    pub fn append(
        &mut self,
        recorded_ms: u64,
        events: Vec<AuditEvent>,
    ) -> Result<Vec<AuditRecord>, AuditLogError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut chain = self.chain.clone();
        let records: Vec<AuditRecord> = events
            .into_iter()
            .map(|e| chain.append(recorded_ms, e))
            .collect();
        let mut bytes = Vec::new();
        for r in &records {
            bytes.extend_from_slice(r.to_line().as_bytes());
        }
        let path = self.path();
        let len_before = self
            .file
            .metadata()
            .map_err(io_err("stat of", &path))?
            .len();
        let written = self
            .file
            .write_all(&bytes)
            .map_err(io_err("appending to", &path))
            .and_then(|()| self.file.sync_data().map_err(io_err("fsyncing", &path)));
        if let Err(e) = written {
            // Leave no partial batch that the next batch would chain after.
            let _ = self.file.set_len(len_before);
            return Err(e);
        }
        self.chain = chain;
        if let Some(head) = self.chain.head() {
            write_atomic(&self.dir.join(HEAD_FILE), head.to_json().as_bytes(), 0o600)?;
        }
        Ok(records)
    }
}

fn open_append(path: &Path) -> Result<File, AuditLogError> {
    let existed = path.exists();
    let f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err("opening", path))?;
    if !existed && let Some(dir) = path.parent() {
        fsync_dir(dir)?;
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::audit_chain::{AuditDecision, BreakKind};

    fn dir(tag: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("strata-auditlog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    fn ev(i: u64) -> AuditEvent {
        AuditEvent {
            time_ms: i,
            source: "fs".into(),
            service: "fs".into(),
            action: "read".into(),
            cap_id: Some("c".into()),
            decision: AuditDecision::Allow,
            reason: None,
            message: None,
            peer_uid: None,
            count: 1,
        }
    }

    #[test]
    fn reopening_continues_the_chain_and_a_torn_line_is_dropped() {
        let d = dir("reopen");
        {
            let (mut log, rec) = AuditLog::open(&d, 1).expect("open");
            assert_eq!(rec, Recovery::Intact { records: 0 });
            log.append(10, vec![ev(1), ev(2)]).expect("append");
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(d.join(LOG_FILE))
            .expect("raw");
        f.write_all(b"{\"seq\":2,\"rec").expect("torn write");
        drop(f);
        let (mut log, rec) = AuditLog::open(&d, 2).expect("reopen");
        assert_eq!(
            rec,
            Recovery::TruncatedTornLine {
                bytes: 13,
                records: 2
            }
        );
        let recs = log.append(11, vec![ev(3)]).expect("append");
        assert_eq!(recs[0].seq, 2);
        let text = std::fs::read_to_string(d.join(LOG_FILE)).expect("read");
        let head = read_head(&d.join(HEAD_FILE))
            .expect("head")
            .expect("present");
        let v = audit_chain::verify_log(&text, Some(&head)).expect("verifies");
        assert_eq!(v.records, 3);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_tampered_log_is_kept_aside_and_a_new_chain_starts() {
        let d = dir("tampered");
        {
            let (mut log, _) = AuditLog::open(&d, 1).expect("open");
            log.append(10, vec![ev(1), ev(2), ev(3)]).expect("append");
        }
        let text = std::fs::read_to_string(d.join(LOG_FILE)).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(d.join(LOG_FILE), format!("{}\n{}\n", lines[0], lines[2])).expect("write");
        let (mut log, rec) = AuditLog::open(&d, 77).expect("reopen");
        let Recovery::Broken { found, kept_as } = rec else {
            panic!("expected a broken log, got {rec:?}");
        };
        assert_eq!(found.kind, BreakKind::Removed);
        assert_eq!(kept_as, d.join("audit.log.broken-77"));
        assert!(kept_as.exists());
        assert!(d.join("audit.head.broken-77").exists());
        let recs = log.append(12, vec![ev(4)]).expect("append");
        assert_eq!(recs[0].seq, 0);
        let _ = std::fs::remove_dir_all(&d);
    }
}
