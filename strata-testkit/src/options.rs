//! Builder for how a private systemd is booted: extra read-only binds, the cargo build
//! directory at `BIN_DIR`, timeouts.

use std::path::PathBuf;
use std::time::Duration;

/// How to boot a [`PrivateSystemd`](crate::PrivateSystemd). `new()` already binds the current
/// cargo build directory at [`BIN_DIR`](crate::BIN_DIR); everything else is opt-in.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub(crate) binds: Vec<(PathBuf, PathBuf)>,
    pub(crate) cargo_bin_dir: bool,
    pub(crate) allow_degraded: bool,
    pub(crate) boot_timeout: Duration,
    pub(crate) shutdown_timeout: Duration,
}

impl Default for BootOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl BootOptions {
    /// Defaults: the cargo build directory bound at `BIN_DIR`, degraded boots refused,
    /// 30 s to boot, 30 s for systemd to exit before it is killed.
    pub fn new() -> Self {
        Self {
            binds: Vec::new(),
            cargo_bin_dir: true,
            allow_degraded: false,
            boot_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// Bind a host directory (or file) read-only into the namespace at `inside` (absolute).
    /// Needed because the namespace has private /tmp, /run etc., and units with ProtectHome
    /// cannot see /root. `inside` must lie in a private area (/run, /tmp, /var/tmp,
    /// /var/lib/strata-test) or already exist on the host, so that no mount point is ever
    /// created on the host.
    pub fn bind_ro(mut self, host: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        self.binds.push((host.into(), inside.into()));
        self
    }

    /// Add a D-Bus policy file (e.g. strata-systemd/dbus/org.strata.Supervisor1.conf) to the
    /// namespace's system bus configuration, next to the host's own policy files.
    pub fn dbus_policy(self, host_file: impl Into<PathBuf>) -> Self {
        let host_file = host_file.into();
        let name = host_file
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| "policy.conf".into());
        self.bind_ro(
            host_file,
            PathBuf::from("/run/strata-test/dbus-policy").join(name),
        )
    }

    /// Do not bind the cargo build directory at `BIN_DIR` (then `inside_bin` fails).
    pub fn without_cargo_bin_dir(mut self) -> Self {
        self.cargo_bin_dir = false;
        self
    }

    /// Accept a boot that ends "degraded" (the failed units are in `failed_units()`).
    pub fn allow_degraded(mut self) -> Self {
        self.allow_degraded = true;
        self
    }

    /// How long to wait for "running" and a working system bus.
    pub fn boot_timeout(mut self, timeout: Duration) -> Self {
        self.boot_timeout = timeout;
        self
    }

    /// How long systemd gets to exit after `systemctl exit 0` before its PID is SIGKILLed.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }
}
