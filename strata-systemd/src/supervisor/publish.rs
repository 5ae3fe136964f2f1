//! Where the supervisor's events go: D-Bus signals and sd_notify in production, a recording
//! list in tests.

use std::future::Future;
use std::sync::{Arc, Mutex};

use zbus::object_server::SignalEmitter;

use crate::control::SupervisorInterface;

/// Something the supervisor tells the outside world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The first reconcile after the initial resync is done.
    Ready {
        services: usize,
    },
    /// A one-line summary for `systemctl status strata-supervisor` (sd_notify STATUS=).
    Status(String),
    StateChanged {
        service: String,
        old: String,
        new: String,
        reason: String,
    },
    Health {
        service: String,
        ok: bool,
    },
    Crashed {
        service: String,
        reason: String,
    },
    ConfigUpdated(u64),
    /// The loop is alive (sd_notify WATCHDOG=1).
    Watchdog,
    Shutdown,
}

/// A sink for [`Published`] events. Publishing never fails the loop: a sink logs its own errors.
pub trait Publisher: Send + Sync + 'static {
    fn publish(&self, event: Published) -> impl Future<Output = ()> + Send;
}

/// Records everything published (for tests of the loop).
#[derive(Debug, Clone, Default)]
pub struct RecordingPublisher {
    pub events: Arc<Mutex<Vec<Published>>>,
}

impl RecordingPublisher {
    pub fn take(&self) -> Vec<Published> {
        std::mem::take(
            &mut *self
                .events
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl Publisher for RecordingPublisher {
    async fn publish(&self, event: Published) {
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(event);
    }
}

/// Emits the signals of `org.strata.Supervisor1` and reports readiness and status to systemd.
#[derive(Debug, Clone)]
pub struct BusPublisher {
    emitter: SignalEmitter<'static>,
}

impl BusPublisher {
    pub fn new(conn: &zbus::Connection) -> zbus::Result<Self> {
        Ok(Self {
            emitter: SignalEmitter::new(conn, crate::control::OBJECT_PATH)?.into_owned(),
        })
    }
}

fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

impl Publisher for BusPublisher {
    async fn publish(&self, event: Published) {
        let em = &self.emitter;
        let sent = match &event {
            Published::Ready { services } => {
                notify(&[
                    sd_notify::NotifyState::Ready,
                    sd_notify::NotifyState::Status(&format!("managing {services} services")),
                ]);
                Ok(())
            }
            Published::Watchdog => {
                notify(&[sd_notify::NotifyState::Watchdog]);
                Ok(())
            }
            Published::Status(line) => {
                notify(&[sd_notify::NotifyState::Status(line)]);
                Ok(())
            }
            Published::StateChanged {
                service,
                old,
                new,
                reason,
            } => SupervisorInterface::service_state_changed(em, service, old, new, reason).await,
            Published::Health { service, ok } => {
                SupervisorInterface::health(em, service, *ok).await
            }
            Published::Crashed { service, reason } => {
                SupervisorInterface::service_crashed(em, service, reason).await
            }
            Published::ConfigUpdated(v) => SupervisorInterface::config_updated(em, *v).await,
            Published::Shutdown => {
                notify(&[sd_notify::NotifyState::Stopping]);
                SupervisorInterface::shutdown(em).await
            }
        };
        if let Err(e) = sent {
            tracing::warn!("cannot emit the D-Bus signal for {event:?}: {e}");
        }
    }
}
