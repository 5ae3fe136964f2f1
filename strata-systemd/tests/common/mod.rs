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

/// The `[node]` and disabled core services every test manifest starts with: binaries come from
/// the cargo build directory bound inside.
pub fn node_header() -> String {
    format!(
        r#"[node]
id = "itest"
runtime_dir = "/run/strata"
state_dir = "/var/lib/strata-test/state"
binaries_dir = "{bin}"

[core.identity]
enable = false
[core.registry]
enable = false
[core.fs]
enable = false
[core.audit]
enable = false
"#,
        bin = strata_testkit::BIN_DIR
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
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("dbus/org.strata.Supervisor1.conf");
        let sd = PrivateSystemd::boot_with(BootOptions::new().dbus_policy(policy))
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

    /// Starts strata-supervisor inside the namespace and waits until it owns its bus name.
    pub async fn start_supervisor(&mut self) {
        // Both the launcher and strata-supervisor must be built.
        host_bin("strata-launch");
        let dbus = zbus::fdo::DBusProxy::new(&self.bus)
            .await
            .expect("dbus proxy");
        let mut owners = dbus
            .receive_name_owner_changed_with_args(&[(0, "org.strata.Supervisor1")])
            .await
            .expect("subscribe NameOwnerChanged");
        let child = self
            .sd
            .command(self.inside_bin("strata-supervisor"))
            .args(["--config", MANIFEST_PATH])
            .env("STRATA_LOG", "debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn strata-supervisor");
        self.supervisor = Some(child);
        let name = zbus::names::BusName::try_from("org.strata.Supervisor1").expect("name");
        if !dbus.name_has_owner(name).await.expect("NameHasOwner") {
            tokio::time::timeout(Duration::from_secs(20), async {
                while let Some(sig) = owners.next().await {
                    if sig.args().is_ok_and(|a| a.new_owner.is_some()) {
                        return;
                    }
                }
            })
            .await
            .expect("strata-supervisor did not take its bus name within 20 s");
        }
    }

    /// SIGKILLs the supervisor (nsenter runs it as a child, so the kill reaches it through
    /// the nsenter process group).
    pub fn kill_supervisor(&mut self) {
        if let Some(mut child) = self.supervisor.take() {
            // nsenter execs nothing itself: it forks the supervisor. Kill the inner process.
            let inner = self
                .sd
                .command("pkill")
                .args(["-KILL", "-x", "strata-supervis"])
                .status();
            assert!(
                inner.is_ok_and(|s| s.success()),
                "cannot SIGKILL strata-supervisor"
            );
            let _ = child.wait();
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
        let reached = tokio::time::timeout(within, async {
            while let Some(sig) = changes.next().await {
                let a = sig.args().expect("signal args");
                if a.name == name && a.new == state {
                    return;
                }
            }
        })
        .await;
        let info = proxy.get_service(name).await.expect("GetService");
        assert!(
            reached.is_ok() || info.state == state,
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
