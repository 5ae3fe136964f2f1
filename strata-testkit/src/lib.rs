//! strata-testkit: boots a private systemd in a PID+mount namespace for tests and the demo.
