//! The derived unit: what a service becomes when it is started (systemd properties + Landlock).
//!
//! The property names are those of systemd's unit-file vocabulary (`MemoryMax`, `ProtectSystem`);
//! how each value is encoded on D-Bus is the business of strata-systemd alone.

use serde::{Deserialize, Serialize};

/// Everything needed to start one service as a transient unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpec {
    /// Service name as declared in the manifest (`web`).
    pub service: String,
    /// Unit name, always `strata-<service>.service`.
    pub unit: String,
    /// Human description shown by `systemctl status`.
    pub description: String,
    /// Slice, always `strata.slice`.
    pub slice: String,
    /// The full ExecStart argv (argv[0] is an absolute path; usually strata-launch wrapping the
    /// service's own exec).
    pub exec: Vec<String>,
    /// Typed systemd properties in a stable order (baseline, then capabilities, then budgets).
    pub properties: Vec<Property>,
    /// The Landlock ruleset strata-launch applies before exec'ing the service.
    pub landlock: LandlockRuleset,
    /// Stable hash of everything above (hex); recorded on the unit so that an unchanged running
    /// unit is adopted and a changed one is rolled.
    pub spec_hash: String,
}

/// One systemd property with a typed value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Property {
    pub name: String,
    pub value: PropValue,
}

impl Property {
    pub fn new(name: impl Into<String>, value: PropValue) -> Self {
        Self {
            name: name.into(),
            value,
        }
    }
}

/// The value shapes systemd's transient-unit properties need. strata-systemd maps each shape to
/// the D-Bus signature systemd expects for the named property.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PropValue {
    Bool(bool),
    Str(String),
    U64(u64),
    U32(u32),
    /// A list of strings (`as`), e.g. ReadWritePaths, Environment, SystemCallArchitectures.
    Strings(Vec<String>),
    /// An allow-or-deny list (`bas`): RestrictAddressFamilies, SystemCallFilter. `allow = true`
    /// means the list is an allow-list.
    List {
        allow: bool,
        items: Vec<String>,
    },
    /// Linux capability names (`CAP_NET_BIND_SERVICE`), encoded as a bitmask on D-Bus
    /// (CapabilityBoundingSet, AmbientCapabilities). Empty = no capabilities.
    Capabilities(Vec<String>),
    /// `SocketBindAllow`/`SocketBindDeny` entries: (address family, protocol, port).
    SocketBind(Vec<SocketBind>),
    /// `LoadCredential` entries: (credential id, absolute source path).
    Credentials(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketBind {
    /// `AF_INET`, `AF_INET6` or `any` (systemd's "no family given").
    pub family: String,
    /// `tcp` or `udp`.
    pub protocol: String,
    pub port: u16,
}

/// The Landlock rules of one service, applied by strata-launch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockRuleset {
    /// Paths readable (and executable, for exec's needs) beneath.
    pub read: Vec<String>,
    /// Paths readable and writable beneath (create/remove included).
    pub write: Vec<String>,
    /// TCP ports the service may bind.
    pub bind_tcp: Vec<u16>,
    /// TCP ports the service may connect to.
    pub connect_tcp: Vec<u16>,
    /// When true, a kernel that cannot fully enforce the ruleset does not stop the launch (the
    /// operator explicitly allowed a degraded sandbox).
    pub allow_degraded: bool,
}
