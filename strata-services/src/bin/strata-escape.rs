//! strata-escape: a hostile test payload. Run as a Strata service, it tries one way out of its
//! sandbox and prints the outcome, so the escape suite (strata-systemd/tests/escape.rs) can
//! assert the exact errno each layer produces. Outside a sandbox the same attempts succeed:
//! that is the suite's positive control.
//!
//! Output: one line `escape: ATTEMPT: ok` (exit 0), `escape: ATTEMPT: errno=NAME` (exit 1) or
//! `escape: ATTEMPT: exit=N` (a helper program failed; exit 1). Usage errors exit 2.
//!
//! Attempts:
//! - `read PATH`, `write PATH` (create or truncate), `bind PORT`, `connect PORT` (TCP,
//!   127.0.0.1);
//! - `dbus`: connect to the system bus socket and, if that works, ask systemd for a new
//!   transient unit `strata-escape-evil.service` running `sleep 600` (through busctl);
//! - `ptrace`: PTRACE_ATTACH to a child it spawned itself (`sleep`), `ptrace PID` to any pid;
//! - `mount DIR`: mount a tmpfs on DIR (created if missing), unmounted again on success;
//! - `setuid UID`;
//! - `init-module`, `finit-module`: load a (bogus) kernel module; the kernel would refuse the
//!   image itself, so `ok` never appears: the errno says which layer stopped the call;
//! - `write-proc PATH VALUE`: open an existing file for writing (no create, no truncate) and
//!   write VALUE, e.g. a sysctl under /proc/sys.

use std::ffi::CString;
use std::io::{self, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use strata_services::errno::{errno_name, read_path as read};

/// Where a service would find the system bus (D-Bus's default address).
const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// The outcome of an attempt.
enum Outcome {
    Ok,
    Errno(i32),
    /// A helper program exited with this status (or -1 when killed by a signal).
    Exit(i32),
    /// An error without an errno.
    Other(String),
}

impl From<io::Result<()>> for Outcome {
    fn from(r: io::Result<()>) -> Self {
        match r {
            Ok(()) => Outcome::Ok,
            Err(e) => match e.raw_os_error() {
                Some(code) => Outcome::Errno(code),
                None => Outcome::Other(e.to_string()),
            },
        }
    }
}

/// `Ok` when a libc call returned 0 or more, the errno otherwise.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn write(path: &Path) -> io::Result<()> {
    std::fs::File::create(path)?.write_all(b"strata-escape\n")
}

fn write_existing(path: &Path, value: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all(value.as_bytes())
}

/// Connects to the system bus; if that works, asks systemd for an unsandboxed unit.
fn dbus() -> Outcome {
    if let Err(e) = UnixStream::connect(SYSTEM_BUS_SOCKET) {
        return Outcome::from(Err(e));
    }
    let status = Command::new("busctl")
        .args([
            "--system",
            "call",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "StartTransientUnit",
            "ssa(sv)a(sa(sv))",
            "strata-escape-evil.service",
            "fail",
            "1",
            "ExecStart",
            "a(sasb)",
            "1",
            "/bin/sleep",
            "2",
            "/bin/sleep",
            "600",
            "false",
            "0",
        ])
        .stdin(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Outcome::Ok,
        Ok(s) => Outcome::Exit(s.code().unwrap_or(-1)),
        Err(e) => Outcome::from(Err(e)),
    }
}

fn ptrace_attach(pid: libc::pid_t) -> io::Result<()> {
    // SAFETY: PTRACE_ATTACH takes no pointers; a bad pid is reported through errno.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    check(ret).map(drop)
}

/// Spawns a child and tries to attach to it (the least a debugger-style attack needs).
fn ptrace_child() -> Outcome {
    let mut child = match Command::new("sleep").arg("30").stdin(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Other(format!("cannot spawn the ptrace target: {e}")),
    };
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return Outcome::Other("child pid out of range".to_owned());
    };
    let outcome = Outcome::from(ptrace_attach(pid));
    // Killing a traced child is fine: it dies, and wait() reaps it.
    let _ = child.kill();
    let _ = child.wait();
    outcome
}

fn mount_tmpfs(dir: &Path) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = cstring(dir.to_string_lossy().as_ref())?;
    // SAFETY: every pointer is a valid NUL-terminated string or null (no data).
    let ret = unsafe {
        libc::mount(
            c"strata-escape".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    check(libc::c_long::from(ret))?;
    // SAFETY: as above.
    let ret = unsafe { libc::umount2(target.as_ptr(), 0) };
    check(libc::c_long::from(ret)).map(drop)
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn setuid(uid: libc::uid_t) -> io::Result<()> {
    // SAFETY: setuid takes a plain integer.
    let ret = unsafe { libc::setuid(uid) };
    check(libc::c_long::from(ret)).map(drop)
}

fn init_module() -> io::Result<()> {
    // A one-page image of zeros: not an ELF module, so even an allowed call fails (ENOEXEC).
    let image = vec![0u8; 4096];
    // SAFETY: the image pointer and length describe `image`; params is a valid C string.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_init_module,
            image.as_ptr(),
            image.len(),
            c"".as_ptr(),
        )
    };
    check(ret).map(drop)
}

fn finit_module() -> io::Result<()> {
    // Our own executable: a readable file that is not a module.
    let exe = std::fs::File::open("/proc/self/exe")?;
    // SAFETY: a file descriptor we own, a valid C string, no flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            exe.as_raw_fd(),
            c"".as_ptr(),
            0 as libc::c_int,
        )
    };
    check(ret).map(drop)
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: strata-escape read PATH | write PATH | bind PORT | connect PORT | dbus | \
         ptrace [PID] | mount DIR | setuid UID | init-module | finit-module | \
         write-proc PATH VALUE"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["read", path] => Outcome::from(read(Path::new(path))),
        ["write", path] => Outcome::from(write(Path::new(path))),
        ["bind", p] => match p.parse::<u16>() {
            Ok(p) => Outcome::from(TcpListener::bind((Ipv4Addr::LOCALHOST, p)).map(drop)),
            Err(_) => return usage(),
        },
        ["connect", p] => match p.parse::<u16>() {
            Ok(p) => Outcome::from(TcpStream::connect((Ipv4Addr::LOCALHOST, p)).map(drop)),
            Err(_) => return usage(),
        },
        ["dbus"] => dbus(),
        ["ptrace"] => ptrace_child(),
        ["ptrace", pid] => match pid.parse::<libc::pid_t>() {
            Ok(pid) => Outcome::from(ptrace_attach(pid)),
            Err(_) => return usage(),
        },
        ["mount", dir] => Outcome::from(mount_tmpfs(Path::new(dir))),
        ["setuid", uid] => match uid.parse::<libc::uid_t>() {
            Ok(uid) => Outcome::from(setuid(uid)),
            Err(_) => return usage(),
        },
        ["init-module"] => Outcome::from(init_module()),
        ["finit-module"] => Outcome::from(finit_module()),
        ["write-proc", path, value] => Outcome::from(write_existing(Path::new(path), value)),
        _ => return usage(),
    };
    let attempt = args.join(" ");
    match outcome {
        Outcome::Ok => {
            println!("escape: {attempt}: ok");
            ExitCode::SUCCESS
        }
        Outcome::Errno(code) => {
            println!("escape: {attempt}: errno={}", errno_name(code));
            ExitCode::from(1)
        }
        Outcome::Exit(code) => {
            println!("escape: {attempt}: exit={code}");
            ExitCode::from(1)
        }
        Outcome::Other(message) => {
            println!("escape: {attempt}: error={message}");
            ExitCode::from(1)
        }
    }
}
