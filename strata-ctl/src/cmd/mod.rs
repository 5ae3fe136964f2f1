//! The subcommands of strata-ctl, one module each.

pub mod audit;
pub mod call;
pub mod check;
pub mod metrics;
pub mod service;
pub mod token;
