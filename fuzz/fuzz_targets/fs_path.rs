//! Fuzzes strata-fs path resolution, both halves:
//!
//! 1. `authorize::scope_path` (pure): an accepted path is split into the token's base and a
//!    relative part with no empty, `.` or `..` component, and lies beneath the base; any `..`
//!    component is refused.
//! 2. `fs::resolve::Resolver::open` (cap-primitives' `open`) on a real directory tree full of
//!    traps (symlinks out by `..`, to absolute paths, to /proc/self/root, up, in a loop, out
//!    and back in, chains, a FIFO), through BOTH of its implementations, for every input:
//!    - openat2 with RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS, on the fuzzer's own thread;
//!    - the component-by-component fallback (O_PATH|O_NOFOLLOW opens and readlinkat), on a
//!      worker thread whose seccomp filter answers openat2 with EPERM, as systemd's
//!      RestrictSUIDSGID= does for every strata-fs unit in production. cap-primitives keeps
//!      the fallback private, so this is the only way to reach it.
//!
//!    Whatever the path, a descriptor either returns names a file inside the served root,
//!    and inside the token's prefix when there is one; and the two agree: the same file, or
//!    the same error code (except where the symlink budget runs out, see `symlink_budget`).
//!
//! Input: byte 0 picks the prefix (none, `/`, the root, `root/sub`, or with the high bit set
//! `root/subdir`, a symlink to `root/sub`) and the open kind, the rest is the path. A path
//! starting with `@` has it replaced by the served root's absolute path, so that absolute
//! paths inside the root are reachable.
#![no_main]

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Mutex, OnceLock, PoisonError};

use libfuzzer_sys::fuzz_target;
use strata_core::authorize::{ScopedPath, scope_path};
use strata_core::capability::path_is_beneath;
use strata_core::protocol::RpcError;
use strata_services::fs::resolve::testing::{fd_path, refuse_openat2_on_this_thread};
use strata_services::fs::resolve::{OpenKind, Resolver};

/// One open for the fallback thread, and its outcome.
type Job = (ScopedPath, String, OpenKind);
type Outcome = Result<OwnedFd, RpcError>;

struct Tree {
    /// The served root, canonical (no symlink in it).
    root: String,
    /// Resolves on the fuzzer's thread: openat2.
    resolver: Resolver,
    /// A resolver of its own on a thread where openat2 is refused: the fallback.
    fallback: Mutex<(Sender<Job>, Receiver<Outcome>)>,
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
        // A FIFO: opening it for reading must not hang (O_NONBLOCK), in both implementations.
        must(mkfifo(&p("sub/fifo")), "fifo");
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
            ("dangling", Path::new("nowhere")),
            // leaves the root and comes back in: refused, the walk may not go above the start
            ("outin", Path::new("../root/a.txt")),
            ("subdir", Path::new("sub")),
            ("subslash", Path::new("sub/")),
            ("chain1", Path::new("chain2")),
            ("chain2", Path::new("subdir/deeper/tosub")),
            ("sub/back", Path::new("../a.txt")),
            ("sub/up2", Path::new("../..")),
            ("sub/deeper/rootabs", Path::new("/")),
            // up and down again, staying inside sub: allowed beneath the root and beneath sub
            ("sub/deeper/tosub", Path::new("../b.txt")),
            ("sub/deeper/updown", Path::new("../deeper/./c.txt")),
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
        let fallback = Mutex::new(spawn_fallback(&root));
        Tree {
            root,
            resolver,
            fallback,
        }
    })
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Starts the fallback thread and checks, before any input, that it really is one: openat2
/// fails there with EPERM, and its resolver still opens a file and still refuses an escape.
fn spawn_fallback(root: &str) -> (Sender<Job>, Receiver<Outcome>) {
    let (job_tx, job_rx) = channel::<Job>();
    let (out_tx, out_rx) = channel::<Outcome>();
    let (ready_tx, ready_rx) = channel::<Result<(), String>>();
    let root = root.to_owned();
    let thread_root = root.clone();
    let spawned = std::thread::Builder::new()
        .name("fs-fallback".into())
        .spawn(move || {
            let setup = (|| {
                refuse_openat2_on_this_thread()
                    .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
                let dot = std::ffi::CString::new(".").map_err(|e| e.to_string())?;
                let mut how = [0u64; 3]; // struct open_how { flags, mode, resolve }
                how[0] = libc::O_PATH as u64;
                // SAFETY: a valid path and a zeroed open_how of the size passed.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        libc::AT_FDCWD,
                        dot.as_ptr(),
                        how.as_mut_ptr(),
                        std::mem::size_of_val(&how),
                    )
                };
                let errno = std::io::Error::last_os_error().raw_os_error();
                if r >= 0 || errno != Some(libc::EPERM) {
                    return Err(format!(
                        "openat2 is not refused on the fallback thread (returned {r}, errno {errno:?})"
                    ));
                }
                Resolver::new(std::slice::from_ref(&thread_root)).map_err(|e| e.to_string())
            })();
            let resolver = match setup {
                Ok(r) => {
                    let _ = ready_tx.send(Ok(()));
                    r
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            while let Ok((scoped, shown, kind)) = job_rx.recv() {
                if out_tx.send(resolver.open(&scoped, &shown, kind)).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        panic!("cannot start the fallback thread: {e}");
    }
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("the fallback thread is unusable: {e}"),
        Err(_) => panic!("the fallback thread died during setup"),
    }
    // Positive and negative control of the fallback itself.
    let scoped = |rel: &str| ScopedPath {
        base: root.clone(),
        relative: rel.to_owned(),
    };
    let run = |rel: &str| -> Outcome {
        if job_tx
            .send((scoped(rel), rel.to_owned(), OpenKind::File))
            .is_err()
        {
            panic!("the fallback thread is gone");
        }
        match out_rx.recv() {
            Ok(o) => o,
            Err(_) => panic!("the fallback thread is gone"),
        }
    };
    match run("sub/deeper/tosub") {
        Ok(fd) => assert_eq!(fd_path(&fd), format!("{root}/sub/b.txt")),
        Err(e) => panic!("the fallback cannot open sub/deeper/tosub: {e}"),
    }
    match run("out") {
        Ok(fd) => panic!("the fallback followed `out` to {}", fd_path(&fd)),
        Err(e) => assert_eq!(e.code, strata_core::protocol::Code::PermissionDenied, "{e}"),
    }
    (job_tx, out_rx)
}

/// Opens through the fallback thread.
fn open_fallback(t: &Tree, scoped: &ScopedPath, shown: &str, kind: OpenKind) -> Outcome {
    let chan = t.fallback.lock().unwrap_or_else(PoisonError::into_inner);
    if chan
        .0
        .send((scoped.clone(), shown.to_owned(), kind))
        .is_err()
    {
        panic!("the fallback thread is gone");
    }
    match chan.1.recv() {
        Ok(o) => o,
        Err(_) => panic!("the fallback thread is gone"),
    }
}

/// Device and inode of an open descriptor (through /proc, which also works for O_PATH).
fn fd_inode(fd: &impl AsRawFd) -> (u64, u64) {
    let link = format!("/proc/self/fd/{}", fd.as_raw_fd());
    match std::fs::metadata(&link) {
        Ok(m) => (m.dev(), m.ino()),
        Err(e) => panic!("stat {link}: {e}"),
    }
}

/// Whether an error is ELOOP, the symlink budget running out: the one outcome the two
/// implementations may disagree on. Both allow 40 symlinks, but the kernel's count is not
/// always the walk's: openat2 once answered ELOOP for a path through 26 symlinks to a missing
/// name (the fallback: NOT_FOUND), and not again in 200,000 reruns of that input. A refusal
/// either way, so it is not compared; whatever opened is still checked.
fn symlink_budget(e: &RpcError) -> bool {
    e.details.get("errno").and_then(|v| v.as_i64()) == Some(i64::from(libc::ELOOP))
}

/// What an opened descriptor must satisfy: inside the root and the prefix.
fn check_inside(how: &str, fd: &OwnedFd, root: &str, path: &str, prefix: Option<&str>) {
    let opened = fd_path(fd);
    assert!(
        path_is_beneath(&opened, root),
        "{how}: {path:?} (prefix {prefix:?}) opened {opened}, outside the root {root}"
    );
    if let Some(p) = prefix {
        assert!(
            path_is_beneath(&opened, p),
            "{how}: {path:?} opened {opened}, outside the prefix {p}"
        );
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
    // The prefix `sub`, or `subdir`, a symlink to it (a token prefix may go through one).
    let sub = if selector & 0x80 == 0 {
        format!("{}/sub", t.root)
    } else {
        format!("{}/subdir", t.root)
    };
    let sub_real = format!("{}/sub", t.root);
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

    // 2. The real resolution, both ways: whatever opens must be inside the root and the
    // prefix, and openat2 and the fallback must agree.
    let direct = t.resolver.open(&scoped, &path, kind);
    let fallback = open_fallback(t, &scoped, &path, kind);
    // what the kernel names is the real path, beneath the prefix's target
    let real_prefix = prefix.map(|p| if p == sub { sub_real.as_str() } else { p });
    let inside = |how: &str, fd: &OwnedFd| check_inside(how, fd, &t.root, &path, real_prefix);
    match (&direct, &fallback) {
        (Ok(a), Ok(b)) => {
            inside("openat2", a);
            inside("fallback", b);
            assert_eq!(
                fd_inode(a),
                fd_inode(b),
                "{path:?} (prefix {prefix:?}, {kind:?}): openat2 opened {}, the fallback {}",
                fd_path(a),
                fd_path(b)
            );
        }
        (Err(a), Err(b)) => assert!(
            a.code == b.code || symlink_budget(a) || symlink_budget(b),
            "{path:?} (prefix {prefix:?}, {kind:?}): openat2 says `{a}`, the fallback `{b}`"
        ),
        (Ok(a), Err(b)) => {
            inside("openat2", a);
            assert!(
                symlink_budget(b),
                "{path:?} (prefix {prefix:?}, {kind:?}): openat2 opened {}, the fallback says `{b}`",
                fd_path(a)
            );
        }
        (Err(a), Ok(b)) => {
            inside("fallback", b);
            assert!(
                symlink_budget(a),
                "{path:?} (prefix {prefix:?}, {kind:?}): the fallback opened {}, openat2 says `{a}`",
                fd_path(b)
            );
        }
    }
});
