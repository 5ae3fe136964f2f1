//! Integration tests of the `strata-testns` command used by scripts and the README demo:
//! boot + stop, boot + SIGTERM, refusal to stop foreign PIDs, and the not-root failure.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TESTNS: &str = env!("CARGO_BIN_EXE_strata-testns");

struct Booted {
    child: Child,
    pid: u32,
    address: String,
}

/// Start `strata-testns boot` and read its two announcement lines.
fn cli_boot() -> Booted {
    let mut child = Command::new(TESTNS)
        .arg("boot")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn strata-testns boot");
    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let mut next = |key: &str| -> String {
        let line = match lines.next() {
            Some(Ok(line)) => line,
            other => panic!("strata-testns boot printed no {key} line: {other:?}"),
        };
        line.strip_prefix(&format!("{key}="))
            .unwrap_or_else(|| panic!("expected {key}=..., got {line:?}"))
            .to_string()
    };
    let pid: u32 = next("STRATA_TESTNS_PID").parse().expect("numeric pid");
    let address = next("DBUS_SYSTEM_BUS_ADDRESS");
    Booted {
        child,
        pid,
        address,
    }
}

fn token_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/root/run/strata-test/instance"))
        .expect("instance token")
        .trim()
        .to_string()
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "strata-testns boot did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn system_state(address: &str) -> std::process::Output {
    Command::new("busctl")
        .arg(format!("--address={address}"))
        .args([
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "SystemState",
        ])
        .output()
        .expect("run busctl")
}

#[test]
fn boot_then_stop_by_pid() {
    let mut booted = cli_boot();
    assert_eq!(
        booted.address,
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            booted.pid
        )
    );
    let state = system_state(&booted.address);
    assert_eq!(
        String::from_utf8_lossy(&state.stdout).trim(),
        "s \"running\""
    );
    let token = token_of(booted.pid);
    assert!(
        !strata_testkit::cgroup_subtrees(&token)
            .expect("subtrees")
            .is_empty()
    );

    let stop = Command::new(TESTNS)
        .args(["stop", &booted.pid.to_string()])
        .output()
        .expect("run strata-testns stop");
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let status = wait_exit(&mut booted.child, Duration::from_secs(15));
    assert!(status.success(), "boot exited with {status}");
    assert!(!Path::new(&format!("/proc/{}", booted.pid)).exists());
    assert!(
        strata_testkit::cgroup_subtrees(&token)
            .expect("subtrees")
            .is_empty()
    );
    // The bus is gone with it.
    assert!(!system_state(&booted.address).status.success());
}

#[test]
fn sigterm_shuts_down_cleanly() {
    let mut booted = cli_boot();
    let token = token_of(booted.pid);
    let launcher = i32::try_from(booted.child.id()).expect("pid fits");
    // SAFETY: signalling the strata-testns process this test started.
    assert_eq!(unsafe { libc::kill(launcher, libc::SIGTERM) }, 0);
    let status = wait_exit(&mut booted.child, Duration::from_secs(40));
    assert!(status.success(), "boot exited with {status}");
    assert!(!Path::new(&format!("/proc/{}", booted.pid)).exists());
    assert!(
        strata_testkit::cgroup_subtrees(&token)
            .expect("subtrees")
            .is_empty()
    );
}

#[test]
fn stop_refuses_a_pid_that_is_not_a_namespace() {
    let out = Command::new(TESTNS)
        .args(["stop", &std::process::id().to_string()])
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run strata-testns stop");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "pid {} is not a running strata-testns namespace: it is not the PID 1 of its own PID namespace",
            std::process::id()
        )),
        "{stderr}"
    );
    // This process is still alive, obviously; nothing was signalled.
}

#[test]
fn boot_as_non_root_fails_with_an_exact_message() {
    // A copy the unprivileged user can execute wherever the target directory is.
    let dir = std::env::temp_dir().join(format!("strata-testkit-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create dir");
    let copy = dir.join("strata-testns");
    std::fs::copy(TESTNS, &copy).expect("copy binary");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&copy)
        .arg("boot")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run setpriv");
    std::fs::remove_dir_all(&dir).expect("remove dir");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "strata-testkit must run as root to boot a private systemd (euid is 65534); run the tests as root"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn orphan_of_a_killed_owner_is_reaped() {
    let mut booted = cli_boot();
    let token = token_of(booted.pid);
    let owner = i32::try_from(booted.child.id()).expect("pid fits");
    // SAFETY: SIGKILL to the strata-testns process this test started: it cannot clean up.
    assert_eq!(unsafe { libc::kill(owner, libc::SIGKILL) }, 0);
    let status = wait_exit(&mut booted.child, Duration::from_secs(5));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // Positive control: the namespace outlived its owner.
    assert!(Path::new(&format!("/proc/{}", booted.pid)).exists());
    assert!(
        !strata_testkit::cgroup_subtrees(&token)
            .expect("subtrees")
            .is_empty()
    );

    // Another test process booting at the same time may reap it first: either way it ends.
    let reaped = strata_testkit::reap_orphans();
    for (pid, outcome) in &reaped {
        if *pid == booted.pid {
            assert!(outcome.is_ok(), "{outcome:?}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Path::new(&format!("/proc/{}", booted.pid)).exists() {
        assert!(
            Instant::now() < deadline,
            "orphan {} still running",
            booted.pid
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !strata_testkit::cgroup_subtrees(&token)
        .expect("subtrees")
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "orphan's cgroup subtree left behind"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
