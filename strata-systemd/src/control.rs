//! The supervisor's control plane: the D-Bus interface `org.strata.Supervisor1`, its client proxy,
//! and the admin check on callers.
//!
//! The interface object holds no supervisor state: every call becomes a [`ControlRequest`] sent to
//! the supervisor loop, which answers on a oneshot channel. That keeps the loop the single owner
//! of the reconciler and lets the loop be tested without a bus.
//!
//! `Metrics()` renders the supervisor's metrics (Prometheus text) from the reconciler's status,
//! taken through the same request as `ListServices`, and the driver's counters.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use strata_core::metrics::Metrics;
use tokio::sync::{mpsc, oneshot};
use zbus::object_server::SignalEmitter;
use zbus::zvariant::Type;
use zbus::{fdo, interface, message::Header, proxy};

use crate::systemd::DriverMetrics;

/// Well-known bus name, interface name and object path of the supervisor.
pub const BUS_NAME: &str = "org.strata.Supervisor1";
pub const OBJECT_PATH: &str = "/org/strata/Supervisor1";
/// The group whose members may call mutating methods (besides uid 0).
pub const DEFAULT_ADMIN_GROUP: &str = "strata-admin";

/// One service as the control plane reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct ServiceInfo {
    pub name: String,
    /// The unit that runs it (`strata-web.service`).
    pub unit: String,
    /// declared, waiting, starting, running, exited, failed, backing-off, quarantined, stopped.
    pub state: String,
    /// Main PID as systemd reports it (0 when not running). In a PID namespace this is the PID
    /// inside that namespace.
    pub main_pid: u32,
    /// Restarts the supervisor made since the service was declared or released.
    pub restarts: u32,
    /// When the service entered its state, microseconds since the Unix epoch (0 = unknown).
    pub since_usec: u64,
    /// Why it is in this state (for waiting, backing-off, quarantined: a sentence).
    pub reason: String,
    /// How it last ended (`killed by signal 9`), empty when it never did.
    pub last_exit: String,
}

/// A request from the D-Bus front end to the supervisor loop.
#[derive(Debug)]
pub enum ControlRequest {
    List(oneshot::Sender<Vec<ServiceInfo>>),
    Get(String, oneshot::Sender<Result<ServiceInfo, ControlError>>),
    Start(String, oneshot::Sender<Result<(), ControlError>>),
    Stop(String, oneshot::Sender<Result<(), ControlError>>),
    Restart(String, oneshot::Sender<Result<(), ControlError>>),
    Release(String, oneshot::Sender<Result<(), ControlError>>),
    /// Re-read the manifest; answers with the new configuration version.
    Reload(oneshot::Sender<Result<u64, ControlError>>),
}

/// Why a control request was refused, mapped to D-Bus error names under
/// `org.strata.Supervisor1.Error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("unknown service `{0}`")]
    UnknownService(String),
    #[error("service `{name}` is not quarantined (it is {state})")]
    NotQuarantined { name: String, state: String },
    /// Start or stop of a quarantined service (the reconciler's refusal).
    #[error("service `{name}` is quarantined ({reason}); release it first")]
    Quarantined { name: String, reason: String },
    #[error("invalid manifest, the running graph is unchanged: {0}")]
    InvalidManifest(String),
    #[error("{0}")]
    Failed(String),
}

/// D-Bus errors of `org.strata.Supervisor1`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.strata.Supervisor1.Error")]
pub enum SupervisorBusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller is neither uid 0 nor in the admin group.
    AccessDenied(String),
    UnknownService(String),
    NotQuarantined(String),
    InvalidManifest(String),
    /// The supervisor loop is gone (shutting down).
    Unavailable(String),
    Failed(String),
}

impl From<ControlError> for SupervisorBusError {
    fn from(e: ControlError) -> Self {
        let msg = e.to_string();
        match e {
            ControlError::UnknownService(_) => Self::UnknownService(msg),
            ControlError::NotQuarantined { .. } => Self::NotQuarantined(msg),
            // Same D-Bus error as before the variant existed: D-Bus clients see no change.
            ControlError::Quarantined { .. } => Self::Failed(msg),
            ControlError::InvalidManifest(_) => Self::InvalidManifest(msg),
            ControlError::Failed(_) => Self::Failed(msg),
        }
    }
}

/// Who may call mutating methods: uid 0, or members of `admin_gid` (when the group exists).
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    pub admin_group: String,
    pub admin_gid: Option<u32>,
}

impl AdminPolicy {
    /// Resolves `group` through the system's group database (absent group: only root is admin).
    pub fn resolve(group: &str) -> Self {
        Self {
            admin_group: group.to_owned(),
            admin_gid: lookup_gid(group),
        }
    }

    /// Decides from the caller's credentials as the bus daemon reports them.
    pub fn allows(&self, uid: Option<u32>, gids: Option<&[u32]>) -> bool {
        match uid {
            Some(0) => true,
            Some(_) => match (self.admin_gid, gids) {
                (Some(admin), Some(gids)) => gids.contains(&admin),
                _ => false,
            },
            None => false,
        }
    }
}

fn lookup_gid(group: &str) -> Option<u32> {
    let name = std::ffi::CString::new(group).ok()?;
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call and `buf` outlives it; getgrnam_r is reentrant.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// The supervisor's metrics in Prometheus text: `service_restarts_total{service}` for every
/// declared service (the reconciler's count of automatic restarts, 0 included) and
/// `bus_lagged_total` (systemd events the driver dropped).
/// Written into `metrics`, the supervisor's registry, which also holds what `supervisor.sock`
/// counts (request latencies, `rejected_total{reason}`).
pub fn render_metrics(
    metrics: &Metrics,
    services: &[ServiceInfo],
    bus_lagged_total: u64,
) -> String {
    for s in services {
        metrics.set_restarts_total(&s.name, u64::from(s.restarts));
    }
    metrics.set_bus_lagged_total(bus_lagged_total);
    metrics.render()
}

/// The object served at `/org/strata/Supervisor1`.
#[derive(Debug)]
pub struct SupervisorInterface {
    requests: mpsc::Sender<ControlRequest>,
    policy: AdminPolicy,
    node_id: String,
    /// The driver's counters, for `Metrics()` (absent: `bus_lagged_total` reads 0).
    driver_metrics: Option<Arc<DriverMetrics>>,
    /// The supervisor's metrics registry.
    registry: Arc<Metrics>,
}

impl SupervisorInterface {
    pub fn new(
        requests: mpsc::Sender<ControlRequest>,
        policy: AdminPolicy,
        node_id: String,
    ) -> Self {
        Self {
            requests,
            policy,
            node_id,
            driver_metrics: None,
            registry: Arc::new(Metrics::new()),
        }
    }

    /// Renders `Metrics()` from this registry (shared with `supervisor.sock`).
    #[must_use]
    pub fn with_registry(mut self, registry: Arc<Metrics>) -> Self {
        self.registry = registry;
        self
    }

    /// Reports these driver counters (`SystemdDriver::metrics()`) through `Metrics()`.
    #[must_use]
    pub fn with_driver_metrics(mut self, metrics: Arc<DriverMetrics>) -> Self {
        self.driver_metrics = Some(metrics);
        self
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
    ) -> Result<T, SupervisorBusError> {
        let (tx, rx) = oneshot::channel();
        let gone = || SupervisorBusError::Unavailable("the supervisor is shutting down".into());
        self.requests.send(make(tx)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    async fn require_admin(
        &self,
        conn: &zbus::Connection,
        hdr: &Header<'_>,
        method: &str,
    ) -> Result<(), SupervisorBusError> {
        let sender = hdr.sender().ok_or_else(|| {
            SupervisorBusError::AccessDenied(format!("{method}: caller has no bus name"))
        })?;
        let creds = fdo::DBusProxy::new(conn)
            .await?
            .get_connection_credentials(sender.clone().into())
            .await
            .map_err(|e| {
                SupervisorBusError::AccessDenied(format!(
                    "{method}: cannot read the caller's credentials: {e}"
                ))
            })?;
        let uid = creds.unix_user_id();
        if self
            .policy
            .allows(uid, creds.unix_group_ids().map(Vec::as_slice))
        {
            return Ok(());
        }
        tracing::warn!(
            STRATA_EVENT = "control.denied",
            method,
            caller_uid = uid,
            "refused a mutating D-Bus call"
        );
        Err(SupervisorBusError::AccessDenied(format!(
            "{method} needs uid 0 or membership in group `{}` (caller uid {})",
            self.policy.admin_group,
            uid.map_or_else(|| "unknown".to_owned(), |u| u.to_string())
        )))
    }
}

#[interface(name = "org.strata.Supervisor1")]
impl SupervisorInterface {
    /// Every declared service and every unit still being stopped.
    async fn list_services(&self) -> Result<Vec<ServiceInfo>, SupervisorBusError> {
        self.ask(ControlRequest::List).await
    }

    async fn get_service(&self, name: String) -> Result<ServiceInfo, SupervisorBusError> {
        Ok(self.ask(|tx| ControlRequest::Get(name, tx)).await??)
    }

    async fn start(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), SupervisorBusError> {
        self.require_admin(conn, &hdr, "Start").await?;
        Ok(self.ask(|tx| ControlRequest::Start(name, tx)).await??)
    }

    async fn stop(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), SupervisorBusError> {
        self.require_admin(conn, &hdr, "Stop").await?;
        Ok(self.ask(|tx| ControlRequest::Stop(name, tx)).await??)
    }

    async fn restart(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), SupervisorBusError> {
        self.require_admin(conn, &hdr, "Restart").await?;
        Ok(self.ask(|tx| ControlRequest::Restart(name, tx)).await??)
    }

    /// Takes a service out of quarantine and clears its crash history.
    async fn release(
        &self,
        name: String,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(), SupervisorBusError> {
        self.require_admin(conn, &hdr, "Release").await?;
        Ok(self.ask(|tx| ControlRequest::Release(name, tx)).await??)
    }

    /// Re-reads the manifest; returns the new configuration version.
    async fn reload(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<u64, SupervisorBusError> {
        self.require_admin(conn, &hdr, "Reload").await?;
        Ok(self.ask(ControlRequest::Reload).await??)
    }

    /// The supervisor's metrics in Prometheus text format 0.0.4. Readable by everyone: restart
    /// counts and a lag counter reveal nothing that `ListServices` does not.
    async fn metrics(&self) -> Result<String, SupervisorBusError> {
        // Taken at render time from the reconciler (the loop answers with its status), so the
        // counts are exactly the ones `GetService` reports.
        let services = self.ask(ControlRequest::List).await?;
        let lagged = self
            .driver_metrics
            .as_ref()
            .map_or(0, |m| m.bus_lagged_total.load(Ordering::Relaxed));
        Ok(render_metrics(&self.registry, &services, lagged))
    }

    #[zbus(property)]
    fn node_id(&self) -> String {
        self.node_id.clone()
    }

    #[zbus(property)]
    fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_owned()
    }

    #[zbus(signal)]
    pub async fn service_state_changed(
        emitter: &SignalEmitter<'_>,
        name: &str,
        old: &str,
        new: &str,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn health(emitter: &SignalEmitter<'_>, service: &str, ok: bool) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn config_updated(emitter: &SignalEmitter<'_>, version: u64) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn service_crashed(
        emitter: &SignalEmitter<'_>,
        service: &str,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn shutdown(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;
}

/// Client side of `org.strata.Supervisor1`, used by strata-ctl and the tests.
#[proxy(
    interface = "org.strata.Supervisor1",
    default_service = "org.strata.Supervisor1",
    default_path = "/org/strata/Supervisor1"
)]
pub trait Supervisor1 {
    fn list_services(&self) -> zbus::Result<Vec<ServiceInfo>>;
    fn get_service(&self, name: &str) -> zbus::Result<ServiceInfo>;
    fn start(&self, name: &str) -> zbus::Result<()>;
    fn stop(&self, name: &str) -> zbus::Result<()>;
    fn restart(&self, name: &str) -> zbus::Result<()>;
    fn release(&self, name: &str) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<u64>;
    /// Prometheus text (format 0.0.4).
    fn metrics(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn node_id(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    #[zbus(signal)]
    fn service_state_changed(
        &self,
        name: String,
        old: String,
        new: String,
        reason: String,
    ) -> zbus::Result<()>;
    #[zbus(signal)]
    fn health(&self, service: String, ok: bool) -> zbus::Result<()>;
    #[zbus(signal)]
    fn config_updated(&self, version: u64) -> zbus::Result<()>;
    #[zbus(signal)]
    fn service_crashed(&self, service: String, reason: String) -> zbus::Result<()>;
    #[zbus(signal)]
    fn shutdown(&self) -> zbus::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_policy_accepts_root_and_group_members_only() {
        let p = AdminPolicy {
            admin_group: "strata-admin".into(),
            admin_gid: Some(990),
        };
        assert!(p.allows(Some(0), None));
        assert!(p.allows(Some(1000), Some(&[100, 990])));
        assert!(!p.allows(Some(1000), Some(&[100])));
        assert!(!p.allows(Some(1000), None));
        assert!(!p.allows(None, Some(&[990])));
        let nogroup = AdminPolicy {
            admin_group: "strata-admin".into(),
            admin_gid: None,
        };
        assert!(!nogroup.allows(Some(1000), Some(&[990])));
        assert!(nogroup.allows(Some(0), Some(&[])));
    }

    #[test]
    fn control_errors_map_to_named_bus_errors() {
        let e: SupervisorBusError = ControlError::UnknownService("web".into()).into();
        assert!(
            matches!(e, SupervisorBusError::UnknownService(ref m) if m == "unknown service `web`")
        );
        let e: SupervisorBusError = ControlError::NotQuarantined {
            name: "web".into(),
            state: "running".into(),
        }
        .into();
        assert!(matches!(e, SupervisorBusError::NotQuarantined(_)));
    }

    fn info(name: &str, restarts: u32) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            unit: format!("strata-{name}.service"),
            state: "running".into(),
            main_pid: 1,
            restarts,
            since_usec: 0,
            reason: String::new(),
            last_exit: String::new(),
        }
    }

    #[test]
    fn metrics_report_every_service_restart_count_and_the_bus_lag() {
        let text = render_metrics(&Metrics::new(), &[info("web", 3), info("db", 0)], 7);
        let exp = strata_core::metrics::parse_exposition(&text).expect("valid exposition");
        assert_eq!(
            exp.value("service_restarts_total", &[("service", "web")]),
            Some(3.0)
        );
        assert_eq!(
            exp.value("service_restarts_total", &[("service", "db")]),
            Some(0.0)
        );
        assert_eq!(
            exp.samples_named("service_restarts_total").count(),
            2,
            "{text}"
        );
        assert_eq!(exp.value("bus_lagged_total", &[]), Some(7.0));
        assert_eq!(
            exp.types.get("request_latency_seconds").map(String::as_str),
            Some("histogram")
        );
    }
}
