//! strata-audit on real sockets and a real log: who may record, the sender (batched,
//! coalesced, counted), fs decisions reaching the chain (also the "revoked" denial), the
//! audit service's own decisions, and tampering (altered, removed, reordered records, records
//! cut off the end) found by verification.

mod as_nobody;
mod node;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use strata_core::audit_chain::{
    AuditDecision, AuditEvent, AuditRecord, BreakKind, ChainHead, verify_log,
};
use strata_core::protocol::Code;
use strata_services::audit::log::{HEAD_FILE, LOG_FILE};
use strata_services::audit::sender::{AuditSender, SenderConfig};
use strata_services::audit::{AuditService, own_sink};
use strata_services::bootstrap::start_verifier;
use strata_services::fs::{FsConfig, FsService};
use strata_services::ipc::ClientError;

use as_nobody::call_as_nobody;
use node::{Node, eventually};

fn event(cap: &str, action: &str, decision: AuditDecision) -> AuditEvent {
    AuditEvent {
        time_ms: 1_700_000_000_000,
        source: "test".into(),
        service: "fs".into(),
        action: action.into(),
        cap_id: Some(cap.into()),
        decision,
        reason: (decision == AuditDecision::Deny).then(|| "revoked".into()),
        message: (decision == AuditDecision::Deny).then(|| "capability revoked".into()),
        peer_uid: Some(1000),
        count: 1,
    }
}

fn records(dir: &Path) -> Vec<AuditRecord> {
    std::fs::read_to_string(dir.join(LOG_FILE))
        .expect("log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("record"))
        .collect()
}

fn verify_dir(dir: &Path) -> strata_core::audit_chain::VerifiedLog {
    // The head file is replaced right after each batch is in the log: it may trail briefly.
    for _ in 0..200 {
        let text = std::fs::read_to_string(dir.join(LOG_FILE)).expect("log");
        if let Ok(h) = std::fs::read_to_string(dir.join(HEAD_FILE)) {
            let head = ChainHead::parse(&h).expect("head parses");
            let v = verify_log(&text, Some(&head)).expect("the service's log verifies");
            if !v.head_file_behind {
                return v;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the head file never caught up with the log");
}

struct Audit {
    node: Node,
    state: std::path::PathBuf,
    _served: node::Served,
    _follower: strata_services::revocation::RevocationFollower,
}

async fn start(tag: &str) -> Audit {
    let node = Node::start(tag).await;
    let state = node.path("state/audit");
    let (sink, own) = own_sink();
    let setup = start_verifier(
        &node.runtime,
        "node-1",
        Duration::from_secs(5),
        Some(sink),
        false,
    )
    .await
    .expect("verifier");
    let audit =
        Arc::new(AuditService::open(&state, Some(Arc::clone(&setup.verifier))).expect("open"));
    tokio::spawn(Arc::clone(&audit).record_own(own));
    let served = node.serve("audit", audit);
    Audit {
        node,
        state,
        _served: served,
        _follower: setup.follower,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_needs_uid_0_or_an_audit_token_and_is_chained() {
    let a = start("audit-authz").await;
    let sock = a.node.socket("audit");
    let batch = json!({"events": [
        event("c1", "read", AuditDecision::Allow),
        event("c1", "read", AuditDecision::Deny),
    ]});
    let r = a
        .node
        .call("audit", "audit.record", batch.clone(), None)
        .await
        .expect("root records");
    assert_eq!(r, json!({"recorded": 2, "first_seq": 0, "last_seq": 1}));

    let v = call_as_nobody(&sock, "audit.record", &batch, None);
    assert_eq!(v["error"]["code"], Code::Unauthenticated.as_u32(), "{v}");
    let (fs_token, _) = a
        .node
        .issue(json!({"service": "fs", "actions": ["read"]}))
        .await;
    let v = call_as_nobody(&sock, "audit.record", &batch, Some(&fs_token));
    assert_eq!(v["error"]["code"], Code::PermissionDenied.as_u32(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("token is for service `fs`"),
        "{v}"
    );
    // Positive control: the token the supervisor mints for `call:audit`.
    let (audit_token, audit_cap) = a
        .node
        .issue(
            json!({"service": "audit", "actions": strata_core::capability::call_actions("audit")}),
        )
        .await;
    let v = call_as_nobody(&sock, "audit.record", &batch, Some(&audit_token));
    assert_eq!(v["result"]["recorded"], 2, "{v}");

    // Malformed events are refused whole, naming the event and the field.
    let mut bad = event("c1", "read", AuditDecision::Deny);
    bad.count = 3;
    let e = a
        .node
        .call(
            "audit",
            "audit.record",
            json!({"events": [event("c", "read", AuditDecision::Allow), bad]}),
            None,
        )
        .await
        .expect_err("merged denial");
    let e = e.rpc().cloned().expect("rpc error");
    assert_eq!(e.code, Code::InvalidArgument);
    assert!(
        e.message
            .starts_with("events[1]: denials are recorded one by one"),
        "{e}"
    );
    let e = a
        .node
        .call(
            "audit",
            "audit.record",
            json!({"events": [{"source": "x"}]}),
            None,
        )
        .await
        .expect_err("incomplete");
    assert_eq!(e.rpc().map(|e| e.code), Some(Code::InvalidArgument));

    // The audit service's own decisions are in the chain too (the two refusals and the grant).
    assert!(
        eventually(Duration::from_secs(2), || {
            records(&a.state)
                .iter()
                .filter(|r| r.event.source == "audit")
                .count()
                >= 3
        })
        .await,
        "audit's own decisions not recorded"
    );
    let own: Vec<AuditRecord> = records(&a.state)
        .into_iter()
        .filter(|r| r.event.source == "audit")
        .collect();
    assert!(own.iter().any(|r| r.event.decision == AuditDecision::Deny
        && r.event.reason.as_deref() == Some("wrong_service")));
    assert!(own.iter().any(|r| r.event.decision == AuditDecision::Allow
        && r.event.cap_id.as_deref() == Some(audit_cap.as_str())
        && r.event.action == "record"));
    let v = verify_dir(&a.state);
    assert_eq!(v.records, records(&a.state).len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_batches_coalesces_and_counts() {
    let a = start("audit-sender").await;
    let mut config = SenderConfig::new(a.node.socket("audit"));
    config.flush_after = Duration::from_millis(20);
    let (sender, _task) = AuditSender::spawn(config, "fs");
    for i in 0..2000 {
        sender.record(event(
            if i % 2 == 0 { "even" } else { "odd" },
            "read",
            AuditDecision::Allow,
        ));
    }
    for _ in 0..5 {
        sender.record(event("even", "read", AuditDecision::Deny));
    }
    let stats = sender.stats();
    assert!(
        eventually(Duration::from_secs(5), || stats
            .delivered
            .load(Ordering::Relaxed)
            == 2005)
        .await,
        "delivered {} of 2005",
        stats.delivered.load(Ordering::Relaxed)
    );
    assert_eq!(stats.dropped(), 0);
    let v = verify_dir(&a.state);
    assert_eq!(v.decisions, 2005);
    let recs = records(&a.state);
    assert!(
        recs.len() < 100,
        "{} records: allowances were not coalesced",
        recs.len()
    );
    assert_eq!(
        recs.iter()
            .filter(|r| r.event.decision == AuditDecision::Deny)
            .count(),
        5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_decisions_reach_the_chain_including_the_revoked_denial() {
    let a = start("audit-fs").await;
    let root = a.node.path("root");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(root.join("f.txt"), "data").expect("write");
    let mut config = SenderConfig::new(a.node.socket("audit"));
    config.flush_after = Duration::from_millis(20);
    let (sender, _task) = AuditSender::spawn(config, "fs");
    let setup = start_verifier(
        &a.node.runtime,
        "node-1",
        Duration::from_secs(5),
        Some(sender.sink()),
        false,
    )
    .await
    .expect("verifier");
    let fs = Arc::new(
        FsService::new(
            &FsConfig::new(vec![root.to_string_lossy().into_owned()]),
            Arc::clone(&setup.verifier),
        )
        .expect("fs"),
    );
    let _fs_served = a.node.serve("fs", fs);
    let (token, cap) = a
        .node
        .issue(json!({"service": "fs", "actions": ["open", "read"], "path_prefix": root.to_string_lossy()}))
        .await;
    let h = a
        .node
        .call("fs", "fs.open", json!({"path": "f.txt"}), Some(&token))
        .await
        .expect("open");
    for _ in 0..10 {
        a.node
            .call(
                "fs",
                "fs.read",
                json!({"handle": h["handle"], "offset": 0}),
                Some(&token),
            )
            .await
            .expect("read");
    }
    a.node.revoke(&cap).await;
    assert!(
        eventually(Duration::from_secs(2), || setup
            .verifier
            .revocations()
            .read()
            .map(|s| s.len() == 1)
            .unwrap_or(false))
        .await
    );
    let denied = a
        .node
        .call(
            "fs",
            "fs.read",
            json!({"handle": h["handle"]}),
            Some(&token),
        )
        .await;
    assert!(
        matches!(denied, Err(ClientError::Rpc(ref e)) if e.message.contains("revoked")),
        "{denied:?}"
    );
    let found = |recs: &[AuditRecord]| -> (u64, u64, bool) {
        let mine = recs
            .iter()
            .filter(|r| r.event.cap_id.as_deref() == Some(cap.as_str()));
        let mut opens = 0;
        let mut reads = 0;
        let mut revoked = false;
        for r in mine {
            match (r.event.decision, r.event.action.as_str()) {
                (AuditDecision::Allow, "open") => opens += r.event.count,
                (AuditDecision::Allow, "read") => reads += r.event.count,
                (AuditDecision::Deny, "read") => {
                    revoked |= r.event.reason.as_deref() == Some("revoked")
                        && r.event
                            .message
                            .as_deref()
                            .is_some_and(|m| m.contains("revoked"));
                }
                _ => {}
            }
        }
        (opens, reads, revoked)
    };
    assert!(
        eventually(Duration::from_secs(3), || found(&records(&a.state))
            == (1, 10, true))
        .await,
        "fs decisions in the log: {:?}",
        found(&records(&a.state))
    );
    assert!(
        records(&a.state)
            .iter()
            .all(|r| r.event.source == "fs" || r.event.source == "audit")
    );
    verify_dir(&a.state);
}

fn rewrite(dir: &Path, lines: &[String]) -> String {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.join(LOG_FILE), &text).expect("write");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_service_log_is_detected() {
    let a = start("audit-tamper").await;
    let events: Vec<AuditEvent> = (0..6)
        .map(|i| {
            event(
                &format!("cap{i}"),
                "read",
                if i % 2 == 0 {
                    AuditDecision::Deny
                } else {
                    AuditDecision::Allow
                },
            )
        })
        .collect();
    a.node
        .call("audit", "audit.record", json!({"events": events}), None)
        .await
        .expect("record");
    let original = std::fs::read_to_string(a.state.join(LOG_FILE)).expect("log");
    let head = ChainHead::parse(&std::fs::read_to_string(a.state.join(HEAD_FILE)).expect("head"))
        .expect("head");
    let lines: Vec<String> = original.lines().map(str::to_owned).collect();
    assert_eq!(
        verify_log(&original, Some(&head)).expect("intact").records,
        6
    );

    // Altered: a denial turned into an allowance.
    let mut altered = lines.clone();
    let mut rec: Value = serde_json::from_str(&altered[2]).expect("json");
    rec["event"]["decision"] = json!("allow");
    altered[2] = rec.to_string();
    let e = verify_log(&rewrite(&a.state, &altered), Some(&head)).expect_err("altered");
    assert_eq!((e.index, e.kind), (2, BreakKind::Altered), "{e}");
    // Removed: a record in the middle; and the last one (only the head file tells).
    let mut removed = lines.clone();
    removed.remove(3);
    let e = verify_log(&rewrite(&a.state, &removed), Some(&head)).expect_err("removed");
    assert_eq!((e.index, e.kind), (3, BreakKind::Removed), "{e}");
    let truncated = lines[..5].to_vec();
    let e = verify_log(&rewrite(&a.state, &truncated), Some(&head)).expect_err("cut off");
    assert_eq!((e.index, e.kind), (5, BreakKind::Removed), "{e}");
    // Reordered: two records swapped.
    let mut reordered = lines.clone();
    reordered.swap(1, 4);
    let e = verify_log(&rewrite(&a.state, &reordered), Some(&head)).expect_err("reordered");
    assert_eq!((e.index, e.kind), (1, BreakKind::Reordered), "{e}");
    // Positive control: the original text verifies again.
    assert!(verify_log(&rewrite(&a.state, &lines), Some(&head)).is_ok());
}

#[test]
#[ignore = "helper: runs only when started by call_as_nobody"]
fn child_client() {
    as_nobody::child_client_main();
}
