//! Identity of a namespace: its random token (written by the init script into the private
//! /run), checks that a host PID is a namespace this harness started, and waiting for a PID
//! to exit through a pidfd (which can never point at a recycled PID).

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::process::{Pid, PidfdFlags};

use crate::BootError;

/// Where the init script writes the token, inside the namespace.
pub(crate) const INSTANCE_FILE: &str = "/run/strata-test/instance";

/// Where the init script writes the owner record, inside the namespace.
pub(crate) const OWNER_FILE: &str = "/run/strata-test/owner";

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat): with the
/// PID it identifies one process for the machine's uptime.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parentheses: count from the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

fn own_pid_namespace() -> Option<String> {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// "pid starttime pidns" of the calling process, recorded in every instance it boots.
pub(crate) fn owner_record() -> Result<String, BootError> {
    let pid = std::process::id();
    let missing = |what: &'static str, path: &str| BootError::HostIo {
        what,
        path: PathBuf::from(path),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    };
    let start =
        start_time(pid).ok_or_else(|| missing("reading own start time", "/proc/self/stat"))?;
    let ns = own_pid_namespace()
        .ok_or_else(|| missing("reading own pid namespace", "/proc/self/ns/pid"))?;
    Ok(format!("{pid} {start} {ns}"))
}

/// An orphan: a namespace of ours whose owner (same PID namespace as us) has exited, so that
/// nobody will ever shut it down. Instances owned from another PID namespace, or without an
/// owner record, are never considered orphans.
fn owner_is_gone(pid: u32) -> bool {
    let path = root_of(pid).join(OWNER_FILE.trim_start_matches('/'));
    let Ok(record) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut fields = record.split_whitespace();
    let (Some(owner), Some(start), Some(ns)) = (
        fields.next().and_then(|f| f.parse::<u32>().ok()),
        fields.next().and_then(|f| f.parse::<u64>().ok()),
        fields.next(),
    ) else {
        return false;
    };
    if own_pid_namespace().as_deref() != Some(ns) {
        return false;
    }
    start_time(owner) != Some(start)
}

/// Host PIDs of namespaces started by this harness whose owner process has exited.
pub(crate) fn orphaned_instances() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| read_token(pid).is_ok() && owner_is_gone(pid))
        .collect()
}

/// A fresh random instance token: 32 lower-case hex digits.
pub(crate) fn new_token() -> Result<String, BootError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| BootError::HostIo {
            what: "reading random bytes",
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub(crate) fn is_token(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The namespace's root as seen from the host.
pub(crate) fn root_of(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/root"))
}

/// The token a namespace carries, if `pid` is the PID 1 of a namespace this harness started.
pub(crate) fn read_token(pid: u32) -> Result<String, String> {
    if !is_namespace_init(pid)? {
        return Err("it is not the PID 1 of its own PID namespace".to_string());
    }
    let path = root_of(pid).join(INSTANCE_FILE.trim_start_matches('/'));
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("no instance token at {}: {e}", path.display()))?;
    let token = text.trim();
    if !is_token(token) {
        return Err(format!("malformed instance token in {}", path.display()));
    }
    Ok(token.to_string())
}

/// True when `pid` is PID 1 of a PID namespace below ours (last NSpid field is 1).
pub(crate) fn is_namespace_init(pid: u32) -> Result<bool, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let nspid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .ok_or_else(|| format!("no NSpid line in {path}"))?;
    let fields: Vec<&str> = nspid.split_whitespace().collect();
    Ok(fields.len() >= 2 && fields.last() == Some(&"1"))
}

/// A pidfd for `pid`.
pub(crate) fn open_pidfd(pid: u32) -> Result<OwnedFd, String> {
    let raw = i32::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
    let pid_t = Pid::from_raw(raw).ok_or_else(|| format!("pid {pid} is not a valid pid"))?;
    rustix::process::pidfd_open(pid_t, PidfdFlags::empty())
        .map_err(|e| format!("pidfd_open({pid}) failed: {e}"))
}

/// Wait until the process behind `pidfd` has exited, at most `timeout`. True if it exited.
pub(crate) fn wait_pidfd(pidfd: &OwnedFd, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame, for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if n == 0 && left.is_zero() {
            return false;
        }
        if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // poll on a pidfd cannot fail otherwise; fall back to sleeping out the time.
            std::thread::sleep(left.min(Duration::from_millis(50)));
            if Instant::now() >= deadline {
                return false;
            }
        }
    }
}

/// Verify that `pid` is a namespace of ours and return its token and a pidfd pinning it.
pub(crate) fn claim(pid: u32) -> Result<(String, OwnedFd), BootError> {
    let not_ours = |reason: String| BootError::NotOurInstance { pid, reason };
    // Open the pidfd first and read the token afterwards: if the PID were recycled in
    // between, the new process would not carry a token, so the pidfd is the verified one.
    let pidfd = open_pidfd(pid).map_err(not_ours)?;
    let token = read_token(pid).map_err(not_ours)?;
    Ok((token, pidfd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_hex() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert!(is_token(&a), "{a}");
        assert_ne!(a, b);
        assert!(!is_token("ABCDEF0123456789abcdef0123456789"));
        assert!(!is_token("abc"));
    }

    #[test]
    fn owner_record_names_this_process() {
        let record = owner_record().expect("owner record");
        let fields: Vec<&str> = record.split(' ').collect();
        assert_eq!(fields.len(), 3, "{record}");
        assert_eq!(fields[0], std::process::id().to_string());
        assert_eq!(
            fields[1].parse::<u64>().ok(),
            start_time(std::process::id())
        );
        assert!(fields[2].starts_with("pid:["), "{record}");
        // PID 1 of the machine is not an instance, so it is never an orphan.
        assert!(!owner_is_gone(1));
    }

    #[test]
    fn our_own_pid_is_not_a_namespace() {
        let err = read_token(std::process::id()).expect_err("test process is no namespace");
        assert!(err.contains("not the PID 1"), "{err}");
    }
}
