//! The instance's own cgroup subtree (`/strata-ns-<token>` in every hierarchy): finding it from
//! the host and removing it, depth-first, once the namespace is gone. Nothing else is touched.

use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::BootError;

/// Name of an instance's subtree directory in each cgroup hierarchy.
pub(crate) fn subtree_name(token: &str) -> String {
    format!("strata-ns-{token}")
}

/// Host paths of the instance's cgroup subtrees that currently exist (one per hierarchy the
/// init script moved itself into; v1 cpuset has none).
pub fn cgroup_subtrees(token: &str) -> Result<Vec<PathBuf>, BootError> {
    let mountinfo = Path::new("/proc/self/mountinfo");
    let raw = std::fs::read(mountinfo).map_err(|source| BootError::HostIo {
        what: "reading mount table",
        path: mountinfo.to_path_buf(),
        source,
    })?;
    // Lossy is fine: cgroup mount points are ASCII, other lines are skipped anyway.
    let text = String::from_utf8_lossy(&raw);
    let name = subtree_name(token);
    let mut found: Vec<PathBuf> = Vec::new();
    for mount_point in cgroup_mount_points(&text) {
        let dir = mount_point.join(&name);
        if dir.is_dir() && !found.contains(&dir) {
            found.push(dir);
        }
    }
    Ok(found)
}

/// Mount points of cgroup v1 and v2 hierarchies in a /proc/*/mountinfo text.
fn cgroup_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // Fields: id parent dev root mountpoint options [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        if fstype != "cgroup" && fstype != "cgroup2" {
            continue;
        }
        if let Some(mount_point) = left.split(' ').nth(4) {
            out.push(unescape_mountinfo(mount_point));
        }
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let value = bytes[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            // Three octal digits can exceed a byte (\777): keep such text as it is.
            if let Ok(v) = u8::try_from(value) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// Remove the instance's subtree in every hierarchy. Call only after the namespace's PID 1 has
/// exited: cgroups still holding tasks cannot be removed. Dying tasks may keep a cgroup busy
/// for a moment, so EBUSY is retried until `timeout`.
pub(crate) fn remove_subtrees(token: &str, timeout: Duration) -> Result<(), BootError> {
    let deadline = Instant::now() + timeout;
    let mut first_error = None;
    for dir in cgroup_subtrees(token)? {
        if let Err(e) = remove_tree_retrying(&dir, deadline)
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn remove_tree_retrying(dir: &Path, deadline: Instant) -> Result<(), BootError> {
    loop {
        match remove_tree(dir) {
            Ok(()) => return Ok(()),
            Err((path, source)) => {
                if source.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                return Err(BootError::CgroupCleanup { path, source });
            }
        }
    }
}

/// rmdir depth-first; a cgroup directory only ever contains control files (not removable,
/// removed with it) and child cgroup directories.
fn remove_tree(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err((dir.to_path_buf(), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| (dir.to_path_buf(), e))?;
        let file_type = entry.file_type().map_err(|e| (entry.path(), e))?;
        if file_type.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err((dir.to_path_buf(), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup_mounts_only() {
        let text = "30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    31 30 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    32 30 0:28 / /sys/fs/cgroup/cpu rw shared:9 - cgroup cgroup rw,cpu\n\
                    40 30 0:29 / /mnt/with\\040space rw - cgroup cgroup rw,pids\n";
        assert_eq!(
            cgroup_mount_points(text),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/mnt/with space"),
            ]
        );
    }

    #[test]
    fn unescape_keeps_plain_backslashes() {
        assert_eq!(unescape_mountinfo("a\\040b"), PathBuf::from("a b"));
        assert_eq!(unescape_mountinfo("a\\x"), PathBuf::from("a\\x"));
        assert_eq!(unescape_mountinfo("end\\"), PathBuf::from("end\\"));
    }

    #[test]
    fn subtree_name_is_prefixed() {
        assert_eq!(subtree_name("ab"), "strata-ns-ab");
    }
}
