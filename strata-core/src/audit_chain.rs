//! The audit log's hash chain: how one authorization event becomes a sealed record, and how a
//! sequence of records is verified (first bad record, and whether it was altered, removed or
//! reordered).
//!
//! The log is JSON lines, one [`AuditRecord`] per line. Each record carries its sequence
//! number, the hash of the previous record (`prev`, all zeros for the first) and its own hash:
//! BLAKE3 in derive-key mode over a hand-written, length-prefixed encoding of every other field,
//! so that the hash never depends on a JSON library's formatting. The service also keeps a
//! head file (last seq and hash, rewritten atomically after every batch) that lets `verify`
//! notice records cut off the end. Pure: the caller supplies times and reads the files.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::authorize::{AuthzEvent, Decision};
use crate::token::{hex, unhex};

/// BLAKE3 derive-key context: separates audit hashes from every other hash of Strata.
const HASH_CONTEXT: &str = "strata 2025 audit log record v1";

/// `prev` of the first record.
pub const GENESIS: [u8; 32] = [0; 32];

/// Allowed or denied, as written in the log (`allow` / `deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    /// The request was authorized.
    Allow,
    /// The request was denied.
    Deny,
}

impl AuditDecision {
    /// The journal's `STRATA_EVENT` value: `authz.allowed` or `authz.denied`.
    pub fn event_name(self) -> &'static str {
        match self {
            AuditDecision::Allow => "authz.allowed",
            AuditDecision::Deny => "authz.denied",
        }
    }

    /// `allow` or `deny`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
        }
    }
}

impl From<Decision> for AuditDecision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Allow => AuditDecision::Allow,
            Decision::Deny => AuditDecision::Deny,
        }
    }
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// One authorization decision (or `count` identical allowed ones), as shipped to the audit
/// service and kept in its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// When the decision was made (milliseconds since the epoch, the deciding service's clock);
    /// for a coalesced event, the last of them.
    pub time_ms: u64,
    /// The service that made the decision (`fs`).
    pub source: String,
    /// The service asked.
    pub service: String,
    /// The action asked (`read`).
    pub action: String,
    /// The capability presented, when it could be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap_id: Option<String>,
    /// Allowed or denied.
    pub decision: AuditDecision,
    /// Why it was denied (`revoked`, `path_outside_prefix`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The denial message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The requesting peer's uid, when the decision was made for a local peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_uid: Option<u32>,
    /// Number of identical allowed decisions this event stands for (denials are never merged).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub count: u64,
}

impl AuditEvent {
    /// The event of one decision returned by `authorize()`.
    pub fn from_authz(ev: &AuthzEvent, source: &str, time_ms: u64, peer_uid: Option<u32>) -> Self {
        Self {
            time_ms,
            source: source.to_owned(),
            service: ev.service.clone(),
            action: ev.action.clone(),
            cap_id: ev.cap_id.clone(),
            decision: ev.decision.into(),
            reason: ev.reason.map(|r| r.as_str().to_owned()),
            message: ev.message.clone(),
            peer_uid,
            count: 1,
        }
    }

    /// True when `other` may be merged into this event (same allowed decision by the same
    /// capability for the same peer).
    pub fn mergeable(&self, other: &AuditEvent) -> bool {
        self.decision == AuditDecision::Allow
            && other.decision == AuditDecision::Allow
            && self.source == other.source
            && self.service == other.service
            && self.action == other.action
            && self.cap_id == other.cap_id
            && self.peer_uid == other.peer_uid
    }

    /// Checks what the audit service must not accept: empty names, absurd sizes, zero count.
    pub fn validate(&self) -> Result<(), AuditEventError> {
        let field = |name: &'static str, v: &str, max: usize| {
            if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
                Err(AuditEventError::Field { field: name, max })
            } else {
                Ok(())
            }
        };
        field("source", &self.source, 64)?;
        field("service", &self.service, 64)?;
        field("action", &self.action, 128)?;
        if let Some(c) = &self.cap_id {
            field("cap_id", c, 256)?;
        }
        if let Some(r) = &self.reason {
            field("reason", r, 64)?;
        }
        if let Some(m) = &self.message
            && m.len() > 4096
        {
            return Err(AuditEventError::Field {
                field: "message",
                max: 4096,
            });
        }
        if self.count == 0 {
            return Err(AuditEventError::ZeroCount);
        }
        if self.count > 1 && self.decision == AuditDecision::Deny {
            return Err(AuditEventError::MergedDenial);
        }
        Ok(())
    }
}

/// Why an event is not accepted into the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditEventError {
    /// A text field is empty, too long or has control characters.
    #[error("field `{field}` must be 1 to {max} bytes without control characters")]
    Field {
        /// The field.
        field: &'static str,
        /// Its largest size.
        max: usize,
    },
    /// `count` is 0.
    #[error("field `count` must be at least 1")]
    ZeroCount,
    /// A denial with `count` above 1: every denial is its own record.
    #[error("denials are recorded one by one: `count` must be 1 for decision `deny`")]
    MergedDenial,
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecord {
    /// Position in the chain, from 0, without gaps.
    pub seq: u64,
    /// When the audit service recorded it (milliseconds since the epoch).
    pub recorded_ms: u64,
    /// Hex of the previous record's hash (all zeros for seq 0).
    pub prev: String,
    /// The decision.
    pub event: AuditEvent,
    /// Hex of this record's hash.
    pub hash: String,
}

/// Canonical, length-prefixed encoding fed to the hash.
struct Encoder(blake3::Hasher);

impl Encoder {
    fn u64(&mut self, n: u64) {
        self.0.update(&n.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }
    fn opt(&mut self, s: Option<&str>) {
        match s {
            None => {
                self.0.update(&[0]);
            }
            Some(s) => {
                self.0.update(&[1]);
                self.bytes(s.as_bytes());
            }
        }
    }
}

/// The hash of a record with these fields.
pub fn record_hash(seq: u64, recorded_ms: u64, prev: &[u8; 32], event: &AuditEvent) -> [u8; 32] {
    let mut e = Encoder(blake3::Hasher::new_derive_key(HASH_CONTEXT));
    e.u64(seq);
    e.u64(recorded_ms);
    e.0.update(prev);
    e.u64(event.time_ms);
    e.bytes(event.source.as_bytes());
    e.bytes(event.service.as_bytes());
    e.bytes(event.action.as_bytes());
    e.opt(event.cap_id.as_deref());
    e.bytes(event.decision.as_str().as_bytes());
    e.opt(event.reason.as_deref());
    e.opt(event.message.as_deref());
    match event.peer_uid {
        None => {
            e.0.update(&[0]);
        }
        Some(uid) => {
            e.0.update(&[1]);
            e.u64(u64::from(uid));
        }
    }
    e.u64(event.count);
    *e.0.finalize().as_bytes()
}

/// The last record of a chain: what the next record links to, and what the head file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Seq of the last record.
    pub seq: u64,
    /// Its hash.
    pub hash: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireHead {
    seq: u64,
    hash: String,
}

impl ChainHead {
    /// The head file's JSON text (`{"seq":N,"hash":"…"}` and a newline).
    pub fn to_json(&self) -> String {
        let w = WireHead {
            seq: self.seq,
            hash: hex(&self.hash),
        };
        let mut s = serde_json::to_string(&w).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Reads a head file's text.
    pub fn parse(text: &str) -> Result<ChainHead, String> {
        let w: WireHead =
            serde_json::from_str(text).map_err(|e| format!("malformed head file: {e}"))?;
        let hash = parse_hash(&w.hash).ok_or_else(|| {
            format!(
                "malformed head file: hash `{}` is not 64 hex digits",
                w.hash
            )
        })?;
        Ok(ChainHead { seq: w.seq, hash })
    }
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    unhex(s)?.try_into().ok()
}

/// Appends events to a chain, sealing each into a record.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    head: Option<ChainHead>,
}

impl Chain {
    /// An empty chain (the next record is seq 0, linked to [`GENESIS`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// A chain continuing after `head` (from a verified log).
    pub fn resume(head: Option<ChainHead>) -> Self {
        Self { head }
    }

    /// The last record sealed, if any.
    pub fn head(&self) -> Option<ChainHead> {
        self.head
    }

    /// Seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.head.map_or(0, |h| h.seq + 1)
    }

    /// Seals `event` as the next record.
    pub fn append(&mut self, recorded_ms: u64, event: AuditEvent) -> AuditRecord {
        let seq = self.next_seq();
        let prev = self.head.map_or(GENESIS, |h| h.hash);
        let hash = record_hash(seq, recorded_ms, &prev, &event);
        self.head = Some(ChainHead { seq, hash });
        AuditRecord {
            seq,
            recorded_ms,
            prev: hex(&prev),
            event,
            hash: hex(&hash),
        }
    }
}

impl AuditRecord {
    /// One line of the log (JSON, with the trailing newline).
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// How the chain is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakKind {
    /// A line is not a record (not JSON, unknown or missing fields, bad hex).
    Malformed,
    /// A record's content no longer matches its hash, or it was rewritten with a new hash.
    Altered,
    /// Records are missing (in the middle, at the start, or at the end per the head file).
    Removed,
    /// Records are out of order (or repeated).
    Reordered,
}

impl BreakKind {
    /// `malformed`, `altered`, `removed` or `reordered`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Malformed => "malformed",
            BreakKind::Altered => "altered",
            BreakKind::Removed => "removed",
            BreakKind::Reordered => "reordered",
        }
    }
}

/// The first place where the chain is broken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at line {} ({}): {detail}", .index + 1, .kind.as_str())]
pub struct ChainBreak {
    /// 0-based index of the first bad record (line index in the file).
    pub index: usize,
    /// What is wrong.
    pub kind: BreakKind,
    /// A sentence naming the records involved.
    pub detail: String,
}

/// A log that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedLog {
    /// Number of records.
    pub records: usize,
    /// The last record, if any.
    pub head: Option<ChainHead>,
    /// Number of decisions the records stand for (sum of `count`).
    pub decisions: u64,
    /// True when the head file named an earlier record than the last one (a crash between
    /// the log's fsync and the head's rewrite; not tampering).
    pub head_file_behind: bool,
}

/// Parses the lines of a log: a final newline is expected, a missing one is tolerated.
pub fn parse_lines(text: &str) -> Vec<Result<AuditRecord, String>> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() {
        return Vec::new();
    }
    body.split('\n')
        .map(|line| serde_json::from_str::<AuditRecord>(line).map_err(|e| e.to_string()))
        .collect()
}

/// Verifies the text of a log file, and its end against the head file when given.
pub fn verify_log(text: &str, head: Option<&ChainHead>) -> Result<VerifiedLog, ChainBreak> {
    let lines = parse_lines(text);
    let mut records = Vec::with_capacity(lines.len());
    for (index, line) in lines.into_iter().enumerate() {
        match line {
            Ok(r) => records.push(r),
            Err(e) => {
                return Err(ChainBreak {
                    index,
                    kind: BreakKind::Malformed,
                    detail: format!("line is not an audit record: {e}"),
                });
            }
        }
    }
    verify(&records, head)
}

/// Verifies a sequence of records: each matches its hash, links to its predecessor, and the
/// seqs run 0, 1, 2, … without gaps; with `head`, the log must reach it.
pub fn verify(
    records: &[AuditRecord],
    head: Option<&ChainHead>,
) -> Result<VerifiedLog, ChainBreak> {
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    let mut expected_seq: u64 = 0;
    let mut prev_hash = GENESIS;
    let mut decisions: u64 = 0;
    let mut seen: HashSet<u64> = HashSet::with_capacity(records.len());
    for (index, r) in records.iter().enumerate() {
        let brk = |kind: BreakKind, detail: String| ChainBreak {
            index,
            kind,
            detail,
        };
        let Some(stored_prev) = parse_hash(&r.prev) else {
            return Err(brk(
                BreakKind::Malformed,
                format!("record seq {} has a prev that is not 64 hex digits", r.seq),
            ));
        };
        let Some(stored_hash) = parse_hash(&r.hash) else {
            return Err(brk(
                BreakKind::Malformed,
                format!("record seq {} has a hash that is not 64 hex digits", r.seq),
            ));
        };
        if record_hash(r.seq, r.recorded_ms, &stored_prev, &r.event) != stored_hash {
            return Err(brk(
                BreakKind::Altered,
                format!(
                    "record seq {} does not match its hash: its content was changed",
                    r.seq
                ),
            ));
        }
        if r.seq != expected_seq {
            if r.seq < expected_seq || seen.contains(&r.seq) {
                return Err(brk(
                    BreakKind::Reordered,
                    format!(
                        "record seq {} appears where seq {expected_seq} belongs (out of order or repeated)",
                        r.seq
                    ),
                ));
            }
            // A gap: the missing seqs either come later (reordered) or are gone (removed).
            let later = seqs[index + 1..]
                .iter()
                .any(|s| (expected_seq..r.seq).contains(s));
            return Err(if later {
                brk(
                    BreakKind::Reordered,
                    format!(
                        "record seq {} appears before seq {expected_seq}, which comes later in the log",
                        r.seq
                    ),
                )
            } else {
                brk(
                    BreakKind::Removed,
                    format!(
                        "records seq {expected_seq}..={} are missing before record seq {}",
                        r.seq - 1,
                        r.seq
                    ),
                )
            });
        }
        if stored_prev != prev_hash {
            // Seq and own hash are fine, the link is not: the predecessor was rewritten
            // (and re-hashed), or this record is not the one that followed it.
            return Err(if index == 0 {
                brk(
                    BreakKind::Altered,
                    "the first record does not link to the genesis hash".to_owned(),
                )
            } else {
                ChainBreak {
                    index: index - 1,
                    kind: BreakKind::Altered,
                    detail: format!(
                        "record seq {} was rewritten: the prev hash of record seq {} does not match it",
                        r.seq - 1,
                        r.seq
                    ),
                }
            });
        }
        seen.insert(r.seq);
        decisions = decisions.saturating_add(r.event.count);
        prev_hash = stored_hash;
        expected_seq = r.seq + 1;
    }
    let last = records.last().map(|r| ChainHead {
        seq: r.seq,
        hash: prev_hash,
    });
    let mut head_file_behind = false;
    if let Some(h) = head {
        match last {
            None => {
                return Err(ChainBreak {
                    index: 0,
                    kind: BreakKind::Removed,
                    detail: format!(
                        "the log is empty but the head file records seq {}: every record was removed",
                        h.seq
                    ),
                });
            }
            Some(l) if h.seq > l.seq => {
                return Err(ChainBreak {
                    index: records.len(),
                    kind: BreakKind::Removed,
                    detail: format!(
                        "the log ends at seq {} but the head file records seq {}: records were removed from the end",
                        l.seq, h.seq
                    ),
                });
            }
            Some(l) if h.seq == l.seq && h.hash != l.hash => {
                return Err(ChainBreak {
                    index: records.len() - 1,
                    kind: BreakKind::Altered,
                    detail: format!(
                        "record seq {} does not match the hash in the head file: it was rewritten",
                        l.seq
                    ),
                });
            }
            Some(l) if h.seq < l.seq => {
                // The head must still name a record of this chain.
                let Some((i, r)) = records.iter().enumerate().find(|(_, r)| r.seq == h.seq) else {
                    return Err(ChainBreak {
                        index: 0,
                        kind: BreakKind::Removed,
                        detail: format!(
                            "the head file records seq {} which is not in the log",
                            h.seq
                        ),
                    });
                };
                if parse_hash(&r.hash) != Some(h.hash) {
                    return Err(ChainBreak {
                        index: i,
                        kind: BreakKind::Altered,
                        detail: format!(
                            "record seq {} does not match the hash in the head file: it was rewritten",
                            h.seq
                        ),
                    });
                }
                head_file_behind = true;
            }
            Some(_) => {}
        }
    }
    Ok(VerifiedLog {
        records: records.len(),
        head: last,
        decisions,
        head_file_behind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(i: u64, decision: AuditDecision) -> AuditEvent {
        AuditEvent {
            time_ms: 1_700_000_000_000 + i,
            source: "fs".into(),
            service: "fs".into(),
            action: "read".into(),
            cap_id: Some(format!("cap{i}")),
            decision,
            reason: (decision == AuditDecision::Deny).then(|| "revoked".into()),
            message: (decision == AuditDecision::Deny).then(|| "capability revoked".into()),
            peer_uid: Some(1000),
            count: 1,
        }
    }

    fn chain(n: u64) -> (Vec<AuditRecord>, ChainHead) {
        let mut c = Chain::new();
        let recs: Vec<AuditRecord> = (0..n)
            .map(|i| {
                let d = if i % 3 == 0 {
                    AuditDecision::Deny
                } else {
                    AuditDecision::Allow
                };
                c.append(1_700_000_001_000 + i, event(i, d))
            })
            .collect();
        (recs, c.head().expect("non-empty chain"))
    }

    fn text(recs: &[AuditRecord]) -> String {
        recs.iter().map(AuditRecord::to_line).collect()
    }

    #[test]
    fn an_intact_log_verifies_with_and_without_head() {
        let (recs, head) = chain(6);
        let ok = verify_log(&text(&recs), Some(&head)).expect("intact");
        assert_eq!(ok.records, 6);
        assert_eq!(ok.head, Some(head));
        assert!(!ok.head_file_behind);
        assert_eq!(verify_log(&text(&recs), None).expect("intact").records, 6);
        assert_eq!(verify_log("", None).expect("empty").records, 0);
        // Resuming continues the same chain.
        let mut c = Chain::resume(Some(head));
        let mut more = recs.clone();
        more.push(c.append(5, event(99, AuditDecision::Allow)));
        assert_eq!(
            verify(&more, c.head().as_ref()).expect("resumed").records,
            7
        );
    }

    #[test]
    fn an_altered_record_is_found() {
        let (mut recs, head) = chain(5);
        // A denial rewritten into an allowance.
        recs[3].event.decision = AuditDecision::Allow;
        recs[3].event.reason = None;
        let e = verify(&recs, Some(&head)).expect_err("altered");
        assert_eq!((e.index, e.kind), (3, BreakKind::Altered), "{e}");
        assert!(e.to_string().contains("line 4 (altered)"), "{e}");
    }

    #[test]
    fn an_altered_and_rehashed_record_is_found_by_its_successor() {
        let (mut recs, head) = chain(5);
        let r = &mut recs[1];
        r.event.action = "list".into();
        let prev = parse_hash(&r.prev).expect("hex");
        r.hash = hex(&record_hash(r.seq, r.recorded_ms, &prev, &r.event));
        let e = verify(&recs, Some(&head)).expect_err("rehashed");
        assert_eq!((e.index, e.kind), (1, BreakKind::Altered), "{e}");
        // The last record rewritten and re-hashed: only the head file can tell.
        let (mut recs, head) = chain(3);
        let r = &mut recs[2];
        r.event.count = 7;
        let prev = parse_hash(&r.prev).expect("hex");
        r.hash = hex(&record_hash(r.seq, r.recorded_ms, &prev, &r.event));
        assert!(verify(&recs, None).is_ok());
        let e = verify(&recs, Some(&head)).expect_err("head catches it");
        assert_eq!((e.index, e.kind), (2, BreakKind::Altered), "{e}");
    }

    #[test]
    fn removed_records_are_found_anywhere() {
        for victim in 0..5 {
            let (mut recs, head) = chain(5);
            recs.remove(victim);
            let e = verify(&recs, Some(&head)).expect_err("removed");
            assert_eq!(e.kind, BreakKind::Removed, "victim {victim}: {e}");
            assert_eq!(e.index, victim, "victim {victim}: {e}");
        }
        let (_, head) = chain(5);
        let e = verify(&[], Some(&head)).expect_err("all removed");
        assert_eq!(e.kind, BreakKind::Removed);
    }

    #[test]
    fn reordered_and_repeated_records_are_found() {
        let (mut recs, head) = chain(5);
        recs.swap(1, 3);
        let e = verify(&recs, Some(&head)).expect_err("swapped");
        assert_eq!((e.index, e.kind), (1, BreakKind::Reordered), "{e}");
        let (mut recs, head) = chain(5);
        recs.swap(3, 4);
        let e = verify(&recs, Some(&head)).expect_err("swapped at the end");
        assert_eq!((e.index, e.kind), (3, BreakKind::Reordered), "{e}");
        let (mut recs, _) = chain(4);
        let dup = recs[1].clone();
        recs.insert(2, dup);
        let e = verify(&recs, None).expect_err("repeated");
        assert_eq!((e.index, e.kind), (2, BreakKind::Reordered), "{e}");
    }

    #[test]
    fn malformed_lines_and_a_stale_head_file() {
        let (recs, head) = chain(3);
        let mut t = text(&recs);
        t.push_str("{\"seq\":3,\n");
        let e = verify_log(&t, Some(&head)).expect_err("torn line");
        assert_eq!((e.index, e.kind), (3, BreakKind::Malformed), "{e}");
        // The head lagging by a batch after a crash is reported, not an error.
        let stale = ChainHead {
            seq: 1,
            hash: parse_hash(&recs[1].hash).expect("hex"),
        };
        let ok = verify(&recs, Some(&stale)).expect("stale head");
        assert!(ok.head_file_behind);
        let wrong = ChainHead {
            seq: 1,
            hash: [7; 32],
        };
        let e = verify(&recs, Some(&wrong)).expect_err("head names another record");
        assert_eq!((e.index, e.kind), (1, BreakKind::Altered), "{e}");
        assert_eq!(ChainHead::parse(&head.to_json()), Ok(head));
        assert!(ChainHead::parse("{\"seq\":1,\"hash\":\"zz\"}").is_err());
    }

    #[test]
    fn events_validate_and_merge_only_allowances() {
        let allow = event(1, AuditDecision::Allow);
        let deny = event(1, AuditDecision::Deny);
        assert!(allow.validate().is_ok());
        assert!(allow.mergeable(&allow.clone()));
        assert!(!deny.mergeable(&deny.clone()));
        let mut merged_denial = deny.clone();
        merged_denial.count = 2;
        assert_eq!(merged_denial.validate(), Err(AuditEventError::MergedDenial));
        let mut empty = allow.clone();
        empty.source.clear();
        assert!(matches!(
            empty.validate(),
            Err(AuditEventError::Field {
                field: "source",
                ..
            })
        ));
        // count 1 is omitted on the wire and defaults back.
        let json = serde_json::to_string(&allow).expect("serializable");
        assert!(!json.contains("count"), "{json}");
        let back: AuditEvent = serde_json::from_str(&json).expect("parses");
        assert_eq!(back, allow);
    }
}
