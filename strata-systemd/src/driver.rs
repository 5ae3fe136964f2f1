//! The driver trait the supervisor drives; implemented by the systemd driver and by test fakes.

use std::future::Future;

use strata_core::observed::UnitObservation;
use strata_core::unit::UnitSpec;
use tokio::sync::mpsc;

/// A change the driver saw, delivered in order on the event channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverEvent {
    /// A Strata unit changed (deduplicated: only sent when the observation differs).
    Changed(UnitObservation),
    /// A Strata unit was unloaded by systemd.
    Removed { unit: String },
    /// A full snapshot of every Strata unit: sent after (re)connecting to the bus, and when the
    /// event channel overflowed. Everything not in it is gone.
    Resync(Vec<UnitObservation>),
}

/// What the supervisor needs from systemd. Every method names the unit in its errors.
pub trait UnitDriver: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Starts `spec` as a transient unit (Restart=no, spec hash recorded on the unit) and returns
    /// once systemd accepted the start job. The outcome arrives as events.
    fn start(&self, spec: &UnitSpec) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Starts the loaded, ended (failed or exited) unit of `spec` again, in place: the caller
    /// knows it carries `spec`'s hash, so systemd holds these very properties. When systemd has
    /// collected the unit meanwhile, starts `spec` as a new transient unit instead. Returns
    /// once systemd accepted the start job; the outcome arrives as events.
    fn restart(&self, spec: &UnitSpec) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Stops the unit (no error when it is already gone).
    fn stop(&self, unit: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Sends `signal` to every process of the unit.
    fn kill(&self, unit: &str, signal: i32)
    -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Clears a failed unit so its name can be used again (no error when not failed or gone).
    fn reset_failed(&self, unit: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Every loaded unit named `strata-*.service`.
    fn list(&self) -> impl Future<Output = Result<Vec<UnitObservation>, Self::Error>> + Send;
    /// The stream of changes to Strata units. Called once; the first event is a `Resync`.
    fn events(
        &self,
    ) -> impl Future<Output = Result<mpsc::Receiver<DriverEvent>, Self::Error>> + Send;
}
