//! Paths inside the namespace: which binds and writes are allowed (never a mount point or a
//! file created on the host), and writing files through `/proc/<pid>/root` without following
//! symlinks out of the namespace.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::BootError;

/// Directories the init script replaces with private tmpfs: anything below them lives only in
/// the namespace.
pub(crate) const PRIVATE_ROOTS: &[&str] = &["/run", "/tmp", "/var/tmp", "/var/lib/strata-test"];

/// Where `write_file` may write.
pub(crate) const WRITABLE_ROOTS: &[&str] = &["/run", "/var/lib/strata-test"];

/// The components of an absolute path made only of normal names (`.` and `//` are normalised
/// away by `Path::components`; `..` is refused).
fn normal_components(path: &Path) -> Result<Vec<&OsStr>, String> {
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err("path must be absolute".to_string());
    }
    let mut names = Vec::new();
    for component in components {
        match component {
            Component::Normal(name) => names.push(name),
            _ => return Err("path must not contain `..`".to_string()),
        }
    }
    Ok(names)
}

fn strictly_under(path: &Path, roots: &[&str]) -> bool {
    roots
        .iter()
        .any(|root| path.starts_with(root) && path != Path::new(root))
}

/// Check a `bind_ro` request; returns the canonical host path.
pub(crate) fn check_bind(host: &Path, inside: &Path) -> Result<PathBuf, BootError> {
    let bad = |reason: String| BootError::BadBind {
        host: host.to_path_buf(),
        inside: inside.to_path_buf(),
        reason,
    };
    let canonical = host
        .canonicalize()
        .map_err(|e| bad(format!("host path cannot be resolved: {e}")))?;
    if canonical.starts_with("/run") {
        return Err(bad(
            "host path lies under /run, which the namespace replaces before binding".to_string(),
        ));
    }
    let names = normal_components(inside).map_err(|r| bad(format!("inside {r}")))?;
    if names.is_empty() {
        return Err(bad("cannot bind over /".to_string()));
    }
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|special| inside.starts_with(special))
    {
        return Err(bad("inside path is under /dev, /proc or /sys".to_string()));
    }
    if strictly_under(inside, PRIVATE_ROOTS) {
        return Ok(canonical);
    }
    // Outside the private areas the mount point must already exist (in the namespace the
    // host's tree is visible as it is), so that nothing is ever created on the host.
    let existing = std::fs::metadata(inside).map_err(|e| {
        bad(format!(
            "inside path is outside /run, /tmp, /var/tmp and /var/lib/strata-test and does not \
             exist ({e}); the harness never creates mount points on the host"
        ))
    })?;
    if existing.is_dir() != canonical.is_dir() {
        return Err(bad(
            "one of host and inside paths is a directory and the other is not".to_string(),
        ));
    }
    Ok(canonical)
}

/// Check a `write_file` target; returns its components below `/`.
pub(crate) fn check_writable(inside: &Path) -> Result<Vec<&OsStr>, BootError> {
    let bad = |reason: String| BootError::BadInsidePath {
        path: inside.to_path_buf(),
        reason,
    };
    let names = normal_components(inside).map_err(bad)?;
    if !strictly_under(inside, WRITABLE_ROOTS) {
        return Err(bad(
            "only paths under /run and /var/lib/strata-test are private to the namespace \
             (/etc, /tmp of the host etc. are shared or would be visible to the host)"
                .to_string(),
        ));
    }
    Ok(names)
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Write `contents` at `names` (components below `/`) under `root` (the namespace's root as
/// seen from the host). Every component is opened with O_NOFOLLOW: a symlink planted inside the
/// namespace can never redirect the write to a host path. Missing directories are created
/// (0755); the file is written to a temporary name and renamed, so readers never see it half
/// written.
pub(crate) fn write_beneath(
    root: &Path,
    names: &[&OsStr],
    contents: &[u8],
    mode: u32,
) -> Result<(), Errno> {
    let Some((file_name, parents)) = names.split_last() else {
        return Err(Errno::INVAL);
    };
    let mut dir: OwnedFd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for name in parents {
        dir = open_or_create_dir(&dir, name)?;
    }
    let tmp_name = format!(
        ".{}.strata-tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let fd = rustix::fs::openat(
        &dir,
        tmp_name.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    let written = write_all_and_chmod(fd, contents, mode);
    let renamed =
        written.and_then(|()| rustix::fs::renameat(&dir, tmp_name.as_str(), &dir, *file_name));
    if renamed.is_err() {
        // Best effort: the temporary file must not stay behind; the original error is what
        // the caller needs to see.
        let _ = rustix::fs::unlinkat(&dir, tmp_name.as_str(), rustix::fs::AtFlags::empty());
    }
    renamed
}

fn write_all_and_chmod(fd: OwnedFd, contents: &[u8], mode: u32) -> Result<(), Errno> {
    // The umask narrowed the mode given to openat: set it exactly.
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
    let mut file = File::from(fd);
    file.write_all(contents)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    file.sync_all()
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))
}

fn open_or_create_dir(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Err(Errno::NOENT) => match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => rustix::fs::openat(dir, name, flags, Mode::empty()),
            Err(e) => Err(e),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_paths() {
        assert!(check_writable(Path::new("/run/strata/x.toml")).is_ok());
        assert!(check_writable(Path::new("/var/lib/strata-test/a/b")).is_ok());
        for bad in [
            "/etc/strata/x.toml",
            "/tmp/x",
            "/run",
            "run/x",
            "/run/../etc/passwd",
            "/var/lib/strata-testx/y",
        ] {
            assert!(
                matches!(
                    check_writable(Path::new(bad)),
                    Err(BootError::BadInsidePath { .. })
                ),
                "{bad} must be refused"
            );
        }
    }

    #[test]
    fn bind_checks() {
        // Positive control: a host directory into a private area.
        assert_eq!(
            check_bind(Path::new("/usr/bin"), Path::new("/run/x/bin")).ok(),
            Some(PathBuf::from("/usr/bin"))
        );
        // Existing host mount point outside the private areas is fine too.
        assert!(check_bind(Path::new("/usr/bin"), Path::new("/usr/lib")).is_ok());
        for (host, inside) in [
            ("/usr/bin", "/opt/strata-testkit-does-not-exist"),
            ("/usr/bin", "run/x"),
            ("/usr/bin", "/run/../x"),
            ("/usr/bin", "/"),
            ("/usr/bin", "/dev/x"),
            ("/usr/bin", "/etc/hostname"),
            ("/run", "/tmp/x"),
            ("/nonexistent-strata-testkit", "/tmp/x"),
        ] {
            assert!(
                matches!(
                    check_bind(Path::new(host), Path::new(inside)),
                    Err(BootError::BadBind { .. })
                ),
                "{host} -> {inside} must be refused"
            );
        }
    }
}
