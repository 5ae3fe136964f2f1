//! strata-testkit: boots a private systemd in a PID+mount namespace for tests and the demo.
//!
//! Strata's tests run against the machine's real systemd 252, on machines whose PID 1 is not
//! systemd. [`PrivateSystemd::boot`] starts `/lib/systemd/systemd` as PID 1 of a new
//! PID+mount+UTS+IPC namespace and returns once it is "running" and answers on its own system
//! bus; the host process then talks to it over D-Bus at [`PrivateSystemd::bus_address`]
//! (`unix:path=/proc/<pid>/root/run/dbus/system_bus_socket`) or runs tools inside with
//! [`PrivateSystemd::command`]. Dropping it (or [`PrivateSystemd::shutdown`]) runs
//! `systemctl exit 0`, waits, and removes the instance's cgroup subtree.
//!
//! ```no_run
//! # fn main() -> Result<(), strata_testkit::BootError> {
//! let sd = strata_testkit::PrivateSystemd::boot()?;
//! let out = sd.systemctl(&["is-system-running"])?;
//! assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "running");
//! sd.shutdown()?;
//! # Ok(()) }
//! ```
//!
//! What the embedded init script (`src/init.sh`, run through `unshare` so it works from any
//! crate's test binary with nothing else built) does before exec'ing systemd, so that the
//! host is never touched:
//! - private tmpfs on /run, /tmp, /var/tmp, /dev/shm, /var/log/journal and
//!   /var/lib/strata-test (`x-initrd.mount` so `systemctl exit` leaves them mounted while units
//!   still run): systemd-tmpfiles can never clean the host's /tmp;
//! - a private /dev (null, zero, full, random, urandom, tty, a new devpts) with /dev/console
//!   bound to /dev/null; read-only /proc/sys;
//! - host units and generators hidden (empty tmpfs over /etc/systemd/system and every
//!   system-generators directory), every vendor-enabled unit and gettys, tmpfiles, udev,
//!   logind, sysctl, binfmt, timesyncd masked in /run/systemd/system, and a minimal boot target
//!   `strata-testns.target` that wants only journald and dbus;
//! - its own tmpfs on /sys/fs/cgroup with the real hierarchies moved into it, and PID 1 moved
//!   into `/strata-ns-<token>` of every hierarchy (not v1 cpuset), which systemd then uses as
//!   its root; teardown removes exactly that subtree;
//! - a clean environment (`container=other` only), its own session, no inherited descriptors.
//!
//! Each instance has a random token in its private `/run/strata-test/instance`; every
//! destructive step checks it or goes through a pidfd, so parallel instances (in one test
//! binary or across processes) never touch each other. Failures are errors, never skips:
//! not root, no `unshare`, no `/lib/systemd/systemd` each give a [`BootError`] saying so.

mod cgroup;
mod error;
mod instance;
mod options;
mod paths;
mod system;

pub use cgroup::cgroup_subtrees;
pub use error::BootError;
pub use options::BootOptions;
pub use system::{INSIDE_PATH, PrivateSystemd, SYSTEMD, reap_orphans, stop_instance};

/// Where the cargo build directory (`target/<profile>`) is bound read-only inside.
pub const BIN_DIR: &str = "/run/strata-test/bin";
