//! Sandbox derivation: one service of the manifest → the [`UnitSpec`] it is started as
//! (systemd properties: hardened baseline, then what capabilities, budgets and settings add;
//! the Landlock ruleset strata-launch applies; the spec hash). docs/capabilities.md explains
//! every setting.

use std::collections::BTreeSet;

use crate::capability::{Capability, LINUX_CAPABILITIES};
use crate::launch_args::{self, LaunchArgs};
use crate::manifest::{Manifest, ReadyMode, ServiceDecl, ServiceKind};
use crate::quantity::format_size;
use crate::unit::{LandlockRuleset, PropValue, Property, SocketBind, UnitSpec};

/// The slice every Strata unit lives in.
pub const SLICE: &str = "strata.slice";

/// Linux capabilities whose purpose is a syscall of systemd's `@privileged` set (chown, setuid,
/// capset, chroot, clock, module, raw I/O, reboot, swap, bpf, open_by_handle_at, acct): keeping
/// one lifts the `~@privileged` deny list, or the capability would be useless.
const PRIVILEGED_SYSCALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_FOWNER",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SYS_CHROOT",
    "CAP_SYS_TIME",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_BOOT",
    "CAP_SYS_ADMIN",
    "CAP_BPF",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYS_PACCT",
];

/// Where the launcher binary is; everything else comes from the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Absolute path of strata-launch.
    pub launcher: String,
}

impl LaunchConfig {
    /// `<binaries_dir>/strata-launch`.
    pub fn for_manifest(manifest: &Manifest) -> Self {
        Self {
            launcher: format!("{}/strata-launch", manifest.node.binaries_dir),
        }
    }
}

/// Why a unit could not be derived.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveError {
    #[error("no service named `{name}` in the manifest (or it is a disabled core service)")]
    UnknownService { name: String },
}

/// The unit name of a service: `strata-<service>.service` (one definition, in the reconciler).
pub use crate::reconcile::unit_name;

/// The token file the supervisor writes for `service`'s `call:<target>` capability.
pub fn token_path(runtime_dir: &str, service: &str, target: &str) -> String {
    format!("{runtime_dir}/credentials/{service}/{target}.token")
}

/// The systemd credential id under which that token appears in `$CREDENTIALS_DIRECTORY`.
pub fn token_credential_id(target: &str) -> String {
    format!("strata-token-{target}")
}

/// Derives the unit of one service (user or enabled core service).
pub fn derive_unit(
    manifest: &Manifest,
    service: &str,
    launch: &LaunchConfig,
) -> Result<UnitSpec, DeriveError> {
    let decl = manifest
        .service(service)
        .ok_or_else(|| DeriveError::UnknownService {
            name: service.to_owned(),
        })?;
    Ok(derive_decl(manifest, service, &decl, launch))
}

/// Derives the unit of every service of the manifest, by name.
pub fn derive_all(
    manifest: &Manifest,
    launch: &LaunchConfig,
) -> std::collections::BTreeMap<String, UnitSpec> {
    manifest
        .all_services()
        .into_iter()
        .map(|(name, decl)| {
            let spec = derive_decl(manifest, &name, &decl, launch);
            (name, spec)
        })
        .collect()
}

fn derive_decl(
    manifest: &Manifest,
    service: &str,
    decl: &ServiceDecl,
    launch: &LaunchConfig,
) -> UnitSpec {
    // Canonical order: reordering capabilities in the manifest changes nothing.
    let caps: BTreeSet<&Capability> = decl.capabilities.iter().collect();
    let landlock = landlock_ruleset(manifest, decl, &caps);
    let keep_caps = kept_capabilities(&caps);

    let described: Vec<String> = caps.iter().map(ToString::to_string).collect();
    let what = match decl.kind {
        ServiceKind::User => "Strata service",
        ServiceKind::Core(_) => "Strata core service",
    };
    let description = if described.is_empty() {
        format!("{what} {service} (no capabilities)")
    } else {
        format!("{what} {service} (capabilities: {})", described.join(", "))
    };

    let exec = launch_args::encode(
        &launch.launcher,
        &LaunchArgs {
            service: service.to_owned(),
            ruleset: landlock.clone(),
            keep_caps: keep_caps.clone(),
            argv: decl.exec.clone(),
        },
    );

    let properties = properties(manifest, service, decl, &caps, &keep_caps);
    let mut spec = UnitSpec {
        service: service.to_owned(),
        unit: unit_name(service),
        description,
        slice: SLICE.to_owned(),
        exec,
        properties,
        landlock,
        spec_hash: String::new(),
    };
    spec.spec_hash = spec_hash(&spec);
    spec
}

fn landlock_ruleset(
    manifest: &Manifest,
    decl: &ServiceDecl,
    caps: &BTreeSet<&Capability>,
) -> LandlockRuleset {
    let mut read = BTreeSet::new();
    // The unit's private /tmp and /var/tmp (PrivateTmp=yes): scratch space that no other
    // service shares, so writing there grants nothing beyond the service itself.
    let mut write: BTreeSet<String> = ["/tmp", "/var/tmp"].into_iter().map(String::from).collect();
    let mut bind = BTreeSet::new();
    let mut connect = BTreeSet::new();
    for cap in caps {
        match cap {
            Capability::FsRead(p) => {
                read.insert(p.clone());
            }
            Capability::FsWrite(p) => {
                write.insert(p.clone());
            }
            Capability::NetBind(port) => {
                bind.insert(*port);
            }
            Capability::NetConnect(port) => {
                connect.insert(*port);
            }
            Capability::Call(_) | Capability::SysCap(_) => {}
        }
    }
    if let Some(wd) = &decl.working_directory {
        read.insert(wd.clone());
    }
    LandlockRuleset {
        read: read.into_iter().collect(),
        write: write.into_iter().collect(),
        bind_tcp: bind.into_iter().collect(),
        connect_tcp: connect.into_iter().collect(),
        allow_degraded: manifest.allow_degraded_sandbox(decl),
    }
}

/// The Linux capabilities the service keeps, in bit order: `sys.cap` ones, plus
/// CAP_NET_BIND_SERVICE for a `net.bind` port below 1024.
fn kept_capabilities(caps: &BTreeSet<&Capability>) -> Vec<String> {
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    for cap in caps {
        match cap {
            Capability::SysCap(name) => {
                kept.insert(name.as_str());
            }
            Capability::NetBind(port) if *port < 1024 => {
                kept.insert("CAP_NET_BIND_SERVICE");
            }
            _ => {}
        }
    }
    LINUX_CAPABILITIES
        .iter()
        .filter(|c| kept.contains(**c))
        .map(|c| (*c).to_owned())
        .collect()
}

fn prop(name: &str, value: PropValue) -> Property {
    Property::new(name, value)
}

fn yes(name: &str) -> Property {
    prop(name, PropValue::Bool(true))
}

fn properties(
    manifest: &Manifest,
    service: &str,
    decl: &ServiceDecl,
    caps: &BTreeSet<&Capability>,
    keep_caps: &[String],
) -> Vec<Property> {
    let keeps = |c: &str| keep_caps.iter().any(|k| k == c);
    let network = caps.iter().any(|c| c.is_network());
    let mut p = Vec::new();

    // Lifecycle: the supervisor restarts, systemd must not.
    let unit_type = match decl.ready {
        ReadyMode::Exec => "exec",
        ReadyMode::Notify => "notify",
    };
    p.push(prop("Type", PropValue::Str(unit_type.to_owned())));
    p.push(prop("Restart", PropValue::Str("no".to_owned())));

    // Hardened baseline.
    p.push(yes("DynamicUser"));
    p.push(prop("ProtectSystem", PropValue::Str("strict".to_owned())));
    p.push(prop("ProtectHome", PropValue::Str("yes".to_owned())));
    p.push(yes("PrivateTmp"));
    p.push(yes("PrivateDevices"));
    if !network {
        p.push(yes("PrivateNetwork"));
    }
    p.push(yes("NoNewPrivileges"));
    p.push(yes("ProtectKernelTunables"));
    p.push(prop(
        "ProtectKernelModules",
        PropValue::Bool(!keeps("CAP_SYS_MODULE")),
    ));
    p.push(prop(
        "ProtectKernelLogs",
        PropValue::Bool(!keeps("CAP_SYSLOG")),
    ));
    p.push(yes("ProtectControlGroups"));
    p.push(prop(
        "ProtectClock",
        PropValue::Bool(!keeps("CAP_SYS_TIME")),
    ));
    p.push(yes("ProtectHostname"));
    p.push(prop("ProtectProc", PropValue::Str("invisible".to_owned())));
    p.push(prop("ProcSubset", PropValue::Str("pid".to_owned())));
    p.push(yes("RestrictNamespaces"));
    p.push(prop(
        "RestrictRealtime",
        PropValue::Bool(!keeps("CAP_SYS_NICE")),
    ));
    p.push(yes("RestrictSUIDSGID"));
    p.push(yes("LockPersonality"));
    p.push(yes("MemoryDenyWriteExecute"));

    // strata-launch applies the Landlock ruleset inside the unit, after systemd installed
    // this filter: @system-service (systemd 252) lacks the three Landlock calls.
    let mut allowed: Vec<String> = [
        "@system-service",
        "landlock_create_ruleset",
        "landlock_add_rule",
        "landlock_restrict_self",
    ]
    .map(str::to_owned)
    .to_vec();
    if keeps("CAP_SYS_TIME") {
        allowed.push("@clock".to_owned());
    }
    if keeps("CAP_SYS_MODULE") {
        allowed.push("@module".to_owned());
    }
    p.push(prop(
        "SystemCallFilter",
        PropValue::List {
            allow: true,
            items: allowed,
        },
    ));
    let mut denied = Vec::new();
    if !PRIVILEGED_SYSCALL_CAPS.iter().any(|c| keeps(c)) {
        denied.push("@privileged".to_owned());
    }
    if !keeps("CAP_SYS_NICE") && !keeps("CAP_SYS_RESOURCE") {
        denied.push("@resources".to_owned());
    }
    if !denied.is_empty() {
        p.push(prop(
            "SystemCallFilter",
            PropValue::List {
                allow: false,
                items: denied,
            },
        ));
    }
    // A filtered call fails with EPERM instead of killing the process with SIGSYS: programs
    // that probe an optional syscall keep working, and the journal shows a clean error.
    p.push(prop(
        "SystemCallErrorNumber",
        PropValue::Str("EPERM".to_owned()),
    ));
    p.push(prop(
        "SystemCallArchitectures",
        PropValue::Strings(vec!["native".to_owned()]),
    ));
    p.push(prop(
        "CapabilityBoundingSet",
        PropValue::Capabilities(keep_caps.to_vec()),
    ));
    if !keep_caps.is_empty() {
        p.push(prop(
            "AmbientCapabilities",
            PropValue::Capabilities(keep_caps.to_vec()),
        ));
    }
    p.push(prop("UMask", PropValue::U32(0o077)));
    // The system bus could ask systemd for an unsandboxed unit: hide it. `-` = skip if absent.
    p.push(prop(
        "InaccessiblePaths",
        PropValue::Strings(vec!["-/run/dbus".to_owned(), "-/var/run/dbus".to_owned()]),
    ));
    let mut families = vec!["AF_UNIX".to_owned()];
    if network {
        families.push("AF_INET".to_owned());
        families.push("AF_INET6".to_owned());
    }
    p.push(prop(
        "RestrictAddressFamilies",
        PropValue::List {
            allow: true,
            items: families,
        },
    ));

    // Capabilities.
    if network {
        let binds: Vec<SocketBind> = caps
            .iter()
            .filter_map(|c| match c {
                Capability::NetBind(port) => Some(SocketBind {
                    family: "any".to_owned(),
                    protocol: "tcp".to_owned(),
                    port: *port,
                }),
                _ => None,
            })
            .collect();
        if !binds.is_empty() {
            p.push(prop("SocketBindAllow", PropValue::SocketBind(binds)));
        }
        // `any` with port 0 is systemd's "everything" entry: bind nothing but the above.
        p.push(prop(
            "SocketBindDeny",
            PropValue::SocketBind(vec![SocketBind {
                family: "any".to_owned(),
                protocol: "any".to_owned(),
                port: 0,
            }]),
        ));
    }
    // A core service is a DynamicUser unit and cannot create anything in <runtime_dir> or
    // <state_dir>, both root's: systemd creates its own directories there, owned by its
    // dynamic user and writable despite ProtectSystem=strict (validation keeps runtime_dir
    // beneath /run and state_dir beneath /var/lib for core services). It listens on
    // <runtime_dir>/<name>/<name>.sock; the supervisor links <runtime_dir>/<name>.sock to it.
    let mut own_dirs: Vec<String> = Vec::new();
    if let ServiceKind::Core(core) = decl.kind {
        let runtime = format!("{}/{service}", manifest.node.runtime_dir);
        if let Some(rel) = runtime.strip_prefix("/run/") {
            p.push(prop(
                "RuntimeDirectory",
                PropValue::Strings(vec![rel.to_owned()]),
            ));
            own_dirs.push(runtime);
        }
        let state = manifest.core_state_dir(core);
        if caps.contains(&Capability::FsWrite(state.clone()))
            && let Some(rel) = state.strip_prefix("/var/lib/")
        {
            p.push(prop(
                "StateDirectory",
                PropValue::Strings(vec![rel.to_owned()]),
            ));
            // The root key lives there: the owner only.
            p.push(prop("StateDirectoryMode", PropValue::U32(0o700)));
            own_dirs.push(state);
        }
    }
    let writable: Vec<String> = caps
        .iter()
        .filter_map(|c| match c {
            Capability::FsWrite(path) if !own_dirs.contains(path) => Some(path.clone()),
            _ => None,
        })
        .collect();
    if !writable.is_empty() {
        p.push(prop("ReadWritePaths", PropValue::Strings(writable)));
    }
    let credentials: Vec<(String, String)> = caps
        .iter()
        .filter_map(|c| match c {
            Capability::Call(target) => Some((
                token_credential_id(target),
                token_path(&manifest.node.runtime_dir, service, target),
            )),
            _ => None,
        })
        .collect();
    if !credentials.is_empty() {
        p.push(prop("LoadCredential", PropValue::Credentials(credentials)));
    }

    // Budgets.
    let budget = &decl.budget;
    if let Some(bytes) = budget.memory {
        p.push(prop("MemoryMax", PropValue::U64(bytes)));
    }
    if let Some(cpu) = budget.cpu {
        p.push(prop("CPUQuotaPerSecUSec", PropValue::U64(cpu.usec_per_sec)));
    }
    if let Some(tasks) = budget.tasks {
        p.push(prop("TasksMax", PropValue::U64(tasks)));
    }
    if let Some(io) = budget.io {
        p.push(prop("IOWeight", PropValue::U64(u64::from(io))));
    }

    // Settings.
    if !decl.environment.is_empty() {
        p.push(prop(
            "Environment",
            PropValue::Strings(
                decl.environment
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect(),
            ),
        ));
    }
    if let Some(wd) = &decl.working_directory {
        p.push(prop("WorkingDirectory", PropValue::Str(wd.clone())));
    }
    p
}

/// BLAKE3 over a canonical, length-prefixed encoding of everything derived (service, unit,
/// description, slice, exec, properties in order, Landlock ruleset); hex. The encoding is
/// written by hand, not by serde, so that it never depends on a library's formatting.
pub fn spec_hash(spec: &UnitSpec) -> String {
    let mut h = Canon(blake3::Hasher::new());
    h.bytes(b"strata.unitspec.v1");
    h.str(&spec.service);
    h.str(&spec.unit);
    h.str(&spec.description);
    h.str(&spec.slice);
    h.strs(&spec.exec);
    h.len(spec.properties.len());
    for property in &spec.properties {
        h.str(&property.name);
        match &property.value {
            PropValue::Bool(b) => {
                h.tag(1);
                h.tag(u8::from(*b));
            }
            PropValue::Str(s) => {
                h.tag(2);
                h.str(s);
            }
            PropValue::U64(n) => {
                h.tag(3);
                h.0.update(&n.to_le_bytes());
            }
            PropValue::U32(n) => {
                h.tag(4);
                h.0.update(&n.to_le_bytes());
            }
            PropValue::Strings(items) => {
                h.tag(5);
                h.strs(items);
            }
            PropValue::List { allow, items } => {
                h.tag(6);
                h.tag(u8::from(*allow));
                h.strs(items);
            }
            PropValue::Capabilities(items) => {
                h.tag(7);
                h.strs(items);
            }
            PropValue::SocketBind(items) => {
                h.tag(8);
                h.len(items.len());
                for b in items {
                    h.str(&b.family);
                    h.str(&b.protocol);
                    h.0.update(&b.port.to_le_bytes());
                }
            }
            PropValue::Credentials(items) => {
                h.tag(9);
                h.len(items.len());
                for (id, path) in items {
                    h.str(id);
                    h.str(path);
                }
            }
        }
    }
    let l = &spec.landlock;
    h.strs(&l.read);
    h.strs(&l.write);
    h.len(l.bind_tcp.len());
    for port in &l.bind_tcp {
        h.0.update(&port.to_le_bytes());
    }
    h.len(l.connect_tcp.len());
    for port in &l.connect_tcp {
        h.0.update(&port.to_le_bytes());
    }
    h.tag(u8::from(l.allow_degraded));
    h.0.finalize().to_hex().to_string()
}

/// Length-prefixed writer: no two different specs share an encoding.
struct Canon(blake3::Hasher);

impl Canon {
    fn len(&mut self, n: usize) {
        self.0.update(&(n as u64).to_le_bytes());
    }
    fn tag(&mut self, t: u8) {
        self.0.update(&[t]);
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn strs(&mut self, items: &[String]) {
        self.len(items.len());
        for s in items {
            self.str(s);
        }
    }
}

/// Renders a property in unit-file syntax (`MemoryMax=256M`); properties with several
/// entries per line in unit files (LoadCredential) give one line each.
pub fn render_property(property: &Property) -> Vec<String> {
    let name = property.name.as_str();
    let line = |value: String| format!("{name}={value}");
    match &property.value {
        PropValue::Bool(b) => vec![line(if *b { "yes" } else { "no" }.to_owned())],
        PropValue::Str(s) => vec![line(s.clone())],
        PropValue::U32(n) if name == "UMask" || name.ends_with("DirectoryMode") => {
            vec![line(format!("{n:04o}"))]
        }
        PropValue::U64(n) if name == "MemoryMax" => vec![line(format_size(*n))],
        PropValue::U64(n) if name == "CPUQuotaPerSecUSec" => {
            // The unit-file spelling of the same setting is CPUQuota= in percent.
            let quota = crate::quantity::CpuQuota { usec_per_sec: *n };
            vec![format!("CPUQuota={quota}")]
        }
        PropValue::U64(n) => vec![line(n.to_string())],
        PropValue::U32(n) => vec![line(n.to_string())],
        PropValue::Strings(items) => vec![line(
            items.iter().map(|s| quote(s)).collect::<Vec<_>>().join(" "),
        )],
        PropValue::List { allow, items } => {
            let list = items.join(" ");
            vec![line(if *allow { list } else { format!("~{list}") })]
        }
        PropValue::Capabilities(items) => vec![line(items.join(" "))],
        PropValue::SocketBind(items) => vec![line(
            items
                .iter()
                .map(render_socket_bind)
                .collect::<Vec<_>>()
                .join(" "),
        )],
        PropValue::Credentials(items) => items
            .iter()
            .map(|(id, path)| line(format!("{id}:{}", quote(path))))
            .collect(),
    }
}

fn render_socket_bind(b: &SocketBind) -> String {
    if b.protocol == "any" && b.port == 0 {
        return "any".to_owned();
    }
    let family = match b.family.as_str() {
        "AF_INET" => "ipv4:",
        "AF_INET6" => "ipv6:",
        _ => "",
    };
    format!("{family}{}:{}", b.protocol, b.port)
}

/// Quotes a word for unit-file syntax when it has characters the parser would split on, and
/// doubles `%` (specifiers are expanded in unit files, not in what strata sends over D-Bus).
fn quote(s: &str) -> String {
    let s = s.replace('%', "%%");
    if !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '\\')
    {
        return s;
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Renders an argv for an `ExecStart=` line, quoting words that need it (and doubling `$`,
/// which systemd would otherwise expand from the environment).
pub fn render_exec(argv: &[String]) -> String {
    argv.iter()
        .map(|a| quote(&a.replace('$', "$$")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The human-readable form of a unit (used by `strata-ctl check --explain`): name, slice,
/// description, ExecStart, every property in unit-file syntax, the Landlock rules and the
/// kept capabilities, and the spec hash.
pub fn render_unit(spec: &UnitSpec) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} (service {}, slice {})",
        spec.unit, spec.service, spec.slice
    );
    let _ = writeln!(out, "  Description={}", spec.description);
    let _ = writeln!(out, "  ExecStart={}", render_exec(&spec.exec));
    for property in &spec.properties {
        for line in render_property(property) {
            let _ = writeln!(out, "  {line}");
        }
    }
    let l = &spec.landlock;
    let list = |items: &[String]| {
        if items.is_empty() {
            "(nothing)".to_owned()
        } else {
            items.join(" ")
        }
    };
    let ports = |items: &[u16]| {
        if items.is_empty() {
            "(none)".to_owned()
        } else {
            items
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let _ = writeln!(
        out,
        "  Landlock (applied by strata-launch, plus what exec needs):"
    );
    let _ = writeln!(out, "    read beneath:  {}", list(&l.read));
    let _ = writeln!(out, "    write beneath: {}", list(&l.write));
    let _ = writeln!(out, "    bind tcp:      {}", ports(&l.bind_tcp));
    let _ = writeln!(out, "    connect tcp:   {}", ports(&l.connect_tcp));
    let _ = writeln!(
        out,
        "    if the kernel cannot enforce all of it: {}",
        if l.allow_degraded {
            "start anyway (allow_degraded_sandbox)"
        } else {
            "refuse to start"
        }
    );
    let _ = writeln!(out, "  spec hash: {}", spec.spec_hash);
    out
}
