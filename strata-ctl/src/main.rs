//! strata-ctl: the command-line client of Strata.
fn main() {}
