//! strata-testns: boots a private systemd for scripts and the README demo.
fn main() {}
