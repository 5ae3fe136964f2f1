//! [`PrivateSystemd`]: boot a private systemd through `unshare` and the embedded init script,
//! wait until it is really ready, run things inside it, and tear it down leaving nothing.

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::instance;
use crate::paths;
use crate::{BIN_DIR, BootError, BootOptions, cgroup};

/// The init script run as PID 1 of the new namespace before it execs systemd.
const INIT_SCRIPT: &str = include_str!("init.sh");
/// The machine's systemd.
pub const SYSTEMD: &str = "/lib/systemd/systemd";
/// PATH given to everything the harness starts (host tools and commands inside).
pub const INSIDE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Markers the init script prints on stderr: they tell which stage a failure happened in.
const STARTED_MARKER: &str = "strata-testns-init: started";
const EXEC_MARKER: &str = "strata-testns-init: exec systemd";
/// Keep at most this much of the launcher's stderr for error messages.
const STDERR_CAP: usize = 64 * 1024;
const POLL: Duration = Duration::from_millis(20);
/// How long dying tasks may keep the cgroup subtree busy after the namespace ended.
const CGROUP_RMDIR_TIMEOUT: Duration = Duration::from_secs(10);

/// Absolute paths of the host tools the harness runs, resolved once (the caller's PATH is
/// not trusted: tests may run with an odd environment).
#[derive(Debug, Clone)]
struct Tools {
    unshare: PathBuf,
    nsenter: PathBuf,
    busctl: PathBuf,
    journalctl: PathBuf,
}

fn find_tool(tool: &'static str) -> Result<PathBuf, BootError> {
    for dir in INSIDE_PATH.split(':') {
        let candidate = Path::new(dir).join(tool);
        if let Ok(meta) = std::fs::metadata(&candidate)
            && meta.is_file()
            && meta.permissions().mode() & 0o111 != 0
        {
            return Ok(candidate);
        }
    }
    Err(BootError::ToolMissing {
        tool,
        searched: INSIDE_PATH.to_string(),
    })
}

impl Tools {
    fn find() -> Result<Self, BootError> {
        // systemctl runs inside, but it comes from the same root: check it here too so a
        // missing one is reported before anything is started.
        find_tool("systemctl")?;
        find_tool("mount")?;
        Ok(Self {
            unshare: find_tool("unshare")?,
            nsenter: find_tool("nsenter")?,
            busctl: find_tool("busctl")?,
            journalctl: find_tool("journalctl")?,
        })
    }
}

/// A private systemd 252 running as PID 1 of its own PID+mount+UTS+IPC namespace.
///
/// Dropping it shuts it down (best effort, errors printed to stderr); call
/// [`shutdown`](Self::shutdown) to see teardown errors.
#[derive(Debug)]
pub struct PrivateSystemd {
    pid: u32,
    token: String,
    pidfd: OwnedFd,
    /// The `unshare` process: parent of `pid`, our child. None once reaped.
    launcher: Option<Child>,
    launcher_stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
    bin_dir_host: Option<PathBuf>,
    failed_units: Vec<String>,
    tools: Tools,
    shutdown_timeout: Duration,
    ready: bool,
    stopped: bool,
}

impl PrivateSystemd {
    /// Boots with defaults: binds the directory holding the current cargo build's binaries
    /// (for an integration test, `current_exe()` is in `target/<profile>/deps`, so its parent
    /// `target/<profile>` is bound) read-only at [`BIN_DIR`] inside.
    pub fn boot() -> Result<Self, BootError> {
        Self::boot_with(BootOptions::new())
    }

    /// Boots with the given options.
    pub fn boot_with(opts: BootOptions) -> Result<Self, BootError> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(BootError::NotRoot { euid });
        }
        let systemd = Path::new(SYSTEMD);
        match std::fs::metadata(systemd) {
            Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => {}
            _ => {
                return Err(BootError::SystemdMissing {
                    path: systemd.to_path_buf(),
                });
            }
        }
        let tools = Tools::find()?;
        let BootOptions {
            binds: extra_binds,
            cargo_bin_dir: bind_cargo_bin_dir,
            allow_degraded,
            boot_timeout,
            shutdown_timeout,
        } = opts;

        let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
        let mut bin_dir_host = None;
        if bind_cargo_bin_dir {
            let dir = cargo_bin_dir()?;
            bin_dir_host = Some(dir.clone());
            binds.push((dir, PathBuf::from(BIN_DIR)));
        }
        for (host, inside) in extra_binds {
            binds.push((paths::check_bind(&host, &inside)?, inside));
        }
        if let Some(dir) = &bin_dir_host {
            paths::check_bind(dir, Path::new(BIN_DIR))?;
        }

        // The init script mounts a private tmpfs here; the empty mount point is the one thing
        // the harness leaves on the host (shared by all instances, so never removed).
        let state_dir = Path::new("/var/lib/strata-test");
        std::fs::create_dir_all(state_dir).map_err(|source| BootError::HostIo {
            what: "creating the mount point",
            path: state_dir.to_path_buf(),
            source,
        })?;

        // Namespaces whose owner died (a test binary killed mid-run) would run forever.
        for (pid, outcome) in reap_orphans() {
            match outcome {
                Ok(()) => eprintln!("strata-testkit: stopped orphaned private systemd {pid}"),
                Err(e) => eprintln!("strata-testkit: stopping orphaned private systemd {pid}: {e}"),
            }
        }

        let token = instance::new_token()?;
        let owner = instance::owner_record()?;
        let mut cmd = Command::new(&tools.unshare);
        cmd.env_clear()
            .env("PATH", INSIDE_PATH)
            .env("STRATA_TESTNS_INIT", INIT_SCRIPT)
            .current_dir("/")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--uts",
                "--ipc",
                "--propagation",
                "private",
                // If the launcher dies, its child (the namespace's PID 1) goes with it.
                "--kill-child=SIGKILL",
                "--",
                "/bin/sh",
                "-c",
                // The script travels in the environment (ps stays readable) and is dropped
                // from it before anything else runs.
                "script=$STRATA_TESTNS_INIT; unset STRATA_TESTNS_INIT; eval \"$script\"",
                "strata-testns-init",
                &token,
                &owner,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (host, inside) in &binds {
            cmd.arg(host).arg(inside);
        }
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // system calls (setsid, close_range), allocating nothing.
        unsafe {
            cmd.pre_exec(|| {
                // No controlling terminal, own session: CI has none and the namespace must
                // not receive the caller's terminal signals.
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Every inherited descriptor beyond stdio (lock files, sockets of other
                // tests) is closed at exec, so the namespace's init holds none of them.
                if libc::syscall(
                    libc::SYS_close_range,
                    3 as libc::c_uint,
                    libc::c_uint::MAX,
                    libc::CLOSE_RANGE_CLOEXEC,
                ) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut launcher = cmd.spawn().map_err(|source| BootError::Spawn {
            program: tools.unshare.display().to_string(),
            source,
        })?;
        let launcher_stderr = Arc::new(Mutex::new(Vec::new()));
        let stderr_reader = launcher.stderr.take().map(|mut pipe| {
            let sink = Arc::clone(&launcher_stderr);
            std::thread::Builder::new()
                .name("strata-testns-stderr".to_string())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = pipe.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        if let Ok(mut kept) = sink.lock() {
                            let room = STDERR_CAP.saturating_sub(kept.len());
                            kept.extend_from_slice(&buf[..n.min(room)]);
                        }
                    }
                })
        });
        let stderr_reader = match stderr_reader {
            Some(Ok(handle)) => Some(handle),
            Some(Err(source)) => {
                let _ = launcher.kill();
                let _ = launcher.wait();
                return Err(BootError::Spawn {
                    program: "stderr reader thread".to_string(),
                    source,
                });
            }
            None => None,
        };

        let start = Instant::now();
        let deadline = start + boot_timeout;
        let (pid, pidfd) =
            match find_namespace_init(&mut launcher, &launcher_stderr, &token, start, deadline) {
                Ok(found) => found,
                Err(e) => {
                    // Nothing verified to kill but our own child; --kill-child takes its child.
                    let _ = launcher.kill();
                    let _ = launcher.wait();
                    let _ = cgroup::remove_subtrees(&token, CGROUP_RMDIR_TIMEOUT);
                    return Err(e);
                }
            };
        let mut me = Self {
            pid,
            token,
            pidfd,
            launcher: Some(launcher),
            launcher_stderr,
            stderr_reader,
            bin_dir_host,
            failed_units: Vec::new(),
            tools,
            shutdown_timeout,
            ready: false,
            stopped: false,
        };
        match me.wait_ready(start, deadline, allow_degraded) {
            Ok(()) => {
                me.ready = true;
                Ok(me)
            }
            // Drop kills the half-booted namespace and removes its cgroup subtree.
            Err(e) => Err(e),
        }
    }

    /// Host PID of the namespace's systemd (PID 1 inside).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The random token identifying this instance (also in its `/run/strata-test/instance`
    /// and in its cgroup subtree name `strata-ns-<token>`).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// D-Bus address of the namespace's system bus, usable from the host.
    pub fn bus_address(&self) -> String {
        format!("unix:path={}", self.bus_socket().display())
    }

    /// Host path of the namespace's system bus socket.
    pub fn bus_socket(&self) -> PathBuf {
        self.root().join("run/dbus/system_bus_socket")
    }

    /// `/proc/<pid>/root`: host path to the namespace's view of the file system.
    pub fn root(&self) -> PathBuf {
        instance::root_of(self.pid)
    }

    /// Units that had failed when boot finished (only non-empty with `allow_degraded`).
    pub fn failed_units(&self) -> &[String] {
        &self.failed_units
    }

    /// Host paths of this instance's cgroup subtrees (one per hierarchy, v1 cpuset excepted).
    pub fn cgroup_subtrees(&self) -> Result<Vec<PathBuf>, BootError> {
        cgroup::cgroup_subtrees(&self.token)
    }

    /// True while the namespace's PID 1 is running.
    pub fn is_running(&self) -> bool {
        !instance::wait_pidfd(&self.pidfd, Duration::ZERO)
    }

    /// Inside path of a binary built by cargo: maps a host path under the bound build
    /// directory to [`BIN_DIR`]/....
    pub fn inside_bin(&self, host_path: &Path) -> Result<PathBuf, BootError> {
        let bin_dir = self.bin_dir_host.as_ref().ok_or(BootError::NoBinDir)?;
        let canonical = host_path
            .canonicalize()
            .map_err(|source| BootError::HostIo {
                what: "resolving a cargo binary",
                path: host_path.to_path_buf(),
                source,
            })?;
        let rest = canonical
            .strip_prefix(bin_dir)
            .map_err(|_| BootError::NotUnderBinDir {
                path: canonical.clone(),
                bin_dir: bin_dir.clone(),
            })?;
        Ok(Path::new(BIN_DIR).join(rest))
    }

    /// A Command that runs `program` inside the namespace (`nsenter -t PID -m -p -u -i`), with
    /// a clean environment holding only PATH (no DBUS_SYSTEM_BUS_ADDRESS leaks in). Add
    /// arguments and environment as with any Command.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(&self.tools.nsenter);
        cmd.env_clear()
            .env("PATH", INSIDE_PATH)
            .current_dir("/")
            .arg("--target")
            .arg(self.pid.to_string())
            .args(["--mount", "--pid", "--uts", "--ipc", "--"])
            .arg(program);
        cmd
    }

    /// Run `systemctl ARGS` inside the namespace and return its output (any exit status).
    pub fn systemctl(&self, args: &[&str]) -> Result<Output, BootError> {
        self.command("systemctl")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BootError::Spawn {
                program: format!("nsenter ... systemctl {}", args.join(" ")),
                source,
            })
    }

    /// `journalctl -D <root>/run/log/journal -u UNIT -o cat --no-pager`, as text.
    pub fn journal(&self, unit: &str) -> Result<String, BootError> {
        let dir = self.root().join("run/log/journal");
        let out = Command::new(&self.tools.journalctl)
            .env_clear()
            .env("PATH", INSIDE_PATH)
            .arg("-D")
            .arg(&dir)
            .args(["-u", unit, "-o", "cat", "--no-pager", "-q"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BootError::Spawn {
                program: self.tools.journalctl.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(BootError::Journal {
                unit: unit.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Write a file inside the namespace (mode 0644), creating parent directories. Only paths
    /// under /run and /var/lib/strata-test are accepted: everything else (/etc!) is the
    /// host's.
    pub fn write_file(&self, inside: &Path, contents: &[u8]) -> Result<(), BootError> {
        self.write_file_mode(inside, contents, 0o644)
    }

    /// [`write_file`](Self::write_file) with an explicit mode (e.g. 0o755 for a script).
    pub fn write_file_mode(
        &self,
        inside: &Path,
        contents: &[u8],
        mode: u32,
    ) -> Result<(), BootError> {
        let names = paths::check_writable(inside)?;
        self.verify_alive()?;
        paths::write_beneath(&self.root(), &names, contents, mode).map_err(|errno| {
            BootError::WriteFile {
                path: inside.to_path_buf(),
                source: errno.into(),
            }
        })
    }

    /// Stop: `systemctl exit 0`, wait for systemd to exit, remove the cgroup subtree.
    /// systemd's PID (only that one) is SIGKILLed if it does not exit in time.
    pub fn shutdown(mut self) -> Result<(), BootError> {
        self.stop()
    }

    fn verify_alive(&self) -> Result<(), BootError> {
        match instance::read_token(self.pid) {
            Ok(token) if token == self.token && self.is_running() => Ok(()),
            Ok(_) => Err(BootError::NotOurInstance {
                pid: self.pid,
                reason: "its instance token changed".to_string(),
            }),
            Err(reason) => Err(BootError::NotOurInstance {
                pid: self.pid,
                reason,
            }),
        }
    }

    fn stderr_text(&self) -> String {
        stderr_text(&self.launcher_stderr)
    }

    /// Poll until systemd is "running" and answers on its system bus from the host.
    fn wait_ready(
        &mut self,
        start: Instant,
        deadline: Instant,
        allow_degraded: bool,
    ) -> Result<(), BootError> {
        let mut seen = "namespace created, init script still preparing mounts".to_string();
        let mut token_seen = false;
        let mut state_ok = false;
        loop {
            if let Some(launcher) = self.launcher.as_mut()
                && let Ok(Some(status)) = launcher.try_wait()
            {
                self.launcher = None;
                return Err(classify_exit(status, &self.stderr_text()));
            }
            if !token_seen {
                match instance::read_token(self.pid) {
                    Ok(t) if t == self.token => {
                        token_seen = true;
                        seen = "systemd exec'd, not answering systemctl yet".to_string();
                    }
                    _ => {}
                }
            }
            if token_seen && !state_ok {
                let out = self.systemctl(&["is-system-running"])?;
                let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                match state.as_str() {
                    "running" => state_ok = true,
                    "degraded" => {
                        let failed = self.list_failed_units()?;
                        if !allow_degraded {
                            return Err(BootError::Degraded {
                                failed_units: failed,
                            });
                        }
                        self.failed_units = failed;
                        state_ok = true;
                    }
                    _ => {
                        seen = format!(
                            "systemctl is-system-running said {state:?} {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        );
                    }
                }
            }
            if state_ok {
                match self.bus_version() {
                    Ok(_) => return Ok(()),
                    Err(why) => {
                        seen = format!(
                            "systemd is running but its system bus {} does not answer: {why}",
                            self.bus_address()
                        );
                    }
                }
            }
            if Instant::now() >= deadline {
                if token_seen && let Ok(out) = self.systemctl(&["list-jobs", "--no-legend"]) {
                    let jobs = String::from_utf8_lossy(&out.stdout).trim().to_string();
                    seen = format!("{seen}; pending jobs: [{}]", jobs.replace('\n', "; "));
                }
                return Err(BootError::BootTimeout {
                    token: self.token.clone(),
                    waited: start.elapsed(),
                    seen: format!("{seen}; launcher output: {}", self.stderr_text()),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn list_failed_units(&self) -> Result<Vec<String>, BootError> {
        let out = self.systemctl(&["list-units", "--state=failed", "--no-legend", "--plain"])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// systemd's Version property over the system bus, read from the host: proves dbus runs
    /// and systemd has joined the bus.
    fn bus_version(&self) -> Result<String, String> {
        let out = Command::new(&self.tools.busctl)
            .env_clear()
            .env("PATH", INSIDE_PATH)
            .arg(format!("--address={}", self.bus_address()))
            .args([
                "--timeout=2",
                "get-property",
                "org.freedesktop.systemd1",
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "Version",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run busctl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn stop(&mut self) -> Result<(), BootError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let mut result = Ok(());
        let early_exit = match self.launcher.as_mut() {
            Some(launcher) => launcher.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = early_exit {
            self.launcher = None;
            if self.ready {
                result = Err(BootError::ExitedEarly {
                    pid: self.pid,
                    exit_code: status.code(),
                    status: status.to_string(),
                    stderr: self.stderr_text(),
                });
            }
        } else if self.launcher.is_some() && !self.ready {
            // A boot that failed half way has nothing worth a graceful stop (systemd may not
            // even run yet).
            self.kill_now();
        } else if self.launcher.is_some() {
            // nsenter goes by PID number: only use it while the token proves the PID is ours.
            // Whether `systemctl exit` worked shows in whether systemd exits in time.
            if self.verify_alive().is_ok() {
                let _ = self.systemctl(&["exit", "0"]);
            }
            if !self.wait_launcher(self.shutdown_timeout) {
                self.kill_now();
                result = Err(BootError::ShutdownTimeout {
                    pid: self.pid,
                    waited: self.shutdown_timeout,
                });
            }
        }
        // All processes of a PID namespace are gone once its PID 1 has been reaped.
        instance::wait_pidfd(&self.pidfd, Duration::from_secs(10));
        if let Some(reader) = self.stderr_reader.take()
            && reader.is_finished()
        {
            let _ = reader.join();
        }
        let cleaned = cgroup::remove_subtrees(&self.token, CGROUP_RMDIR_TIMEOUT);
        if result.is_ok() {
            result = cleaned;
        }
        result
    }

    /// SIGKILL our systemd through its pidfd (which pins exactly that process: a recycled PID
    /// can never be hit) and reap the launcher. If even that does not end it, kill the
    /// launcher, our own child; `--kill-child` makes the kernel kill systemd with it.
    fn kill_now(&mut self) {
        // ESRCH (already gone) is the only possible failure, and fine.
        let _ = rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL);
        if !self.wait_launcher(Duration::from_secs(10))
            && let Some(launcher) = self.launcher.as_mut()
        {
            let _ = launcher.kill();
            let _ = launcher.wait();
            self.launcher = None;
        }
    }

    /// Wait for the launcher (`unshare`, parent of systemd) to exit; true once reaped.
    fn wait_launcher(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(launcher) = self.launcher.as_mut() else {
                return true;
            };
            match launcher.try_wait() {
                Ok(Some(_)) | Err(_) => {
                    self.launcher = None;
                    return true;
                }
                Ok(None) => {}
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PrivateSystemd {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            // Drop cannot return it; a teardown problem must still be visible in test logs.
            eprintln!(
                "strata-testkit: teardown of private systemd {} failed: {e}",
                self.pid
            );
        }
    }
}

/// Stop a namespace started by this harness in another process (`strata-testns stop PID`):
/// verify its token, `systemctl exit 0`, wait up to `timeout`, SIGKILL that PID only as a last
/// resort, then remove its cgroup subtree.
pub fn stop_instance(pid: u32, timeout: Duration) -> Result<(), BootError> {
    let (token, pidfd) = instance::claim(pid)?;
    let tools = Tools::find()?;
    // Whether the request was accepted shows in whether systemd exits; if it does not, the
    // timeout below kills it and reports that.
    let requested = Command::new(&tools.nsenter)
        .env_clear()
        .env("PATH", INSIDE_PATH)
        .current_dir("/")
        .arg("--target")
        .arg(pid.to_string())
        .args(["--mount", "--pid", "--", "systemctl", "exit", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if let Err(source) = requested {
        return Err(BootError::Spawn {
            program: tools.nsenter.display().to_string(),
            source,
        });
    }
    let mut result = Ok(());
    if !instance::wait_pidfd(&pidfd, timeout) {
        let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
        instance::wait_pidfd(&pidfd, Duration::from_secs(10));
        result = Err(BootError::ShutdownTimeout {
            pid,
            waited: timeout,
        });
    }
    let cleaned = cgroup::remove_subtrees(&token, CGROUP_RMDIR_TIMEOUT);
    result.and(cleaned)
}

/// Stop every namespace started by this harness whose owner process (the test binary or
/// `strata-testns boot` that booted it) has exited; returns each one's PID and outcome.
/// `boot` calls it, so instances leaked by a killed test binary do not accumulate.
pub fn reap_orphans() -> Vec<(u32, Result<(), BootError>)> {
    instance::orphaned_instances()
        .into_iter()
        .map(|pid| (pid, stop_instance(pid, Duration::from_secs(10))))
        .collect()
}

/// `target/<profile>` for an integration test or unit test (whose executable is in
/// `target/<profile>/deps`), else the executable's own directory.
fn cargo_bin_dir() -> Result<PathBuf, BootError> {
    let exe = std::env::current_exe().map_err(|e| BootError::BinDirUnknown {
        reason: e.to_string(),
    })?;
    let exe = exe.canonicalize().map_err(|e| BootError::BinDirUnknown {
        reason: format!("{}: {e}", exe.display()),
    })?;
    let dir = exe.parent().ok_or_else(|| BootError::BinDirUnknown {
        reason: format!("{} has no parent directory", exe.display()),
    })?;
    if dir.file_name() == Some(OsStr::new("deps"))
        && let Some(profile_dir) = dir.parent()
    {
        return Ok(profile_dir.to_path_buf());
    }
    Ok(dir.to_path_buf())
}

fn stderr_text(buf: &Mutex<Vec<u8>>) -> String {
    match buf.lock() {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => "(launcher output unavailable)".to_string(),
    }
}

/// Which stage a launcher that exited during boot failed in, from the init script's markers.
fn classify_exit(status: ExitStatus, stderr: &str) -> BootError {
    let status = status.to_string();
    let stderr = stderr.to_string();
    if stderr.contains(EXEC_MARKER) {
        BootError::ExitedDuringBoot { status, stderr }
    } else if stderr.contains(STARTED_MARKER) {
        BootError::InitFailed { status, stderr }
    } else {
        BootError::UnshareFailed { status, stderr }
    }
}

/// Find the launcher's child (the namespace's PID 1) and pin it with a pidfd.
fn find_namespace_init(
    launcher: &mut Child,
    stderr: &Mutex<Vec<u8>>,
    token: &str,
    start: Instant,
    deadline: Instant,
) -> Result<(u32, OwnedFd), BootError> {
    let launcher_pid = launcher.id();
    let children = format!("/proc/{launcher_pid}/task/{launcher_pid}/children");
    loop {
        if let Ok(Some(status)) = launcher.try_wait() {
            // Give the reader a moment to collect the last words of the launcher.
            std::thread::sleep(Duration::from_millis(20));
            return Err(classify_exit(status, &stderr_text(stderr)));
        }
        if let Some(pid) = std::fs::read_to_string(&children)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
            && let Ok(pidfd) = instance::open_pidfd(pid)
            && instance::is_namespace_init(pid) == Ok(true)
            && parent_of(pid) == Some(launcher_pid)
        {
            return Ok((pid, pidfd));
        }
        if Instant::now() >= deadline {
            return Err(BootError::BootTimeout {
                token: token.to_string(),
                waited: start.elapsed(),
                seen: format!(
                    "unshare (pid {launcher_pid}) never showed a namespace child; launcher output: {}",
                    stderr_text(stderr)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}
