//! A test node: a private systemd (strata-testkit) with strata-supervisor running inside it,
//! reached from the test over the namespace's system bus.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use strata_systemd::control::{ServiceInfo, Supervisor1Proxy};
use strata_testkit::{BootOptions, PrivateSystemd};

pub const MANIFEST_PATH: &str = "/run/strata-itest/strata.toml";

/// The `[node]` section of every test manifest: binaries from the cargo build directory bound
/// inside, state in the namespace's private /var/lib/strata-test.
pub fn node_section() -> String {
    format!(
        r#"[node]
id = "itest"
runtime_dir = "/run/strata"
state_dir = "/var/lib/strata-test/state"
binaries_dir = "{bin}"
"#,
        bin = strata_testkit::BIN_DIR
    )
}

/// `node_section()` and the core services disabled.
pub fn node_header() -> String {
    format!(
        r#"{node}
[core.identity]
enable = false
[core.registry]
enable = false
[core.fs]
enable = false
[core.audit]
enable = false
"#,
        node = node_section()
    )
}

pub struct Node {
    pub sd: PrivateSystemd,
    pub supervisor: Option<Child>,
    pub bus: zbus::Connection,
}

/// The host path of a binary of this workspace's build (target/<profile>/NAME).
pub fn host_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        p.display()
    );
    p
}

impl Node {
    pub async fn boot() -> Node {
        Self::boot_with(BootOptions::new()).await
    }

    /// Boots with extra options (e.g. `bind_ro` of a namespace-private /etc/group); the
    /// supervisor's D-Bus policy is always added.
    pub async fn boot_with(opts: BootOptions) -> Node {
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.strata.Supervisor1.conf");
        let sd = PrivateSystemd::boot_with(opts.dbus_policy(policy))
            .unwrap_or_else(|e| panic!("cannot boot a private systemd: {e}"));
        let bus = zbus::connection::Builder::address(sd.bus_address().as_str())
            .expect("address")
            .build()
            .await
            .expect("connect to the namespace's system bus");
        Node {
            sd,
            supervisor: None,
            bus,
        }
    }

    pub fn inside_bin(&self, name: &str) -> PathBuf {
        self.sd.inside_bin(&host_bin(name)).expect("inside path")
    }

    pub fn write_manifest(&self, text: &str) {
        self.sd
            .write_file(Path::new(MANIFEST_PATH), text.as_bytes())
            .expect("write manifest");
    }

    /// Starts strata-supervisor inside the namespace and waits until it owns its bus name;
    /// the node keeps the process (see [`Node::spawn_supervisor`] for one the caller owns).
    pub async fn start_supervisor(&mut self) {
        self.supervisor = Some(self.spawn_supervisor().await);
    }

    /// SIGKILLs the supervisor (nsenter runs it as a child, so the kill reaches it through
    /// the nsenter process group).
    pub async fn kill_supervisor(&mut self) {
        if let Some(child) = self.supervisor.take() {
            let exited = self.kill_spawned_supervisor(child).await;
            assert!(
                exited.is_none(),
                "strata-supervisor had exited on its own before the kill: {exited:?}"
            );
        }
    }

    pub async fn proxy(&self) -> Supervisor1Proxy<'static> {
        Supervisor1Proxy::new(&self.bus)
            .await
            .expect("supervisor proxy")
    }

    /// Waits (event-driven: ServiceStateChanged) until `name` is in `state`.
    pub async fn wait_state(&self, name: &str, state: &str, within: Duration) -> ServiceInfo {
        let proxy = self.proxy().await;
        let mut changes = proxy
            .receive_service_state_changed()
            .await
            .expect("subscribe");
        let current = proxy.get_service(name).await;
        if let Ok(info) = current {
            if info.state == state {
                return info;
            }
        }
        // Ok(true): the signal came; Ok(false): the signal stream ended; Err: timed out.
        let reached = tokio::time::timeout(within, async {
            while let Some(sig) = changes.next().await {
                let a = sig.args().expect("signal args");
                if a.name == name && a.new == state {
                    return true;
                }
            }
            false
        })
        .await;
        let info = proxy.get_service(name).await.expect("GetService");
        assert!(
            matches!(reached, Ok(true)) || info.state == state,
            "{name} did not reach {state} within {within:?}: {info:?}\njournal:\n{}",
            self.sd
                .journal(&format!("strata-{name}.service"))
                .unwrap_or_default()
        );
        info
    }

    /// `systemctl show -p PROP --value UNIT` inside the namespace.
    pub fn show(&self, unit: &str, prop: &str) -> String {
        let out = self
            .sd
            .systemctl(&["show", "-p", prop, "--value", unit])
            .expect("systemctl show");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until `unit` runs a main process other than `old` (a `MainPID` value), checking
    /// every 50 ms: the supervisor's restart is asynchronous to the call that asked for it.
    pub async fn wait_new_main_pid(&self, unit: &str, old: &str, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let pid = self.show(unit, "MainPID");
            if pid != old && pid != "0" && !pid.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{unit} still has MainPID {pid} (was {old}) after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Loaded units named strata-*.service, with their active state.
    pub fn strata_units(&self) -> Vec<(String, String)> {
        let out = self
            .sd
            .systemctl(&[
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                "strata-*.service",
            ])
            .expect("list-units");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_owned(), f.nth(1)?.to_owned()))
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.supervisor.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A supervisor owned by the test rather than by [`Node`]: tests that kill and restart it while
/// other tasks share the node (the chaos test holds the node in an `Arc`).
impl Node {
    /// Starts strata-supervisor like [`Node::start_supervisor`] and hands the process (the
    /// nsenter that forked it) to the caller. Fails if another supervisor owns the bus name:
    /// two supervisors at once would be a bug of the test, not a state to test.
    pub async fn spawn_supervisor(&self) -> Child {
        host_bin("strata-launch");
        let dbus = zbus::fdo::DBusProxy::new(&self.bus)
            .await
            .expect("dbus proxy");
        let name =
            zbus::names::BusName::try_from(strata_systemd::control::BUS_NAME).expect("bus name");
        assert!(
            !dbus
                .name_has_owner(name.clone())
                .await
                .expect("NameHasOwner"),
            "a supervisor already owns {} before this one starts",
            strata_systemd::control::BUS_NAME
        );
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, strata_systemd::control::BUS_NAME)])
            .await
            .expect("subscribe NameOwnerChanged");
        let mut child = self
            .sd
            .command(self.inside_bin("strata-supervisor"))
            .args(["--config", MANIFEST_PATH])
            .env("STRATA_LOG", "debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn strata-supervisor");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !dbus
            .name_has_owner(name.clone())
            .await
            .expect("NameHasOwner")
        {
            if let Some(status) = child.try_wait().expect("wait for strata-supervisor") {
                panic!("strata-supervisor exited before taking its bus name: {status}");
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "strata-supervisor did not take its bus name within 20 s"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), owners.next()).await;
        }
        child
    }

    /// SIGKILLs a supervisor from [`Node::spawn_supervisor`] by its PID (the only child of its
    /// nsenter), reaps it, and waits until the bus has dropped its name, so the next start
    /// cannot take the dead one for itself. Returns `Some(status)` when the supervisor had
    /// already exited on its own (a finding: nothing else stops it), `None` when the kill did.
    pub async fn kill_spawned_supervisor(
        &self,
        mut child: Child,
    ) -> Option<std::process::ExitStatus> {
        let nsenter = child.id();
        let children = std::fs::read_to_string(format!("/proc/{nsenter}/task/{nsenter}/children"))
            .unwrap_or_default();
        let exited_by_itself = match children.split_whitespace().next() {
            Some(pid) => {
                let killed = std::process::Command::new("kill")
                    .args(["-KILL", pid])
                    .status()
                    .expect("run kill");
                // A supervisor exiting at this very instant makes kill fail: say so below.
                let status = child.wait().expect("reap the nsenter of strata-supervisor");
                (!killed.success()).then_some(status)
            }
            None => Some(child.wait().expect("reap the nsenter of strata-supervisor")),
        };
        let dbus = zbus::fdo::DBusProxy::new(&self.bus)
            .await
            .expect("dbus proxy");
        let name =
            zbus::names::BusName::try_from(strata_systemd::control::BUS_NAME).expect("bus name");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while dbus
            .name_has_owner(name.clone())
            .await
            .expect("NameHasOwner")
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the bus still lists a supervisor 10 s after it was killed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        exited_by_itself
    }
}
