//! Turns a [`UnitSpec`] into the property list of `StartTransientUnit`.
//!
//! Each property name maps to the one D-Bus signature systemd 252 accepts for it; a name the
//! table does not know is an error, never silently dropped (a dropped hardening option would be
//! a silently weaker sandbox).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use strata_core::unit::{PropValue, SocketBind, UnitSpec};
use zbus::zvariant::Value;

use super::names::is_strata_unit;

/// The environment variable that records the spec hash on the unit.
pub const SPEC_HASH_ENV: &str = "STRATA_SPEC_HASH";

/// Why a spec cannot be turned into a transient unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("unit name {unit:?} is not of the form strata-<name>.service")]
    UnitName { unit: String },
    #[error("ExecStart of {unit} is invalid: {reason}")]
    ExecStart { unit: String, reason: String },
    #[error("spec hash {hash:?} of {unit} is not a non-empty alphanumeric string")]
    SpecHash { unit: String, hash: String },
    #[error("property {property} of {unit} is not supported by the systemd driver")]
    UnsupportedProperty { unit: String, property: String },
    #[error("property {property} of {unit} is set by the driver itself and may not be given")]
    ReservedProperty { unit: String, property: String },
    #[error("property {property} of {unit} needs {expected}, got {found}")]
    WrongShape {
        unit: String,
        property: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("property {property} of {unit} has invalid value {value:?}: {reason}")]
    BadValue {
        unit: String,
        property: String,
        value: String,
        reason: String,
    },
}

/// A spec encoded for `StartTransientUnit`.
#[derive(Debug, Clone, PartialEq)]
pub struct TransientUnit {
    pub name: String,
    pub properties: Vec<(String, Value<'static>)>,
}

/// How one property is encoded on D-Bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `t`
    U64,
    /// `u`
    U32,
    /// `u`, given as a number or an octal string (`"0077"`)
    Mode,
    /// `i`
    I32,
    /// `b`
    Bool,
    /// `s`
    Str,
    /// `s` that systemd also documents as a boolean (`ProtectSystem=yes`)
    StrOrBool,
    /// `as`
    Strings,
    /// `(bas)`: allow-list flag and items
    AllowList,
    /// `t`: a capability bitmask from `CAP_*` names
    Capabilities,
    /// `a(iiqq)`: family, protocol, number of ports, first port
    SocketBind,
    /// `a(ss)`: credential id, source path
    LoadCredential,
    /// `a(say)`: credential id, value
    SetCredential,
    /// `a(iayu)`: family, address bytes, prefix length
    IpAddresses,
    /// `t`: namespace flags allowed; `true` = none allowed, `false` = all allowed
    Namespaces,
}

/// The signature table. Kept sorted by kind for review; lookups are linear over a short list.
fn kind_of(name: &str) -> Option<Kind> {
    use Kind::*;
    let kind = match name {
        "MemoryMax"
        | "MemoryHigh"
        | "MemoryLow"
        | "MemoryMin"
        | "MemorySwapMax"
        | "TasksMax"
        | "CPUQuotaPerSecUSec"
        | "CPUQuotaPeriodUSec"
        | "CPUWeight"
        | "StartupCPUWeight"
        | "IOWeight"
        | "StartupIOWeight"
        | "TimeoutStartUSec"
        | "TimeoutStopUSec"
        | "TimeoutAbortUSec"
        | "RuntimeMaxUSec"
        | "WatchdogUSec"
        | "RestartUSec"
        | "StartLimitIntervalUSec"
        | "LimitCPU"
        | "LimitFSIZE"
        | "LimitDATA"
        | "LimitSTACK"
        | "LimitCORE"
        | "LimitRSS"
        | "LimitNOFILE"
        | "LimitAS"
        | "LimitNPROC"
        | "LimitMEMLOCK"
        | "LimitLOCKS"
        | "LimitSIGPENDING"
        | "LimitMSGQUEUE"
        | "LimitNICE"
        | "LimitRTPRIO"
        | "LimitRTTIME" => U64,
        "StartLimitBurst" => U32,
        "UMask"
        | "RuntimeDirectoryMode"
        | "StateDirectoryMode"
        | "CacheDirectoryMode"
        | "LogsDirectoryMode"
        | "ConfigurationDirectoryMode" => Mode,
        "Nice" | "OOMScoreAdjust" | "SystemCallErrorNumber" => I32,
        "DynamicUser"
        | "NoNewPrivileges"
        | "PrivateTmp"
        | "PrivateDevices"
        | "PrivateNetwork"
        | "PrivateUsers"
        | "PrivateMounts"
        | "PrivateIPC"
        | "ProtectKernelTunables"
        | "ProtectKernelModules"
        | "ProtectKernelLogs"
        | "ProtectControlGroups"
        | "ProtectClock"
        | "ProtectHostname"
        | "RestrictRealtime"
        | "RestrictSUIDSGID"
        | "LockPersonality"
        | "MemoryDenyWriteExecute"
        | "RemoveIPC"
        | "RemainAfterExit"
        | "MemoryAccounting"
        | "TasksAccounting"
        | "CPUAccounting"
        | "IOAccounting"
        | "IPAccounting"
        | "Delegate"
        | "SendSIGKILL"
        | "SendSIGHUP"
        | "IgnoreSIGPIPE" => Bool,
        "Type"
        | "ProtectProc"
        | "ProcSubset"
        | "DevicePolicy"
        | "CollectMode"
        | "KillMode"
        | "NotifyAccess"
        | "User"
        | "Group"
        | "WorkingDirectory"
        | "RootDirectory"
        | "StandardInput"
        | "StandardOutput"
        | "StandardError"
        | "SyslogIdentifier"
        | "KeyringMode"
        | "OOMPolicy"
        | "RuntimeDirectoryPreserve"
        | "PAMName"
        | "Personality"
        | "ExitType" => Str,
        "ProtectSystem" | "ProtectHome" => StrOrBool,
        "ReadWritePaths"
        | "ReadOnlyPaths"
        | "InaccessiblePaths"
        | "ExecPaths"
        | "NoExecPaths"
        | "Environment"
        | "UnsetEnvironment"
        | "PassEnvironment"
        | "SystemCallArchitectures"
        | "SupplementaryGroups"
        | "RuntimeDirectory"
        | "StateDirectory"
        | "CacheDirectory"
        | "LogsDirectory"
        | "ConfigurationDirectory"
        | "Wants"
        | "Requires"
        | "After"
        | "Before"
        | "BindsTo"
        | "PartOf"
        | "Conflicts" => Strings,
        "RestrictAddressFamilies"
        | "SystemCallFilter"
        | "RestrictFileSystems"
        | "SystemCallLog" => AllowList,
        "CapabilityBoundingSet" | "AmbientCapabilities" => Capabilities,
        "SocketBindAllow" | "SocketBindDeny" => SocketBind,
        "LoadCredential" | "LoadCredentialEncrypted" => LoadCredential,
        "SetCredential" | "SetCredentialEncrypted" => SetCredential,
        "IPAddressAllow" | "IPAddressDeny" => IpAddresses,
        "RestrictNamespaces" => Namespaces,
        _ => return None,
    };
    Some(kind)
}

/// Properties the driver sets itself: a spec may not carry them (Restart only as `no`).
const RESERVED: &[&str] = &["Description", "Slice", "ExecStart", "Restart"];

/// CLONE_NEWCGROUP | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUSER |
/// CLONE_NEWUTS: systemd's "all namespaces allowed".
const ALL_NAMESPACES: u64 =
    0x0200_0000 | 0x0800_0000 | 0x4000_0000 | 0x0002_0000 | 0x2000_0000 | 0x1000_0000 | 0x0400_0000;

fn shape(v: &PropValue) -> &'static str {
    match v {
        PropValue::Bool(_) => "a boolean",
        PropValue::Str(_) => "a string",
        PropValue::U64(_) => "a 64-bit number",
        PropValue::U32(_) => "a 32-bit number",
        PropValue::Strings(_) => "a list of strings",
        PropValue::List { .. } => "an allow/deny list",
        PropValue::Capabilities(_) => "a list of capabilities",
        PropValue::SocketBind(_) => "socket-bind entries",
        PropValue::Credentials(_) => "credential entries",
    }
}

/// Encodes `spec` for `StartTransientUnit`: ExecStart, Description, Slice, Type (default
/// `exec`), Restart=no, CollectMode (default `inactive`, so a failed unit stays visible until
/// reset-failed), StartLimitIntervalUSec (default 0: no systemd start rate limit), every spec
/// property, and `STRATA_SPEC_HASH` in the environment.
pub fn encode(spec: &UnitSpec) -> Result<TransientUnit, SpecError> {
    let unit = spec.unit.as_str();
    if !is_strata_unit(unit) {
        return Err(SpecError::UnitName {
            unit: unit.to_owned(),
        });
    }
    let exec_err = |reason: &str| SpecError::ExecStart {
        unit: unit.to_owned(),
        reason: reason.to_owned(),
    };
    let Some(program) = spec.exec.first() else {
        return Err(exec_err("the argv is empty"));
    };
    if !program.starts_with('/') {
        return Err(exec_err(&format!("{program:?} is not an absolute path")));
    }
    if spec.exec.iter().any(|a| a.contains('\0')) {
        return Err(exec_err("an argument contains a NUL byte"));
    }
    if spec.spec_hash.is_empty() || !spec.spec_hash.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(SpecError::SpecHash {
            unit: unit.to_owned(),
            hash: spec.spec_hash.clone(),
        });
    }

    let mut props: Vec<(String, Value<'static>)> = Vec::with_capacity(spec.properties.len() + 8);
    props.push(("Description".into(), Value::from(spec.description.clone())));
    props.push(("Slice".into(), Value::from(spec.slice.clone())));
    // ExecStartEx with `no-env-expand`: systemd would otherwise expand `$VAR` and `${VAR}` in
    // the argv (a manifest's `sh -c '… ${f##*/} …'` would lose its shell syntax). The argv
    // runs exactly as declared.
    let exec_start = vec![(
        program.clone(),
        spec.exec.clone(),
        vec!["no-env-expand".to_owned()],
    )];
    props.push(("ExecStartEx".into(), Value::from(exec_start)));
    props.push(("Restart".into(), Value::from("no")));
    if !spec.properties.iter().any(|p| p.name == "Type") {
        props.push(("Type".into(), Value::from("exec")));
    }
    if !spec.properties.iter().any(|p| p.name == "CollectMode") {
        props.push(("CollectMode".into(), Value::from("inactive")));
    }
    // The supervisor restarts a crashed unit in place (StartUnit): systemd's own start rate
    // limit (5 starts in 10 s by default) would refuse the sixth restart of a crash loop with
    // "start request repeated too quickly". Backoff and quarantine are the supervisor's.
    if !spec
        .properties
        .iter()
        .any(|p| p.name == "StartLimitIntervalUSec")
    {
        props.push(("StartLimitIntervalUSec".into(), Value::from(0u64)));
    }

    let mut env_seen = false;
    for p in &spec.properties {
        if p.name == "Restart" && p.value == PropValue::Str("no".into()) {
            continue;
        }
        if RESERVED.contains(&p.name.as_str()) {
            return Err(SpecError::ReservedProperty {
                unit: unit.to_owned(),
                property: p.name.clone(),
            });
        }
        let mut value = encode_property(&p.name, &p.value).map_err(|e| e.for_unit(unit))?;
        if p.name == "Environment" {
            // The hash goes last in the first Environment property: later assignments win.
            if let (false, Value::Array(arr)) = (env_seen, &mut value) {
                arr.append(Value::from(format!("{SPEC_HASH_ENV}={}", spec.spec_hash)))
                    .map_err(|e| SpecError::BadValue {
                        unit: unit.to_owned(),
                        property: p.name.clone(),
                        value: SPEC_HASH_ENV.into(),
                        reason: e.to_string(),
                    })?;
                env_seen = true;
            }
        }
        props.push((p.name.clone(), value));
    }
    if !env_seen {
        props.push((
            "Environment".into(),
            Value::from(vec![format!("{SPEC_HASH_ENV}={}", spec.spec_hash)]),
        ));
    }
    Ok(TransientUnit {
        name: unit.to_owned(),
        properties: props,
    })
}

/// A property error before the unit name is attached.
#[derive(Debug)]
enum PropErr {
    Unsupported,
    Shape(&'static str, &'static str),
    Value(String, String),
}

impl PropErr {
    fn bad(value: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Value(value.into(), reason.into())
    }
}

struct NamedPropErr {
    property: String,
    err: PropErr,
}

impl NamedPropErr {
    fn for_unit(self, unit: &str) -> SpecError {
        let unit = unit.to_owned();
        let property = self.property;
        match self.err {
            PropErr::Unsupported => SpecError::UnsupportedProperty { unit, property },
            PropErr::Shape(expected, found) => SpecError::WrongShape {
                unit,
                property,
                expected,
                found,
            },
            PropErr::Value(value, reason) => SpecError::BadValue {
                unit,
                property,
                value,
                reason,
            },
        }
    }
}

fn encode_property(name: &str, value: &PropValue) -> Result<Value<'static>, NamedPropErr> {
    let named = |err| NamedPropErr {
        property: name.to_owned(),
        err,
    };
    let kind = kind_of(name).ok_or_else(|| named(PropErr::Unsupported))?;
    encode_kind(kind, value).map_err(named)
}

fn encode_kind(kind: Kind, value: &PropValue) -> Result<Value<'static>, PropErr> {
    let wrong = |expected| PropErr::Shape(expected, shape(value));
    Ok(match (kind, value) {
        (Kind::U64, PropValue::U64(n)) => Value::U64(*n),
        (Kind::U64, PropValue::U32(n)) => Value::U64(u64::from(*n)),
        (Kind::U64, PropValue::Str(s)) if s == "infinity" => Value::U64(u64::MAX),
        (Kind::U64, _) => return Err(wrong("a 64-bit number or \"infinity\"")),
        (Kind::U32, PropValue::U32(n)) => Value::U32(*n),
        (Kind::U32, PropValue::U64(n)) => Value::U32(
            u32::try_from(*n).map_err(|_| PropErr::bad(n.to_string(), "does not fit 32 bits"))?,
        ),
        (Kind::U32, _) => return Err(wrong("a 32-bit number")),
        (Kind::Mode, PropValue::U32(n)) if *n <= 0o7777 => Value::U32(*n),
        (Kind::Mode, PropValue::Str(s)) => Value::U32(
            u32::from_str_radix(s, 8)
                .ok()
                .filter(|m| *m <= 0o7777)
                .ok_or_else(|| PropErr::bad(s, "not an octal mode up to 7777"))?,
        ),
        (Kind::Mode, PropValue::U32(n)) => {
            return Err(PropErr::bad(format!("{n:o}"), "mode above 7777"));
        }
        (Kind::Mode, _) => return Err(wrong("an octal mode (number or string)")),
        (Kind::I32, PropValue::Str(s)) => Value::I32(match errno_number(s) {
            Some(n) => n,
            None => s
                .parse::<i32>()
                .map_err(|e| PropErr::bad(s, e.to_string()))?,
        }),
        (Kind::I32, _) => return Err(wrong("a signed number as a string")),
        (Kind::Bool, PropValue::Bool(b)) => Value::Bool(*b),
        (Kind::Bool, PropValue::Str(s)) => {
            Value::Bool(parse_bool(s).ok_or_else(|| PropErr::bad(s, "not a boolean"))?)
        }
        (Kind::Bool, _) => return Err(wrong("a boolean")),
        (Kind::Str | Kind::StrOrBool, PropValue::Str(s)) => Value::from(s.clone()),
        (Kind::StrOrBool, PropValue::Bool(b)) => Value::from(if *b { "yes" } else { "no" }),
        (Kind::Str, _) => return Err(wrong("a string")),
        (Kind::StrOrBool, _) => return Err(wrong("a string or a boolean")),
        (Kind::Strings, PropValue::Strings(v)) => Value::from(v.clone()),
        (Kind::Strings, PropValue::Str(s)) => Value::from(vec![s.clone()]),
        (Kind::Strings, _) => return Err(wrong("a list of strings")),
        (Kind::AllowList, PropValue::List { allow, items }) => Value::from((*allow, items.clone())),
        (Kind::AllowList, _) => return Err(wrong("an allow/deny list")),
        (Kind::Capabilities, PropValue::Capabilities(names)) => Value::U64(cap_mask(names)?),
        (Kind::Capabilities, _) => return Err(wrong("a list of capabilities")),
        (Kind::SocketBind, PropValue::SocketBind(entries)) => {
            let items = entries
                .iter()
                .map(socket_bind)
                .collect::<Result<Vec<_>, _>>()?;
            Value::from(items)
        }
        (Kind::SocketBind, _) => return Err(wrong("socket-bind entries")),
        (Kind::LoadCredential, PropValue::Credentials(c)) => {
            for (id, path) in c {
                if !path.starts_with('/') {
                    return Err(PropErr::bad(
                        format!("{id}:{path}"),
                        "source is not an absolute path",
                    ));
                }
            }
            Value::from(c.clone())
        }
        (Kind::LoadCredential, _) => return Err(wrong("credential entries (id, path)")),
        (Kind::SetCredential, PropValue::Credentials(c)) => {
            let items: Vec<(String, Vec<u8>)> = c
                .iter()
                .map(|(id, v)| (id.clone(), v.as_bytes().to_vec()))
                .collect();
            Value::from(items)
        }
        (Kind::SetCredential, _) => return Err(wrong("credential entries (id, value)")),
        (Kind::IpAddresses, PropValue::Strings(v)) => {
            let mut items = Vec::new();
            for s in v {
                ip_prefixes(s, &mut items)?;
            }
            Value::from(items)
        }
        (Kind::IpAddresses, PropValue::Str(s)) => {
            let mut items = Vec::new();
            ip_prefixes(s, &mut items)?;
            Value::from(items)
        }
        (Kind::IpAddresses, _) => return Err(wrong("a list of address prefixes")),
        (Kind::Namespaces, PropValue::Bool(true)) => Value::U64(0),
        (Kind::Namespaces, PropValue::Bool(false)) => Value::U64(ALL_NAMESPACES),
        (Kind::Namespaces, PropValue::U64(n)) => Value::U64(*n),
        (Kind::Namespaces, _) => return Err(wrong("a boolean or a namespace-flag mask")),
    })
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "true" | "on" | "1" => Some(true),
        "no" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// The capability bitmask systemd expects: bit N set for capability number N.
fn cap_mask(names: &[String]) -> Result<u64, PropErr> {
    let mut mask = 0u64;
    for name in names {
        let cap = caps::Capability::from_str(name)
            .map_err(|_| PropErr::bad(name, "not a Linux capability name"))?;
        mask |= 1u64 << cap.index();
    }
    Ok(mask)
}

fn socket_bind(e: &SocketBind) -> Result<(i32, i32, u16, u16), PropErr> {
    let family = match e.family.as_str() {
        "AF_INET" | "ipv4" => libc::AF_INET,
        "AF_INET6" | "ipv6" => libc::AF_INET6,
        "any" => libc::AF_UNSPEC,
        other => {
            return Err(PropErr::bad(
                other,
                "family is not AF_INET, AF_INET6 or any",
            ));
        }
    };
    let protocol = match e.protocol.as_str() {
        "tcp" => libc::IPPROTO_TCP,
        "udp" => libc::IPPROTO_UDP,
        "any" => 0,
        other => return Err(PropErr::bad(other, "protocol is not tcp, udp or any")),
    };
    // Port 0 means every port (systemd's `SocketBindDeny=any` is (AF_UNSPEC, 0, 0, 0));
    // otherwise one port: (nr_ports = 1, port_min = port).
    let nr_ports = u16::from(e.port != 0);
    Ok((family, protocol, nr_ports, e.port))
}

/// Appends the (family, address, prefix) entries systemd expects for one IPAddressAllow/Deny
/// word: `any`, `localhost`, `link-local`, `multicast`, an address or a CIDR prefix.
fn ip_prefixes(word: &str, out: &mut Vec<(i32, Vec<u8>, u32)>) -> Result<(), PropErr> {
    let v4 = |a: Ipv4Addr, p: u32| (libc::AF_INET, a.octets().to_vec(), p);
    let v6 = |a: Ipv6Addr, p: u32| (libc::AF_INET6, a.octets().to_vec(), p);
    match word {
        "any" => {
            out.push(v4(Ipv4Addr::UNSPECIFIED, 0));
            out.push(v6(Ipv6Addr::UNSPECIFIED, 0));
        }
        "localhost" => {
            out.push(v4(Ipv4Addr::new(127, 0, 0, 0), 8));
            out.push(v6(Ipv6Addr::LOCALHOST, 128));
        }
        "link-local" => {
            out.push(v4(Ipv4Addr::new(169, 254, 0, 0), 16));
            out.push(v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 64));
        }
        "multicast" => {
            out.push(v4(Ipv4Addr::new(224, 0, 0, 0), 4));
            out.push(v6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8));
        }
        _ => {
            let (addr, prefix) = match word.split_once('/') {
                Some((a, p)) => (a, Some(p)),
                None => (word, None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| PropErr::bad(word, "not an IP address or prefix"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| PropErr::bad(word, "prefix length out of range"))?,
            };
            out.push(match addr {
                IpAddr::V4(a) => v4(a, prefix),
                IpAddr::V6(a) => v6(a, prefix),
            });
        }
    }
    Ok(())
}

/// Errno names systemd accepts in unit files where D-Bus wants the number
/// (`SystemCallErrorNumber=EPERM`).
fn errno_number(name: &str) -> Option<i32> {
    Some(match name {
        "EPERM" => libc::EPERM,
        "EACCES" => libc::EACCES,
        "ENOSYS" => libc::ENOSYS,
        "EINVAL" => libc::EINVAL,
        "ENOENT" => libc::ENOENT,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::unit::{LandlockRuleset, Property};

    fn spec(props: Vec<Property>) -> UnitSpec {
        UnitSpec {
            service: "web".into(),
            unit: "strata-web.service".into(),
            description: "Strata service web".into(),
            slice: "strata.slice".into(),
            exec: vec!["/bin/sleep".into(), "10".into()],
            properties: props,
            landlock: LandlockRuleset::default(),
            spec_hash: "abc123".into(),
        }
    }

    fn prop<'a>(t: &'a TransientUnit, name: &str) -> Option<&'a Value<'static>> {
        t.properties.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    fn sig(t: &TransientUnit, name: &str) -> String {
        prop(t, name)
            .map(|v| v.value_signature().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn signatures_match_what_systemd_accepts() {
        use PropValue::*;
        let t = encode(&spec(vec![
            Property::new("MemoryMax", U64(32 << 20)),
            Property::new("TasksMax", U64(8)),
            Property::new("CPUQuotaPerSecUSec", U64(500_000)),
            Property::new("IOWeight", U64(100)),
            Property::new("DynamicUser", Bool(true)),
            Property::new("ProtectSystem", Str("strict".into())),
            Property::new("ProtectHome", Bool(true)),
            Property::new("ProtectProc", Str("invisible".into())),
            Property::new(
                "RestrictAddressFamilies",
                List {
                    allow: true,
                    items: vec!["AF_UNIX".into()],
                },
            ),
            Property::new("SystemCallArchitectures", Strings(vec!["native".into()])),
            Property::new(
                "CapabilityBoundingSet",
                Capabilities(vec!["CAP_NET_BIND_SERVICE".into(), "CAP_CHOWN".into()]),
            ),
            Property::new(
                "SocketBindAllow",
                SocketBind(vec![strata_core::unit::SocketBind {
                    family: "AF_INET".into(),
                    protocol: "tcp".into(),
                    port: 8080,
                }]),
            ),
            Property::new(
                "LoadCredential",
                Credentials(vec![("t".into(), "/run/x".into())]),
            ),
            Property::new("SetCredential", Credentials(vec![("n".into(), "v".into())])),
            Property::new("UMask", Str("0077".into())),
            Property::new("IPAddressDeny", Strings(vec!["any".into()])),
            Property::new("RestrictNamespaces", Bool(true)),
            Property::new("WorkingDirectory", Str("/".into())),
        ]))
        .expect("valid spec");
        let expect = [
            ("ExecStartEx", "a(sasas)"),
            ("Description", "s"),
            ("Slice", "s"),
            ("Type", "s"),
            ("Restart", "s"),
            ("CollectMode", "s"),
            ("StartLimitIntervalUSec", "t"),
            ("MemoryMax", "t"),
            ("TasksMax", "t"),
            ("CPUQuotaPerSecUSec", "t"),
            ("IOWeight", "t"),
            ("DynamicUser", "b"),
            ("ProtectSystem", "s"),
            ("ProtectHome", "s"),
            ("ProtectProc", "s"),
            ("RestrictAddressFamilies", "(bas)"),
            ("SystemCallArchitectures", "as"),
            ("CapabilityBoundingSet", "t"),
            ("SocketBindAllow", "a(iiqq)"),
            ("LoadCredential", "a(ss)"),
            ("SetCredential", "a(say)"),
            ("UMask", "u"),
            ("IPAddressDeny", "a(iayu)"),
            ("RestrictNamespaces", "t"),
            ("WorkingDirectory", "s"),
            ("Environment", "as"),
        ];
        for (name, s) in expect {
            assert_eq!(sig(&t, name), s, "signature of {name}");
        }
        assert_eq!(prop(&t, "UMask"), Some(&Value::U32(0o077)));
        assert_eq!(
            prop(&t, "CapabilityBoundingSet"),
            Some(&Value::U64((1 << 10) | 1))
        );
        assert_eq!(prop(&t, "RestrictNamespaces"), Some(&Value::U64(0)));
        assert_eq!(prop(&t, "Type"), Some(&Value::from("exec")));
        assert_eq!(prop(&t, "Restart"), Some(&Value::from("no")));
        assert_eq!(
            prop(&t, "Environment"),
            Some(&Value::from(vec!["STRATA_SPEC_HASH=abc123".to_string()]))
        );
    }

    #[test]
    fn environment_keeps_the_spec_entries_and_adds_the_hash_last() {
        let t = encode(&spec(vec![Property::new(
            "Environment",
            PropValue::Strings(vec!["A=1".into()]),
        )]))
        .expect("valid spec");
        let envs: Vec<_> = t
            .properties
            .iter()
            .filter(|(n, _)| n == "Environment")
            .collect();
        assert_eq!(envs.len(), 1);
        assert_eq!(
            envs[0].1,
            Value::from(vec![
                "A=1".to_string(),
                "STRATA_SPEC_HASH=abc123".to_string()
            ])
        );
    }

    #[test]
    fn unknown_property_is_an_error_naming_it() {
        let err = encode(&spec(vec![Property::new(
            "ProtectEverything",
            PropValue::Bool(true),
        )]))
        .expect_err("unknown property");
        assert_eq!(
            err,
            SpecError::UnsupportedProperty {
                unit: "strata-web.service".into(),
                property: "ProtectEverything".into()
            }
        );
        // Positive control: a known boolean property is accepted.
        assert!(
            encode(&spec(vec![Property::new(
                "PrivateTmp",
                PropValue::Bool(true)
            )]))
            .is_ok()
        );
    }

    #[test]
    fn wrong_shapes_and_values_are_errors() {
        let e = encode(&spec(vec![Property::new(
            "MemoryMax",
            PropValue::Bool(true),
        )]));
        assert!(
            matches!(e, Err(SpecError::WrongShape { ref property, .. }) if property == "MemoryMax")
        );
        let e = encode(&spec(vec![Property::new(
            "CapabilityBoundingSet",
            PropValue::Capabilities(vec!["CAP_FLY".into()]),
        )]));
        assert!(matches!(e, Err(SpecError::BadValue { ref value, .. }) if value == "CAP_FLY"));
        let e = encode(&spec(vec![Property::new(
            "UMask",
            PropValue::Str("999".into()),
        )]));
        assert!(matches!(e, Err(SpecError::BadValue { .. })));
        let e = encode(&spec(vec![Property::new(
            "Slice",
            PropValue::Str("x.slice".into()),
        )]));
        assert!(matches!(e, Err(SpecError::ReservedProperty { .. })));
        let e = encode(&spec(vec![Property::new(
            "Restart",
            PropValue::Str("always".into()),
        )]));
        assert!(matches!(e, Err(SpecError::ReservedProperty { .. })));
        let mut s = spec(vec![]);
        s.unit = "web.service".into();
        assert!(matches!(encode(&s), Err(SpecError::UnitName { .. })));
        let mut s = spec(vec![]);
        s.exec = vec!["sleep".into()];
        assert!(matches!(encode(&s), Err(SpecError::ExecStart { .. })));
        let mut s = spec(vec![]);
        s.spec_hash = "a b".into();
        assert!(matches!(encode(&s), Err(SpecError::SpecHash { .. })));
    }

    #[test]
    fn ip_prefixes_parse() {
        let mut out = Vec::new();
        ip_prefixes("10.0.0.0/8", &mut out).expect("cidr");
        ip_prefixes("::1", &mut out).expect("v6");
        assert_eq!(out[0], (libc::AF_INET, vec![10, 0, 0, 0], 8));
        assert_eq!(out[1].2, 128);
        assert!(ip_prefixes("10.0.0.0/33", &mut out).is_err());
        assert!(ip_prefixes("nonsense", &mut out).is_err());
    }
}
