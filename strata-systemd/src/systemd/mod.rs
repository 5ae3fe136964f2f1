//! The systemd driver: [`SystemdDriver`] drives `org.freedesktop.systemd1` over zbus and
//! implements [`UnitDriver`] for the supervisor.
//!
//! Two bus connections are used: one for commands (and the JobRemoved feed that
//! [`SystemdDriver::start_and_wait`] needs), one owned by the event stream, which reconnects on
//! its own. Both call `Subscribe`, without which systemd sends no unit or job signals.

mod events;
pub mod names;
pub mod observe;
pub mod oom;
pub mod proxies;
pub mod transient;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};

use futures_util::StreamExt;
use strata_core::observed::{UnitObservation, UnitPhase};
use strata_core::unit::UnitSpec;
use tokio::sync::{Mutex, broadcast, mpsc};
use tokio::task::JoinHandle;
use zbus::message::Type as MessageType;
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{Connection, MatchRule, MessageStream};

use crate::driver::{DriverEvent, UnitDriver};
use observe::RawUnitState;
use oom::OomWatch;
use proxies::{ManagerProxy, ServiceProxy, UnitProxy};
pub use transient::{SPEC_HASH_ENV, SpecError, TransientUnit};

pub(crate) const SYSTEMD_BUS_NAME: &str = "org.freedesktop.systemd1";
pub(crate) const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
pub(crate) const MANAGER_IFACE: &str = "org.freedesktop.systemd1.Manager";
pub(crate) const UNIT_IFACE: &str = "org.freedesktop.systemd1.Unit";
pub(crate) const SERVICE_IFACE: &str = "org.freedesktop.systemd1.Service";

/// What failed while driving systemd. Every variant about a unit names it; variants carrying a
/// `zbus::Error` show systemd's D-Bus error name and message.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot connect to systemd on {bus}: {source}")]
    Connect { bus: String, source: zbus::Error },
    #[error("cannot subscribe to systemd's signals on {bus}: {source}")]
    Subscribe { bus: String, source: zbus::Error },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("systemd refused to start {unit}: {source}")]
    StartUnit { unit: String, source: zbus::Error },
    #[error("systemd refused to stop {unit}: {source}")]
    StopUnit { unit: String, source: zbus::Error },
    #[error("systemd refused to send signal {signal} to {unit}: {source}")]
    KillUnit {
        unit: String,
        signal: i32,
        source: zbus::Error,
    },
    #[error("systemd refused to reset the failed state of {unit}: {source}")]
    ResetFailed { unit: String, source: zbus::Error },
    #[error("listing strata units failed: {source}")]
    ListUnits { source: zbus::Error },
    #[error("reading the state of {unit} failed: {source}")]
    ReadUnit { unit: String, source: zbus::Error },
    #[error("unit {unit} is not loaded")]
    NoSuchUnit { unit: String },
    #[error("job {job} of {unit} finished while its completion signal was lost (feed lagged)")]
    JobLost { unit: String, job: String },
    #[error("the bus connection closed while waiting for job {job} of {unit}")]
    JobFeedClosed { unit: String, job: String },
}

/// The D-Bus error name of a method error, if `e` is one.
pub fn dbus_error_name(e: &zbus::Error) -> Option<&str> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.as_str()),
        zbus::Error::FDO(fdo) => match &**fdo {
            zbus::fdo::Error::UnknownObject(_) => Some("org.freedesktop.DBus.Error.UnknownObject"),
            zbus::fdo::Error::UnknownMethod(_) => Some("org.freedesktop.DBus.Error.UnknownMethod"),
            _ => None,
        },
        _ => None,
    }
}

/// True when systemd says the unit is not loaded (or its object does not exist).
fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(
        dbus_error_name(e),
        Some("org.freedesktop.systemd1.NoSuchUnit" | "org.freedesktop.DBus.Error.UnknownObject")
    )
}

/// Which bus to talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BusTarget {
    /// The system bus (honours `DBUS_SYSTEM_BUS_ADDRESS`).
    System,
    /// An explicit D-Bus address, e.g. `unix:path=/proc/1234/root/run/dbus/system_bus_socket`.
    Address(String),
}

impl BusTarget {
    pub(crate) async fn open(&self) -> zbus::Result<Connection> {
        match self {
            Self::System => zbus::connection::Builder::system()?.build().await,
            Self::Address(a) => {
                zbus::connection::Builder::address(a.as_str())?
                    .build()
                    .await
            }
        }
    }
}

impl std::fmt::Display for BusTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::System => match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
                Ok(a) => write!(f, "the system bus ({a})"),
                Err(_) => write!(f, "the system bus"),
            },
            Self::Address(a) => write!(f, "{a}"),
        }
    }
}

/// Tunables of the driver.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Where the cgroup hierarchies are mounted, as seen from this process. For a systemd in a
    /// namespace seen from the host: `/proc/<pid>/root/sys/fs/cgroup`.
    pub cgroup_root: PathBuf,
    /// Capacity of the event channel handed out by `events()`.
    pub event_capacity: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            event_capacity: 1024,
        }
    }
}

/// Counters the supervisor exports as metrics.
#[derive(Debug, Default)]
pub struct DriverMetrics {
    /// Events dropped because the event channel was full (a Resync follows each overflow).
    pub bus_lagged_total: AtomicU64,
    /// Times the event stream reconnected to the bus.
    pub bus_reconnects_total: AtomicU64,
}

/// Everything the driver reads about one unit, for tests and `strata-ctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitDetails {
    pub unit: String,
    pub load_state: String,
    pub active_state: String,
    pub sub_state: String,
    pub result: String,
    pub main_pid: u32,
    pub n_restarts: u32,
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    /// ExecMainStartTimestampMonotonic (the observation's `run`).
    pub exec_main_start: u64,
    pub control_group: String,
    pub memory_max: u64,
    pub cpu_quota_per_sec_usec: u64,
    pub tasks_max: u64,
    /// Read uncached (`u64::MAX` when systemd cannot tell).
    pub memory_current: u64,
    /// Read uncached (`u64::MAX` when systemd cannot tell).
    pub tasks_current: u64,
    pub spec_hash: Option<String>,
    /// Whether the cgroup v1 OOM watch attributed a kill to the OOM killer (`None` when no
    /// watch was armed for this unit, e.g. no event stream running or not cgroup v1).
    pub oom_killed: Option<bool>,
}

impl UnitDetails {
    /// The observation these details amount to.
    pub fn observation(&self) -> UnitObservation {
        self.raw().observation(&self.unit)
    }

    /// The phase these details amount to.
    pub fn phase(&self) -> UnitPhase {
        observe::phase(&self.raw())
    }

    fn raw(&self) -> RawUnitState {
        RawUnitState {
            active_state: self.active_state.clone(),
            sub_state: self.sub_state.clone(),
            job_id: 0,
            job_type: String::new(),
            result: self.result.clone(),
            exec_main_code: self.exec_main_code,
            exec_main_status: self.exec_main_status,
            exec_main_start: self.exec_main_start,
            main_pid: self.main_pid,
            spec_hash: self.spec_hash.clone(),
            oom_killed: self.oom_killed.unwrap_or(false),
        }
    }
}

/// A finished job, from systemd's JobRemoved signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDone {
    pub id: u32,
    pub job: String,
    pub unit: String,
    /// `done`, `canceled`, `timeout`, `failed`, `dependency`, `skipped`.
    pub result: String,
}

/// The command connection with its JobRemoved feed.
#[derive(Debug)]
struct CommandConn {
    conn: Connection,
    jobs: broadcast::Sender<JobDone>,
    closed: Arc<AtomicBool>,
    pump: JoinHandle<()>,
}

impl Drop for CommandConn {
    fn drop(&mut self) {
        self.pump.abort();
    }
}

impl CommandConn {
    async fn open(target: &BusTarget) -> Result<Self, DriverError> {
        let bus = || target.to_string();
        let conn = target
            .open()
            .await
            .map_err(|source| DriverError::Connect { bus: bus(), source })?;
        let subscribe_err = |source| DriverError::Subscribe { bus: bus(), source };
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD_BUS_NAME)
            .and_then(|b| b.path(MANAGER_PATH))
            .and_then(|b| b.interface(MANAGER_IFACE))
            .and_then(|b| b.member("JobRemoved"))
            .map_err(subscribe_err)?
            .build();
        // Signals first, then Subscribe: no JobRemoved can be missed.
        let mut stream = MessageStream::for_match_rule(rule, &conn, Some(4096))
            .await
            .map_err(subscribe_err)?;
        manager(&conn)
            .await
            .map_err(subscribe_err)?
            .subscribe()
            .await
            .map_err(subscribe_err)?;
        let (jobs, _) = broadcast::channel(4096);
        let closed = Arc::new(AtomicBool::new(false));
        let pump = {
            let jobs = jobs.clone();
            let closed = Arc::clone(&closed);
            tokio::spawn(async move {
                // Draining continuously matters: a full zbus queue would stall every reply on
                // this connection.
                while let Some(msg) = stream.next().await {
                    let Ok(msg) = msg else { continue };
                    match msg
                        .body()
                        .deserialize::<(u32, OwnedObjectPath, String, String)>()
                    {
                        Ok((id, job, unit, result)) => {
                            // No receiver is fine: nobody waits for a job right now.
                            let _ = jobs.send(JobDone {
                                id,
                                job: job.as_str().to_owned(),
                                unit,
                                result,
                            });
                        }
                        Err(e) => tracing::warn!(error = %e, "malformed JobRemoved signal"),
                    }
                }
                closed.store(true, Ordering::SeqCst);
            })
        };
        Ok(Self {
            conn,
            jobs,
            closed,
            pump,
        })
    }
}

pub(crate) async fn manager(conn: &Connection) -> zbus::Result<ManagerProxy<'static>> {
    ManagerProxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

async fn service_proxy(
    conn: &Connection,
    path: OwnedObjectPath,
) -> zbus::Result<ServiceProxy<'static>> {
    ServiceProxy::builder(conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

async fn unit_proxy(conn: &Connection, path: OwnedObjectPath) -> zbus::Result<UnitProxy<'static>> {
    UnitProxy::builder(conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// OOM watches by unit, armed by the event stream and readable through the driver.
#[derive(Debug, Default)]
pub(crate) struct OomWatches {
    map: StdMutex<HashMap<String, OomWatch>>,
}

impl OomWatches {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, OomWatch>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
    pub(crate) fn insert(&self, unit: &str, watch: OomWatch) {
        self.lock().insert(unit.to_owned(), watch);
    }
    pub(crate) fn remove(&self, unit: &str) {
        self.lock().remove(unit);
    }
    /// Drops the watches of units that are no longer loaded.
    pub(crate) fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|unit, _| keep(unit));
    }
    pub(crate) fn check(&self, unit: &str) -> Option<bool> {
        self.lock().get(unit).map(OomWatch::check)
    }
}

/// The systemd driver. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct SystemdDriver {
    target: BusTarget,
    config: DriverConfig,
    cmd: Mutex<CommandConn>,
    metrics: Arc<DriverMetrics>,
    oom: Arc<OomWatches>,
}

impl SystemdDriver {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set).
    pub async fn connect() -> Result<Self, DriverError> {
        Self::connect_with(BusTarget::System, DriverConfig::default()).await
    }

    /// Connects to the bus at `address`.
    pub async fn connect_address(address: &str) -> Result<Self, DriverError> {
        Self::connect_with(
            BusTarget::Address(address.to_owned()),
            DriverConfig::default(),
        )
        .await
    }

    /// Connects with explicit settings.
    pub async fn connect_with(
        target: BusTarget,
        config: DriverConfig,
    ) -> Result<Self, DriverError> {
        let cmd = CommandConn::open(&target).await?;
        Ok(Self {
            target,
            config,
            cmd: Mutex::new(cmd),
            metrics: Arc::new(DriverMetrics::default()),
            oom: Arc::new(OomWatches::default()),
        })
    }

    /// The driver's counters (`bus_lagged_total`, `bus_reconnects_total`).
    pub fn metrics(&self) -> Arc<DriverMetrics> {
        Arc::clone(&self.metrics)
    }

    /// The command connection, reopened if the bus dropped it.
    async fn command(&self) -> Result<(Connection, broadcast::Sender<JobDone>), DriverError> {
        let mut guard = self.cmd.lock().await;
        if guard.closed.load(Ordering::SeqCst) {
            tracing::warn!(bus = %self.target, "command connection closed; reconnecting");
            *guard = CommandConn::open(&self.target).await?;
        }
        Ok((guard.conn.clone(), guard.jobs.clone()))
    }

    async fn manager_for(
        &self,
        unit: &str,
    ) -> Result<(ManagerProxy<'static>, broadcast::Sender<JobDone>), DriverError> {
        let (conn, jobs) = self.command().await?;
        let m = manager(&conn)
            .await
            .map_err(|source| DriverError::ReadUnit {
                unit: unit.to_owned(),
                source,
            })?;
        Ok((m, jobs))
    }

    async fn start_job(
        &self,
        spec: &UnitSpec,
    ) -> Result<(String, broadcast::Receiver<JobDone>), DriverError> {
        let t = transient::encode(spec)?;
        let (m, jobs) = self.manager_for(&t.name).await?;
        // Subscribe to the job feed before starting: JobRemoved may come before the reply.
        let rx = jobs.subscribe();
        let props: Vec<(&str, zbus::zvariant::Value<'_>)> = t
            .properties
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        let job = m
            .start_transient_unit(&t.name, "fail", &props, &[])
            .await
            .map_err(|source| DriverError::StartUnit {
                unit: t.name.clone(),
                source,
            })?;
        Ok((job.as_str().to_owned(), rx))
    }

    /// Waits for `job` of `unit` to finish and returns systemd's job result.
    async fn wait_job(
        &self,
        unit: &str,
        job: &str,
        mut rx: broadcast::Receiver<JobDone>,
    ) -> Result<String, DriverError> {
        loop {
            match rx.recv().await {
                Ok(done) if done.job == job => return Ok(done.result),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Signals were dropped: is the job still there?
                    let (conn, _) = self.command().await?;
                    let reply = conn
                        .call_method(
                            Some(SYSTEMD_BUS_NAME),
                            job,
                            Some("org.freedesktop.DBus.Properties"),
                            "Get",
                            &("org.freedesktop.systemd1.Job", "Id"),
                        )
                        .await;
                    match reply {
                        Ok(_) => {}
                        Err(e) if is_no_such_unit(&e) => {
                            return Err(DriverError::JobLost {
                                unit: unit.to_owned(),
                                job: job.to_owned(),
                            });
                        }
                        Err(source) => {
                            return Err(DriverError::ReadUnit {
                                unit: unit.to_owned(),
                                source,
                            });
                        }
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(DriverError::JobFeedClosed {
                        unit: unit.to_owned(),
                        job: job.to_owned(),
                    });
                }
            }
        }
    }

    /// Starts `spec` and waits until its start job finished; returns the job result (`done`
    /// when the unit started; for Type=exec that is after the exec succeeded).
    pub async fn start_and_wait(&self, spec: &UnitSpec) -> Result<String, DriverError> {
        let (job, rx) = self.start_job(spec).await?;
        self.wait_job(&spec.unit, &job, rx).await
    }

    /// Stops `unit` and waits until the stop job finished; returns the job result, or `done`
    /// when the unit was not loaded.
    pub async fn stop_and_wait(&self, unit: &str) -> Result<String, DriverError> {
        let (m, jobs) = self.manager_for(unit).await?;
        let rx = jobs.subscribe();
        match m.stop_unit(unit, "replace").await {
            Ok(job) => self.wait_job(unit, job.as_str(), rx).await,
            Err(e) if is_no_such_unit(&e) => Ok("done".to_owned()),
            Err(source) => Err(DriverError::StopUnit {
                unit: unit.to_owned(),
                source,
            }),
        }
    }

    /// Reads everything about `unit` (MemoryCurrent and TasksCurrent uncached).
    pub async fn unit_details(&self, unit: &str) -> Result<UnitDetails, DriverError> {
        let (conn, _) = self.command().await?;
        let read_err = |source| DriverError::ReadUnit {
            unit: unit.to_owned(),
            source,
        };
        let m = manager(&conn).await.map_err(read_err)?;
        let path = match m.get_unit(unit).await {
            Ok(p) => p,
            Err(e) if is_no_such_unit(&e) => {
                return Err(DriverError::NoSuchUnit {
                    unit: unit.to_owned(),
                });
            }
            Err(e) => return Err(read_err(e)),
        };
        let u = unit_proxy(&conn, path.clone()).await.map_err(read_err)?;
        let s = service_proxy(&conn, path).await.map_err(read_err)?;
        let (load_state, active_state, sub_state) =
            tokio::try_join!(u.load_state(), u.active_state(), u.sub_state()).map_err(read_err)?;
        let (result, main_pid, n_restarts, exec_main_code, exec_main_status, control_group) =
            tokio::try_join!(
                s.result(),
                s.main_pid(),
                s.n_restarts(),
                s.exec_main_code(),
                s.exec_main_status(),
                s.control_group()
            )
            .map_err(read_err)?;
        let (memory_max, cpu_quota_per_sec_usec, tasks_max, memory_current, tasks_current, env) =
            tokio::try_join!(
                s.memory_max(),
                s.cpu_quota_per_sec_usec(),
                s.tasks_max(),
                s.memory_current(),
                s.tasks_current(),
                s.environment()
            )
            .map_err(read_err)?;
        let exec_main_start = s
            .exec_main_start_timestamp_monotonic()
            .await
            .map_err(read_err)?;
        Ok(UnitDetails {
            unit: unit.to_owned(),
            load_state,
            active_state,
            sub_state,
            result,
            main_pid,
            n_restarts,
            exec_main_code,
            exec_main_status,
            exec_main_start,
            control_group,
            memory_max,
            cpu_quota_per_sec_usec,
            tasks_max,
            memory_current,
            tasks_current,
            spec_hash: observe::spec_hash_from_env(&env),
            oom_killed: self.oom.check(unit),
        })
    }

    /// Whether the cgroup v1 OOM watch of `unit` attributed a kill to the OOM killer; `None`
    /// when no watch is armed (no event stream, unit unknown, or not cgroup v1 — there systemd
    /// itself reports Result=oom-kill).
    pub fn oom_killed(&self, unit: &str) -> Option<bool> {
        self.oom.check(unit)
    }
}

/// Reads the Service properties of every unit in `entries` (GetAll, one reply each) and builds
/// their state. Units that vanished in between are left out.
pub(crate) async fn read_units(
    conn: &Connection,
    entries: Vec<proxies::UnitListEntry>,
) -> Result<Vec<(String, RawUnitState, zbus::message::Sequence)>, DriverError> {
    let mut out = Vec::with_capacity(entries.len());
    for (name, _desc, load, active, sub, _following, path, job_id, job_type, _job_path) in entries {
        if load == "not-found" || !names::is_strata_unit(&name) {
            continue;
        }
        let reply = conn
            .call_method(
                Some(SYSTEMD_BUS_NAME),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "GetAll",
                &(SERVICE_IFACE,),
            )
            .await;
        let msg = match reply {
            Ok(m) => m,
            Err(e) if is_no_such_unit(&e) => continue,
            Err(source) => return Err(DriverError::ReadUnit { unit: name, source }),
        };
        let props: HashMap<String, OwnedValue> =
            msg.body()
                .deserialize()
                .map_err(|source| DriverError::ReadUnit {
                    unit: name.clone(),
                    source,
                })?;
        let mut raw = RawUnitState {
            active_state: active,
            sub_state: sub,
            job_id,
            job_type,
            ..RawUnitState::default()
        };
        raw.apply_service(&props);
        out.push((name, raw, msg.recv_position()));
    }
    Ok(out)
}

/// Lists Strata's loaded units with the position of the listing reply.
pub(crate) async fn list_units(
    conn: &Connection,
) -> Result<(Vec<proxies::UnitListEntry>, zbus::message::Sequence), DriverError> {
    let list_err = |source| DriverError::ListUnits { source };
    let reply = conn
        .call_method(
            Some(SYSTEMD_BUS_NAME),
            MANAGER_PATH,
            Some(MANAGER_IFACE),
            "ListUnitsByPatterns",
            &(Vec::<&str>::new(), vec![names::UNIT_PATTERN]),
        )
        .await
        .map_err(list_err)?;
    let entries: Vec<proxies::UnitListEntry> = reply.body().deserialize().map_err(list_err)?;
    Ok((entries, reply.recv_position()))
}

impl UnitDriver for SystemdDriver {
    type Error = DriverError;

    async fn start(&self, spec: &UnitSpec) -> Result<(), DriverError> {
        self.start_job(spec).await.map(|_| ())
    }

    async fn restart(&self, spec: &UnitSpec) -> Result<(), DriverError> {
        let (m, _) = self.manager_for(&spec.unit).await?;
        // "replace": like a unit's own Restart=, this start supersedes any job left queued.
        match m.start_unit(&spec.unit, "replace").await {
            Ok(_) => Ok(()),
            // Collected between the observation and now (reset by hand, or GC'd): start anew.
            Err(e) if is_no_such_unit(&e) => self.start(spec).await,
            Err(source) => Err(DriverError::StartUnit {
                unit: spec.unit.clone(),
                source,
            }),
        }
    }

    async fn stop(&self, unit: &str) -> Result<(), DriverError> {
        let (m, _) = self.manager_for(unit).await?;
        match m.stop_unit(unit, "replace").await {
            Ok(_) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(source) => Err(DriverError::StopUnit {
                unit: unit.to_owned(),
                source,
            }),
        }
    }

    async fn kill(&self, unit: &str, signal: i32) -> Result<(), DriverError> {
        let (m, _) = self.manager_for(unit).await?;
        m.kill_unit(unit, "all", signal)
            .await
            .map_err(|source| DriverError::KillUnit {
                unit: unit.to_owned(),
                signal,
                source,
            })
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), DriverError> {
        let (m, _) = self.manager_for(unit).await?;
        match m.reset_failed_unit(unit).await {
            Ok(()) => Ok(()),
            Err(e) if is_no_such_unit(&e) => Ok(()),
            Err(source) => Err(DriverError::ResetFailed {
                unit: unit.to_owned(),
                source,
            }),
        }
    }

    async fn list(&self) -> Result<Vec<UnitObservation>, DriverError> {
        let (conn, _) = self.command().await?;
        let (entries, _) = list_units(&conn).await?;
        let units = read_units(&conn, entries).await?;
        Ok(units
            .into_iter()
            .map(|(name, raw, _)| {
                let mut raw = raw;
                raw.oom_killed = raw.killed_by_sigkill() && self.oom.check(&name).unwrap_or(false);
                raw.observation(&name)
            })
            .collect())
    }

    async fn events(&self) -> Result<mpsc::Receiver<DriverEvent>, DriverError> {
        let (tx, rx) = mpsc::channel(self.config.event_capacity.max(1));
        // Connect once up front so that a bad address is an error here, not a silent retry.
        let conn = self
            .target
            .open()
            .await
            .map_err(|source| DriverError::Connect {
                bus: self.target.to_string(),
                source,
            })?;
        events::spawn(events::EventTask {
            target: self.target.clone(),
            first_conn: Some(conn),
            tx,
            metrics: Arc::clone(&self.metrics),
            oom: Arc::clone(&self.oom),
            cgroup_root: self.config.cgroup_root.clone(),
        });
        Ok(rx)
    }
}
