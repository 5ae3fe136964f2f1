//! Confined path resolution for strata-fs: every open goes through openat2 with
//! RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS from a directory handle, so that no `..`, absolute
//! path, symlink or /proc magic link can leave the token's path prefix or the served roots,
//! whatever the process's working directory.
//!
//! A token's prefix is opened once (O_PATH, itself resolved beneath the root that contains
//! it) and cached; a path of a token without a prefix, or under a prefix that contains a
//! root, is resolved beneath that root.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use strata_core::authorize::ScopedPath;
use strata_core::capability::{check_absolute_path, path_is_beneath};
use strata_core::protocol::RpcError;

/// Most cached prefix handles; the cache starts over when full.
const MAX_CACHED_PREFIXES: usize = 4096;

/// Retries of openat2 when the kernel answers EAGAIN (a rename raced with RESOLVE_BENEATH).
const EAGAIN_RETRIES: usize = 64;

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
    fd: Mutex<Option<Arc<OwnedFd>>>,
}

/// The roots strata-fs serves and the directory handles of the prefixes in use.
#[derive(Debug)]
pub struct Resolver {
    roots: Vec<Root>,
    prefixes: Mutex<HashMap<String, Arc<OwnedFd>>>,
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
    fn flags(self) -> OFlags {
        match self {
            OpenKind::File => OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::NOCTTY,
            OpenKind::Directory => OFlags::RDONLY | OFlags::CLOEXEC | OFlags::DIRECTORY,
            OpenKind::Path => OFlags::PATH | OFlags::CLOEXEC,
        }
    }
}

fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// openat2 beneath `dir`, retrying EAGAIN.
fn open_beneath(dir: &OwnedFd, relative: &str, flags: OFlags) -> Result<OwnedFd, Errno> {
    let rel = if relative.is_empty() { "." } else { relative };
    let mut last = Errno::AGAIN;
    for _ in 0..EAGAIN_RETRIES {
        match rustix::fs::openat2(dir, rel, flags, Mode::empty(), resolve_flags()) {
            Err(Errno::AGAIN) => last = Errno::AGAIN,
            Err(Errno::INTR) => last = Errno::INTR,
            other => return other,
        }
    }
    Err(last)
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

    fn root_fd(&self, root: &Root) -> Result<Arc<OwnedFd>, RpcError> {
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
        let fd = Arc::new(fd);
        *slot = Some(Arc::clone(&fd));
        Ok(fd)
    }

    /// The directory handle of a token's prefix, opened once beneath its root.
    fn prefix_fd(&self, prefix: &str, root: &Root) -> Result<Arc<OwnedFd>, RpcError> {
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
        let fd = open_beneath(
            &root_fd,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        )
        .map_err(|e| {
            let mut err = open_error(e, prefix, &root.path);
            err.message = format!("the token's path_prefix: {}", err.message);
            err
        })?;
        let fd = Arc::new(fd);
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

#[cfg(test)]
mod tests {
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
}
