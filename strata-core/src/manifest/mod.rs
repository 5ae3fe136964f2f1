//! The manifest: the declared node, services and core-service configuration, parsed from TOML
//! and validated (every error located at file:line:column, several reported at once).
//!
//! Parsing is pure: the caller reads the file and passes its name and text to
//! [`Manifest::parse`]. The schema is documented in docs/manifest.md.

mod error;
mod parse;
pub(crate) mod suggest;

use std::collections::BTreeMap;
use std::time::Duration;

pub use error::{Location, Locations, ManifestError, ManifestErrorKind, ManifestErrors};

use crate::capability::Capability;
use crate::quantity::CpuQuota;

/// Default `[node] runtime_dir`: sockets, published public key, token files.
pub const DEFAULT_RUNTIME_DIR: &str = "/run/strata";
/// Default `[node] state_dir`: durable state of the core services.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/strata";
/// Default `[node] binaries_dir`: where `strata-launch` and the core service binaries live
/// (the package's libexec directory; the NixOS module sets it to the package's store path).
pub const DEFAULT_BINARIES_DIR: &str = "/usr/lib/strata";

/// The core services, part of every graph unless disabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CoreService {
    Identity,
    Registry,
    Fs,
    Audit,
}

impl CoreService {
    pub const ALL: [CoreService; 4] = [
        CoreService::Identity,
        CoreService::Registry,
        CoreService::Fs,
        CoreService::Audit,
    ];

    /// The service name (`identity`), also the key of its `[core.<name>]` table.
    pub fn name(self) -> &'static str {
        match self {
            CoreService::Identity => "identity",
            CoreService::Registry => "registry",
            CoreService::Fs => "fs",
            CoreService::Audit => "audit",
        }
    }

    /// The binary in `binaries_dir` (`strata-identity`).
    pub fn binary(self) -> &'static str {
        match self {
            CoreService::Identity => "strata-identity",
            CoreService::Registry => "strata-registry",
            CoreService::Fs => "strata-fs",
            CoreService::Audit => "strata-audit",
        }
    }

    pub fn from_name(name: &str) -> Option<CoreService> {
        CoreService::ALL.into_iter().find(|c| c.name() == name)
    }
}

/// Names no user service may take: the core services, and `supervisor` (a valid `call:`
/// target served by strata-supervisor itself, not a unit of the graph).
pub const RESERVED_NAMES: [&str; 5] = ["identity", "registry", "fs", "audit", "supervisor"];

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub node: NodeConfig,
    /// The user services, by name (core services are in `core`; see [`Manifest::all_services`]).
    pub services: BTreeMap<String, ServiceDecl>,
    pub core: CoreConfig,
    /// Source positions, for errors found after parsing (the service graph).
    pub locations: Locations,
}

/// `[node]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: String,
    pub runtime_dir: String,
    pub state_dir: String,
    pub binaries_dir: String,
    /// Let services start when the kernel cannot fully enforce their Landlock ruleset.
    pub allow_degraded_sandbox: bool,
}

/// Whether a service is one of the user's or a core service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKind {
    User,
    Core(CoreService),
}

/// When systemd considers the service started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum ReadyMode {
    /// Started once the binary has been executed (`Type=exec`).
    #[default]
    Exec,
    /// Started when the service sends `READY=1` (`Type=notify`).
    Notify,
}

/// One service of the graph (user or core), fully typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDecl {
    pub kind: ServiceKind,
    /// The command line; `exec[0]` is an absolute path.
    pub exec: Vec<String>,
    /// Declared capabilities, in the order written (duplicates removed).
    pub capabilities: Vec<Capability>,
    /// Ordering and gating: start only once these run.
    pub after: Vec<String>,
    /// Accepted for readers used to systemd's `Requires=`: exactly the same meaning as
    /// `after` (ordering and gating). Strata never stops a running service because a
    /// dependency failed; the dependency is restarted and the dependent's calls fail meanwhile.
    pub requires: Vec<String>,
    pub budget: Budget,
    pub restart: RestartConfig,
    pub environment: BTreeMap<String, String>,
    pub working_directory: Option<String>,
    pub ready: ReadyMode,
    /// Per-service override of `[node] allow_degraded_sandbox`.
    pub allow_degraded_sandbox: Option<bool>,
}

/// Resource budgets; `None` = no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// `MemoryMax=` in bytes.
    pub memory: Option<u64>,
    /// `CPUQuotaPerSecUSec=`.
    pub cpu: Option<CpuQuota>,
    /// `TasksMax=`.
    pub tasks: Option<u64>,
    /// `IOWeight=` (1..=10000).
    pub io: Option<u16>,
}

/// `restart = { initial, max, reset_after, quarantine = { crashes, window } }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartConfig {
    /// First backoff delay (the cap of the first jittered delay).
    pub initial: Duration,
    /// Largest backoff delay.
    pub max: Duration,
    /// Healthy running time after which the backoff starts again from `initial`.
    pub reset_after: Duration,
    /// Failures within `quarantine_window` that quarantine the service.
    pub quarantine_crashes: u32,
    pub quarantine_window: Duration,
}

impl Default for RestartConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
            quarantine_crashes: 5,
            quarantine_window: Duration::from_secs(600),
        }
    }
}

impl RestartConfig {
    /// The reconciler's view of these settings.
    pub fn policy(&self) -> crate::reconcile::RestartPolicy {
        crate::reconcile::RestartPolicy {
            initial: self.initial,
            max: self.max,
            reset_after: self.reset_after,
            quarantine_crashes: self.quarantine_crashes,
            quarantine_window: self.quarantine_window,
        }
    }
}

impl ServiceDecl {
    /// The restart policy the reconciler applies to this service.
    pub fn restart_policy(&self) -> crate::reconcile::RestartPolicy {
        self.restart.policy()
    }
}

/// Settings every `[core.<name>]` table accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreServiceSettings {
    /// `enable = false` leaves the service out of the graph.
    pub enable: bool,
    pub budget: Budget,
    pub restart: RestartConfig,
    pub allow_degraded_sandbox: Option<bool>,
}

impl Default for CoreServiceSettings {
    fn default() -> Self {
        Self {
            enable: true,
            budget: Budget::default(),
            restart: RestartConfig::default(),
            allow_degraded_sandbox: None,
        }
    }
}

/// `[core.identity]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    pub settings: CoreServiceSettings,
    /// TTL of a token issued without `ttl_seconds` (default 1h).
    pub token_ttl_default: Duration,
    /// Largest TTL identity.issue grants (default 24h).
    pub token_ttl_max: Duration,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            settings: CoreServiceSettings::default(),
            token_ttl_default: Duration::from_secs(3600),
            token_ttl_max: Duration::from_secs(86_400),
        }
    }
}

/// `[core.fs]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FsConfig {
    pub settings: CoreServiceSettings,
    /// Directories fs may serve; each becomes an fs.read (or fs.write) capability of fs.
    pub roots: Vec<String>,
    pub writable: bool,
}

/// `[core.registry]` and `[core.audit]`: only the common settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlainCoreConfig {
    pub settings: CoreServiceSettings,
}

/// `[core.*]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CoreConfig {
    pub identity: IdentityConfig,
    pub registry: PlainCoreConfig,
    pub fs: FsConfig,
    pub audit: PlainCoreConfig,
}

impl CoreConfig {
    pub fn settings(&self, which: CoreService) -> &CoreServiceSettings {
        match which {
            CoreService::Identity => &self.identity.settings,
            CoreService::Registry => &self.registry.settings,
            CoreService::Fs => &self.fs.settings,
            CoreService::Audit => &self.audit.settings,
        }
    }

    pub fn enabled(&self, which: CoreService) -> bool {
        self.settings(which).enable
    }
}

impl Manifest {
    /// Parses and validates a manifest. `file` is used only in error locations.
    pub fn parse(file: &str, text: &str) -> Result<Manifest, ManifestErrors> {
        parse::parse(file, text)
    }

    /// Every error, plus (unless the TOML is broken) a best-effort manifest of what could be
    /// read, used only to look for further errors in the same run.
    pub(crate) fn parse_best_effort(file: &str, text: &str) -> (Option<Manifest>, ManifestErrors) {
        parse::parse_best_effort(file, text)
    }

    /// The state directory of one core service (`<state_dir>/<name>`).
    pub fn core_state_dir(&self, which: CoreService) -> String {
        format!("{}/{}", self.node.state_dir, which.name())
    }

    /// The declaration of an enabled core service: its exec line (binary in `binaries_dir`
    /// plus the flags documented in docs/manifest.md), its own capabilities and dependencies.
    pub fn core_service(&self, which: CoreService) -> Option<ServiceDecl> {
        let settings = self.core.settings(which);
        if !settings.enable {
            return None;
        }
        let node = &self.node;
        let mut exec = vec![
            format!("{}/{}", node.binaries_dir, which.binary()),
            "--node-id".to_owned(),
            node.id.clone(),
            "--runtime-dir".to_owned(),
            node.runtime_dir.clone(),
        ];
        // A core service is a DynamicUser unit: it cannot create files in <runtime_dir> (root's)
        // and listens in its own runtime directory <runtime_dir>/<name> (RuntimeDirectory=,
        // see derive), which the supervisor links as <runtime_dir>/<name>.sock. It reads the
        // rest of <runtime_dir>: identity.pub and the other services' socket links.
        let mut capabilities = vec![
            Capability::FsRead(node.runtime_dir.clone()),
            Capability::FsWrite(format!("{}/{}", node.runtime_dir, which.name())),
        ];
        match which {
            CoreService::Identity | CoreService::Registry | CoreService::Audit => {
                let state = self.core_state_dir(which);
                exec.push("--state-dir".to_owned());
                exec.push(state.clone());
                capabilities.push(Capability::FsWrite(state));
            }
            CoreService::Fs => {
                for root in &self.core.fs.roots {
                    exec.push("--root".to_owned());
                    exec.push(root.clone());
                    capabilities.push(if self.core.fs.writable {
                        Capability::FsWrite(root.clone())
                    } else {
                        Capability::FsRead(root.clone())
                    });
                }
                if self.core.fs.writable {
                    exec.push("--writable".to_owned());
                }
            }
        }
        // fs and registry ship their authorization decisions to audit, with the token of a
        // `call:audit` capability (as DynamicUser units they have no other authority there).
        if matches!(which, CoreService::Fs | CoreService::Registry)
            && self.core.enabled(CoreService::Audit)
        {
            capabilities.push(Capability::Call(CoreService::Audit.name().to_owned()));
        }
        if which == CoreService::Identity {
            exec.push("--token-ttl-default".to_owned());
            exec.push(self.core.identity.token_ttl_default.as_secs().to_string());
            exec.push("--token-ttl-max".to_owned());
            exec.push(self.core.identity.token_ttl_max.as_secs().to_string());
        }
        // Everything but identity verifies tokens with identity's published key.
        let after = if which == CoreService::Identity || !self.core.identity.settings.enable {
            Vec::new()
        } else {
            vec![CoreService::Identity.name().to_owned()]
        };
        Some(ServiceDecl {
            kind: ServiceKind::Core(which),
            exec,
            capabilities,
            after,
            requires: Vec::new(),
            budget: settings.budget,
            restart: settings.restart,
            environment: BTreeMap::new(),
            working_directory: None,
            // Core services send READY=1 once their socket listens: a service ordered after
            // them starts only when it can connect.
            ready: ReadyMode::Notify,
            allow_degraded_sandbox: settings.allow_degraded_sandbox,
        })
    }

    /// Every service of the graph: the enabled core services and the user services.
    pub fn all_services(&self) -> BTreeMap<String, ServiceDecl> {
        let mut all: BTreeMap<String, ServiceDecl> = CoreService::ALL
            .into_iter()
            .filter_map(|c| self.core_service(c).map(|d| (c.name().to_owned(), d)))
            .collect();
        for (name, decl) in &self.services {
            all.insert(name.clone(), decl.clone());
        }
        all
    }

    /// One service of the graph by name (user or enabled core service).
    pub fn service(&self, name: &str) -> Option<ServiceDecl> {
        if let Some(decl) = self.services.get(name) {
            return Some(decl.clone());
        }
        CoreService::from_name(name).and_then(|c| self.core_service(c))
    }

    /// Whether a degraded sandbox is allowed for this service (its override, else the node's).
    pub fn allow_degraded_sandbox(&self, decl: &ServiceDecl) -> bool {
        decl.allow_degraded_sandbox
            .unwrap_or(self.node.allow_degraded_sandbox)
    }
}

#[cfg(test)]
mod tests;
