//! The capability grammar: what a service may do, as declared in the manifest.
//!
//! ```text
//! fs.read:/abs/path      fs.write:/abs/path
//! net.bind:tcp:PORT      net.connect:tcp:PORT      (PORT 1..65535; tcp only)
//! call:SERVICE           sys.cap:CAP_NAME
//! ```
//! Parsing is strict: paths must be absolute and already normalized, ports decimal without
//! leading zeros, Linux capability names spelt exactly as in capabilities(7).

use crate::manifest::suggest::closest;

/// One declared capability.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Read (and execute) beneath an absolute path.
    FsRead(String),
    /// Read, write, create and remove beneath an absolute path.
    FsWrite(String),
    /// Bind this TCP port.
    NetBind(u16),
    /// Connect to this TCP port.
    NetConnect(u16),
    /// Call the named service (receive a token for it).
    Call(String),
    /// Keep this Linux capability (`CAP_NET_ADMIN`).
    SysCap(String),
}

/// The kinds of capability, as written before the first `:`.
pub const CAPABILITY_KINDS: [&str; 6] = [
    "fs.read",
    "fs.write",
    "net.bind",
    "net.connect",
    "call",
    "sys.cap",
];

/// Every Linux capability name known to the kernels Strata supports (capabilities(7), up to
/// CAP_CHECKPOINT_RESTORE = 40), in bit order.
pub const LINUX_CAPABILITIES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Why a capability string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityError {
    #[error("empty capability: expected KIND:ARGUMENT, e.g. \"fs.read:/srv/www\"")]
    Empty,
    #[error(
        "unknown capability kind `{kind}`{}: expected one of fs.read, fs.write, net.bind, net.connect, call, sys.cap",
        did_you_mean(.suggestion)
    )]
    UnknownKind {
        kind: String,
        suggestion: Option<&'static str>,
    },
    #[error("`{kind}` needs an argument, e.g. \"{example}\"")]
    MissingArgument {
        kind: &'static str,
        example: &'static str,
    },
    #[error("`{kind}` path {source}")]
    Path {
        kind: &'static str,
        source: PathError,
    },
    #[error(
        "fs.write:/ would make the whole file system writable: name the directories the service writes"
    )]
    WritableRoot,
    #[error(
        "`{kind}:{protocol}` is not supported: Landlock can only restrict TCP, so only `{kind}:tcp:PORT` is accepted"
    )]
    UnsupportedProtocol {
        kind: &'static str,
        protocol: String,
    },
    #[error("`{kind}` needs a protocol and a port, e.g. \"{kind}:tcp:8080\"")]
    MissingPort { kind: &'static str },
    #[error("invalid port `{value}`: expected a decimal number from 1 to 65535")]
    InvalidPort { value: String },
    #[error("`call` target {source}")]
    ServiceName { source: ServiceNameError },
    #[error(
        "unknown Linux capability `{name}`{}: expected a name from capabilities(7) such as CAP_NET_ADMIN",
        did_you_mean(.suggestion)
    )]
    UnknownLinuxCapability {
        name: String,
        suggestion: Option<&'static str>,
    },
}

/// Why a path was rejected (paths of capabilities, exec, working directories, node dirs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("is empty: expected an absolute path")]
    Empty,
    #[error("`{path}` is not absolute: expected a path starting with /")]
    NotAbsolute { path: String },
    #[error("`{path}` contains `..`: expected a path without parent components")]
    ParentComponent { path: String },
    #[error("{path:?} contains a control character (NUL, newline, …)")]
    ControlCharacter { path: String },
    #[error("`{path}` is not normalized: write `{normalized}`")]
    NotNormalized { path: String, normalized: String },
    #[error("is longer than 4095 bytes (PATH_MAX)")]
    TooLong,
}

/// Why a service name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceNameError {
    #[error("is empty: expected 1 to 48 characters from a-z, 0-9 and -")]
    Empty,
    #[error("`{name}` is longer than 48 characters")]
    TooLong { name: String },
    #[error("`{name}` starts with `-`: expected a letter or digit first")]
    LeadingDash { name: String },
    #[error("`{name}` contains {found:?}: expected only a-z, 0-9 and -")]
    InvalidCharacter { name: String, found: char },
}

/// At most 64 characters of an offending input, so that a huge value does not flood a message.
fn clip(s: &str) -> String {
    if s.chars().count() <= 64 {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(63).collect();
        out.push('…');
        out
    }
}

fn did_you_mean(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

/// The actions a `call:<target>` capability grants: what the token minted for it at launch
/// carries. Core services get the methods a client needs and nothing that hands out authority
/// (a service that may call identity may introspect tokens, never issue or revoke them);
/// a user service's own methods are all allowed (`*`), within that service's own checks.
pub fn call_actions(target: &str) -> &'static [&'static str] {
    match target {
        "identity" => &["introspect"],
        "registry" => &["resolve", "list"],
        "fs" => &["open", "read", "list", "stat", "close"],
        "audit" => &["record"],
        _ => &["*"],
    }
}

/// Checks a service name: 1..=48 characters from `[a-z0-9-]`, not starting with `-`.
pub fn check_service_name(name: &str) -> Result<(), ServiceNameError> {
    if name.is_empty() {
        return Err(ServiceNameError::Empty);
    }
    if let Some(found) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(ServiceNameError::InvalidCharacter {
            name: clip(name),
            found,
        });
    }
    if name.len() > 48 {
        return Err(ServiceNameError::TooLong { name: clip(name) });
    }
    if name.starts_with('-') {
        return Err(ServiceNameError::LeadingDash { name: clip(name) });
    }
    Ok(())
}

/// Checks that a path is absolute, normalized (no `.`, `..`, `//` or trailing `/`) and free of
/// control characters. The root `/` itself is accepted.
pub fn check_absolute_path(path: &str) -> Result<(), PathError> {
    if path.is_empty() {
        return Err(PathError::Empty);
    }
    if path.len() > 4095 {
        return Err(PathError::TooLong);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlCharacter { path: clip(path) });
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute { path: clip(path) });
    }
    if path.split('/').any(|c| c == "..") {
        return Err(PathError::ParentComponent { path: clip(path) });
    }
    let components: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let normalized = format!("/{}", components.join("/"));
    if normalized != path {
        return Err(PathError::NotNormalized {
            path: clip(path),
            normalized: clip(&normalized),
        });
    }
    Ok(())
}

/// True when `path` is `base` or lies beneath it (both normalized absolute paths).
pub fn path_is_beneath(path: &str, base: &str) -> bool {
    if base == "/" {
        return true;
    }
    path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn parse_port(kind: &'static str, arg: &str) -> Result<u16, CapabilityError> {
    let Some((protocol, port)) = arg.split_once(':') else {
        if arg == "udp" {
            return Err(CapabilityError::UnsupportedProtocol {
                kind,
                protocol: clip(arg),
            });
        }
        return Err(CapabilityError::MissingPort { kind });
    };
    if protocol != "tcp" {
        return Err(CapabilityError::UnsupportedProtocol {
            kind,
            protocol: clip(protocol),
        });
    }
    let invalid = || CapabilityError::InvalidPort { value: clip(port) };
    // Strict decimal: no sign, no leading zero, no whitespace.
    if port.is_empty() {
        return Err(CapabilityError::MissingPort { kind });
    }
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.starts_with('0') || port.len() > 5 {
        return Err(invalid());
    }
    let n: u32 = port.parse().map_err(|_| invalid())?;
    u16::try_from(n).map_err(|_| invalid())
}

impl Capability {
    /// Parses one capability string such as `fs.read:/srv/www` or `net.bind:tcp:8080`.
    pub fn parse(text: &str) -> Result<Capability, CapabilityError> {
        if text.is_empty() {
            return Err(CapabilityError::Empty);
        }
        let (kind_text, arg) = match text.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (text, None),
        };
        let Some(kind) = CAPABILITY_KINDS.iter().copied().find(|k| *k == kind_text) else {
            return Err(CapabilityError::UnknownKind {
                kind: clip(kind_text),
                suggestion: closest(kind_text, CAPABILITY_KINDS),
            });
        };
        let example = match kind {
            "fs.read" => "fs.read:/srv/www",
            "fs.write" => "fs.write:/var/lib/app",
            "net.bind" => "net.bind:tcp:8080",
            "net.connect" => "net.connect:tcp:5432",
            "call" => "call:fs",
            _ => "sys.cap:CAP_NET_ADMIN",
        };
        let arg = match arg {
            Some(a) if !a.is_empty() => a,
            _ => return Err(CapabilityError::MissingArgument { kind, example }),
        };
        match kind {
            "fs.read" | "fs.write" => {
                check_absolute_path(arg)
                    .map_err(|source| CapabilityError::Path { kind, source })?;
                if kind == "fs.write" {
                    if arg == "/" {
                        return Err(CapabilityError::WritableRoot);
                    }
                    Ok(Capability::FsWrite(arg.to_owned()))
                } else {
                    Ok(Capability::FsRead(arg.to_owned()))
                }
            }
            "net.bind" => parse_port(kind, arg).map(Capability::NetBind),
            "net.connect" => parse_port(kind, arg).map(Capability::NetConnect),
            "call" => {
                check_service_name(arg)
                    .map_err(|source| CapabilityError::ServiceName { source })?;
                Ok(Capability::Call(arg.to_owned()))
            }
            _ => {
                if LINUX_CAPABILITIES.contains(&arg) {
                    Ok(Capability::SysCap(arg.to_owned()))
                } else {
                    // `net_admin`, `CAP_NET_ADMN`, `NET_ADMIN` all deserve a pointer.
                    let upper = arg.to_ascii_uppercase();
                    let prefixed = if upper.starts_with("CAP_") {
                        upper
                    } else {
                        format!("CAP_{upper}")
                    };
                    let suggestion = LINUX_CAPABILITIES
                        .iter()
                        .copied()
                        .find(|c| *c == prefixed)
                        .or_else(|| closest(&prefixed, LINUX_CAPABILITIES));
                    Err(CapabilityError::UnknownLinuxCapability {
                        name: clip(arg),
                        suggestion,
                    })
                }
            }
        }
    }

    /// The kind as written in the manifest (`fs.read`).
    pub fn kind(&self) -> &'static str {
        match self {
            Capability::FsRead(_) => "fs.read",
            Capability::FsWrite(_) => "fs.write",
            Capability::NetBind(_) => "net.bind",
            Capability::NetConnect(_) => "net.connect",
            Capability::Call(_) => "call",
            Capability::SysCap(_) => "sys.cap",
        }
    }

    /// True for the capabilities that need the network (and lift `PrivateNetwork`).
    pub fn is_network(&self) -> bool {
        matches!(self, Capability::NetBind(_) | Capability::NetConnect(_))
    }
}

impl std::fmt::Display for Capability {
    /// The canonical text form; `Capability::parse` of it gives the same value back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Capability::FsRead(p) => write!(f, "fs.read:{p}"),
            Capability::FsWrite(p) => write!(f, "fs.write:{p}"),
            Capability::NetBind(n) => write!(f, "net.bind:tcp:{n}"),
            Capability::NetConnect(n) => write!(f, "net.connect:tcp:{n}"),
            Capability::Call(s) => write!(f, "call:{s}"),
            Capability::SysCap(c) => write!(f, "sys.cap:{c}"),
        }
    }
}

impl std::str::FromStr for Capability {
    type Err = CapabilityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Capability::parse(text) {
            Ok(c) => panic!("{text} parsed as {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_kind_parses_and_round_trips() {
        let cases = [
            ("fs.read:/srv/www", Capability::FsRead("/srv/www".into())),
            ("fs.read:/", Capability::FsRead("/".into())),
            (
                "fs.write:/var/lib/app",
                Capability::FsWrite("/var/lib/app".into()),
            ),
            ("net.bind:tcp:8080", Capability::NetBind(8080)),
            ("net.bind:tcp:1", Capability::NetBind(1)),
            ("net.connect:tcp:65535", Capability::NetConnect(65535)),
            ("call:fs", Capability::Call("fs".into())),
            (
                "sys.cap:CAP_NET_ADMIN",
                Capability::SysCap("CAP_NET_ADMIN".into()),
            ),
            (
                "sys.cap:CAP_CHECKPOINT_RESTORE",
                Capability::SysCap("CAP_CHECKPOINT_RESTORE".into()),
            ),
        ];
        for (text, expected) in cases {
            let parsed = Capability::parse(text).expect(text);
            assert_eq!(parsed, expected);
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn errors_are_precise() {
        let cases = [
            (
                "",
                "empty capability: expected KIND:ARGUMENT, e.g. \"fs.read:/srv/www\"",
            ),
            (
                "fs.reed:/srv",
                "unknown capability kind `fs.reed` (did you mean `fs.read`?): expected one of fs.read, fs.write, net.bind, net.connect, call, sys.cap",
            ),
            (
                "dance",
                "unknown capability kind `dance`: expected one of fs.read, fs.write, net.bind, net.connect, call, sys.cap",
            ),
            (
                "fs.read",
                "`fs.read` needs an argument, e.g. \"fs.read:/srv/www\"",
            ),
            ("call:", "`call` needs an argument, e.g. \"call:fs\""),
            (
                "fs.read:srv",
                "`fs.read` path `srv` is not absolute: expected a path starting with /",
            ),
            (
                "fs.write:/srv/../etc",
                "`fs.write` path `/srv/../etc` contains `..`: expected a path without parent components",
            ),
            (
                "fs.read:/srv//www/",
                "`fs.read` path `/srv//www/` is not normalized: write `/srv/www`",
            ),
            (
                "fs.read:/srv/./www",
                "`fs.read` path `/srv/./www` is not normalized: write `/srv/www`",
            ),
            (
                "fs.read:/srv/\0x",
                "`fs.read` path \"/srv/\\0x\" contains a control character (NUL, newline, …)",
            ),
            (
                "fs.write:/",
                "fs.write:/ would make the whole file system writable: name the directories the service writes",
            ),
            (
                "net.bind:udp:53",
                "`net.bind:udp` is not supported: Landlock can only restrict TCP, so only `net.bind:tcp:PORT` is accepted",
            ),
            (
                "net.bind:tcp",
                "`net.bind` needs a protocol and a port, e.g. \"net.bind:tcp:8080\"",
            ),
            (
                "net.connect:8080",
                "`net.connect` needs a protocol and a port, e.g. \"net.connect:tcp:8080\"",
            ),
            (
                "net.connect:udp",
                "`net.connect:udp` is not supported: Landlock can only restrict TCP, so only `net.connect:tcp:PORT` is accepted",
            ),
            (
                "net.bind:tcp:0",
                "invalid port `0`: expected a decimal number from 1 to 65535",
            ),
            (
                "net.bind:tcp:65536",
                "invalid port `65536`: expected a decimal number from 1 to 65535",
            ),
            (
                "net.bind:tcp:080",
                "invalid port `080`: expected a decimal number from 1 to 65535",
            ),
            (
                "net.bind:tcp:+80",
                "invalid port `+80`: expected a decimal number from 1 to 65535",
            ),
            (
                "net.bind:tcp:",
                "`net.bind` needs a protocol and a port, e.g. \"net.bind:tcp:8080\"",
            ),
            (
                "call:Web",
                "`call` target `Web` contains 'W': expected only a-z, 0-9 and -",
            ),
            (
                "call:-web",
                "`call` target `-web` starts with `-`: expected a letter or digit first",
            ),
            (
                "sys.cap:net_admin",
                "unknown Linux capability `net_admin` (did you mean `CAP_NET_ADMIN`?): expected a name from capabilities(7) such as CAP_NET_ADMIN",
            ),
            (
                "sys.cap:CAP_NET_ADMN",
                "unknown Linux capability `CAP_NET_ADMN` (did you mean `CAP_NET_ADMIN`?): expected a name from capabilities(7) such as CAP_NET_ADMIN",
            ),
            (
                "sys.cap:CAP_EVERYTHING",
                "unknown Linux capability `CAP_EVERYTHING`: expected a name from capabilities(7) such as CAP_NET_ADMIN",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(err(text), expected, "for {text:?}");
        }
    }

    #[test]
    fn service_names() {
        assert_eq!(check_service_name("web-2"), Ok(()));
        assert_eq!(check_service_name(&"a".repeat(48)), Ok(()));
        assert!(matches!(
            check_service_name(&"a".repeat(49)),
            Err(ServiceNameError::TooLong { .. })
        ));
        assert_eq!(check_service_name(""), Err(ServiceNameError::Empty));
        assert!(matches!(
            check_service_name("web_1"),
            Err(ServiceNameError::InvalidCharacter { found: '_', .. })
        ));
    }

    #[test]
    fn huge_inputs_are_clipped_in_messages() {
        let long = "x".repeat(100_000);
        for text in [
            format!("fs.read:/{long}"),
            format!("net.bind:{long}"),
            format!("net.bind:tcp:{long}"),
            format!("call:{long}"),
            format!("sys.cap:{long}"),
            format!("{long}:x"),
        ] {
            let message = err(&text);
            assert!(
                message.len() < 400,
                "{} bytes: {}",
                message.len(),
                &message[..200]
            );
        }
    }

    #[test]
    fn beneath() {
        assert!(path_is_beneath("/srv/www/a", "/srv/www"));
        assert!(path_is_beneath("/srv/www", "/srv/www"));
        assert!(!path_is_beneath("/srv/wwwx", "/srv/www"));
        assert!(path_is_beneath("/anything", "/"));
    }

    #[test]
    fn linux_capability_table_is_in_bit_order_and_unique() {
        let mut sorted = LINUX_CAPABILITIES.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), LINUX_CAPABILITIES.len());
        assert_eq!(LINUX_CAPABILITIES[10], "CAP_NET_BIND_SERVICE");
        assert_eq!(LINUX_CAPABILITIES[21], "CAP_SYS_ADMIN");
        assert_eq!(LINUX_CAPABILITIES[40], "CAP_CHECKPOINT_RESTORE");
    }
}
