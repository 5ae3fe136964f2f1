//! The subcommands of strata-ctl, one module each.

pub mod check;
pub mod service;
