//! Confined path resolution for strata-fs: every open goes through openat2 with
//! RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS from a directory handle, so that no `..`, absolute
//! path, symlink or /proc magic link can leave the token's path prefix or the served roots,
//! whatever the process's working directory.
//!
//! The open itself is cap-primitives' `open`: openat2 with exactly those flags, and, where
//! openat2 is refused, the same confinement done one component at a time with O_PATH|O_NOFOLLOW
//! opens and readlinkat. The fallback matters under systemd: DynamicUser= forces
//! RestrictSUIDSGID=, whose seccomp filter answers every openat2 with ENOSYS (it cannot inspect
//! the mode inside `struct open_how`), so every strata-fs unit takes that path.
//!
//! A token's prefix is opened once (O_PATH, itself resolved beneath the root that contains
//! it) and cached; a path of a token without a prefix, or under a prefix that contains a
//! root, is resolved beneath that root.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use cap_primitives::fs::{FollowSymlinks, OpenOptions, OpenOptionsExt};
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use strata_core::authorize::ScopedPath;
use strata_core::capability::{check_absolute_path, path_is_beneath};
use strata_core::protocol::RpcError;

/// Most cached prefix handles; the cache starts over when full.
const MAX_CACHED_PREFIXES: usize = 4096;

/// Why the served roots cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    /// A root is not a normalized absolute path.
    #[error("root `{root}` is not a normalized absolute path: {reason}")]
    Invalid {
        /// The root.
        root: String,
        /// Why.
        reason: String,
    },
}

/// One served root, opened lazily (a root missing at start may appear later).
#[derive(Debug)]
struct Root {
    path: String,
    fd: Mutex<Option<Arc<File>>>,
}

/// The roots strata-fs serves and the directory handles of the prefixes in use.
#[derive(Debug)]
pub struct Resolver {
    roots: Vec<Root>,
    prefixes: Mutex<HashMap<String, Arc<File>>>,
}

/// What to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenKind {
    /// A regular file for reading (non-blocking, so a FIFO cannot hang the open).
    File,
    /// A directory for listing.
    Directory,
    /// Anything, without opening its content (stat).
    Path,
}

impl OpenKind {
    /// Flags beyond O_RDONLY|O_CLOEXEC.
    fn flags(self) -> OFlags {
        match self {
            OpenKind::File => OFlags::NONBLOCK | OFlags::NOCTTY,
            OpenKind::Directory => OFlags::DIRECTORY,
            OpenKind::Path => OFlags::PATH,
        }
    }
}

/// Opens `relative` confined beneath `dir` (see the module comment).
/// `flags` are added to O_RDONLY|O_CLOEXEC.
fn open_beneath(dir: &File, relative: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    let rel = Path::new(if relative.is_empty() { "." } else { relative });
    let opened = if flags.contains(OFlags::DIRECTORY) {
        // A directory goes through `open_dir` (an O_PATH handle), not O_DIRECTORY in
        // custom_flags: only then does the fallback know that a directory is required, which
        // it needs to recognise a final symlink (O_NOFOLLOW|O_DIRECTORY on a symlink fails
        // with ENOTDIR, not ELOOP) and follow it. Found by fuzz/fuzz_targets/fs_path.rs.
        cap_primitives::fs::open_dir(dir, rel).and_then(|d| {
            if flags.contains(OFlags::PATH) {
                return Ok(OwnedFd::from(d));
            }
            // Readable for listing: "." of the handle, which cannot leave it.
            rustix::fs::openat(
                &d,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | flags,
                Mode::empty(),
            )
            .map_err(std::io::Error::from)
        })
    } else {
        let mut options = OpenOptions::new();
        options.read(true);
        // Symlinks are followed, but only while they stay beneath `dir`.
        options._cap_fs_ext_follow(FollowSymlinks::Yes);
        options.custom_flags(flags.bits() as i32);
        cap_primitives::fs::open(dir, rel, &options).map(OwnedFd::from)
    };
    opened.map_err(|e| match e.raw_os_error() {
        Some(raw) => Errno::from_raw_os_error(raw),
        // cap-primitives reports an escape (openat2's EXDEV, or the fallback's `..` above
        // the start, absolute path or symlink pointing out) without an errno.
        None => Errno::XDEV,
    })
}

/// The error answered for an errno of a confined open of `shown` (the path as requested).
pub fn open_error(e: Errno, shown: &str, base: &str) -> RpcError {
    let err = match e {
        Errno::NOENT => RpcError::not_found(format!("no such file or directory: `{shown}`")),
        Errno::NOTDIR => RpcError::not_found(format!(
            "`{shown}` does not exist: one of its components is not a directory"
        )),
        Errno::XDEV => RpcError::permission_denied(format!(
            "`{shown}` resolves outside `{base}` (through `..`, an absolute path or a symlink pointing out): refused"
        )),
        Errno::LOOP => RpcError::permission_denied(format!(
            "`{shown}` goes through a /proc magic link or too many symlinks: refused"
        )),
        Errno::ACCESS | Errno::PERM => {
            RpcError::permission_denied(format!("the system denies strata-fs access to `{shown}`"))
        }
        Errno::NAMETOOLONG => {
            RpcError::invalid_argument(format!("`{shown}` has a component that is too long"))
        }
        Errno::AGAIN | Errno::INTR => RpcError::unavailable(format!(
            "resolving `{shown}` kept racing with concurrent renames; retry"
        )),
        Errno::MFILE | Errno::NFILE | Errno::NOMEM => {
            RpcError::resource_exhausted(format!("strata-fs cannot open `{shown}`: {e}"))
        }
        other => RpcError::internal(format!("opening `{shown}` failed: {other}")),
    };
    err.with_detail("path", shown)
        .with_detail("errno", e.raw_os_error())
}

impl Resolver {
    /// Validates the roots; they are opened on first use.
    pub fn new(roots: &[String]) -> Result<Self, RootError> {
        let mut out = Vec::with_capacity(roots.len());
        for r in roots {
            check_absolute_path(r).map_err(|e| RootError::Invalid {
                root: r.clone(),
                reason: e.to_string(),
            })?;
            out.push(Root {
                path: r.clone(),
                fd: Mutex::new(None),
            });
        }
        Ok(Self {
            roots: out,
            prefixes: Mutex::new(HashMap::new()),
        })
    }

    /// The served roots.
    pub fn roots(&self) -> Vec<&str> {
        self.roots.iter().map(|r| r.path.as_str()).collect()
    }

    fn roots_text(&self) -> String {
        if self.roots.is_empty() {
            "none configured".to_owned()
        } else {
            self.roots().join(", ")
        }
    }

    /// The innermost root containing `path`.
    fn root_of(&self, path: &str) -> Option<&Root> {
        self.roots
            .iter()
            .filter(|r| path_is_beneath(path, &r.path))
            .max_by_key(|r| r.path.len())
    }

    fn root_fd(&self, root: &Root) -> Result<Arc<File>, RpcError> {
        let mut slot = root.fd.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fd) = slot.as_ref() {
            return Ok(Arc::clone(fd));
        }
        let fd = rustix::fs::open(
            root.path.as_str(),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| {
            RpcError::unavailable(format!("served root `{}` cannot be opened: {e}", root.path))
                .with_detail("root", root.path.as_str())
        })?;
        let fd = Arc::new(File::from(fd));
        *slot = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// The directory handle of a token's prefix, opened once beneath its root.
    fn prefix_fd(&self, prefix: &str, root: &Root) -> Result<Arc<File>, RpcError> {
        if let Some(fd) = self
            .prefixes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(prefix)
        {
            return Ok(Arc::clone(fd));
        }
        let root_fd = self.root_fd(root)?;
        let rel = relative_to(prefix, &root.path);
        let fd = open_beneath(&root_fd, rel, OFlags::PATH | OFlags::DIRECTORY).map_err(|e| {
            let mut err = open_error(e, prefix, &root.path);
            err.message = format!("the token's path_prefix: {}", err.message);
            err
        })?;
        let fd = Arc::new(File::from(fd));
        let mut cache = self.prefixes.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= MAX_CACHED_PREFIXES {
            cache.clear();
        }
        cache.insert(prefix.to_owned(), Arc::clone(&fd));
        Ok(fd)
    }

    /// Opens `path` (as authorized: base = the token's prefix or `/`) confined beneath the
    /// prefix and the served roots. `shown` is the path as the client gave it.
    pub fn open(
        &self,
        path: &ScopedPath,
        shown: &str,
        kind: OpenKind,
    ) -> Result<OwnedFd, RpcError> {
        let (dir, rel, base) = if let Some(root) = self.root_of(&path.base) {
            // The prefix lies within a root: resolve beneath the prefix itself.
            let fd = if path.base == root.path {
                self.root_fd(root)?
            } else {
                self.prefix_fd(&path.base, root)?
            };
            (fd, path.relative.clone(), path.base.clone())
        } else {
            // The prefix (or `/` for a token without one) contains roots: the path must lie
            // in one of them, and is resolved beneath it.
            let absolute = path.absolute();
            let Some(root) = self.root_of(&absolute) else {
                return Err(RpcError::permission_denied(format!(
                    "`{shown}` is outside the roots served by strata-fs ({})",
                    self.roots_text()
                ))
                .with_detail("path", shown)
                .with_detail("roots", self.roots()));
            };
            let fd = self.root_fd(root)?;
            (
                fd,
                relative_to(&absolute, &root.path).to_owned(),
                root.path.clone(),
            )
        };
        open_beneath(&dir, &rel, kind.flags()).map_err(|e| open_error(e, shown, &base))
    }
}

/// `path` below `base` (`path` is beneath `base`), without a leading slash.
fn relative_to<'a>(path: &'a str, base: &str) -> &'a str {
    if base == "/" {
        path.trim_start_matches('/')
    } else {
        path.get(base.len()..)
            .unwrap_or_default()
            .trim_start_matches('/')
    }
}

/// Test devices shared by this crate's tests and the fuzz targets; not part of the service.
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing {
    use std::os::fd::AsRawFd;

    /// Installs, on the calling thread only (PR_SET_SECCOMP, no TSYNC), a seccomp filter that
    /// answers openat2 with EPERM and allows everything else, so that cap-primitives takes its
    /// component-by-component fallback there, as under systemd's RestrictSUIDSGID= (EPERM,
    /// not ENOSYS: cap-primitives remembers ENOSYS process-wide, which would switch the other
    /// threads to the fallback too). A test device, not a barrier: no arch check.
    pub fn refuse_openat2_on_this_thread() -> std::io::Result<()> {
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let mut filter = [
            // seccomp_data.nr is at offset 0
            stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, 0),
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: libc::SYS_openat2 as u32,
            },
            stmt(
                libc::BPF_RET | libc::BPF_K,
                libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
            ),
            stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW),
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: plain prctl calls on this thread; `prog` points to `filter`, both alive for
        // the calls.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    /// The path the kernel shows for an open descriptor (`/proc/self/fd/N`).
    pub fn fd_path(fd: &impl AsRawFd) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .expect("readlink /proc/self/fd")
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::fd_path;
    use super::*;

    #[test]
    fn relative_paths_below_a_base() {
        assert_eq!(relative_to("/srv/www/a/b", "/srv/www"), "a/b");
        assert_eq!(relative_to("/srv/www", "/srv/www"), "");
        assert_eq!(relative_to("/a", "/"), "a");
        assert_eq!(relative_to("/", "/"), "");
    }

    #[test]
    fn roots_must_be_normalized_absolute_paths() {
        assert!(Resolver::new(&["/srv/www".into(), "/tmp".into()]).is_ok());
        for bad in ["srv", "/srv/", "/srv/../etc", ""] {
            assert!(Resolver::new(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_innermost_root_wins() {
        let r = Resolver::new(&["/srv".into(), "/srv/www".into()]).expect("valid");
        assert_eq!(
            r.root_of("/srv/www/x").map(|r| r.path.as_str()),
            Some("/srv/www")
        );
        assert_eq!(
            r.root_of("/srv/other").map(|r| r.path.as_str()),
            Some("/srv")
        );
        assert!(r.root_of("/srvx").is_none());
    }

    /// A tree with a symlink to a directory inside the root, one to a file outside it, and
    /// the root's canonical path.
    fn symlink_tree(name: &str) -> (std::path::PathBuf, String) {
        use std::os::unix::fs::symlink;
        let base =
            std::env::temp_dir().join(format!("strata-resolve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("root");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir root/sub");
        std::fs::create_dir_all(base.join("outside")).expect("mkdir outside");
        std::fs::write(root.join("sub/b.txt"), b"b").expect("write b.txt");
        std::fs::write(base.join("outside/secret"), b"s").expect("write secret");
        symlink("sub", root.join("subdir")).expect("symlink subdir");
        symlink(base.join("outside/secret"), root.join("abs")).expect("symlink abs");
        let root = root
            .canonicalize()
            .expect("canonical root")
            .to_string_lossy()
            .into_owned();
        (base, root)
    }

    /// Runs `f` on a thread whose own seccomp filter answers openat2 with EPERM, so that
    /// cap-primitives takes its component-by-component fallback there, as under systemd's
    /// RestrictSUIDSGID= (EPERM rather than ENOSYS: cap-primitives remembers ENOSYS for the
    /// whole process, which would switch the other tests to the fallback too).
    fn on_fallback_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    super::testing::refuse_openat2_on_this_thread().expect("seccomp filter");
                    // The filter works: openat2 itself is refused on this thread.
                    let direct = rustix::fs::openat2(
                        rustix::fs::CWD,
                        ".",
                        OFlags::PATH | OFlags::CLOEXEC,
                        Mode::empty(),
                        rustix::fs::ResolveFlags::BENEATH,
                    );
                    assert_eq!(direct.err(), Some(Errno::PERM));
                    f()
                })
                .join()
                .expect("the fallback thread panicked")
        })
    }

    /// What the resolver does with symlinks at the end of a path, identical through openat2
    /// and the fallback: a directory symlink inside opens (listable, or as a token's prefix),
    /// a symlink out is refused as an escape whatever the kind asked for.
    fn final_symlinks(root: &str) -> Vec<String> {
        let r = Resolver::new(&[root.to_owned()]).expect("valid root");
        let at = |base: &str, rel: &str| ScopedPath {
            base: base.to_owned(),
            relative: rel.to_owned(),
        };
        let mut seen = Vec::new();
        // regression (fuzz, fs_path): the fallback answered NOT_FOUND ("one of its components
        // is not a directory") for a directory reached through a final symlink
        let dir = r
            .open(&at(root, "subdir"), "subdir", OpenKind::Directory)
            .expect("a symlink to a directory inside the root opens as a directory");
        seen.push(fd_path(&dir));
        let fl = rustix::fs::fcntl_getfl(&dir).expect("F_GETFL");
        assert!(!fl.contains(OFlags::PATH), "not listable: {fl:?}");
        assert!(rustix::fs::Dir::read_from(&dir).is_ok(), "not listable");
        let stat = r
            .open(&at(root, "subdir"), "subdir", OpenKind::Path)
            .expect("stat through a symlink to a directory");
        seen.push(fd_path(&stat));
        // a token's prefix that is a symlink to a directory inside the root
        let prefix = format!("{root}/subdir");
        let file = r
            .open(&at(&prefix, "b.txt"), "b.txt", OpenKind::File)
            .expect("a file beneath a prefix that is a symlink");
        seen.push(fd_path(&file));
        // regression (fuzz, fs_path): as a directory, the fallback said NOT_FOUND where
        // openat2 says the symlink points out
        for kind in [OpenKind::Directory, OpenKind::File, OpenKind::Path] {
            let err = r
                .open(&at(root, "abs"), "abs", kind)
                .expect_err("a symlink to a file outside the root");
            assert_eq!(
                err.code,
                strata_core::protocol::Code::PermissionDenied,
                "{kind:?}: {err}"
            );
            assert_eq!(
                err.details.get("errno"),
                Some(&serde_json::json!(Errno::XDEV.raw_os_error())),
                "{kind:?}: {err}"
            );
        }
        seen
    }

    #[test]
    fn final_symlinks_resolve_alike_through_openat2_and_the_fallback() {
        let (base, root) = symlink_tree("final-symlinks");
        let expected = vec![
            format!("{root}/sub"),
            format!("{root}/sub"),
            format!("{root}/sub/b.txt"),
        ];
        // positive control: openat2, on this thread
        assert_eq!(final_symlinks(&root), expected, "openat2");
        assert_eq!(
            on_fallback_thread(|| final_symlinks(&root)),
            expected,
            "fallback"
        );
        let _ = std::fs::remove_dir_all(base);
    }
}
