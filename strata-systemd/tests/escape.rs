//! The sandbox escape suite: a hostile payload (`strata-escape`, from strata-services) runs as
//! a real Strata unit, started the way production starts it (manifest → `derive_unit` →
//! `SystemdDriver` → strata-launch → the payload), and tries one way out per unit. Each
//! attempt must fail with one exact errno, and each sits next to a positive control: the same
//! attempt allowed where a capability grants it, or the same binary doing the same thing
//! outside the sandbox inside the test namespace (as `nobody` for file and network attempts,
//! so file modes are not what denies them; as root for the privileged ones), which proves the
//! attempt itself works and the denial comes from the sandbox.
//!
//! Which layer answers (systemd 252, kernel 6.x, Landlock ABI ≥ 4): Landlock gives EACCES for
//! files and TCP ports outside the grants; ProtectSystem=strict gives EROFS first where the
//! mount is read-only; RestrictAddressFamilies= gives EAFNOSUPPORT for AF_INET without a
//! network capability; InaccessiblePaths=/run/dbus gives EACCES on the bus socket; the
//! seccomp filter (SystemCallErrorNumber=EPERM) gives EPERM for ptrace, mount, setuid and
//! the module calls; ProcSubset=pid hides /proc/sys entirely (ENOENT).
//!
//! Outcomes are read from the unit's journal (`escape: ATTEMPT: ok|errno=NAME`) once the
//! driver's event stream reported the unit finished, and cross-checked with its exit status.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::{host_bin, node_header};
use strata_core::derive::{LaunchConfig, derive_unit};
use strata_core::manifest::Manifest;
use strata_core::observed::{ExitReason, UnitPhase};
use strata_systemd::driver::{DriverEvent, UnitDriver};
use strata_systemd::systemd::{BusTarget, DriverConfig, SystemdDriver};
use strata_testkit::{BootOptions, PrivateSystemd};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

const UNIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Files and directories the file attempts use, in the namespace's private /var/lib/strata-test.
const LAB: &str = "/var/lib/strata-test/escape";

/// One attempt run as its own unit.
struct Attempt {
    service: &'static str,
    capabilities: Vec<String>,
    args: Vec<String>,
    /// `ok` or `errno=NAME`.
    expect: String,
    /// What the attempt shows, for the report.
    what: &'static str,
}

fn attempt(
    service: &'static str,
    caps: &[String],
    args: &[&str],
    expect: &str,
    what: &'static str,
) -> Attempt {
    Attempt {
        service,
        capabilities: caps.to_vec(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        expect: expect.to_owned(),
        what,
    }
}

struct Lab {
    sd: PrivateSystemd,
    driver: SystemdDriver,
    events: mpsc::Receiver<DriverEvent>,
    /// strata-escape as seen inside the namespace.
    escape: PathBuf,
}

impl Lab {
    async fn boot() -> Lab {
        let escape_host = host_bin("strata-escape");
        host_bin("strata-launch");
        let sd = PrivateSystemd::boot_with(BootOptions::new())
            .unwrap_or_else(|e| panic!("cannot boot a private systemd for the escape suite: {e}"));
        let escape = sd.inside_bin(&escape_host).unwrap_or_else(|e| {
            panic!("strata-escape is not under the bound build directory: {e}")
        });
        let config = DriverConfig {
            cgroup_root: sd.root().join("sys/fs/cgroup"),
            ..DriverConfig::default()
        };
        let driver = SystemdDriver::connect_with(BusTarget::Address(sd.bus_address()), config)
            .await
            .unwrap_or_else(|e| panic!("cannot connect the driver to the private systemd: {e}"));
        let events = driver.events().await.expect("driver event stream");
        Lab {
            sd,
            driver,
            events,
            escape,
        }
    }

    /// Host path of an inside path under the namespace's private areas.
    fn host(&self, inside: &str) -> PathBuf {
        self.sd.root().join(inside.trim_start_matches('/'))
    }

    fn mkdir(&self, inside: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        let p = self.host(inside);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {inside}: {e}"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {inside}: {e}"));
    }

    /// The manifest of every attempt: one user service each, core services disabled.
    fn manifest(&self, attempts: &[Attempt]) -> Manifest {
        let mut text = node_header();
        for a in attempts {
            let exec: Vec<String> = std::iter::once(self.escape.display().to_string())
                .chain(a.args.iter().cloned())
                .map(|s| format!("{s:?}"))
                .collect();
            let caps: Vec<String> = a.capabilities.iter().map(|c| format!("{c:?}")).collect();
            text.push_str(&format!(
                "\n[services.{}]\nexec = [{}]\ncapabilities = [{}]\n",
                a.service,
                exec.join(", "),
                caps.join(", ")
            ));
        }
        Manifest::parse("escape.toml", &text)
            .unwrap_or_else(|e| panic!("the escape manifest does not parse:\n{e}\n{text}"))
    }

    /// Starts the attempt's unit exactly as the supervisor would, waits for it to finish and
    /// returns its outcome line and how it ended.
    async fn run_unit(&mut self, manifest: &Manifest, a: &Attempt) -> (String, UnitPhase) {
        let spec = derive_unit(manifest, a.service, &LaunchConfig::for_manifest(manifest))
            .unwrap_or_else(|e| panic!("deriving {}: {e}", a.service));
        let job = self
            .driver
            .start_and_wait(&spec)
            .await
            .unwrap_or_else(|e| panic!("starting {}: {e}", spec.unit));
        let phase = self.wait_finished(&spec.unit).await;
        // systemd races a Type=exec start job against a main process that exits within
        // milliseconds (every attempt here does): when it sees the exit first, the job ends
        // "failed" although the binary ran. The binary ran if it logged its outcome line; a
        // unit that failed before exec (sandbox setup) logs none, and that fails below.
        let line = self.outcome_line(&spec.unit, &job).await;
        (line, phase)
    }

    /// Waits (on the driver's event stream) until `unit` exited, failed or was collected.
    async fn wait_finished(&mut self, unit: &str) -> UnitPhase {
        let deadline = Instant::now() + UNIT_TIMEOUT;
        loop {
            let ev = timeout(
                deadline.saturating_duration_since(Instant::now()),
                self.events.recv(),
            )
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{unit} did not finish within {UNIT_TIMEOUT:?}; journal:\n{}",
                    self.sd.journal(unit).unwrap_or_default()
                )
            })
            .expect("the driver's event stream ended");
            let observed = match ev {
                DriverEvent::Changed(o) if o.unit == unit => Some(o.phase),
                DriverEvent::Resync(all) => {
                    all.into_iter().find(|o| o.unit == unit).map(|o| o.phase)
                }
                // Collected right after a clean exit (CollectMode=inactive).
                DriverEvent::Removed { unit: u } if u == unit => Some(UnitPhase::Gone),
                _ => None,
            };
            if let Some(p @ (UnitPhase::Exited | UnitPhase::Failed(_) | UnitPhase::Gone)) = observed
            {
                return p;
            }
        }
    }

    /// The `escape:` line of the unit's journal (journald may lag the exit by a moment).
    async fn outcome_line(&self, unit: &str, job: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let journal = self
                .sd
                .journal(unit)
                .unwrap_or_else(|e| panic!("journal of {unit}: {e}"));
            if let Some(line) = journal.lines().rev().find(|l| l.starts_with("escape: ")) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "{unit} logged no outcome line (its start job ended {job:?}); journal:\n{journal}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs strata-escape inside the namespace as root without any sandbox (the control).
    fn run_unsandboxed(&self, args: &[&str]) -> String {
        let out = self
            .sd
            .command(&self.escape)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running strata-escape through nsenter");
        outcome_of(&out)
    }

    /// Runs strata-escape inside the namespace without a sandbox as `nobody`, with no
    /// capabilities: what file modes and the network allow any unprivileged process.
    fn run_as_nobody(&self, args: &[&str]) -> String {
        let out = self
            .sd
            .command("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ])
            .arg(&self.escape)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running strata-escape through nsenter and setpriv");
        outcome_of(&out)
    }
}

fn outcome_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find(|l| l.starts_with("escape: "))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "no outcome line from strata-escape ({}): stdout {stdout:?} stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

/// The `ok` / `errno=NAME` part of an outcome line.
fn verdict(line: &str) -> &str {
    line.rsplit(": ").next().unwrap_or(line)
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs every attempt as a unit and checks outcome and exit status; reports all mismatches.
async fn run_all(lab: &mut Lab, attempts: &[Attempt]) {
    let manifest = lab.manifest(attempts);
    let mut failures = Vec::new();
    for a in attempts {
        let (line, phase) = lab.run_unit(&manifest, a).await;
        let got = verdict(&line);
        eprintln!(
            "{:<24} {:<44} {got:<14} ({})",
            a.service,
            a.args.join(" "),
            a.what
        );
        if got != a.expect {
            failures.push(format!(
                "{}: `{}` gave `{line}`, expected `{}` ({})",
                a.service,
                a.args.join(" "),
                a.expect,
                a.what
            ));
        }
        // The exit status agrees with the printed outcome.
        let status_ok = match (got, &phase) {
            ("ok", UnitPhase::Exited | UnitPhase::Gone) => true,
            (v, UnitPhase::Failed(ExitReason::ExitCode(1))) => v != "ok",
            _ => false,
        };
        if !status_ok {
            failures.push(format!(
                "{}: outcome `{got}` but the unit ended {phase:?}",
                a.service
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "escape suite:\n{}",
        failures.join("\n")
    );
}

fn caps(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_and_network_escapes_are_denied_next_to_their_grants() {
    let mut lab = Lab::boot().await;
    // ro/ is granted fs.read, rw/ fs.write; secret is outside every grant but readable and
    // writable by anyone as far as file modes go, so a denial can only come from the sandbox.
    lab.mkdir(LAB, 0o755);
    lab.mkdir(&format!("{LAB}/ro"), 0o755);
    lab.mkdir(&format!("{LAB}/rw"), 0o777);
    for (file, body) in [("ro/file", "granted\n"), ("secret", "not granted\n")] {
        lab.sd
            .write_file_mode(Path::new(&format!("{LAB}/{file}")), body.as_bytes(), 0o666)
            .expect("lab file");
    }
    // /dev/shm is world-writable and not read-only: only Landlock stands in the way there.
    let ro = format!("fs.read:{LAB}/ro");
    let rw = format!("fs.write:{LAB}/rw");
    let fs_caps = caps(&[&ro, &rw]);
    let (ro_file, ro_new, rw_new, secret) = (
        format!("{LAB}/ro/file"),
        format!("{LAB}/ro/new"),
        format!("{LAB}/rw/new"),
        format!("{LAB}/secret"),
    );

    // TCP: two ports granted, two not; the test listens on both connect ports so that only the
    // sandbox can make a connect fail.
    let (bind_ok, bind_no) = (free_port(), free_port());
    let listen_ok = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let listen_no = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listener");
    let (conn_ok, conn_no) = (
        listen_ok.local_addr().expect("addr").port(),
        listen_no.local_addr().expect("addr").port(),
    );
    let net_caps = caps(&[
        &format!("net.bind:tcp:{bind_ok}"),
        &format!("net.connect:tcp:{conn_ok}"),
    ]);
    let (b_ok, b_no, c_ok, c_no) = (
        bind_ok.to_string(),
        bind_no.to_string(),
        conn_ok.to_string(),
        conn_no.to_string(),
    );

    let attempts = vec![
        attempt(
            "esc-read-granted",
            &fs_caps,
            &["read", &ro_file],
            "ok",
            "control: fs.read grant",
        ),
        attempt(
            "esc-read-secret",
            &fs_caps,
            &["read", &secret],
            "errno=EACCES",
            "Landlock: no grant",
        ),
        attempt(
            "esc-read-etc",
            &fs_caps,
            &["read", "/etc/hostname"],
            "errno=EACCES",
            "Landlock: no grant",
        ),
        attempt(
            "esc-write-granted",
            &fs_caps,
            &["write", &rw_new],
            "ok",
            "control: fs.write grant",
        ),
        attempt(
            "esc-write-shm",
            &fs_caps,
            &["write", "/dev/shm/escape"],
            "errno=EACCES",
            "Landlock: writable mount, no grant",
        ),
        attempt(
            "esc-write-secret",
            &fs_caps,
            &["write", &secret],
            "errno=EROFS",
            "ProtectSystem=strict before Landlock",
        ),
        attempt(
            "esc-write-readonly",
            &fs_caps,
            &["write", &ro_new],
            "errno=EROFS",
            "fs.read grants no write",
        ),
        attempt(
            "esc-bind-granted",
            &net_caps,
            &["bind", &b_ok],
            "ok",
            "control: net.bind grant",
        ),
        attempt(
            "esc-bind-other",
            &net_caps,
            &["bind", &b_no],
            "errno=EACCES",
            "Landlock: port not granted",
        ),
        attempt(
            "esc-connect-granted",
            &net_caps,
            &["connect", &c_ok],
            "ok",
            "control: net.connect grant",
        ),
        attempt(
            "esc-connect-other",
            &net_caps,
            &["connect", &c_no],
            "errno=EACCES",
            "Landlock: port not granted",
        ),
        attempt(
            "esc-connect-nonet",
            &[],
            &["connect", &c_ok],
            "errno=EAFNOSUPPORT",
            "no net capability: AF_INET refused",
        ),
    ];
    run_all(&mut lab, &attempts).await;

    // Outside the sandbox the very same attempts succeed even for `nobody` without any
    // capability: the EACCES above come from the sandbox, not from file modes.
    for args in [
        vec!["read", secret.as_str()],
        vec!["read", "/etc/hostname"],
        vec!["write", "/dev/shm/escape"],
        vec!["bind", b_no.as_str()],
        vec!["connect", c_no.as_str()],
    ] {
        let line = lab.run_as_nobody(&args);
        assert_eq!(
            verdict(&line),
            "ok",
            "unsandboxed control as nobody `{}`: {line}",
            args.join(" ")
        );
    }
    drop((listen_ok, listen_no));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privilege_escapes_are_denied_and_work_outside_the_sandbox() {
    let mut lab = Lab::boot().await;
    let hostname = {
        let out = lab
            .sd
            .command("cat")
            .arg("/proc/sys/kernel/hostname")
            .output()
            .expect("cat");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert!(!hostname.is_empty(), "the namespace has a hostname");
    let no_caps: Vec<String> = Vec::new();
    let setuid_cap = caps(&["sys.cap:CAP_SETUID"]);
    let attempts = vec![
        attempt(
            "esc-dbus",
            &no_caps,
            &["dbus"],
            "errno=EACCES",
            "InaccessiblePaths=/run/dbus",
        ),
        attempt(
            "esc-ptrace",
            &no_caps,
            &["ptrace"],
            "errno=EPERM",
            "seccomp: @debug not allowed",
        ),
        attempt(
            "esc-ptrace-pid1",
            &no_caps,
            &["ptrace", "1"],
            "errno=EPERM",
            "seccomp: @debug not allowed",
        ),
        attempt(
            "esc-mount",
            &no_caps,
            &["mount", "/tmp/escape-mnt"],
            "errno=EPERM",
            "seccomp @mount, no CAP_SYS_ADMIN",
        ),
        attempt(
            "esc-setuid",
            &no_caps,
            &["setuid", "0"],
            "errno=EPERM",
            "seccomp ~@privileged, no CAP_SETUID",
        ),
        attempt(
            "esc-setuid-granted",
            &setuid_cap,
            &["setuid", "0"],
            "ok",
            "control: sys.cap:CAP_SETUID grant",
        ),
        attempt(
            "esc-init-module",
            &no_caps,
            &["init-module"],
            "errno=EPERM",
            "seccomp: @module",
        ),
        attempt(
            "esc-finit-module",
            &no_caps,
            &["finit-module"],
            "errno=EPERM",
            "seccomp: @module",
        ),
        attempt(
            "esc-proc-sys",
            &no_caps,
            &["write-proc", "/proc/sys/kernel/hostname", &hostname],
            "errno=ENOENT",
            "ProcSubset=pid: no /proc/sys at all",
        ),
    ];
    run_all(&mut lab, &attempts).await;

    // Controls: the same attempts, same binary, as root in the namespace without a sandbox.
    let line = lab.run_unsandboxed(&["dbus"]);
    assert_eq!(
        verdict(&line),
        "ok",
        "unsandboxed D-Bus escape must reach systemd: {line}"
    );
    let evil = lab
        .sd
        .systemctl(&["is-active", "strata-escape-evil.service"]);
    let evil = String::from_utf8_lossy(&evil.expect("systemctl is-active").stdout)
        .trim()
        .to_owned();
    assert_eq!(
        evil, "active",
        "the unsandboxed control started its own unit"
    );
    let _ = lab.sd.systemctl(&["stop", "strata-escape-evil.service"]);
    for args in [vec!["ptrace"], vec!["mount", "/tmp/escape-mnt"]] {
        let line = lab.run_unsandboxed(&args);
        assert_eq!(
            verdict(&line),
            "ok",
            "unsandboxed control `{}`: {line}",
            args.join(" ")
        );
    }
    // Module loading outside the sandbox reaches the kernel, which refuses the bogus image, or
    // says it has no module support at all: anything but the sandbox's EPERM.
    let modules = Path::new("/proc/modules").exists();
    for attempt in ["init-module", "finit-module"] {
        let line = lab.run_unsandboxed(&[attempt]);
        let got = verdict(&line);
        if modules {
            assert!(
                [
                    "errno=ENOEXEC",
                    "errno=EINVAL",
                    "errno=EBADMSG",
                    "errno=EKEYREJECTED"
                ]
                .contains(&got),
                "unsandboxed {attempt} should reach the module loader: {line}"
            );
        } else {
            assert_eq!(
                got, "errno=ENOSYS",
                "this kernel has no module support: {line}"
            );
        }
    }
    // The test namespace itself keeps /proc/sys read-only (strata-testkit protects the host):
    // the control remounts it writable in a private mount namespace, then writes the same
    // hostname back (UTS is the test namespace's own).
    let out = lab
        .sd
        .command("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!(
            "mount -o remount,bind,rw /proc/sys && exec {} write-proc /proc/sys/kernel/hostname {hostname}",
            lab.escape.display()
        ))
        .stdin(Stdio::null())
        .output()
        .expect("unshare");
    let line = outcome_of(&out);
    assert_eq!(verdict(&line), "ok", "unsandboxed /proc/sys write: {line}");
}
