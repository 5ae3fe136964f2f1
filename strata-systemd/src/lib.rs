//! strata-systemd: the only crate that knows systemd's D-Bus API (`org.freedesktop.systemd1`),
//! and the `strata-supervisor` daemon built on it.

pub mod control;
pub mod control_v1;
pub mod driver;
pub mod fake;
pub mod supervisor;
pub mod systemd;
