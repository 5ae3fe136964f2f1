//! strata-launch's library part: apply a service's Landlock ruleset, drop its Linux capabilities
//! to the declared set, then exec the service.
//!
//! strata-launch is the `ExecStart=` wrapper of every Strata unit:
//!
//! ```text
//! strata-launch --service NAME --ruleset-json '<LandlockRuleset as JSON>' \
//!     [--keep-caps CAP_A,CAP_B] -- /abs/program args...
//! ```
//!
//! It runs single-threaded (no async runtime, no logging threads) because Landlock and the
//! capability sets apply to the calling thread only. In order, it:
//!
//! 1. decodes the command line ([`LaunchRequest::parse`], [`strata_core::launch_args`]) and
//!    resolves the program;
//! 2. sets `PR_SET_NO_NEW_PRIVS` (Landlock needs it without `CAP_SYS_ADMIN`, and it stops a root
//!    service from regaining capabilities at exec);
//! 3. opens every path of the ruleset and builds a Landlock ruleset pinned to ABI 7
//!    ([`LANDLOCK_ABI`]): all file-system rights, TCP bind/connect and the scopes (abstract
//!    UNIX sockets, signals) are handled, i.e. denied unless a rule grants them;
//! 4. applies it to itself; if the kernel enforces only part of it (or nothing), the launch
//!    fails with [`exit_code::NOT_ENFORCED`] naming what is missing, unless the ruleset says
//!    `allow_degraded`, in which case a warning goes to stderr (the journal) and the launch goes on;
//! 5. drops the capability bounding set (when `CAP_SETPCAP` is available), then the
//!    inheritable, effective, permitted and ambient sets to the kept capabilities, calling
//!    `capset` only for a set that differs (a DynamicUser unit that was given exactly the kept
//!    capabilities needs none);
//! 6. execs the program with the environment unchanged (no token ever travels in argv or env).
//!
//! What the unit must allow: the system calls `landlock_create_ruleset`, `landlock_add_rule`
//! and `landlock_restrict_self` (systemd 252's `@system-service` lacks them: with that filter
//! alone the launcher is killed by SIGSYS, or fails closed with 69 when
//! `SystemCallErrorNumber=` is set), and `capset` when the unit grants capabilities the launcher
//! must drop (`~@privileged` denies it; the launch then fails with 71 instead of exec'ing the
//! service with them).
//!
//! Rules (`R` = read file, list directory, execute; `W` = every file-system right):
//! - `fs.read` paths (`LandlockRuleset::read`): `R` beneath; `fs.write` paths: `W` beneath. A
//!   declared path that does not exist or cannot be opened fails the launch
//!   ([`exit_code::DECLARED_PATH`]): an unopened path would otherwise be silently left out.
//! - What exec needs, granted `R` when present: `/usr`, `/lib`, `/lib64`, `/bin`, `/sbin`,
//!   `/nix/store`, the program's own directory when it lies outside those, and read-only
//!   `/etc/ld.so.cache`, `/etc/ld.so.conf`, `/etc/ld.so.conf.d`, `/etc/ld.so.preload`, and the
//!   user database NSS reads: `/etc/nsswitch.conf`, `/etc/passwd`, `/etc/group`.
//! - Devices: `/dev/null` read+write+truncate; `/dev/zero`, `/dev/random`, `/dev/urandom` read.
//! - The process's own `/proc/<pid>` (what `/proc/self` is now and stays after exec): read
//!   (runtimes read their maps, status and fd table there); nothing of other processes.
//! - `$CREDENTIALS_DIRECTORY` (systemd credentials, i.e. the service's tokens): read.
//!   `$RUNTIME_DIRECTORY` (systemd `RuntimeDirectory=`, where a service creates its socket):
//!   `W`. When systemd set these variables the directories must exist.
//! - TCP: bind to each `bind_tcp` port, connect to each `connect_tcp` port; everything else
//!   fails with `EACCES`. UDP is not covered by Landlock.
//!
//! Landlock does not restrict `stat()`, path traversal or sending to pathname UNIX sockets;
//! keeping a service off the system bus is systemd's job (`InaccessiblePaths=`).
//!
//! Errors are printed as `strata-launch: <service>: <what failed>: <cause>`; the exit codes are
//! in [`exit_code`] (sysexits values, so that `systemctl status` shows e.g. `69/UNAVAILABLE`).

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use caps::{CapSet, Capability, CapsHashSet};
use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, LandlockStatus, NetPort,
    PathBeneath, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError, RulesetStatus, Scope,
};
use strata_core::launch_args::{self, LaunchArgs, LaunchArgsError};
use strata_core::unit::LandlockRuleset;
use thiserror::Error;

/// The Landlock ABI the ruleset is written for: the highest one tested (kernel 6.18 runs ABI 7).
/// Pinned rather than detected so that a newer kernel never changes what a service may do.
pub const LANDLOCK_ABI: ABI = ABI::V7;

/// Exit statuses of strata-launch (it never returns on success: the service replaces it).
pub mod exit_code {
    /// The command line or the ruleset JSON is invalid (unknown option, relative path, unknown
    /// capability name, missing `--`).
    pub const USAGE: u8 = 64;
    /// A declared path (`fs.read`/`fs.write`) or a systemd-provided directory does not exist or
    /// cannot be opened.
    pub const DECLARED_PATH: u8 = 66;
    /// The kernel cannot fully enforce the Landlock ruleset and the manifest does not allow a
    /// degraded sandbox.
    pub const NOT_ENFORCED: u8 = 69;
    /// A system call of the sandboxing itself failed (prctl, Landlock, capset).
    pub const OS_ERROR: u8 = 71;
    /// A capability to keep is not in the launcher's permitted set, so the service cannot have it.
    pub const CAPABILITY: u8 = 77;
    /// The program exists but could not be executed (like a shell's 126).
    pub const EXEC_FAILED: u8 = 126;
    /// The program does not exist (like a shell's 127).
    pub const PROGRAM_NOT_FOUND: u8 = 127;
}

/// What strata-launch was asked to do: its command line decoded with
/// [`strata_core::launch_args`] (the contract shared with the sandbox derivation), with the
/// capability names resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    /// Service name, used in messages.
    pub service: String,
    /// The Landlock rules of the service.
    pub ruleset: LandlockRuleset,
    /// Capabilities the service keeps (all others are dropped).
    pub keep_caps: Vec<Capability>,
    /// Absolute path of the program to exec (argv[0] of the service).
    pub program: PathBuf,
    /// Arguments after the program (argv[1..]).
    pub args: Vec<String>,
}

impl LaunchRequest {
    /// Decodes the arguments that follow argv[0]:
    /// `--service NAME --ruleset-json JSON [--keep-caps A,B] -- /abs/program args...`.
    pub fn parse<I>(args: I) -> Result<Self, LaunchError>
    where
        I: IntoIterator<Item = OsString>,
    {
        let args = args
            .into_iter()
            .map(|arg| arg.into_string().map_err(LaunchError::NotUtf8))
            .collect::<Result<Vec<String>, LaunchError>>()?;
        Self::try_from(launch_args::decode(args)?)
    }
}

impl TryFrom<LaunchArgs> for LaunchRequest {
    type Error = LaunchError;

    fn try_from(decoded: LaunchArgs) -> Result<Self, LaunchError> {
        let keep_caps = decoded
            .keep_caps
            .iter()
            .map(|name| {
                Capability::from_str(name)
                    .map_err(|_| LaunchError::UnsupportedCapability(name.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv = decoded.argv.into_iter();
        // decode() guarantees a first, absolute element; checked again rather than trusted.
        let program = argv
            .next()
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .ok_or(LaunchError::Args(LaunchArgsError::MissingProgram))?;
        Ok(Self {
            service: decoded.service,
            ruleset: decoded.ruleset,
            keep_caps,
            program,
            args: argv.collect(),
        })
    }
}

/// Which part of the ruleset a path grant comes from (decides whether absence is fatal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantOrigin {
    /// `fs.read:P` of the manifest.
    DeclaredRead,
    /// `fs.write:P` of the manifest.
    DeclaredWrite,
    /// A directory named by systemd in the environment (`CREDENTIALS_DIRECTORY`, ...).
    Environment(&'static str),
    /// What exec and a basic process need; skipped when absent.
    BuiltIn,
}

impl fmt::Display for GrantOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DeclaredRead => f.write_str("fs.read"),
            Self::DeclaredWrite => f.write_str("fs.write"),
            Self::Environment(var) => write!(f, "${var}"),
            Self::BuiltIn => f.write_str("built-in"),
        }
    }
}

/// Why a launch failed. `Display` gives `<what failed>: <cause>`.
#[derive(Debug, Error)]
pub enum LaunchError {
    #[error("invalid command line: {0}")]
    Args(#[from] LaunchArgsError),
    #[error("invalid command line: argument {0:?} is not valid UTF-8")]
    NotUtf8(OsString),
    #[error("invalid command line: capability {0} is not supported by this build of strata-launch")]
    UnsupportedCapability(String),
    #[error("{origin} path {path:?} is not absolute")]
    RelativePath { origin: GrantOrigin, path: String },
    #[error("{origin} path {} does not exist", path.display())]
    PathMissing { origin: GrantOrigin, path: PathBuf },
    #[error("{origin} path {} cannot be opened: {source}", path.display())]
    PathUnusable {
        origin: GrantOrigin,
        path: PathBuf,
        source: io::Error,
    },
    #[error("program {} does not exist", program.display())]
    ProgramMissing { program: PathBuf },
    #[error("program {} cannot be resolved: {source}", program.display())]
    ProgramUnusable { program: PathBuf, source: io::Error },
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(io::Error),
    #[error("building the landlock ruleset: {0}")]
    Landlock(#[from] RulesetError),
    #[error("landlock ruleset not fully enforced ({status}): {missing}")]
    NotEnforced { status: String, missing: String },
    #[error("keeping capability {0}: not in the permitted set of strata-launch")]
    CapabilityNotPermitted(Capability),
    #[error("dropping capabilities ({step}): {cause}")]
    Capabilities { step: &'static str, cause: String },
    #[error("exec {}: {source}", program.display())]
    Exec { program: PathBuf, source: io::Error },
}

impl LaunchError {
    /// The documented exit status for this failure (see [`exit_code`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Args(_)
            | Self::NotUtf8(_)
            | Self::UnsupportedCapability(_)
            | Self::RelativePath { .. } => exit_code::USAGE,
            Self::PathMissing { .. } | Self::PathUnusable { .. } => exit_code::DECLARED_PATH,
            Self::NotEnforced { .. } => exit_code::NOT_ENFORCED,
            Self::NoNewPrivs(_) | Self::Landlock(_) | Self::Capabilities { .. } => {
                exit_code::OS_ERROR
            }
            Self::CapabilityNotPermitted(_) => exit_code::CAPABILITY,
            Self::ProgramMissing { .. } => exit_code::PROGRAM_NOT_FOUND,
            Self::ProgramUnusable { .. } => exit_code::EXEC_FAILED,
            Self::Exec { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                exit_code::PROGRAM_NOT_FOUND
            }
            Self::Exec { .. } => exit_code::EXEC_FAILED,
        }
    }
}

/// How the Landlock ruleset ended up applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    /// Every handled right and scope is enforced.
    Full,
    /// Only part (or none) is enforced; allowed because the ruleset says `allow_degraded`. The
    /// string names what is missing.
    Degraded(String),
}

/// One file-system rule: an opened path and the rights granted beneath it.
#[derive(Debug)]
pub struct PathGrant {
    pub path: PathBuf,
    pub origin: GrantOrigin,
    pub access: BitFlags<AccessFs>,
    fd: File,
}

fn read_rights() -> BitFlags<AccessFs> {
    AccessFs::from_read(LANDLOCK_ABI)
}

fn write_rights() -> BitFlags<AccessFs> {
    AccessFs::from_all(LANDLOCK_ABI)
}

/// Roots that hold programs, their ELF loader and libraries (absent ones are skipped).
const EXEC_ROOTS: &[&str] = &["/usr", "/lib", "/lib64", "/bin", "/sbin", "/nix/store"];
/// Loader configuration and the world-readable user database, read-only: NSS lookups
/// (getpwuid, group membership — the `strata-admin` check of identity and the metrics method)
/// read these; none holds a secret (/etc/shadow is not among them).
const LOADER_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ld.so.preload",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/group",
];

/// Opens `path` with O_PATH (no read permission needed; the fd only names the inode) and
/// records the rights, narrowed to those valid for a non-directory when it is one (Landlock
/// rejects directory rights on files; the crate would count that as partial enforcement).
fn open_grant(
    path: &Path,
    origin: GrantOrigin,
    access: BitFlags<AccessFs>,
) -> Result<Option<PathGrant>, LaunchError> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
        .open(path);
    let fd = match opened {
        Ok(fd) => fd,
        Err(_) if origin == GrantOrigin::BuiltIn => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(LaunchError::PathMissing {
                origin,
                path: path.to_owned(),
            });
        }
        Err(source) => {
            return Err(LaunchError::PathUnusable {
                origin,
                path: path.to_owned(),
                source,
            });
        }
    };
    let is_dir = match fd.metadata() {
        Ok(m) => m.is_dir(),
        Err(_) if origin == GrantOrigin::BuiltIn => return Ok(None),
        Err(source) => {
            return Err(LaunchError::PathUnusable {
                origin,
                path: path.to_owned(),
                source,
            });
        }
    };
    let access = if is_dir {
        access
    } else {
        access & AccessFs::from_file(LANDLOCK_ABI)
    };
    Ok(Some(PathGrant {
        path: path.to_owned(),
        origin,
        access,
        fd,
    }))
}

fn declared_path(raw: &str, origin: GrantOrigin) -> Result<&Path, LaunchError> {
    let path = Path::new(raw);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err(LaunchError::RelativePath {
            origin,
            path: raw.to_owned(),
        })
    }
}

/// Resolves the program (following symlinks) so that its real directory can be granted.
pub fn resolve_program(program: &Path) -> Result<PathBuf, LaunchError> {
    std::fs::canonicalize(program).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            LaunchError::ProgramMissing {
                program: program.to_owned(),
            }
        } else {
            LaunchError::ProgramUnusable {
                program: program.to_owned(),
                source,
            }
        }
    })
}

/// Opens every path rule of the launch: declared paths (must exist), systemd's directories
/// from `env` (must exist when named), and the built-in ones (skipped when absent).
/// `env` looks up an environment variable (a parameter so that tests need not mutate the
/// process environment).
pub fn path_grants(
    ruleset: &LandlockRuleset,
    program: &Path,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<Vec<PathGrant>, LaunchError> {
    let mut grants = Vec::new();
    let mut push = |g: Option<PathGrant>| grants.extend(g);

    for raw in &ruleset.read {
        let path = declared_path(raw, GrantOrigin::DeclaredRead)?;
        push(open_grant(path, GrantOrigin::DeclaredRead, read_rights())?);
    }
    for raw in &ruleset.write {
        let path = declared_path(raw, GrantOrigin::DeclaredWrite)?;
        push(open_grant(
            path,
            GrantOrigin::DeclaredWrite,
            write_rights(),
        )?);
    }

    // Directories systemd prepared for this unit.
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let origin = GrantOrigin::Environment("CREDENTIALS_DIRECTORY");
        push(open_grant(
            Path::new(&dir),
            origin,
            AccessFs::ReadFile | AccessFs::ReadDir,
        )?);
    }
    if let Some(dirs) = env("RUNTIME_DIRECTORY") {
        let origin = GrantOrigin::Environment("RUNTIME_DIRECTORY");
        // systemd joins several RuntimeDirectory= entries with ':'.
        for dir in split_colon(&dirs) {
            push(open_grant(Path::new(dir), origin, write_rights())?);
        }
    }

    // What exec needs: the loader, libraries and the program itself.
    for root in EXEC_ROOTS {
        push(open_grant(
            Path::new(root),
            GrantOrigin::BuiltIn,
            read_rights(),
        )?);
    }
    for file in LOADER_FILES {
        push(open_grant(
            Path::new(file),
            GrantOrigin::BuiltIn,
            AccessFs::ReadFile | AccessFs::ReadDir,
        )?);
    }
    let real = resolve_program(program)?;
    let inside_roots = EXEC_ROOTS.iter().any(|root| {
        std::fs::canonicalize(root)
            .map(|r| real.starts_with(r))
            .unwrap_or(false)
    });
    if !inside_roots && let Some(dir) = real.parent() {
        push(open_grant(dir, GrantOrigin::BuiltIn, read_rights())?);
    }

    // Devices every process expects.
    push(open_grant(
        Path::new("/dev/null"),
        GrantOrigin::BuiltIn,
        AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate,
    )?);
    for dev in ["/dev/zero", "/dev/random", "/dev/urandom"] {
        push(open_grant(
            Path::new(dev),
            GrantOrigin::BuiltIn,
            AccessFs::ReadFile.into(),
        )?);
    }
    // /proc/self resolves to /proc/<pid>, which exec keeps: the service sees only itself.
    push(open_grant(
        Path::new("/proc/self"),
        GrantOrigin::BuiltIn,
        AccessFs::ReadFile | AccessFs::ReadDir,
    )?);
    Ok(grants)
}

fn split_colon(value: &OsStr) -> impl Iterator<Item = &OsStr> {
    use std::os::unix::ffi::OsStrExt;
    value
        .as_bytes()
        .split(|b| *b == b':')
        .filter(|part| !part.is_empty())
        .map(OsStr::from_bytes)
}

/// Why Landlock is unusable, as the kernel (or a seccomp filter) says: the errno of
/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`. The crate folds every
/// error other than EOPNOTSUPP into "not implemented"; operators need the real one (a unit's
/// `SystemCallFilter=` yields EPERM, a kernel without Landlock ENOSYS). None when it works.
pub fn landlock_version_error() -> Option<io::Error> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute pointer and size 0 this call only queries the ABI
    // version; it reads and writes no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (ret < 0).then(io::Error::last_os_error)
}

/// Names what a kernel with `status` cannot enforce of a ruleset written for [`LANDLOCK_ABI`];
/// `version_error` is [`landlock_version_error`] when Landlock is unavailable.
pub fn missing_features(status: &LandlockStatus, version_error: Option<&io::Error>) -> String {
    let cause = || match version_error {
        Some(err) => format!("landlock_create_ruleset failed: {err}"),
        None => "landlock_create_ruleset failed".to_owned(),
    };
    let abi = match status {
        LandlockStatus::NotEnabled => {
            return format!(
                "landlock is disabled in this kernel ({}; add landlock to the lsm= boot parameter)",
                cause()
            );
        }
        LandlockStatus::NotImplemented => {
            return format!(
                "landlock is unavailable ({}): a kernel built without landlock, or a seccomp \
                 filter (SystemCallFilter=) blocking landlock_create_ruleset, landlock_add_rule \
                 and landlock_restrict_self",
                cause()
            );
        }
        LandlockStatus::Available { effective_abi, .. } => *effective_abi,
    };
    let features: &[(ABI, &str)] = &[
        (ABI::V1, "file system access rights"),
        (ABI::V2, "file reparenting (refer, ABI 2)"),
        (ABI::V3, "file truncation (ABI 3)"),
        (ABI::V4, "TCP bind and connect (ABI 4)"),
        (ABI::V5, "ioctl on devices (ABI 5)"),
        (ABI::V6, "abstract UNIX socket and signal scoping (ABI 6)"),
    ];
    let missing: Vec<&str> = features
        .iter()
        .filter(|(needed, _)| abi < *needed)
        .map(|(_, what)| *what)
        .collect();
    if missing.is_empty() {
        format!("kernel landlock ABI {abi:?} enforced only part of the ruleset")
    } else {
        format!(
            "kernel landlock ABI {abi:?} lacks {} (ruleset written for {LANDLOCK_ABI:?})",
            missing.join(", ")
        )
    }
}

/// Builds the ruleset from `grants` and the TCP ports, and restricts the calling thread (and
/// everything it execs) with it. Must run before any other thread exists.
pub fn apply_landlock(
    ruleset: &LandlockRuleset,
    grants: Vec<PathGrant>,
) -> Result<Enforcement, LaunchError> {
    // BestEffort so that an older kernel yields a status we can name and judge (fail closed
    // below) instead of an opaque compatibility error.
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(LANDLOCK_ABI))?
        .handle_access(AccessNet::from_all(LANDLOCK_ABI))?
        .scope(Scope::from_all(LANDLOCK_ABI))?
        .create()?;
    for grant in grants {
        created = created.add_rule(PathBeneath::new(grant.fd, grant.access))?;
    }
    let bind: BTreeSet<u16> = ruleset.bind_tcp.iter().copied().collect();
    let connect: BTreeSet<u16> = ruleset.connect_tcp.iter().copied().collect();
    for port in bind {
        created = created.add_rule(NetPort::new(port, AccessNet::BindTcp))?;
    }
    for port in connect {
        created = created.add_rule(NetPort::new(port, AccessNet::ConnectTcp))?;
    }
    let status = created.restrict_self()?;
    if status.ruleset == RulesetStatus::FullyEnforced {
        return Ok(Enforcement::Full);
    }
    let version_error = match status.landlock {
        LandlockStatus::Available { .. } => None,
        _ => landlock_version_error(),
    };
    let missing = missing_features(&status.landlock, version_error.as_ref());
    if ruleset.allow_degraded {
        Ok(Enforcement::Degraded(missing))
    } else {
        Err(LaunchError::NotEnforced {
            status: format!("{:?}", status.ruleset),
            missing,
        })
    }
}

/// Sets `PR_SET_NO_NEW_PRIVS`: exec can then grant no privilege (setuid bits, file
/// capabilities, root's implicit capabilities beyond the current permitted set).
pub fn set_no_new_privs() -> Result<(), LaunchError> {
    rustix::thread::set_no_new_privs(true).map_err(|e| LaunchError::NoNewPrivs(e.into()))
}

fn caps_err(step: &'static str) -> impl Fn(caps::errors::CapsError) -> LaunchError {
    move |e| LaunchError::Capabilities {
        step,
        cause: e.to_string(),
    }
}

/// Reduces the calling thread's capabilities to `keep`: bounding set first (needs
/// `CAP_SETPCAP` effective), then inheritable, effective, permitted and ambient. Ambient
/// capabilities are what a non-root service keeps across exec; they require the capability in
/// inheritable and permitted, hence the order.
///
/// A process without `CAP_SETPCAP` (a DynamicUser unit normally has no capabilities at all)
/// cannot change its bounding set; that is not an error: with no_new_privs set, exec cannot
/// add anything outside the permitted set, which is reduced to `keep` here.
pub fn drop_capabilities(keep: &[Capability]) -> Result<(), LaunchError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("reading permitted"))?;
    if let Some(cap) = keep.iter().find(|c| !permitted.contains(c)) {
        return Err(LaunchError::CapabilityNotPermitted(*cap));
    }

    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("reading bounding"))?;
    if permitted.contains(&Capability::CAP_SETPCAP) && !bounding.is_subset(&keep) {
        let effective =
            caps::read(None, CapSet::Effective).map_err(caps_err("reading effective"))?;
        if !effective.contains(&Capability::CAP_SETPCAP) {
            caps::raise(None, CapSet::Effective, Capability::CAP_SETPCAP)
                .map_err(caps_err("raising CAP_SETPCAP"))?;
        }
        for cap in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *cap).map_err(caps_err("bounding"))?;
        }
    }

    // Only change what differs: a unit whose SystemCallFilter= denies @privileged (which holds
    // capset) must still start when its sets already are the kept ones, as under DynamicUser.
    // Inheritable before ambient (ambient needs it), effective before permitted.
    for (set, step) in [
        (CapSet::Inheritable, "inheritable"),
        (CapSet::Effective, "effective"),
        (CapSet::Permitted, "permitted"),
    ] {
        if caps::read(None, set).map_err(caps_err(step))? != keep {
            caps::set(None, set, &keep).map_err(caps_err(step))?;
        }
    }
    if caps::read(None, CapSet::Ambient).map_err(caps_err("reading ambient"))? != keep {
        caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing ambient"))?;
        for cap in &keep {
            caps::raise(None, CapSet::Ambient, *cap).map_err(caps_err("ambient"))?;
        }
    }
    Ok(())
}

/// Replaces the process with the program; returns only on failure. The environment is passed
/// unchanged; std restores SIGPIPE's default disposition for the new program.
pub fn exec(program: &Path, args: &[String]) -> LaunchError {
    let source = Command::new(program).args(args).exec();
    LaunchError::Exec {
        program: program.to_owned(),
        source,
    }
}

/// The whole launch: no_new_privs, Landlock, capabilities, exec. `warn` receives the warning
/// of a degraded (explicitly allowed) sandbox before exec.
pub fn launch(request: &LaunchRequest, warn: impl Fn(&str)) -> Result<Infallible, LaunchError> {
    let grants = path_grants(&request.ruleset, &request.program, |var| {
        std::env::var_os(var)
    })?;
    set_no_new_privs()?;
    if let Enforcement::Degraded(missing) = apply_landlock(&request.ruleset, grants)? {
        warn(&format!(
            "landlock ruleset not fully enforced, continuing because allow_degraded is set: {missing}"
        ));
    }
    drop_capabilities(&request.keep_caps)?;
    Err(exec(&request.program, &request.args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn decodes_the_contract() {
        let json = serde_json::to_string(&LandlockRuleset {
            read: vec!["/srv".into()],
            bind_tcp: vec![8080],
            ..LandlockRuleset::default()
        })
        .expect("serializable");
        let req = LaunchRequest::parse(os(&[
            "--service",
            "web",
            "--ruleset-json",
            &json,
            "--keep-caps=CAP_NET_BIND_SERVICE,CAP_KILL",
            "--",
            "/usr/bin/python3",
            "-m",
            "http.server",
        ]))
        .expect("valid command line");
        assert_eq!(req.service, "web");
        assert_eq!(req.ruleset.read, vec!["/srv".to_owned()]);
        assert_eq!(req.ruleset.bind_tcp, vec![8080]);
        assert_eq!(
            req.keep_caps,
            vec![Capability::CAP_NET_BIND_SERVICE, Capability::CAP_KILL]
        );
        assert_eq!(req.program, PathBuf::from("/usr/bin/python3"));
        assert_eq!(req.args, vec!["-m".to_owned(), "http.server".to_owned()]);
    }

    #[test]
    fn every_capability_of_the_contract_is_supported() {
        for name in strata_core::capability::LINUX_CAPABILITIES {
            assert!(Capability::from_str(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn bad_command_lines_are_usage_errors() {
        use std::os::unix::ffi::OsStringExt;
        let err = LaunchRequest::parse(os(&["--service", "web", "--", "/bin/true"]))
            .expect_err("missing ruleset");
        assert_eq!(
            err.to_string(),
            "invalid command line: missing option --ruleset-json"
        );
        assert_eq!(err.exit_code(), exit_code::USAGE);
        let err =
            LaunchRequest::parse(vec![OsString::from_vec(vec![0xff])]).expect_err("not UTF-8");
        assert_eq!(err.exit_code(), exit_code::USAGE);
    }

    #[test]
    fn names_missing_features_per_abi() {
        let old = LandlockStatus::Available {
            effective_abi: ABI::V3,
            kernel_abi: None,
        };
        assert_eq!(
            missing_features(&old, None),
            "kernel landlock ABI V3 lacks TCP bind and connect (ABI 4), ioctl on devices (ABI 5), \
             abstract UNIX socket and signal scoping (ABI 6) (ruleset written for V7)"
        );
        let enosys = io::Error::from_raw_os_error(libc::ENOSYS);
        assert!(
            missing_features(&LandlockStatus::NotImplemented, Some(&enosys)).starts_with(
                "landlock is unavailable (landlock_create_ruleset failed: Function not \
                 implemented (os error 38)): a kernel built without landlock, or a seccomp filter"
            )
        );
        assert_eq!(
            landlock_version_error().map(|e| e.to_string()),
            None,
            "landlock works here"
        );
    }

    #[test]
    fn declared_paths_must_exist_and_be_absolute() {
        let mut ruleset = LandlockRuleset {
            read: vec!["/nonexistent-strata-launch-test".into()],
            ..LandlockRuleset::default()
        };
        let err = path_grants(&ruleset, Path::new("/bin/true"), |_| None)
            .expect_err("missing declared path");
        assert_eq!(
            err.to_string(),
            "fs.read path /nonexistent-strata-launch-test does not exist"
        );
        assert_eq!(err.exit_code(), exit_code::DECLARED_PATH);

        ruleset.read = vec!["relative/dir".into()];
        let err = path_grants(&ruleset, Path::new("/bin/true"), |_| None)
            .expect_err("relative declared path");
        assert_eq!(err.exit_code(), exit_code::USAGE);

        // A systemd-provided directory that was named but is missing is fatal too; built-in
        // paths are not (they are simply skipped).
        ruleset.read.clear();
        let err = path_grants(&ruleset, Path::new("/bin/true"), |var| {
            (var == "CREDENTIALS_DIRECTORY").then(|| OsString::from("/nonexistent-creds"))
        })
        .expect_err("missing credentials directory");
        assert_eq!(
            err.to_string(),
            "$CREDENTIALS_DIRECTORY path /nonexistent-creds does not exist"
        );
    }

    #[test]
    fn file_grants_get_file_rights_only() {
        let ruleset = LandlockRuleset {
            write: vec!["/dev/null".into()],
            read: vec!["/usr".into()],
            ..LandlockRuleset::default()
        };
        let grants = path_grants(&ruleset, Path::new("/bin/true"), |_| None).expect("grants");
        let devnull = grants
            .iter()
            .find(|g| g.origin == GrantOrigin::DeclaredWrite)
            .expect("declared /dev/null");
        assert_eq!(devnull.access, AccessFs::from_file(LANDLOCK_ABI));
        let usr = grants
            .iter()
            .find(|g| g.origin == GrantOrigin::DeclaredRead)
            .expect("declared /usr");
        assert_eq!(usr.access, AccessFs::from_read(LANDLOCK_ABI));
    }
}
