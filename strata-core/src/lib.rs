//! strata-core: the kernel of Strata — what the supervisor and the services decide, as pure code.
//!
//! Nothing in this crate performs I/O: no D-Bus, no sockets, no process spawning, no clock
//! reads. Time is passed in; files are parsed from strings handed over by the caller.

pub mod audit_chain;
pub mod authorize;
pub mod capability;
pub mod derive;
pub mod graph;
pub mod launch_args;
pub mod manifest;
pub mod metrics;
pub mod observed;
pub mod protocol;
pub mod quantity;
pub mod reconcile;
pub mod report;
pub mod token;
pub mod unit;
