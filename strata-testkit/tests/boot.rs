//! Integration tests of the harness against the machine's real systemd: boot, bus, isolation
//! of the host's /tmp, parallel instances, complete teardown, binaries visible to units.
//! They need root; without it they fail (never skip) with the harness's NotRoot message.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use strata_testkit::{BIN_DIR, BootError, BootOptions, PrivateSystemd};

fn boot() -> PrivateSystemd {
    match PrivateSystemd::boot() {
        Ok(sd) => sd,
        Err(e) => panic!("booting the private systemd failed: {e}"),
    }
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Run `systemctl ARGS` inside and return (exit code, stdout).
fn systemctl(sd: &PrivateSystemd, args: &[&str]) -> (Option<i32>, String) {
    let out = sd.systemctl(args).expect("run systemctl inside");
    (out.status.code(), stdout_of(&out))
}

/// `systemd-run ARGS` inside; panics with its stderr if it fails.
fn systemd_run(sd: &PrivateSystemd, args: &[&str]) -> String {
    let out = sd
        .command("systemd-run")
        .arg("--quiet")
        .args(args)
        .output()
        .expect("run systemd-run inside");
    assert!(
        out.status.success(),
        "systemd-run {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_of(&out)
}

/// Host PIDs of every process in the instance's cgroup subtree, in any hierarchy.
fn pids_in_subtree(token: &str) -> BTreeSet<u32> {
    let needle = format!("/strata-ns-{token}");
    let mut pids = BTreeSet::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup"))
            && cgroups.contains(&needle)
        {
            pids.insert(pid);
        }
    }
    pids
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[test]
fn boots_running_with_reachable_bus_and_clean_environment() {
    let sd = boot();
    assert_eq!(
        systemctl(&sd, &["is-system-running"]),
        (Some(0), "running".to_string())
    );
    assert_eq!(
        sd.bus_address(),
        format!(
            "unix:path=/proc/{}/root/run/dbus/system_bus_socket",
            sd.pid()
        )
    );
    assert_eq!(sd.root(), PathBuf::from(format!("/proc/{}/root", sd.pid())));

    // The bus, from the host: systemd's own Version property, equal to what the binary says.
    let out = Command::new("busctl")
        .arg(format!("--address={}", sd.bus_address()))
        .args([
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "Version",
        ])
        .output()
        .expect("run busctl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = Command::new(strata_testkit::SYSTEMD)
        .arg("--version")
        .output()
        .expect("systemd --version");
    let first_line = stdout_of(&version);
    let want = first_line
        .lines()
        .next()
        .and_then(|l| l.split_once('(')?.1.split_once(')'))
        .map(|(v, _)| v.to_string())
        .expect("version in parentheses");
    assert_eq!(stdout_of(&out), format!("s \"{want}\""));

    // PID 1 of the namespace: PID 1 inside, its environment only container=other.
    let status = std::fs::read_to_string(format!("/proc/{}/status", sd.pid())).expect("status");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    assert!(nspid.ends_with("\t1"), "{nspid}");
    let environ = std::fs::read(format!("/proc/{}/environ", sd.pid())).expect("environ");
    assert_eq!(environ, b"container=other\0");

    // Commands inside get PATH and nothing else, whatever the test process has.
    let out = sd.command("env").output().expect("run env inside");
    assert_eq!(
        stdout_of(&out),
        format!("PATH={}", strata_testkit::INSIDE_PATH)
    );
    // ...and run in the namespace: their PID 1 is systemd.
    let out = sd
        .command("cat")
        .arg("/proc/1/comm")
        .output()
        .expect("run cat inside");
    assert_eq!(stdout_of(&out), "systemd");

    // Only the minimal target's units run: no getty, no logind, no tmpfiles.
    let (_, units) = systemctl(
        &sd,
        &[
            "list-units",
            "--state=active",
            "--no-legend",
            "--plain",
            "--type=service",
        ],
    );
    let active: BTreeSet<&str> = units
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        active,
        BTreeSet::from(["dbus.service", "systemd-journald.service"]),
        "{units}"
    );
    sd.shutdown().expect("clean shutdown");
}

/// Names in a host directory (empty if it does not exist).
fn entries(dir: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn host_run_and_dev_gain_nothing() {
    let watched = ["/run", "/run/systemd", "/dev"];
    let before: Vec<BTreeSet<String>> = watched.iter().map(|d| entries(d)).collect();
    let sd = boot();
    // Positive control: inside, systemd and journald did create these.
    assert!(sd.root().join("run/systemd/units").is_dir());
    assert!(sd.root().join("run/mount/utab").is_file());
    assert!(sd.root().join("dev/log").is_symlink());
    sd.shutdown().expect("clean shutdown");
    for (dir, old) in watched.iter().zip(&before) {
        let new: Vec<String> = entries(dir).difference(old).cloned().collect();
        assert!(new.is_empty(), "host {dir} gained {new:?}");
    }
}

/// The host's mount table, one line per mount, without the per-boot mount IDs.
fn host_mounts() -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("read host mountinfo")
        .lines()
        .map(|l| l.split(' ').skip(2).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn credentials_reach_a_dynamic_user_unit_and_no_host_mount_changes() {
    let before = host_mounts();
    let sd = boot();
    sd.write_file(Path::new("/run/strata-cred-src"), b"secret-token")
        .expect("write the credential source");
    // A DynamicUser unit reads its LoadCredential= file: systemd moves the credential mount into
    // place from a child namespace, which needs shared propagation inside the namespace.
    let out = systemd_run(
        &sd,
        &[
            "--wait",
            "--pipe",
            "-p",
            "DynamicUser=yes",
            "-p",
            "LoadCredential=tok:/run/strata-cred-src",
            "/bin/sh",
            "-c",
            "cat \"$CREDENTIALS_DIRECTORY/tok\"",
        ],
    );
    assert_eq!(out, "secret-token");
    // Negative control: a unit without the credential has no such file.
    let denied = sd
        .command("systemd-run")
        .args([
            "--quiet",
            "--wait",
            "--pipe",
            "-p",
            "DynamicUser=yes",
            "/bin/sh",
            "-c",
            "cat \"${CREDENTIALS_DIRECTORY:-/nonexistent}/tok\"",
        ])
        .output()
        .expect("run systemd-run inside");
    assert!(
        !denied.status.success(),
        "a unit without LoadCredential read a token"
    );
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("No such file or directory"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
    // Shared propagation inside the namespace reaches no host mount.
    let during = host_mounts();
    assert_eq!(
        during.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "the host gained mounts"
    );
    sd.shutdown().expect("clean shutdown");
    assert_eq!(host_mounts(), before, "the host's mount table changed");
}

#[test]
fn host_tmp_survives_boot_and_shutdown() {
    let marker = std::env::temp_dir().join(unique("strata-testkit-marker"));
    assert!(
        marker.starts_with("/tmp"),
        "temp dir is {}",
        marker.display()
    );
    std::fs::write(&marker, b"keep me").expect("write host marker");
    let inside_name = unique("strata-testkit-inside");

    let sd = boot();
    // The namespace's /tmp is private: the host marker is invisible inside...
    let out = sd
        .command("test")
        .arg("-e")
        .arg(&marker)
        .status()
        .expect("test -e inside");
    assert_eq!(
        out.code(),
        Some(1),
        "host marker visible inside the namespace"
    );
    // ...while the same check finds a file created inside (positive control).
    let created = sd
        .command("sh")
        .arg("-c")
        .arg(format!(
            "echo inside > /tmp/{inside_name} && test -e /tmp/{inside_name}"
        ))
        .status()
        .expect("create file inside");
    assert_eq!(created.code(), Some(0));
    assert_eq!(
        std::fs::read(sd.root().join("tmp").join(&inside_name)).expect("read via root"),
        b"inside\n"
    );
    assert!(
        !Path::new("/tmp").join(&inside_name).exists(),
        "a file created in the namespace's /tmp appeared in the host's /tmp"
    );
    // Same for /var/tmp and /dev/shm.
    let created = sd
        .command("sh")
        .arg("-c")
        .arg(format!(
            "echo x > /var/tmp/{inside_name} && echo x > /dev/shm/{inside_name}"
        ))
        .status()
        .expect("create files inside");
    assert_eq!(created.code(), Some(0));
    assert!(!Path::new("/var/tmp").join(&inside_name).exists());
    assert!(!Path::new("/dev/shm").join(&inside_name).exists());

    sd.shutdown().expect("clean shutdown");
    assert_eq!(
        std::fs::read(&marker).expect("host marker still there"),
        b"keep me"
    );
    assert!(!Path::new("/tmp").join(&inside_name).exists());
    std::fs::remove_file(&marker).expect("remove host marker");
}

#[test]
fn two_instances_do_not_disturb_each_other() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(boot);
        let b = s.spawn(boot);
        (a.join().expect("boot a"), b.join().expect("boot b"))
    });
    assert_ne!(a.pid(), b.pid());
    assert_ne!(a.token(), b.token());

    a.write_file(Path::new("/run/strata-iso/only-a"), b"a")
        .expect("write in a");
    assert_eq!(
        std::fs::read(a.root().join("run/strata-iso/only-a")).expect("a sees its file"),
        b"a"
    );
    assert!(
        !b.root().join("run/strata-iso/only-a").exists(),
        "b sees a's /run"
    );

    systemd_run(&a, &["--unit=strata-iso", "/bin/sleep", "300"]);
    assert_eq!(
        systemctl(&a, &["is-active", "strata-iso.service"]),
        (Some(0), "active".to_string())
    );
    assert_eq!(
        systemctl(&b, &["is-active", "strata-iso.service"]),
        (Some(3), "inactive".to_string())
    );

    let b_subtrees = b.cgroup_subtrees().expect("b subtrees");
    assert!(!b_subtrees.is_empty());
    let a_token = a.token().to_string();
    a.shutdown().expect("clean shutdown of a");
    assert!(pids_in_subtree(&a_token).is_empty());

    // b is untouched: still running, same subtrees, bus answering.
    assert_eq!(
        systemctl(&b, &["is-system-running"]),
        (Some(0), "running".to_string())
    );
    assert_eq!(b.cgroup_subtrees().expect("b subtrees"), b_subtrees);
    systemd_run(&b, &["--unit=strata-iso-b", "--wait", "/bin/true"]);
    b.shutdown().expect("clean shutdown of b");
}

#[test]
fn teardown_leaves_no_cgroup_and_no_process() {
    let sd = boot();
    let token = sd.token().to_string();
    let pid = sd.pid();
    systemd_run(&sd, &["--unit=strata-teardown", "/bin/sleep", "1000"]);
    // Unit processes get the namespace's cgroups: find the sleep's host PID there.
    let before = pids_in_subtree(&token);
    assert!(
        before.contains(&pid),
        "systemd not in its subtree: {before:?}"
    );
    let sleeper: Vec<u32> = before
        .iter()
        .copied()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/cgroup"))
                .is_ok_and(|c| c.contains("strata-teardown.service"))
        })
        .collect();
    assert_eq!(sleeper.len(), 1, "{before:?}");
    let subtrees = sd.cgroup_subtrees().expect("subtrees");
    // Every mounted hierarchy except v1 cpuset: 9 on the hybrid layout of the CI machines.
    assert!(subtrees.len() >= 2, "{subtrees:?}");
    assert!(
        subtrees
            .iter()
            .all(|p| p.ends_with(format!("strata-ns-{token}"))),
        "{subtrees:?}"
    );

    sd.shutdown().expect("clean shutdown");
    assert!(pids_in_subtree(&token).is_empty());
    assert!(!Path::new(&format!("/proc/{}", sleeper[0])).exists());
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
    for dir in &subtrees {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert!(
        strata_testkit::cgroup_subtrees(&token)
            .expect("list subtrees")
            .is_empty()
    );
}

#[test]
fn units_see_the_bound_build_directory() {
    let sd = boot();
    let exe = std::env::current_exe().expect("current exe");
    let inside = sd
        .inside_bin(&exe)
        .expect("test binary under the bound dir");
    assert!(inside.starts_with(BIN_DIR), "{}", inside.display());
    assert!(inside.ends_with(exe.file_name().expect("file name")));
    let testns = Path::new(env!("CARGO_BIN_EXE_strata-testns"));
    let inside_testns = sd
        .inside_bin(testns)
        .expect("strata-testns under the bound dir");
    assert_eq!(inside_testns, Path::new(BIN_DIR).join("strata-testns"));

    // A hardened unit (no /root, /home, its own /tmp, a dynamic user) runs it from BIN_DIR.
    let out = systemd_run(
        &sd,
        &[
            "--wait",
            "--pipe",
            "-p",
            "ProtectHome=yes",
            "-p",
            "PrivateTmp=yes",
            "-p",
            "DynamicUser=yes",
            inside_testns.to_str().expect("utf-8 path"),
            "--version",
        ],
    );
    assert_eq!(out, format!("strata-testns {}", env!("CARGO_PKG_VERSION")));
    // The bind is read-only.
    let write = sd
        .command("touch")
        .arg(Path::new(BIN_DIR).join("strata-testkit-write-probe"))
        .output()
        .expect("touch inside");
    assert_eq!(write.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&write.stderr).contains("Read-only file system"),
        "{}",
        String::from_utf8_lossy(&write.stderr)
    );

    match sd.inside_bin(Path::new("/usr/bin/true")) {
        Err(BootError::NotUnderBinDir { .. }) => {}
        other => panic!("expected NotUnderBinDir, got {other:?}"),
    }
    sd.shutdown().expect("clean shutdown");
}

#[test]
fn journal_and_write_file() {
    let dir = std::env::temp_dir().join(unique("strata-testkit-bind"));
    std::fs::create_dir(&dir).expect("create bind source");
    std::fs::write(dir.join("data"), b"from the host").expect("write bind source");
    let sd = PrivateSystemd::boot_with(BootOptions::new().bind_ro(&dir, "/run/extra"))
        .expect("boot with an extra bind");
    // The extra bind is visible even though the host path is in /tmp, which is private inside.
    let out = sd
        .command("cat")
        .arg("/run/extra/data")
        .output()
        .expect("cat");
    assert_eq!(stdout_of(&out), "from the host");

    sd.write_file(Path::new("/run/strata/manifest.toml"), b"name = \"x\"\n")
        .expect("write under /run");
    sd.write_file(Path::new("/var/lib/strata-test/state/a"), b"state")
        .expect("write under /var/lib/strata-test");
    assert!(
        !Path::new("/var/lib/strata-test/state/a").exists(),
        "/var/lib/strata-test is not private"
    );
    systemd_run(
        &sd,
        &[
            "--unit=strata-journal",
            "--wait",
            "/bin/sh",
            "-c",
            "echo journal-line; cat /run/strata/manifest.toml",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = sd.journal("strata-journal.service").expect("journal");
        if text.contains("name = \"x\"") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("journal-line"), "{text}");
    assert!(text.contains("name = \"x\""), "{text}");
    assert_eq!(sd.journal("strata-no-such.service").expect("journal"), "");

    // Refused: host-shared paths and relative or dotted paths.
    for bad in ["/etc/strata/x.toml", "/tmp/x", "/run/../etc/x", "run/x"] {
        match sd.write_file(Path::new(bad), b"x") {
            Err(BootError::BadInsidePath { .. }) => {}
            other => panic!("{bad}: expected BadInsidePath, got {other:?}"),
        }
    }
    // A symlink planted inside cannot redirect a write to the host.
    let target = unique("strata-testkit-escape");
    let linked = sd
        .command("ln")
        .args(["-s", "/etc", "/run/escape"])
        .status()
        .expect("ln inside");
    assert!(linked.success());
    match sd.write_file(&Path::new("/run/escape").join(&target), b"x") {
        Err(BootError::WriteFile { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::ENOTDIR), "{source}");
        }
        other => panic!("expected WriteFile error, got {other:?}"),
    }
    assert!(!Path::new("/etc").join(&target).exists());
    sd.shutdown().expect("clean shutdown");
    std::fs::remove_dir_all(&dir).expect("remove bind source");
}

#[test]
fn launcher_holds_no_inherited_descriptors() {
    // A descriptor without O_CLOEXEC, as a lock file taken by another test would be.
    let file = std::fs::File::open("/proc/self/status").expect("open");
    // SAFETY: dup of a valid descriptor; the copy is closed below.
    let leaked = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&file)) };
    assert!(leaked > 2);
    let sd = boot();
    let status = std::fs::read_to_string(format!("/proc/{}/status", sd.pid())).expect("status");
    let launcher: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("PPid");
    let fds: BTreeSet<String> = std::fs::read_dir(format!("/proc/{launcher}/fd"))
        .expect("launcher fds")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(fds, BTreeSet::from(["0".into(), "1".into(), "2".into()]));
    // Positive control: the test process itself does hold it.
    assert!(Path::new(&format!("/proc/self/fd/{leaked}")).exists());
    // SAFETY: closing the descriptor dup'ed above, used nowhere else.
    unsafe { libc::close(leaked) };
    sd.shutdown().expect("clean shutdown");
}

#[test]
fn bad_binds_fail_before_booting() {
    match PrivateSystemd::boot_with(BootOptions::new().bind_ro("/usr/bin", "/opt/strata-no")) {
        Err(BootError::BadBind { reason, .. }) => {
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("expected BadBind, got {other:?}"),
    }
}
