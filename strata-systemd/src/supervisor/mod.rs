//! The supervisor loop: feeds systemd's events and operator commands to the reconciler and
//! carries out its plans through a [`UnitDriver`].
//!
//! The loop owns all supervisor state. It wakes only when something happens: a driver event,
//! a control request, a signal, or the reconciler's own `next_wakeup` (a backoff expiring).
//! There is no polling. Because it is generic over [`UnitDriver`] and [`Publisher`], the same
//! loop runs against systemd in production and against a recording fake in tests.

mod desired;
mod hooks;
pub mod publish;
mod store;

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use strata_core::manifest::Manifest;
use strata_core::reconcile::{
    Action, Event, Observed, ReconcileError, Reconciler, ServiceStatus, StateKind, Timestamp,
};
use tokio::sync::mpsc;

use crate::control::{ControlError, ControlRequest, ServiceInfo};
use crate::driver::{DriverEvent, UnitDriver};

pub use desired::{DesiredError, LaunchSettings, desired_from_manifest, load_manifest};
pub use hooks::{Hooks, NoHooks, NodeHooks, link_core_endpoints};
pub use publish::{Published, Publisher, RecordingPublisher};
pub use store::{QuarantineStore, StoreError};

/// What the supervisor needs besides its driver.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// The manifest, re-read on reload.
    pub manifest_path: PathBuf,
    pub launch: LaunchSettings,
    /// Seed of the backoff jitter.
    pub seed: u64,
    /// systemd's watchdog interval (WATCHDOG_USEC): the loop itself pings at half of it, so a
    /// stuck loop is restarted by systemd. None = no timer at all.
    pub watchdog: Option<std::time::Duration>,
}

/// Why the loop ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("the driver's event stream ended (lost the bus and could not reconnect)")]
    EventsEnded,
    #[error("cannot open the driver's event stream: {0}")]
    Events(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// External stimuli other than driver events and control requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: re-read the manifest.
    Reload,
    /// SIGTERM/SIGINT: leave (running units keep running).
    Shutdown,
}

/// The supervisor: reconciler state plus the edges it drives.
#[derive(Debug)]
pub struct Supervisor<D: UnitDriver, P: Publisher, H: Hooks = NoHooks> {
    driver: D,
    publisher: P,
    hooks: H,
    config: SupervisorConfig,
    reconciler: Reconciler,
    observed: Observed,
    store: QuarantineStore,
    /// Configuration version, incremented by every accepted reload.
    version: u64,
    started: Instant,
    started_wall: SystemTime,
    next_wakeup: Option<Timestamp>,
    /// Whether the first full snapshot of systemd's units has been taken in.
    synced: bool,
    ready_sent: bool,
}

impl<D: UnitDriver, P: Publisher> Supervisor<D, P, NoHooks> {
    /// A supervisor without hooks (no token delivery, no registration).
    pub fn new(
        driver: D,
        publisher: P,
        config: SupervisorConfig,
        manifest: &Manifest,
        store: QuarantineStore,
    ) -> Result<Self, DesiredError> {
        Self::with_hooks(driver, publisher, NoHooks, config, manifest, store)
    }
}

impl<D: UnitDriver, P: Publisher, H: Hooks> Supervisor<D, P, H> {
    /// Builds the supervisor from an already validated manifest. Quarantine marks persisted by
    /// an earlier run are restored, so a quarantined service stays quarantined across restarts.
    pub fn with_hooks(
        driver: D,
        publisher: P,
        hooks: H,
        config: SupervisorConfig,
        manifest: &Manifest,
        store: QuarantineStore,
    ) -> Result<Self, DesiredError> {
        let desired = desired_from_manifest(manifest, &config.launch)?;
        let started = Instant::now();
        let mut reconciler = Reconciler::new(desired, config.seed, Timestamp::EPOCH);
        for (name, reason) in store.entries() {
            // A mark for a service no longer declared is simply dropped at the next write.
            if reconciler
                .restore_quarantine(name, reason, Timestamp::EPOCH)
                .is_ok()
            {
                tracing::warn!(
                    STRATA_SERVICE = name.as_str(),
                    STRATA_EVENT = "service.quarantine_restored",
                    "{name} stays quarantined: {reason}"
                );
            }
        }
        Ok(Self {
            driver,
            publisher,
            hooks,
            config,
            reconciler,
            observed: Observed::new(),
            store,
            version: 1,
            started,
            started_wall: SystemTime::now(),
            next_wakeup: None,
            synced: false,
            ready_sent: false,
        })
    }

    pub fn driver(&self) -> &D {
        &self.driver
    }

    pub fn status(&self) -> Vec<ServiceStatus> {
        self.reconciler.status()
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_duration(self.started.elapsed())
    }

    /// Runs until a shutdown signal or until the driver's events end.
    pub async fn run(
        mut self,
        mut control: mpsc::Receiver<ControlRequest>,
        mut signals: mpsc::Receiver<Signal>,
    ) -> Result<(), SupervisorError> {
        let mut events = self
            .driver
            .events()
            .await
            .map_err(|e| SupervisorError::Events(e.to_string()))?;
        let mut watchdog = self.config.watchdog.map(|w| tokio::time::interval(w / 2));
        loop {
            let sleep = self.next_wakeup.map(|at| {
                let wait = at.saturating_duration_since(self.now());
                tokio::time::Instant::now() + wait
            });
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => self.take_event(ev),
                    None => return Err(SupervisorError::EventsEnded),
                },
                Some(req) = control.recv() => self.handle_control(req).await,
                sig = signals.recv() => match sig {
                    Some(Signal::Reload) => { let _ = self.reload().await; }
                    Some(Signal::Shutdown) | None => {
                        self.shutdown().await;
                        return Ok(());
                    }
                },
                () = sleep_until(sleep) => {}
                () = watchdog_tick(watchdog.as_mut()) => {
                    self.publisher.publish(Published::Watchdog).await;
                    continue;
                }
            }
            // Take in every event already queued before planning: one plan per burst.
            while let Ok(ev) = events.try_recv() {
                self.take_event(ev);
            }
            if self.synced {
                self.step().await?;
                if !self.ready_sent {
                    self.ready_sent = true;
                    self.publisher
                        .publish(Published::Ready {
                            services: self.reconciler.status().len(),
                        })
                        .await;
                }
            }
        }
    }

    fn take_event(&mut self, ev: DriverEvent) {
        match ev {
            DriverEvent::Changed(obs) => {
                self.observed.insert(obs.unit.clone(), obs);
            }
            DriverEvent::Removed { unit } => {
                self.observed.remove(&unit);
            }
            DriverEvent::Resync(all) => {
                self.observed = all.into_iter().map(|o| (o.unit.clone(), o)).collect();
                self.synced = true;
            }
        }
    }

    /// One reconcile step: plan, carry out the actions, publish the events. A start that
    /// systemd rejects is fed back and planned again at once (it becomes a backoff).
    async fn step(&mut self) -> Result<(), SupervisorError> {
        for _ in 0..4 {
            let now = self.now();
            let plan = self.reconciler.plan(&self.observed, now);
            let mut rejected = false;
            for action in plan.actions {
                rejected |= self.execute(action, now).await;
            }
            for event in plan.events {
                self.publish_event(event).await?;
            }
            self.next_wakeup = plan.next_wakeup;
            if !rejected {
                break;
            }
        }
        self.publisher
            .publish(Published::Status(self.status_line()))
            .await;
        Ok(())
    }

    /// Carries out one action; returns whether a start was rejected.
    async fn execute(&mut self, action: Action, now: Timestamp) -> bool {
        let in_place = matches!(action, Action::Restart(_));
        match action {
            Action::Start(spec) | Action::Restart(spec) => {
                tracing::info!(
                    STRATA_SERVICE = spec.service.as_str(),
                    STRATA_EVENT = if in_place {
                        "unit.restart"
                    } else {
                        "unit.start"
                    },
                    unit = spec.unit.as_str(),
                    spec_hash = spec.spec_hash.as_str(),
                    "{} {}",
                    if in_place {
                        "starting again"
                    } else {
                        "starting"
                    },
                    spec.unit
                );
                // Tokens are minted for every start: LoadCredential= reads them at each one.
                let started = match self.hooks.before_start(&spec).await {
                    Ok(()) if in_place => {
                        self.driver.restart(&spec).await.map_err(|e| e.to_string())
                    }
                    Ok(()) => self.driver.start(&spec).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if let Err(reason) = started {
                    tracing::error!(
                        STRATA_SERVICE = spec.service.as_str(),
                        STRATA_EVENT = "unit.start_rejected",
                        "{reason}"
                    );
                    // Only fails for a service removed meanwhile; nothing to count then.
                    let _ = self.reconciler.start_failed(&spec.service, &reason, now);
                    return true;
                }
            }
            Action::Stop { unit } => {
                tracing::info!(
                    STRATA_EVENT = "unit.stop",
                    unit = unit.as_str(),
                    "stopping {unit}"
                );
                if let Err(e) = self.driver.stop(&unit).await {
                    // The reconciler issues the stop again if nothing moves.
                    tracing::error!(
                        STRATA_EVENT = "unit.stop_failed",
                        unit = unit.as_str(),
                        "{e}"
                    );
                }
            }
            Action::ResetFailed { unit } => {
                if let Err(e) = self.driver.reset_failed(&unit).await {
                    tracing::error!(
                        STRATA_EVENT = "unit.reset_failed_failed",
                        unit = unit.as_str(),
                        "{e}"
                    );
                }
            }
        }
        false
    }

    async fn publish_event(&mut self, event: Event) -> Result<(), SupervisorError> {
        match event {
            Event::Transition {
                service,
                old,
                new,
                reason,
            } => {
                tracing::info!(
                    STRATA_SERVICE = service.as_str(),
                    STRATA_EVENT = "service.state",
                    old = old.as_str(),
                    new = new.as_str(),
                    "{service}: {old} -> {new}: {reason}"
                );
                if new == StateKind::Quarantined {
                    self.store.insert(&service, &reason)?;
                } else if old == StateKind::Quarantined {
                    self.store.remove(&service)?;
                }
                if new == StateKind::Running && old != StateKind::Running {
                    let running: Vec<String> = self
                        .reconciler
                        .status()
                        .into_iter()
                        .filter(|s| s.state == StateKind::Running)
                        .map(|s| s.name)
                        .collect();
                    self.hooks.running(&service, &running).await;
                    self.publisher
                        .publish(Published::Health {
                            service: service.clone(),
                            ok: true,
                        })
                        .await;
                } else if old == StateKind::Running && new != StateKind::Running {
                    self.publisher
                        .publish(Published::Health {
                            service: service.clone(),
                            ok: false,
                        })
                        .await;
                }
                self.publisher
                    .publish(Published::StateChanged {
                        service,
                        old: old.as_str().into(),
                        new: new.as_str().into(),
                        reason,
                    })
                    .await;
            }
            Event::Crashed { service, reason } => {
                tracing::warn!(
                    STRATA_SERVICE = service.as_str(),
                    STRATA_EVENT = "service.crashed",
                    "{service} {reason}"
                );
                self.publisher
                    .publish(Published::Crashed {
                        service,
                        reason: reason.to_string(),
                    })
                    .await;
            }
            Event::Removed { service } => {
                tracing::info!(
                    STRATA_SERVICE = service.as_str(),
                    STRATA_EVENT = "service.removed",
                    "{service} is no longer declared; stopping its unit"
                );
                self.store.remove(&service)?;
            }
        }
        Ok(())
    }

    fn status_line(&self) -> String {
        let all = self.reconciler.status();
        let running = all.iter().filter(|s| s.state == StateKind::Running).count();
        let quarantined: Vec<&str> = all
            .iter()
            .filter(|s| s.state == StateKind::Quarantined)
            .map(|s| s.name.as_str())
            .collect();
        let mut line = format!("{running}/{} services running", all.len());
        if !quarantined.is_empty() {
            line.push_str(&format!("; quarantined: {}", quarantined.join(", ")));
        }
        line
    }

    fn info(&self, s: &ServiceStatus) -> ServiceInfo {
        let wall = self.started_wall + s.since.since_epoch();
        let since_usec = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let reason = match (&s.quarantine_reason, s.state) {
            (Some(q), StateKind::Quarantined) => q.clone(),
            _ => s.reason.clone(),
        };
        ServiceInfo {
            name: s.name.clone(),
            unit: s.unit.clone(),
            state: s.state.as_str().to_owned(),
            main_pid: s.main_pid.unwrap_or(0),
            restarts: s.restarts,
            since_usec,
            reason,
            last_exit: s
                .last_exit
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
        }
    }

    async fn handle_control(&mut self, req: ControlRequest) {
        let now = self.now();
        match req {
            ControlRequest::List(tx) => {
                let all = self
                    .reconciler
                    .status()
                    .iter()
                    .map(|s| self.info(s))
                    .collect();
                let _ = tx.send(all);
            }
            ControlRequest::Get(name, tx) => {
                let r = self.reconciler.service_status(&name).map(|s| self.info(&s));
                let _ = tx.send(r.map_err(control_error));
            }
            ControlRequest::Start(name, tx) => {
                let _ = tx.send(self.reconciler.start(&name, now).map_err(control_error));
            }
            ControlRequest::Stop(name, tx) => {
                let _ = tx.send(self.reconciler.stop(&name, now).map_err(control_error));
            }
            ControlRequest::Restart(name, tx) => {
                let _ = tx.send(self.reconciler.restart(&name, now).map_err(control_error));
            }
            ControlRequest::Release(name, tx) => {
                let _ = tx.send(self.reconciler.release(&name, now).map_err(control_error));
            }
            ControlRequest::Reload(tx) => {
                let r = self.reload().await;
                let _ = tx.send(r);
            }
        }
    }

    /// Re-reads the manifest. An invalid one is rejected with every error logged, and the
    /// running graph is left untouched.
    pub async fn reload(&mut self) -> Result<u64, ControlError> {
        let path = self.config.manifest_path.clone();
        let desired = load_manifest(&path)
            .map_err(|e| e.to_string())
            .and_then(|m| {
                desired_from_manifest(&m, &self.config.launch).map_err(|e| e.to_string())
            });
        match desired {
            Ok(desired) => {
                self.reconciler.set_desired(desired, self.now());
                self.version += 1;
                tracing::info!(
                    STRATA_EVENT = "config.reloaded",
                    version = self.version,
                    "reloaded {}",
                    path.display()
                );
                self.publisher
                    .publish(Published::ConfigUpdated(self.version))
                    .await;
                Ok(self.version)
            }
            Err(msg) => {
                tracing::error!(
                    STRATA_EVENT = "config.rejected",
                    "rejected {}; the running graph is unchanged:\n{msg}",
                    path.display()
                );
                Err(ControlError::InvalidManifest(msg))
            }
        }
    }

    async fn shutdown(&mut self) {
        tracing::info!(
            STRATA_EVENT = "supervisor.stopping",
            "stopping; services keep running and are adopted at the next start"
        );
        self.publisher.publish(Published::Shutdown).await;
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn watchdog_tick(interval: Option<&mut tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn control_error(e: ReconcileError) -> ControlError {
    match e {
        ReconcileError::UnknownService { name } => ControlError::UnknownService(name),
        ReconcileError::NotQuarantined { name, state } => ControlError::NotQuarantined {
            name,
            state: state.as_str().to_owned(),
        },
        ReconcileError::Quarantined { name, reason } => ControlError::Quarantined { name, reason },
        other => ControlError::Failed(other.to_string()),
    }
}
