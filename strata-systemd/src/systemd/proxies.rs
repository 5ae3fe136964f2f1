//! Typed zbus proxies for the parts of `org.freedesktop.systemd1` that Strata uses.
//!
//! Property names are spelled out where zbus's default case conversion would get them wrong
//! (`MainPID`, `NRestarts`, `CPUQuotaPerSecUSec`, ...). Values that systemd never announces in a
//! change signal (`MemoryCurrent`, `TasksCurrent`, `ControlGroup`) must be read through a proxy
//! built with `CacheProperties::No`, or zbus hands back stale values.
//!
//! Why not the `zbus_systemd` crate: its last release on zbus 5 (0.26100.0) is generated from
//! systemd 261, so methods and properties newer than the machine's systemd 252 compile and then
//! fail only at run time; later releases need zbus 6; and it still needs the caching and
//! naming care above. The handful of members Strata uses are written out here instead.

use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, Value};

/// One row of `ListUnits*`: name, description, load state, active state, sub state, following,
/// unit path, job id, job type, job path.
pub type UnitListEntry = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

/// A transient-unit property as sent to `StartTransientUnit`.
pub type PropertyPair<'a> = (&'a str, Value<'a>);

/// An auxiliary unit for `StartTransientUnit` (unused by Strata, always empty).
pub type AuxUnit<'a> = (&'a str, Vec<PropertyPair<'a>>);

#[proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_blocking = false
)]
pub trait Manager {
    /// Creates and starts a transient unit; returns the start job's object path.
    #[zbus(name = "StartTransientUnit")]
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[PropertyPair<'_>],
        aux: &[AuxUnit<'_>],
    ) -> zbus::Result<OwnedObjectPath>;

    /// Starts a loaded unit (here: a failed transient unit, again); returns the job's path.
    #[zbus(name = "StartUnit")]
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(name = "StopUnit")]
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(name = "KillUnit")]
    fn kill_unit(&self, name: &str, whom: &str, signal: i32) -> zbus::Result<()>;

    #[zbus(name = "ResetFailedUnit")]
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;

    #[zbus(name = "GetUnit")]
    fn get_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;

    #[zbus(name = "ListUnitsByPatterns")]
    fn list_units_by_patterns(
        &self,
        states: &[&str],
        patterns: &[&str],
    ) -> zbus::Result<Vec<UnitListEntry>>;

    /// Without this call systemd sends no JobRemoved/PropertiesChanged signals to anyone who
    /// has not subscribed.
    #[zbus(name = "Subscribe")]
    fn subscribe(&self) -> zbus::Result<()>;

    #[zbus(signal, name = "JobRemoved")]
    fn job_removed(&self, id: u32, job: OwnedObjectPath, unit: String, result: String);

    #[zbus(signal, name = "UnitRemoved")]
    fn unit_removed(&self, id: String, unit: OwnedObjectPath);

    #[zbus(signal, name = "UnitNew")]
    fn unit_new(&self, id: String, unit: OwnedObjectPath);

    #[zbus(property, name = "Version")]
    fn version(&self) -> zbus::Result<String>;

    #[zbus(property, name = "ControlGroup")]
    fn control_group(&self) -> zbus::Result<String>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub trait Unit {
    #[zbus(property, name = "Id")]
    fn id(&self) -> zbus::Result<String>;

    #[zbus(property, name = "LoadState")]
    fn load_state(&self) -> zbus::Result<String>;

    #[zbus(property, name = "ActiveState")]
    fn active_state(&self) -> zbus::Result<String>;

    #[zbus(property, name = "SubState")]
    fn sub_state(&self) -> zbus::Result<String>;

    /// The unit's current job as (id, path); id 0 when there is none.
    #[zbus(property, name = "Job")]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
}

#[proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1",
    gen_blocking = false
)]
pub trait Service {
    #[zbus(property, name = "Result")]
    fn result(&self) -> zbus::Result<String>;

    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;

    #[zbus(property, name = "NRestarts")]
    fn n_restarts(&self) -> zbus::Result<u32>;

    /// CLD_EXITED (1), CLD_KILLED (2) or CLD_DUMPED (3); 0 before the main process ended.
    #[zbus(property, name = "ExecMainCode")]
    fn exec_main_code(&self) -> zbus::Result<i32>;

    /// The exit status or, when killed, the signal number.
    #[zbus(property, name = "ExecMainStatus")]
    fn exec_main_status(&self) -> zbus::Result<i32>;

    #[zbus(property, name = "ExecMainStartTimestampMonotonic")]
    fn exec_main_start_timestamp_monotonic(&self) -> zbus::Result<u64>;

    #[zbus(property, name = "ControlGroup")]
    fn control_group(&self) -> zbus::Result<String>;

    #[zbus(property, name = "MemoryMax")]
    fn memory_max(&self) -> zbus::Result<u64>;

    #[zbus(property, name = "MemoryCurrent")]
    fn memory_current(&self) -> zbus::Result<u64>;

    #[zbus(property, name = "TasksMax")]
    fn tasks_max(&self) -> zbus::Result<u64>;

    #[zbus(property, name = "TasksCurrent")]
    fn tasks_current(&self) -> zbus::Result<u64>;

    #[zbus(property, name = "CPUQuotaPerSecUSec")]
    fn cpu_quota_per_sec_usec(&self) -> zbus::Result<u64>;

    #[zbus(property, name = "Environment")]
    fn environment(&self) -> zbus::Result<Vec<String>>;
}
