//! Fuzzes strata-fs path resolution, both halves:
//!
//! 1. `authorize::scope_path` (pure): an accepted path is split into the token's base and a
//!    relative part with no empty, `.` or `..` component, and lies beneath the base; any `..`
//!    component is refused.
//! 2. `fs::resolve::Resolver::open` (openat2, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) on a
//!    real directory tree full of traps (symlinks out by `..`, to absolute paths, to
//!    /proc/self/root, up, in a loop): whatever the path, a descriptor it returns names a file
//!    inside the served root, and inside the token's prefix when there is one.
//!
//! Input: byte 0 picks the prefix and the open kind, the rest is the path. A path starting
//! with `@` has it replaced by the served root's absolute path, so that absolute paths inside
//! the root are reachable.
#![no_main]

use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use strata_core::authorize::scope_path;
use strata_core::capability::path_is_beneath;
use strata_services::fs::resolve::{OpenKind, Resolver};

struct Tree {
    /// The served root, canonical (no symlink in it).
    root: String,
    resolver: Resolver,
}

/// Builds the trap tree once per process in a fresh directory under $TMPDIR.
fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("strata-fuzz-fs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let must = |r: std::io::Result<()>, what: &str| {
            if let Err(e) = r {
                panic!("cannot build the fuzz tree ({what}): {e}");
            }
        };
        let root = base.join("root");
        let p = |rel: &str| -> PathBuf { root.join(rel) };
        must(std::fs::create_dir_all(base.join("outside")), "outside");
        must(std::fs::create_dir_all(p("sub/deeper")), "root/sub/deeper");
        must(
            std::fs::write(base.join("outside/secret"), b"secret"),
            "secret",
        );
        must(std::fs::write(p("a.txt"), b"a"), "a.txt");
        must(std::fs::write(p("sub/b.txt"), b"b"), "b.txt");
        must(std::fs::write(p("sub/deeper/c.txt"), b"c"), "c.txt");
        let secret = base.join("outside/secret");
        for (link, target) in [
            ("out", Path::new("../outside/secret")),
            ("outdir", Path::new("../outside")),
            ("abs", secret.as_path()),
            ("etc", Path::new("/etc")),
            ("proc", Path::new("/proc/self/root")),
            ("fdlink", Path::new("/proc/self/fd/0")),
            ("up", Path::new("..")),
            ("here", Path::new(".")),
            ("loop", Path::new("loop")),
            ("in", Path::new("sub/b.txt")),
            ("sub/back", Path::new("../a.txt")),
            ("sub/up2", Path::new("../..")),
            ("sub/deeper/rootabs", Path::new("/")),
        ] {
            must(symlink(target, p(link)), link);
        }
        let root = match root.canonicalize() {
            Ok(r) => r.to_string_lossy().into_owned(),
            Err(e) => panic!("cannot canonicalize the fuzz root: {e}"),
        };
        let resolver = match Resolver::new(std::slice::from_ref(&root)) {
            Ok(r) => r,
            Err(e) => panic!("the fuzz root is refused: {e}"),
        };
        Tree { root, resolver }
    })
}

/// The path the kernel gives for an open descriptor.
fn fd_path(fd: &impl AsRawFd) -> String {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match std::fs::read_link(&link) {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(e) => panic!("readlink {link}: {e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let t = tree();
    let sub = format!("{}/sub", t.root);
    let prefix: Option<&str> = match selector % 4 {
        0 => None,
        1 => Some("/"),
        2 => Some(t.root.as_str()),
        _ => Some(sub.as_str()),
    };
    let kind = match (selector / 4) % 3 {
        0 => OpenKind::File,
        1 => OpenKind::Directory,
        _ => OpenKind::Path,
    };
    let path = match raw.strip_prefix('@') {
        Some(tail) => format!("{}{tail}", t.root),
        None => raw.to_owned(),
    };

    // 1. The pure half.
    let scoped = match scope_path(&path, prefix) {
        Ok(s) => s,
        Err((_, message)) => {
            assert!(!message.is_empty());
            return;
        }
    };
    assert!(
        !path.split('/').any(|c| c == ".."),
        "a path with `..` was accepted: {path:?}"
    );
    assert_eq!(scoped.base, prefix.unwrap_or("/"));
    assert!(!scoped.relative.starts_with('/'), "{scoped:?}");
    if !scoped.relative.is_empty() {
        assert!(
            scoped
                .relative
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."),
            "relative part not normalized: {scoped:?}"
        );
    }
    let absolute = scoped.absolute();
    assert!(
        path_is_beneath(&absolute, &scoped.base),
        "{absolute} not beneath {}",
        scoped.base
    );

    // 2. The real resolution: whatever opens must be inside the root and the prefix.
    if let Ok(fd) = t.resolver.open(&scoped, &path, kind) {
        let opened = fd_path(&fd);
        assert!(
            path_is_beneath(&opened, &t.root),
            "{path:?} (prefix {prefix:?}) opened {opened}, outside the root {}",
            t.root
        );
        if let Some(p) = prefix {
            assert!(
                path_is_beneath(&opened, p),
                "{path:?} opened {opened}, outside the prefix {p}"
            );
        }
    }
});
