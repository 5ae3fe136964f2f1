//! Tells an OOM kill from any other SIGKILL on the cgroup v1 memory controller.
//!
//! systemd 252 reports a v1 OOM kill as Result=signal/SIGKILL and removes the unit's cgroup
//! before it announces the failure, taking the `oom_kill` counter with it. So a watch is armed
//! while the unit runs: an eventfd registered on the unit's `memory.oom_control` through
//! `cgroup.event_control`. The kernel signals it when the cgroup (or an ancestor) runs out of
//! memory, just before the victim is killed, and once more after the cgroup is removed. On
//! each signal the watch reads the `oom_kill` counter (it counts kills of this cgroup's own
//! processes); a signal taken in while the directory still exists is an OOM notification. If
//! the watch only looked after the removal, two signals mean an OOM notification came first
//! (the event stream then corrects the unit's reason from Signal(9) to OomKill).
//!
//! The counter is read through a descriptor of the cgroup directory opened when the watch was
//! armed, never by path: a unit restarted in place (or by systemd's own Restart=) gets a new
//! cgroup at the same path at once, and reading that one would take the old cgroup's removal
//! notification for an OOM notification. Through the old directory's descriptor the read fails
//! once that cgroup is removed, whatever exists at its path since.
//!
//! Limit: an OOM in an ancestor with its own memory limit (a limited `strata.slice`) notifies
//! every unit below it; a unit notified that way and later SIGKILLed for another reason is
//! reported as OOM-killed. Strata sets no limit on its slice.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Why a watch could not be armed.
#[derive(Debug, thiserror::Error)]
pub enum OomWatchError {
    #[error("cannot create an eventfd for the OOM watch of {unit}: {source}")]
    EventFd { unit: String, source: io::Error },
    #[error("cannot open {path} for the OOM watch of {unit}: {source}")]
    Open {
        unit: String,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot register the OOM watch of {unit} in {path}: {source}")]
    Register {
        unit: String,
        path: PathBuf,
        source: io::Error,
    },
}

struct WatchState {
    efd: Arc<AsyncFd<File>>,
    /// The memory cgroup directory of the watched run (this instance, not its path).
    memcg: OwnedFd,
    /// Its path, for messages.
    oom_control: PathBuf,
    notifications: u64,
    confirmed: bool,
}

impl WatchState {
    /// Takes in pending notifications and re-evaluates; returns whether an OOM kill of this
    /// cgroup's processes is established.
    fn step(&mut self) -> bool {
        let before = self.notifications;
        let mut buf = [0u8; 8];
        loop {
            match self.efd.get_ref().read(&mut buf) {
                Ok(8) => self.notifications += u64::from_ne_bytes(buf),
                // An eventfd read is always 8 bytes; anything else means nothing more to take.
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if self.confirmed {
            return true;
        }
        // The counter is read after the eventfd: a removal notification always comes after the
        // directory is gone, so one taken in while the directory still exists is an OOM
        // notification (sent just before the victim is killed and counted).
        match read_oom_kill_at(&self.memcg) {
            Some(kills) => self.confirmed = kills > 0 || self.notifications > before,
            // The cgroup is gone: its removal accounts for one notification, any other was an
            // OOM notification.
            None => self.confirmed = self.notifications >= 2,
        }
        self.confirmed
    }
}

/// The `oom_kill` counter in `memory.oom_control` of the v1 memory cgroup directory `memcg`;
/// `None` when it cannot be read (that cgroup is gone).
pub fn read_oom_kill_at(memcg: &OwnedFd) -> Option<u64> {
    let fd = rustix::fs::openat(
        memcg,
        "memory.oom_control",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let mut text = String::new();
    File::from(fd).read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// An armed watch; dropping it stops watching.
#[derive(Debug)]
pub struct OomWatch {
    shared: Arc<Mutex<WatchState>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for WatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchState")
            .field("oom_control", &self.oom_control)
            .field("notifications", &self.notifications)
            .field("confirmed", &self.confirmed)
            .finish()
    }
}

impl OomWatch {
    /// Arms a watch on the v1 memory cgroup directory `memcg` of `unit`. When an OOM kill is
    /// established later, `unit` is sent on `confirmed`. Must run inside a tokio runtime.
    pub fn arm(
        unit: &str,
        memcg: &Path,
        confirmed: mpsc::UnboundedSender<String>,
    ) -> Result<Self, OomWatchError> {
        let oom_control = memcg.join("memory.oom_control");
        let event_control = memcg.join("cgroup.event_control");
        let dir = rustix::fs::open(
            memcg,
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| OomWatchError::Open {
            unit: unit.to_owned(),
            path: memcg.to_owned(),
            source: e.into(),
        })?;
        // SAFETY: eventfd has no memory-safety preconditions; a non-negative return is a new
        // file descriptor that nothing else owns.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(OomWatchError::EventFd {
                unit: unit.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` was just returned by eventfd and is owned by nobody else.
        let efd = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        // Both files through the directory fd: a cgroup re-created at the same path between
        // these opens cannot mix the old cgroup's directory with the new one's files.
        let open_at = |name: &str, flags: rustix::fs::OFlags| {
            rustix::fs::openat(
                &dir,
                name,
                flags | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map(File::from)
            .map_err(io::Error::from)
        };
        let control =
            open_at("memory.oom_control", rustix::fs::OFlags::RDONLY).map_err(|source| {
                OomWatchError::Open {
                    unit: unit.to_owned(),
                    path: oom_control.clone(),
                    source,
                }
            })?;
        let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
        open_at("cgroup.event_control", rustix::fs::OFlags::WRONLY)
            .and_then(|mut f| f.write_all(line.as_bytes()))
            .map_err(|source| OomWatchError::Register {
                unit: unit.to_owned(),
                path: event_control.clone(),
                source,
            })?;
        // The kernel holds its own references now; our copy of the control file can go.
        drop(control);
        // SAFETY: `efd` owns a valid eventfd that is neither replaced nor closed while the
        // AsyncFd owns it.
        let efd = unsafe { AsyncFd::register(efd) };
        let efd = Arc::new(efd.map_err(|source| OomWatchError::EventFd {
            unit: unit.to_owned(),
            source: source.into(),
        })?);
        let shared = Arc::new(Mutex::new(WatchState {
            efd: Arc::clone(&efd),
            memcg: dir,
            oom_control,
            notifications: 0,
            confirmed: false,
        }));
        // An OOM before the watch was armed still shows in the counter.
        let already = lock(&shared).step();
        let task_shared = Arc::clone(&shared);
        let unit_name = unit.to_owned();
        let task = tokio::spawn(async move {
            if already {
                let _ = confirmed.send(unit_name);
                return;
            }
            loop {
                let Ok(mut guard) = efd.readable().await else {
                    return;
                };
                guard.clear_ready();
                if lock(&task_shared).step() {
                    // The receiver is gone only when the event stream stopped.
                    let _ = confirmed.send(unit_name);
                    return;
                }
            }
        });
        Ok(Self { shared, task })
    }

    /// Re-evaluates now (without waiting for the watch task) and tells whether the unit's
    /// processes were OOM-killed.
    pub fn check(&self) -> bool {
        lock(&self.shared).step()
    }
}

impl Drop for OomWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(m: &Mutex<WatchState>) -> std::sync::MutexGuard<'_, WatchState> {
    // The state stays consistent even if a holder panicked: it is counters and a flag.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The memory cgroup directory of a unit on a cgroup v1 memory hierarchy, when there is one.
pub fn v1_memcg_dir(cgroup_root: &Path, control_group: &str) -> Option<PathBuf> {
    if control_group.is_empty() {
        return None;
    }
    let dir = cgroup_root
        .join("memory")
        .join(control_group.trim_start_matches('/'));
    dir.join("memory.oom_control").exists().then_some(dir)
}
