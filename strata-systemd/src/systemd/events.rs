//! The event stream: systemd's signals turned into deduplicated [`DriverEvent`]s.
//!
//! Built on Subscribe + PropertiesChanged (Unit and Service) + UnitNew/UnitRemoved/JobRemoved,
//! with no polling. The races it handles:
//! - Signals are matched before Subscribe and before the snapshot is read, and every message
//!   carries its receive position: a signal older than the snapshot (or than the GetAll reply a
//!   unit's state came from) is stale and skipped, so the stream never goes backwards.
//! - systemd sends the Service interface's PropertiesChanged before the Unit interface's for
//!   the same change, and flushes both before JobRemoved; observations are therefore computed
//!   on Unit signals and on JobRemoved, never from a half-applied change.
//! - Each PropertiesChanged carries every property of its interface, so duplicates are common:
//!   an observation is only sent when it differs from the last one sent for that unit.
//! - A zbus signal queue that is not drained stalls method replies on the same connection, so a
//!   pump task drains it into an unbounded local queue while the processor makes calls.
//! - A full consumer channel is counted in `bus_lagged_total` and answered with a Resync as soon
//!   as there is room; a dropped bus connection is reconnected with backoff, then Resync.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::StreamExt;
use strata_core::observed::UnitObservation;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zbus::message::{Sequence, Type as MessageType};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::{Connection, MatchRule, Message, MessageStream};

use super::names::{is_strata_unit, unit_from_object_path, unit_object_path};
use super::observe::{RawUnitState, strings_prop};
use super::oom::{OomWatch, v1_memcg_dir};
use super::{
    BusTarget, DriverError, DriverMetrics, MANAGER_IFACE, MANAGER_PATH, OomWatches, SERVICE_IFACE,
    SYSTEMD_BUS_NAME, UNIT_IFACE, list_units, manager, read_units,
};
use crate::driver::DriverEvent;

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub(crate) struct EventTask {
    pub(crate) target: BusTarget,
    pub(crate) first_conn: Option<Connection>,
    pub(crate) tx: mpsc::Sender<DriverEvent>,
    pub(crate) metrics: Arc<DriverMetrics>,
    pub(crate) oom: Arc<OomWatches>,
    pub(crate) cgroup_root: PathBuf,
}

pub(crate) fn spawn(task: EventTask) -> JoinHandle<()> {
    tokio::spawn(task.run())
}

/// How a session with one bus connection ended.
enum SessionEnd {
    /// The receiver of the events was dropped: stop for good.
    ConsumerGone,
    /// The bus connection went away after a successful resync.
    Disconnected,
}

impl EventTask {
    async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            let conn = match self.first_conn.take() {
                Some(c) => Ok(c),
                None => self
                    .target
                    .open()
                    .await
                    .map_err(|source| DriverError::Connect {
                        bus: self.target.to_string(),
                        source,
                    }),
            };
            let end = match conn {
                Ok(conn) => Session::new(&self, conn).run().await,
                Err(e) => Err(e),
            };
            match end {
                Ok(SessionEnd::ConsumerGone) => return,
                Ok(SessionEnd::Disconnected) => {
                    tracing::warn!(bus = %self.target, "systemd event connection dropped; reconnecting");
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "systemd event stream failed");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.tx.closed() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            self.metrics
                .bus_reconnects_total
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the processor knows about one unit.
#[derive(Debug)]
struct UnitEntry {
    raw: RawUnitState,
    /// Unit-interface signals older than this are stale.
    unit_pos: Sequence,
    /// Service-interface signals older than this are stale.
    service_pos: Sequence,
    /// The last observation sent for this unit.
    last: Option<UnitObservation>,
    /// Whether the OOM watch was armed for the current run.
    armed: bool,
}

struct Session<'a> {
    task: &'a EventTask,
    conn: Connection,
    units: HashMap<String, UnitEntry>,
    /// Signals older than the snapshot are stale for units that were not in it.
    snapshot_pos: Sequence,
    lagged: bool,
    consumer_gone: bool,
    oom_tx: mpsc::UnboundedSender<String>,
    oom_rx: mpsc::UnboundedReceiver<String>,
}

/// Aborts the pump task when the session ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<'a> Session<'a> {
    fn new(task: &'a EventTask, conn: Connection) -> Self {
        let (oom_tx, oom_rx) = mpsc::unbounded_channel();
        Self {
            task,
            conn,
            units: HashMap::new(),
            snapshot_pos: Sequence::default(),
            lagged: false,
            consumer_gone: false,
            oom_tx,
            oom_rx,
        }
    }

    fn bus(&self) -> String {
        self.task.target.to_string()
    }

    async fn run(mut self) -> Result<SessionEnd, DriverError> {
        let subscribe_err = |source| DriverError::Subscribe {
            bus: self.bus(),
            source,
        };
        // Every signal systemd sends on its objects, in the order received.
        let rule = MatchRule::builder()
            .msg_type(MessageType::Signal)
            .sender(SYSTEMD_BUS_NAME)
            .and_then(|b| b.path_namespace(MANAGER_PATH))
            .map_err(subscribe_err)?
            .build();
        let mut stream = MessageStream::for_match_rule(rule, &self.conn, Some(1024))
            .await
            .map_err(subscribe_err)?;
        let (pump_tx, mut pump_rx) = mpsc::unbounded_channel::<Message>();
        let _pump = AbortOnDrop(tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(m) => {
                        if pump_tx.send(m).is_err() {
                            return;
                        }
                    }
                    // The connection failed; the stream ends right after.
                    Err(e) => tracing::warn!(error = %e, "systemd signal stream error"),
                }
            }
        }));
        manager(&self.conn)
            .await
            .map_err(subscribe_err)?
            .subscribe()
            .await
            .map_err(subscribe_err)?;

        self.resync_from_systemd().await?;
        if self.consumer_gone {
            return Ok(SessionEnd::ConsumerGone);
        }

        loop {
            tokio::select! {
                biased;
                () = self.task.tx.closed() => return Ok(SessionEnd::ConsumerGone),
                permit = self.task.tx.reserve(), if self.lagged => {
                    let Ok(permit) = permit else { return Ok(SessionEnd::ConsumerGone) };
                    let snapshot = self.snapshot();
                    permit.send(DriverEvent::Resync(snapshot));
                    self.lagged = false;
                }
                Some(unit) = self.oom_rx.recv() => self.publish(&unit),
                msg = pump_rx.recv() => match msg {
                    Some(msg) => self.handle(&msg).await,
                    None => return Ok(SessionEnd::Disconnected),
                },
            }
            if self.consumer_gone {
                return Ok(SessionEnd::ConsumerGone);
            }
        }
    }

    /// Reads every Strata unit from systemd and sends the Resync that opens the session.
    async fn resync_from_systemd(&mut self) -> Result<(), DriverError> {
        let (entries, list_pos) = list_units(&self.conn).await?;
        let units = read_units(&self.conn, entries).await?;
        self.snapshot_pos = list_pos;
        self.units.clear();
        for (name, raw, service_pos) in units {
            self.units.insert(
                name,
                UnitEntry {
                    raw,
                    unit_pos: list_pos,
                    service_pos,
                    last: None,
                    armed: false,
                },
            );
        }
        self.task.oom.retain(|u| self.units.contains_key(u));
        let running: Vec<String> = self
            .units
            .iter()
            .filter(|(_, e)| runs(&e.raw))
            .map(|(n, _)| n.clone())
            .collect();
        for unit in running {
            self.arm(&unit).await;
        }
        let snapshot = self.snapshot();
        self.emit(DriverEvent::Resync(snapshot));
        Ok(())
    }

    /// Observations of every known unit; marks them as sent.
    fn snapshot(&mut self) -> Vec<UnitObservation> {
        let mut out = Vec::with_capacity(self.units.len());
        for (name, e) in &mut self.units {
            refresh_oom(&self.task.oom, name, &mut e.raw);
            let obs = e.raw.observation(name);
            e.last = Some(obs.clone());
            out.push(obs);
        }
        out.sort_by(|a, b| a.unit.cmp(&b.unit));
        out
    }

    fn emit(&mut self, ev: DriverEvent) {
        if self.lagged {
            // A Resync is pending and will carry the current state.
            self.task
                .metrics
                .bus_lagged_total
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.task.tx.try_send(ev) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged = true;
                self.task
                    .metrics
                    .bus_lagged_total
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => self.consumer_gone = true,
        }
    }

    /// Sends the unit's observation if it differs from the last one sent.
    fn publish(&mut self, unit: &str) {
        let Some(e) = self.units.get_mut(unit) else {
            return;
        };
        refresh_oom(&self.task.oom, unit, &mut e.raw);
        let obs = e.raw.observation(unit);
        if e.last.as_ref() == Some(&obs) {
            return;
        }
        e.last = Some(obs.clone());
        self.emit(DriverEvent::Changed(obs));
    }

    async fn handle(&mut self, msg: &Message) {
        let hdr = msg.header();
        let (Some(iface), Some(member)) = (hdr.interface(), hdr.member()) else {
            return;
        };
        let pos = msg.recv_position();
        match (iface.as_str(), member.as_str()) {
            ("org.freedesktop.DBus.Properties", "PropertiesChanged") => {
                let Some(unit) = hdr
                    .path()
                    .and_then(|p| unit_from_object_path(p.as_str()))
                    .filter(|u| is_strata_unit(u))
                else {
                    return;
                };
                type Changed = (String, HashMap<String, OwnedValue>, Vec<String>);
                match msg.body().deserialize::<Changed>() {
                    Ok((iface, changed, _invalidated)) => {
                        self.on_properties(&unit, &iface, &changed, pos).await;
                    }
                    Err(e) => tracing::warn!(%unit, error = %e, "malformed PropertiesChanged"),
                }
            }
            (MANAGER_IFACE, "UnitNew") => {
                if let Ok((unit, _path)) = msg.body().deserialize::<(String, OwnedObjectPath)>() {
                    if is_strata_unit(&unit) && pos >= self.snapshot_pos {
                        self.add_unit(&unit, pos).await;
                    }
                }
            }
            (MANAGER_IFACE, "UnitRemoved") => {
                if let Ok((unit, _path)) = msg.body().deserialize::<(String, OwnedObjectPath)>() {
                    self.on_removed(&unit, pos);
                }
            }
            (MANAGER_IFACE, "JobRemoved") => {
                if let Ok((id, _job, unit, _result)) =
                    msg.body()
                        .deserialize::<(u32, OwnedObjectPath, String, String)>()
                {
                    let Some(e) = self.units.get_mut(&unit) else {
                        return;
                    };
                    if pos < e.unit_pos || e.raw.job_id != id {
                        return;
                    }
                    e.raw.job_id = 0;
                    self.publish(&unit);
                }
            }
            _ => {}
        }
    }

    async fn on_properties(
        &mut self,
        unit: &str,
        iface: &str,
        changed: &HashMap<String, OwnedValue>,
        pos: Sequence,
    ) {
        if !self.units.contains_key(unit) {
            if pos < self.snapshot_pos {
                // About a unit that was already gone when the snapshot was taken.
                return;
            }
            self.add_unit(unit, pos).await;
        }
        let Some(e) = self.units.get_mut(unit) else {
            return;
        };
        match iface {
            SERVICE_IFACE if pos >= e.service_pos => {
                e.raw.apply_service(changed);
                e.service_pos = pos;
            }
            UNIT_IFACE if pos >= e.unit_pos => {
                e.raw.apply_unit(changed);
                e.unit_pos = pos;
                // When the job is gone already, this signal is stale: its JobRemoved and a
                // newer state are queued behind it.
                if e.raw.job_id != 0
                    && e.raw.job_type.is_empty()
                    && matches!(e.raw.active_state.as_str(), "inactive" | "failed")
                    && !self.read_job_type(unit, changed).await
                {
                    return;
                }
                let Some(e) = self.units.get_mut(unit) else {
                    return;
                };
                if runs(&e.raw) {
                    if !e.armed {
                        self.arm(unit).await;
                    }
                } else if !matches!(e.raw.active_state.as_str(), "deactivating") {
                    // The run is over; the next activation arms a new watch (the old one stays
                    // until then, for late confirmation and `oom_killed`).
                    e.armed = false;
                }
                self.publish(unit);
            }
            _ => {}
        }
    }

    /// Looks up the type of the unit's new job (the Job property only carries id and path):
    /// an inactive unit with a start job is Starting, with a stop job it is not.
    /// Returns false when the job no longer exists.
    async fn read_job_type(&mut self, unit: &str, changed: &HashMap<String, OwnedValue>) -> bool {
        let path = match changed.get("Job").map(|v| &**v) {
            Some(Value::Structure(job)) => match job.fields().get(1) {
                Some(Value::ObjectPath(p)) => p.as_str().to_owned(),
                _ => return true,
            },
            _ => return true,
        };
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD_BUS_NAME),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &("org.freedesktop.systemd1.Job", "JobType"),
            )
            .await;
        let job_type = match reply.and_then(|m| m.body().deserialize::<OwnedValue>()) {
            Ok(v) => match &*v {
                Value::Str(s) => s.as_str().to_owned(),
                _ => return true,
            },
            Err(e) if super::is_no_such_unit(&e) => return false,
            Err(e) => {
                tracing::warn!(%unit, error = %e, "reading the job type failed");
                return true;
            }
        };
        if let Some(e) = self.units.get_mut(unit) {
            e.raw.job_type = job_type;
        }
        true
    }

    /// Starts tracking `unit` (created at `pos`): reads its recorded spec hash once (the
    /// environment of a loaded unit never changes).
    async fn add_unit(&mut self, unit: &str, pos: Sequence) {
        let path = unit_object_path(unit);
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD_BUS_NAME),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(SERVICE_IFACE, "Environment"),
            )
            .await;
        let mut raw = RawUnitState::default();
        match reply.and_then(|m| m.body().deserialize::<OwnedValue>()) {
            Ok(v) => {
                let props = HashMap::from([("Environment".to_owned(), v)]);
                if let Some(env) = strings_prop(&props, "Environment") {
                    raw.spec_hash = super::observe::spec_hash_from_env(&env);
                }
            }
            // Gone already: its UnitRemoved follows.
            Err(e) => tracing::debug!(%unit, error = %e, "reading the environment failed"),
        }
        self.task.oom.remove(unit);
        self.units.insert(
            unit.to_owned(),
            UnitEntry {
                raw,
                unit_pos: pos,
                service_pos: pos,
                last: None,
                armed: false,
            },
        );
    }

    fn on_removed(&mut self, unit: &str, pos: Sequence) {
        let Some(e) = self.units.get(unit) else {
            return;
        };
        if pos < e.unit_pos {
            return;
        }
        let was_announced = e.last.is_some();
        self.units.remove(unit);
        self.task.oom.remove(unit);
        if was_announced {
            self.emit(DriverEvent::Removed {
                unit: unit.to_owned(),
            });
        }
    }

    /// Arms the cgroup v1 OOM watch for the current run of `unit`, when there is a v1 memory
    /// hierarchy (on cgroup v2 systemd reports Result=oom-kill itself).
    async fn arm(&mut self, unit: &str) {
        let Some(e) = self.units.get_mut(unit) else {
            return;
        };
        e.armed = true;
        e.raw.oom_killed = false;
        let path = unit_object_path(unit);
        let reply = self
            .conn
            .call_method(
                Some(SYSTEMD_BUS_NAME),
                path.as_str(),
                Some("org.freedesktop.DBus.Properties"),
                "Get",
                &(SERVICE_IFACE, "ControlGroup"),
            )
            .await;
        let cgroup = match reply.and_then(|m| m.body().deserialize::<OwnedValue>()) {
            Ok(v) => match &*v {
                Value::Str(s) => s.as_str().to_owned(),
                _ => return,
            },
            Err(e) => {
                tracing::debug!(%unit, error = %e, "reading ControlGroup failed");
                return;
            }
        };
        let Some(dir) = v1_memcg_dir(&self.task.cgroup_root, &cgroup) else {
            return;
        };
        match OomWatch::arm(unit, &dir, self.oom_tx.clone()) {
            Ok(w) => self.task.oom.insert(unit, w),
            Err(e) => tracing::warn!(error = %e, "OOM kills of this unit will show as SIGKILL"),
        }
    }
}

/// Whether the unit has (or is about to have) processes in its cgroup.
fn runs(raw: &RawUnitState) -> bool {
    matches!(
        raw.active_state.as_str(),
        "activating" | "active" | "reloading"
    )
}

/// Re-labels a SIGKILL as an OOM kill when the unit's watch says so.
fn refresh_oom(oom: &OomWatches, unit: &str, raw: &mut RawUnitState) {
    if raw.killed_by_sigkill() && !raw.oom_killed && oom.check(unit) == Some(true) {
        raw.oom_killed = true;
    }
}
