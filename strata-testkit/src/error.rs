//! The one error type of the harness: every way booting, using or stopping a private systemd
//! can fail, each naming what failed so a CI log says exactly why a test could not run.

use std::path::PathBuf;
use std::time::Duration;

/// Why a private systemd could not be booted, used or torn down.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Namespaces, mounts and cgroup moves need root.
    #[error(
        "strata-testkit must run as root to boot a private systemd (euid is {euid}); run the tests as root"
    )]
    NotRoot { euid: u32 },
    /// The machine's systemd binary is not there.
    #[error("systemd is missing: {path} does not exist or is not executable (install systemd)")]
    SystemdMissing { path: PathBuf },
    /// A host tool the harness runs is not installed.
    #[error("required tool `{tool}` not found in {searched} (install util-linux/systemd)")]
    ToolMissing {
        tool: &'static str,
        searched: String,
    },
    /// `unshare` itself failed (no namespace support, seccomp, missing privileges).
    #[error("unshare failed to create the PID+mount namespace ({status}): {stderr}")]
    UnshareFailed { status: String, stderr: String },
    /// The namespace was created but its init script failed before systemd took over.
    #[error("namespace init failed before systemd ran ({status}): {stderr}")]
    InitFailed { status: String, stderr: String },
    /// systemd was exec'd but the namespace went away during boot.
    #[error("private systemd exited during boot ({status}); launcher output: {stderr}")]
    ExitedDuringBoot { status: String, stderr: String },
    /// Boot did not finish in time; `seen` says how far it got.
    #[error("private systemd (instance {token}) did not become ready within {waited:?}: {seen}")]
    BootTimeout {
        token: String,
        waited: Duration,
        seen: String,
    },
    /// Boot finished but some units failed (pass `allow_degraded` to accept that).
    #[error("private systemd booted degraded; failed units: {}", failed_units.join(", "))]
    Degraded { failed_units: Vec<String> },
    /// A `bind_ro` request cannot be honoured.
    #[error("cannot bind {host} at {inside}: {reason}")]
    BadBind {
        host: PathBuf,
        inside: PathBuf,
        reason: String,
    },
    /// The directory of the current cargo build could not be derived.
    #[error("cannot find the cargo build directory from the current executable: {reason}")]
    BinDirUnknown { reason: String },
    /// `inside_bin` was asked for a path that is not under the bound build directory.
    #[error("{path} is not under the bound build directory {bin_dir}")]
    NotUnderBinDir { path: PathBuf, bin_dir: PathBuf },
    /// `inside_bin` was called on an instance booted without the build directory.
    #[error("this instance was booted without the cargo build directory bound at BIN_DIR")]
    NoBinDir,
    /// `write_file` refuses paths that would land on the host.
    #[error("refusing to write {path} inside the namespace: {reason}")]
    BadInsidePath { path: PathBuf, reason: String },
    /// Writing a file inside the namespace failed.
    #[error("writing {path} inside the namespace failed: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A host process could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// Reading or creating a host file the harness needs failed.
    #[error("{what} failed for {path}: {source}")]
    HostIo {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// journalctl could not read the namespace's journal.
    #[error("journalctl for unit {unit} failed ({status}): {stderr}")]
    Journal {
        unit: String,
        status: String,
        stderr: String,
    },
    /// The PID is not (or no longer) a namespace started by this harness.
    #[error("pid {pid} is not a running strata-testns namespace: {reason}")]
    NotOurInstance { pid: u32, reason: String },
    /// systemd did not exit after `systemctl exit`; its PID was SIGKILLed.
    #[error(
        "private systemd (pid {pid}) did not exit within {waited:?} of `systemctl exit 0` and was killed"
    )]
    ShutdownTimeout { pid: u32, waited: Duration },
    /// The namespace ended on its own before it was shut down.
    #[error(
        "private systemd (pid {pid}) exited before shutdown ({status}); launcher output: {stderr}"
    )]
    ExitedEarly {
        pid: u32,
        /// The launcher's exit code (systemd's, after `systemctl exit N`); None if killed.
        exit_code: Option<i32>,
        status: String,
        stderr: String,
    },
    /// The instance's cgroup subtree could not be removed.
    #[error("removing cgroup {path} failed: {source}")]
    CgroupCleanup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
