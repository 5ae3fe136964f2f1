//! strata-launch against the real kernel: each sandbox denial is checked with its exact errno
//! next to a positive control, first by running the launcher directly, then inside a transient
//! unit of a private systemd (the launch path production uses).

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use strata_core::unit::LandlockRuleset;
use strata_testkit::PrivateSystemd;

const LAUNCH: &str = env!("CARGO_BIN_EXE_strata-launch");
const PROBE: &str = env!("CARGO_BIN_EXE_strata-probe");

/// Documented exit statuses (strata_services::launch::exit_code), restated so that a change
/// there is a visible change here.
const EXIT_USAGE: i32 = 64;
const EXIT_DECLARED_PATH: i32 = 66;
const EXIT_NOT_ENFORCED: i32 = 69;
const EXIT_OS_ERROR: i32 = 71;
const EXIT_PROGRAM_NOT_FOUND: i32 = 127;

/// A scratch directory under /tmp, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("strata-launch-{tag}-{}-{n}", std::process::id()));
        // A leftover from a killed run must not leak into this one.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        Self(dir)
    }

    fn dir(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        std::fs::create_dir_all(&dir).expect("create dir");
        dir
    }

    fn file(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.0.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, content).expect("write file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(path: &Path) -> String {
    path.to_str().expect("utf-8 test path").to_owned()
}

fn ruleset(read: &[&Path], write: &[&Path], bind: &[u16], connect: &[u16]) -> LandlockRuleset {
    LandlockRuleset {
        read: read.iter().map(|p| s(p)).collect(),
        write: write.iter().map(|p| s(p)).collect(),
        bind_tcp: bind.to_vec(),
        connect_tcp: connect.to_vec(),
        allow_degraded: false,
    }
}

fn json(rules: &LandlockRuleset) -> String {
    serde_json::to_string(rules).expect("ruleset serializes")
}

/// Runs `strata-launch --service probe --ruleset-json .. [--keep-caps ..] -- program args`.
fn launch_program(
    rules: &LandlockRuleset,
    keep: Option<&str>,
    program: &str,
    args: &[&str],
) -> Output {
    let mut cmd = Command::new(LAUNCH);
    cmd.args(["--service", "probe", "--ruleset-json", &json(rules)]);
    if let Some(keep) = keep {
        cmd.args(["--keep-caps", keep]);
    }
    cmd.arg("--").arg(program).args(args);
    cmd.output().expect("spawn strata-launch")
}

fn launch(rules: &LandlockRuleset, args: &[&str]) -> Output {
    launch_program(rules, None, PROBE, args)
}

/// Asserts the probe printed exactly `expected`, with exit 1 for a reported failure, else 0.
#[track_caller]
fn assert_probe(out: &Output, expected: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stdout.trim(),
        expected,
        "probe output (status {:?}, stderr {stderr:?})",
        out.status
    );
    // The probe exits 1 exactly when it reports a failure.
    let failed = expected.starts_with("errno=") || expected.starts_with("exit=");
    let code = if failed { 1 } else { 0 };
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port()
}

/// Root is needed where capabilities are the subject; say so instead of skipping.
fn require_root(what: &str) {
    assert_eq!(
        rustix::process::geteuid().as_raw(),
        0,
        "{what} needs root (the launcher can keep only capabilities it holds): run the tests as root"
    );
}

#[test]
fn read_inside_a_granted_path_works_outside_is_eacces() {
    let t = Scratch::new("read");
    let inside = t.file("granted/data.txt", "inside");
    let outside = t.file("other/data.txt", "outside");
    let granted = t.0.join("granted");
    let rules = ruleset(&[&granted], &[], &[], &[]);

    assert_probe(&launch(&rules, &["read", &s(&inside)]), "ok");
    assert_probe(&launch(&rules, &["read", &s(&granted)]), "ok");
    assert_probe(&launch(&rules, &["read", &s(&outside)]), "errno=EACCES");
    assert_probe(&launch(&rules, &["read", "/etc/hostname"]), "errno=EACCES");
    // Control: without the launcher the same file is readable.
    let out = Command::new(PROBE)
        .args(["read", &s(&outside)])
        .output()
        .expect("probe");
    assert_probe(&out, "ok");
}

#[test]
fn write_under_a_read_only_grant_is_eacces_under_a_write_grant_works() {
    let t = Scratch::new("write");
    let ro = t.dir("ro");
    let rw = t.dir("rw");
    let rules = ruleset(&[&ro], &[&rw], &[], &[]);

    assert_probe(
        &launch(&rules, &["write", &s(&ro.join("new"))]),
        "errno=EACCES",
    );
    assert!(!ro.join("new").exists(), "denied write created a file");
    assert_probe(&launch(&rules, &["write", &s(&rw.join("new"))]), "ok");
    assert_eq!(
        std::fs::read_to_string(rw.join("new")).expect("written file"),
        "strata-probe\n"
    );
    // Overwriting an existing file under the read-only grant is denied too.
    let existing = t.file("ro/existing", "keep");
    assert_probe(&launch(&rules, &["write", &s(&existing)]), "errno=EACCES");
    assert_eq!(
        std::fs::read_to_string(&existing).expect("existing"),
        "keep"
    );
}

#[test]
fn bind_to_the_granted_port_works_ungranted_is_eacces() {
    let granted = free_port();
    let other = free_port();
    let rules = ruleset(&[], &[], &[granted], &[]);

    assert_probe(&launch(&rules, &["bind", &granted.to_string()]), "ok");
    assert_probe(
        &launch(&rules, &["bind", &other.to_string()]),
        "errno=EACCES",
    );
    // Control: the ungranted port is free outside the sandbox.
    let out = Command::new(PROBE)
        .args(["bind", &other.to_string()])
        .output()
        .expect("probe");
    assert_probe(&out, "ok");
}

#[test]
fn connect_to_the_granted_port_works_ungranted_is_eacces() {
    // Two live listeners: the only difference between them is the grant.
    let granted = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let granted_port = granted.local_addr().expect("addr").port();
    let other_port = other.local_addr().expect("addr").port();
    let rules = ruleset(&[], &[], &[], &[granted_port]);

    assert_probe(
        &launch(&rules, &["connect", &granted_port.to_string()]),
        "ok",
    );
    assert_probe(
        &launch(&rules, &["connect", &other_port.to_string()]),
        "errno=EACCES",
    );
    let out = Command::new(PROBE)
        .args(["connect", &other_port.to_string()])
        .output()
        .expect("probe");
    assert_probe(&out, "ok");
}

#[test]
fn exec_needs_a_granted_path() {
    let t = Scratch::new("exec");
    let granted = t.dir("bin");
    let ungranted = t.dir("elsewhere");
    for dir in [&granted, &ungranted] {
        std::fs::copy("/bin/true", dir.join("true")).expect("copy /bin/true");
    }
    let rules = ruleset(&[&granted], &[], &[], &[]);

    assert_probe(&launch(&rules, &["exec", "/bin/true"]), "ok");
    assert_probe(&launch(&rules, &["exec", &s(&granted.join("true"))]), "ok");
    assert_probe(
        &launch(&rules, &["exec", &s(&ungranted.join("true"))]),
        "errno=EACCES",
    );
}

#[test]
fn a_declared_path_that_does_not_exist_fails_the_launch() {
    let t = Scratch::new("missing");
    let missing = t.0.join("absent");
    for (rules, kind) in [
        (ruleset(&[&missing], &[], &[], &[]), "fs.read"),
        (ruleset(&[], &[&missing], &[], &[]), "fs.write"),
    ] {
        let out = launch(&rules, &["caps"]);
        assert_eq!(out.status.code(), Some(EXIT_DECLARED_PATH));
        assert!(out.stdout.is_empty(), "the service must not have run");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "strata-launch: probe: {kind} path {} does not exist\n",
                missing.display()
            )
        );
    }
    // Control: the same ruleset with the directory present launches.
    std::fs::create_dir(&missing).expect("create");
    assert_probe(
        &launch(
            &ruleset(&[&missing], &[], &[], &[]),
            &["read", &s(&missing)],
        ),
        "ok",
    );
}

#[test]
fn capabilities_are_dropped_to_the_kept_set() {
    require_root("dropping capabilities");
    let rules = ruleset(&[], &[], &[], &[]);
    let out = launch_program(&rules, None, PROBE, &["caps"]);
    assert_probe(
        &out,
        "effective= permitted= inheritable= ambient= bounding=",
    );
    let out = launch_program(&rules, Some("CAP_NET_BIND_SERVICE"), PROBE, &["caps"]);
    let keep = "CAP_NET_BIND_SERVICE";
    assert_probe(
        &out,
        &format!(
            "effective={keep} permitted={keep} inheritable={keep} ambient={keep} bounding={keep}"
        ),
    );
}

#[test]
fn a_privileged_port_needs_the_kept_capability() {
    require_root("binding a privileged port");
    // A free port below 1024 (the kernel's ip_unprivileged_port_start is 1024 here).
    let port = (900..1000)
        .find(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok())
        .expect("a free port in 900..1000");
    let rules = ruleset(&[], &[], &[port], &[]);
    let p = port.to_string();
    assert_probe(
        &launch_program(&rules, Some("CAP_NET_BIND_SERVICE"), PROBE, &["bind", &p]),
        "ok",
    );
    assert_probe(
        &launch_program(&rules, None, PROBE, &["bind", &p]),
        "errno=EACCES",
    );
}

#[test]
fn environment_and_arguments_pass_unchanged() {
    let out = Command::new(LAUNCH)
        .args(["--service", "probe", "--ruleset-json"])
        .arg(json(&ruleset(&[], &[], &[], &[])))
        .args(["--", PROBE, "env", "STRATA_LAUNCH_TEST"])
        .env("STRATA_LAUNCH_TEST", "a b=c")
        .output()
        .expect("spawn");
    assert_probe(&out, "STRATA_LAUNCH_TEST=a b=c");
}

#[test]
fn bad_command_lines_and_programs_have_documented_statuses() {
    let rules = json(&ruleset(&[], &[], &[], &[]));
    let out = Command::new(LAUNCH)
        .args([
            "--service",
            "probe",
            "--ruleset-json",
            &rules,
            "--",
            "strata-probe",
        ])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(EXIT_USAGE));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "strata-launch: invalid command line: program path `strata-probe` is not absolute: \
         expected a path starting with /\n"
    );

    let out = Command::new(LAUNCH)
        .args([
            "--service",
            "probe",
            "--ruleset-json",
            &rules,
            "--",
            "/nonexistent/prog",
        ])
        .output()
        .expect("spawn");
    assert_eq!(out.status.code(), Some(EXIT_PROGRAM_NOT_FOUND));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "strata-launch: probe: program /nonexistent/prog does not exist\n"
    );
}

// ---------------------------------------------------------------------------------------------
// Through a transient unit of a private systemd: the launch path production uses.

/// The allow-list strata-launch needs: systemd 252's @system-service lacks the Landlock
/// system calls (with @system-service alone strata-launch is killed by SIGSYS, or gets EPERM
/// and fails closed with 69 when SystemCallErrorNumber=EPERM is set).
const SYSCALLS: &str = "SystemCallFilter=@system-service landlock_create_ruleset landlock_add_rule landlock_restrict_self";

/// The hardened baseline strata-core's derivation gives a service without capabilities
/// (DESIGN.md), minus PrivateNetwork (the probes need TCP), with [`SYSCALLS`].
const BASELINE: &[&str] = &[
    "DynamicUser=yes",
    "ProtectSystem=strict",
    "ProtectHome=yes",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "NoNewPrivileges=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "MemoryDenyWriteExecute=yes",
    SYSCALLS,
    "SystemCallFilter=~@privileged @resources",
    "SystemCallErrorNumber=EPERM",
    "SystemCallArchitectures=native",
    "CapabilityBoundingSet=",
    "UMask=0077",
];

/// Inside paths of the test's files (the namespace has a private /run).
const TREE: &str = "/run/strata-launch-test";

struct Unit<'a> {
    sd: &'a PrivateSystemd,
    launch: String,
    probe: String,
}

static UNIT_SEQ: AtomicU32 = AtomicU32::new(0);

impl Unit<'_> {
    /// `systemd-run --wait` of `argv` with the baseline plus `extra` properties; with `pipe`
    /// the service's stdout/stderr come back in the Output, else they go to the journal.
    fn run(&self, extra: &[String], argv: &[String], pipe: bool) -> (String, Output) {
        let unit = format!(
            "strata-launch-test-{}.service",
            UNIT_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut cmd = self.sd.command("systemd-run");
        cmd.args(["--wait", "--quiet", "--collect", "--service-type=exec"])
            .arg(format!("--unit={unit}"));
        if pipe {
            cmd.arg("--pipe");
        }
        for prop in BASELINE
            .iter()
            .map(|p| p.to_string())
            .chain(extra.iter().cloned())
        {
            cmd.arg("-p").arg(prop);
        }
        cmd.arg("--").args(argv).stdin(Stdio::null());
        (
            unit,
            cmd.output()
                .expect("spawn systemd-run inside the namespace"),
        )
    }

    fn launch_argv(
        &self,
        rules: &LandlockRuleset,
        keep: Option<&str>,
        probe: &[&str],
    ) -> Vec<String> {
        let mut argv = vec![
            self.launch.clone(),
            "--service".into(),
            "probe".into(),
            "--ruleset-json".into(),
            json(rules),
        ];
        if let Some(keep) = keep {
            argv.extend(["--keep-caps".into(), keep.into()]);
        }
        argv.push("--".into());
        argv.push(self.probe.clone());
        argv.extend(probe.iter().map(|a| a.to_string()));
        argv
    }

    /// strata-launch + strata-probe in a unit; returns the probe's output.
    fn probe(
        &self,
        extra: &[String],
        rules: &LandlockRuleset,
        keep: Option<&str>,
        args: &[&str],
    ) -> Output {
        self.run(extra, &self.launch_argv(rules, keep, args), true)
            .1
    }

    /// strata-probe alone in the same kind of unit: the control that shows a denial comes
    /// from strata-launch, not from systemd's sandbox or file permissions.
    fn probe_unlaunched(&self, extra: &[String], args: &[&str]) -> Output {
        let mut argv = vec![self.probe.clone()];
        argv.extend(args.iter().map(|a| a.to_string()));
        self.run(extra, &argv, true).1
    }

    /// Runs with output to the journal; returns the exit code and the unit's journal once it
    /// contains `expect` (journald reads the stream asynchronously).
    fn journaled(&self, extra: &[String], argv: &[String], expect: &str) -> (Option<i32>, String) {
        let (unit, out) = self.run(extra, argv, false);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let journal = self.sd.journal(&unit).expect("read the unit's journal");
            if journal.contains(expect) || Instant::now() > deadline {
                return (out.status.code(), journal);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn rules_inside(read: &[&str], write: &[&str], bind: &[u16], connect: &[u16]) -> LandlockRuleset {
    LandlockRuleset {
        read: read.iter().map(|p| format!("{TREE}/{p}")).collect(),
        write: write.iter().map(|p| format!("{TREE}/{p}")).collect(),
        bind_tcp: bind.to_vec(),
        connect_tcp: connect.to_vec(),
        allow_degraded: false,
    }
}

fn inside(rel: &str) -> String {
    format!("{TREE}/{rel}")
}

#[test]
fn inside_a_transient_unit_of_a_private_systemd() {
    let sd = PrivateSystemd::boot().expect("boot a private systemd (needs root and systemd 252)");
    let u = Unit {
        sd: &sd,
        launch: s(&sd
            .inside_bin(Path::new(LAUNCH))
            .expect("strata-launch inside")),
        probe: s(&sd
            .inside_bin(Path::new(PROBE))
            .expect("strata-probe inside")),
    };
    for (rel, content) in [
        ("granted/data.txt", "inside"),
        ("other/data.txt", "outside"),
        ("ro/existing", "keep"),
        ("rw/existing", "old"),
    ] {
        sd.write_file(Path::new(&inside(rel)), content.as_bytes())
            .expect("write test file inside");
    }
    // The dynamic user must be allowed to write both directories as far as file permissions
    // and systemd go: only Landlock tells them apart.
    for dir in ["ro", "rw"] {
        let host = sd.root().join(inside(dir).trim_start_matches('/'));
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    let writable = vec![format!("ReadWritePaths={} {}", inside("ro"), inside("rw"))];

    // Read inside a granted path works, outside is EACCES (and readable without the launcher).
    let rules = rules_inside(&["granted"], &[], &[], &[]);
    assert_probe(
        &u.probe(&[], &rules, None, &["read", &inside("granted/data.txt")]),
        "ok",
    );
    assert_probe(
        &u.probe(&[], &rules, None, &["read", &inside("other/data.txt")]),
        "errno=EACCES",
    );
    assert_probe(
        &u.probe_unlaunched(&[], &["read", &inside("other/data.txt")]),
        "ok",
    );

    // Write under a read-only grant is EACCES, under a write grant works.
    let rules = rules_inside(&["ro"], &["rw"], &[], &[]);
    assert_probe(
        &u.probe(&writable, &rules, None, &["write", &inside("rw/new")]),
        "ok",
    );
    assert_probe(
        &u.probe(&writable, &rules, None, &["write", &inside("ro/new")]),
        "errno=EACCES",
    );
    assert_probe(
        &u.probe(&writable, &rules, None, &["write", &inside("ro/existing")]),
        "errno=EACCES",
    );
    assert_probe(
        &u.probe_unlaunched(&writable, &["write", &inside("ro/new")]),
        "ok",
    );
    assert_eq!(
        std::fs::read_to_string(sd.root().join(inside("rw/new").trim_start_matches('/')))
            .expect("file written by the unit"),
        "strata-probe\n"
    );

    // TCP bind: granted port works, another is EACCES.
    let (granted, other) = (free_port(), free_port());
    let rules = rules_inside(&[], &[], &[granted], &[]);
    assert_probe(
        &u.probe(&[], &rules, None, &["bind", &granted.to_string()]),
        "ok",
    );
    assert_probe(
        &u.probe(&[], &rules, None, &["bind", &other.to_string()]),
        "errno=EACCES",
    );

    // TCP connect to live listeners of this test (the namespace shares the host's network).
    let l1 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let l2 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let p1 = l1.local_addr().expect("addr").port();
    let p2 = l2.local_addr().expect("addr").port();
    let rules = rules_inside(&[], &[], &[], &[p1]);
    assert_probe(
        &u.probe(&[], &rules, None, &["connect", &p1.to_string()]),
        "ok",
    );
    assert_probe(
        &u.probe(&[], &rules, None, &["connect", &p2.to_string()]),
        "errno=EACCES",
    );
    assert_probe(
        &u.probe_unlaunched(&[], &["connect", &p2.to_string()]),
        "ok",
    );

    // Capabilities under DynamicUser: nothing to drop is fine; a declared capability
    // (AmbientCapabilities= from sys.cap / a port below 1024) is kept only with --keep-caps.
    let rules = rules_inside(&[], &[], &[], &[]);
    assert_probe(
        &u.probe(&[], &rules, None, &["caps"]),
        "effective= permitted= inheritable= ambient= bounding=",
    );
    let nbs = "CAP_NET_BIND_SERVICE";
    let with_cap = vec![
        format!("AmbientCapabilities={nbs}"),
        format!("CapabilityBoundingSet={nbs}"),
    ];
    // What production runs: the unit grants exactly the kept capability, so nothing changes
    // and no capset is needed (the baseline's ~@privileged denies capset).
    assert_probe(
        &u.probe(&with_cap, &rules, Some(nbs), &["caps"]),
        &format!("effective={nbs} permitted={nbs} inheritable={nbs} ambient={nbs} bounding={nbs}"),
    );
    let low = (900..1000)
        .find(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, *p)).is_ok())
        .expect("a free port in 900..1000");
    let low_rules = rules_inside(&[], &[], &[low], &[]);
    assert_probe(
        &u.probe(
            &with_cap,
            &low_rules,
            Some(nbs),
            &["bind", &low.to_string()],
        ),
        "ok",
    );
    // A capability the unit grants but the launcher must drop: with capset allowed it is
    // dropped (the bounding set stays: without CAP_SETPCAP it cannot shrink, and with
    // no_new_privs it cannot be used), and the privileged port is refused.
    let capset_allowed: Vec<String> = with_cap
        .iter()
        .cloned()
        .chain(["SystemCallFilter=".to_owned(), SYSCALLS.to_owned()])
        .collect();
    assert_probe(
        &u.probe(&capset_allowed, &rules, None, &["caps"]),
        &format!("effective= permitted= inheritable= ambient= bounding={nbs}"),
    );
    assert_probe(
        &u.probe(
            &capset_allowed,
            &low_rules,
            None,
            &["bind", &low.to_string()],
        ),
        "errno=EACCES",
    );
    // ...and when capset is denied (~@privileged) the launch fails closed rather than exec the
    // service with the capability.
    let expect = "strata-launch: probe: dropping capabilities (inheritable): ";
    let (code, journal) = u.journaled(&with_cap, &u.launch_argv(&rules, None, &["caps"]), expect);
    assert_eq!(code, Some(EXIT_OS_ERROR), "journal: {journal}");
    assert!(journal.contains(expect), "journal: {journal}");
    assert!(!journal.contains("effective="), "the probe ran: {journal}");

    // A declared path that does not exist: the service does not start, the journal says why.
    let rules = rules_inside(&["absent"], &[], &[], &[]);
    let expect = format!(
        "strata-launch: probe: fs.read path {} does not exist",
        inside("absent")
    );
    let (code, journal) = u.journaled(&[], &u.launch_argv(&rules, None, &["caps"]), &expect);
    assert_eq!(code, Some(EXIT_DECLARED_PATH), "journal: {journal}");
    assert!(journal.contains(&expect), "journal: {journal}");
    assert!(!journal.contains("effective="), "the probe ran: {journal}");

    // Fail closed: a seccomp filter hiding Landlock (ENOSYS) makes the ruleset unenforceable.
    let hidden = vec![
        "SystemCallFilter=~landlock_create_ruleset landlock_add_rule landlock_restrict_self".into(),
        "SystemCallErrorNumber=ENOSYS".into(),
    ];
    let rules = rules_inside(&["granted"], &[], &[], &[]);
    let expect = "strata-launch: probe: landlock ruleset not fully enforced (NotEnforced): \
                  landlock is unavailable (landlock_create_ruleset failed: Function not \
                  implemented (os error 38))";
    let (code, journal) = u.journaled(&hidden, &u.launch_argv(&rules, None, &["caps"]), expect);
    assert_eq!(code, Some(EXIT_NOT_ENFORCED), "journal: {journal}");
    assert!(journal.contains(expect), "journal: {journal}");
    assert!(!journal.contains("effective="), "the probe ran: {journal}");
    // ...unless the manifest explicitly allows a degraded sandbox: warning, then the service.
    let degraded = LandlockRuleset {
        allow_degraded: true,
        ..rules
    };
    let expect = "strata-launch: probe: warning: landlock ruleset not fully enforced, \
                  continuing because allow_degraded is set: landlock is unavailable";
    let (code, journal) = u.journaled(
        &hidden,
        &u.launch_argv(&degraded, None, &["read", &inside("other/data.txt")]),
        expect,
    );
    assert_eq!(code, Some(0), "journal: {journal}");
    assert!(journal.contains(expect), "journal: {journal}");
    // The probe ran unconfined: it read a file outside the (unenforced) grants.
    assert!(journal.lines().any(|l| l == "ok"), "journal: {journal}");

    sd.shutdown().expect("shut the private systemd down");
}
