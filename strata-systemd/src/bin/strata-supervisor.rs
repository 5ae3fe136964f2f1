//! strata-supervisor: reconciles the declared service graph against systemd.
fn main() {}
