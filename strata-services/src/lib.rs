//! strata-services: capability-guarded services, the protocol v1 runtime and the launcher.
pub mod durable;
pub mod identity;
pub mod ipc;
pub mod launch;
pub mod revocation;
pub mod verifier;
pub mod fs;
pub mod audit;
pub mod registry;
pub mod bootstrap;
