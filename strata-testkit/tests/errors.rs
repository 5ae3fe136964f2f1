//! Boot failures are errors that leave nothing behind: a boot that times out (before or
//! during systemd's start) kills its namespace and removes its cgroup subtree.
//! This binary holds a single test so no other instance of this process interferes with the
//! process checks.

use std::path::Path;
use std::time::Duration;

use strata_testkit::{BootError, BootOptions, PrivateSystemd};

/// PIDs of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(needle)
        {
            found.push(pid);
        }
    }
    found
}

#[test]
fn boot_timeouts_fail_and_clean_up() {
    let marker_dir =
        std::env::temp_dir().join(format!("strata-testkit-timeout-{}", std::process::id()));
    std::fs::create_dir_all(&marker_dir).expect("create marker dir");
    let needle = marker_dir.to_string_lossy().into_owned();
    // 1 ms: fails while the namespace is being created; 100 ms: while systemd is starting
    // (systemd 252 alone needs 250+ ms to reach "running" here, so 100 ms always interrupts
    // it; a longer timeout raced a fast boot on an idle machine).
    for timeout in [Duration::from_millis(1), Duration::from_millis(100)] {
        let opts = BootOptions::new()
            .boot_timeout(timeout)
            .bind_ro(&marker_dir, "/run/timeout-marker");
        let token = match PrivateSystemd::boot_with(opts) {
            Err(BootError::BootTimeout {
                token,
                waited,
                seen,
            }) => {
                assert!(waited >= timeout, "{waited:?}");
                assert!(!seen.is_empty());
                token
            }
            other => panic!("expected BootTimeout for {timeout:?}, got {other:?}"),
        };
        assert_eq!(
            processes_mentioning(&needle),
            Vec::<u32>::new(),
            "{timeout:?}"
        );
        assert_eq!(
            strata_testkit::cgroup_subtrees(&token).expect("list subtrees"),
            Vec::<std::path::PathBuf>::new(),
            "{timeout:?}"
        );
    }
    // Positive control: the same options with the default timeout boot, and the marker path
    // is then visible in the running launcher's command line.
    let sd =
        PrivateSystemd::boot_with(BootOptions::new().bind_ro(&marker_dir, "/run/timeout-marker"))
            .expect("boot with default timeout");
    assert!(!processes_mentioning(&needle).is_empty());
    assert!(sd.root().join("run/timeout-marker").is_dir());
    assert!(!Path::new(&format!("/proc/{}/root/run/timeout-marker/x", sd.pid())).exists());
    sd.shutdown().expect("clean shutdown");
    assert_eq!(processes_mentioning(&needle), Vec::<u32>::new());
    std::fs::remove_dir_all(&marker_dir).expect("remove marker dir");
}
