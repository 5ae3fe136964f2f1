//! strata-services: capability-guarded services, the protocol v1 runtime and the launcher.
pub mod audit;
pub mod bootstrap;
pub mod durable;
pub mod errno;
pub mod fs;
pub mod identity;
pub mod ipc;
pub mod launch;
pub mod registry;
pub mod revocation;
pub mod verifier;
