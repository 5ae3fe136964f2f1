//! strata-services: capability-guarded services, the protocol v1 runtime and the launcher.
pub mod launch;
