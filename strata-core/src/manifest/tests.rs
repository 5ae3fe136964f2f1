//! Typed results of parsing valid manifests (the broken ones are fixtures in tests/manifests).

use super::*;

const FULL: &str = include_str!("../../tests/manifests/valid_full.toml");

fn parse(text: &str) -> Manifest {
    match Manifest::parse("m.toml", text) {
        Ok(m) => m,
        Err(e) => panic!("does not parse:\n{e}"),
    }
}

#[test]
fn defaults_fill_what_is_not_written() {
    let m = parse("[node]\nid = \"n\"\n[services.a]\nexec = [\"/bin/a\"]\n");
    assert_eq!(
        m.node,
        NodeConfig {
            id: "n".into(),
            runtime_dir: "/run/strata".into(),
            state_dir: "/var/lib/strata".into(),
            binaries_dir: "/usr/lib/strata".into(),
            allow_degraded_sandbox: false,
        }
    );
    let a = &m.services["a"];
    assert_eq!(a.kind, ServiceKind::User);
    assert_eq!(a.restart, RestartConfig::default());
    assert_eq!(a.budget, Budget::default());
    assert_eq!(a.ready, ReadyMode::Exec);
    assert!(a.capabilities.is_empty() && a.after.is_empty() && a.environment.is_empty());
    assert_eq!(m.core, CoreConfig::default());
    assert!(!m.allow_degraded_sandbox(a));
}

#[test]
fn every_value_of_the_full_example_is_typed() {
    let m = parse(FULL);
    let web = &m.services["web"];
    assert_eq!(web.exec, ["/usr/bin/python3", "-m", "http.server", "8080"]);
    assert_eq!(
        web.capabilities,
        [
            Capability::FsRead("/srv/www".into()),
            Capability::NetBind(8080),
            Capability::Call("fs".into()),
        ]
    );
    assert_eq!(web.after, ["fs"]);
    assert_eq!(web.requires, ["db"]);
    assert_eq!(
        web.budget,
        Budget {
            memory: Some(256 << 20),
            cpu: Some(CpuQuota {
                usec_per_sec: 500_000
            }),
            tasks: Some(64),
            io: Some(200),
        }
    );
    assert_eq!(web.restart, RestartConfig::default());
    assert_eq!(web.environment["PYTHONUNBUFFERED"], "1");
    assert_eq!(web.working_directory.as_deref(), Some("/srv/www"));

    let db = &m.services["db"];
    assert_eq!(db.budget.memory, Some(1 << 30));
    assert_eq!(
        db.budget.cpu,
        Some(CpuQuota {
            usec_per_sec: 1_500_000
        })
    );
    assert_eq!(db.ready, ReadyMode::Notify);
    assert!(m.allow_degraded_sandbox(db));

    assert_eq!(m.core.fs.roots, ["/srv/www"]);
    assert_eq!(m.core.fs.settings.budget.memory, Some(128 << 20));
    assert_eq!(
        m.core.registry.settings.restart.initial,
        Duration::from_millis(250)
    );
    assert_eq!(
        m.core.registry.settings.restart.max,
        Duration::from_secs(30)
    );
    assert_eq!(m.core.identity.token_ttl_max, Duration::from_secs(86_400));
}

#[test]
fn restart_settings_convert_to_the_reconciler_policy() {
    let m = parse(
        "[node]\nid = \"n\"\n[services.a]\nexec = [\"/bin/a\"]\nrestart = { initial = \"0s\", max = \"2m\", reset_after = \"1h\", quarantine = { crashes = 3, window = \"90s\" } }\n",
    );
    let p = m.services["a"].restart_policy();
    assert_eq!(p.initial, Duration::ZERO);
    assert_eq!(p.max, Duration::from_secs(120));
    assert_eq!(p.reset_after, Duration::from_secs(3600));
    assert_eq!(p.quarantine_crashes, 3);
    assert_eq!(p.quarantine_window, Duration::from_secs(90));
    assert_eq!(
        RestartConfig::default().policy(),
        crate::reconcile::RestartPolicy::default()
    );
}

#[test]
fn core_services_get_their_binaries_flags_and_capabilities() {
    let m = parse(
        "[node]\nid = \"n\"\nbinaries_dir = \"/opt/strata/bin\"\n[core.fs]\nroots = [\"/srv\"]\nwritable = true\n[core.identity]\ntoken_ttl_default = \"30m\"\n",
    );
    let fs = m.core_service(CoreService::Fs).expect("fs enabled");
    assert_eq!(
        fs.exec,
        [
            "/opt/strata/bin/strata-fs",
            "--node-id",
            "n",
            "--runtime-dir",
            "/run/strata",
            "--root",
            "/srv",
            "--writable"
        ]
    );
    assert_eq!(
        fs.capabilities,
        [
            Capability::FsRead("/run/strata".into()),
            Capability::FsWrite("/run/strata/fs".into()),
            Capability::FsWrite("/srv".into()),
            Capability::Call("audit".into())
        ]
    );
    assert_eq!(fs.after, ["identity"]);
    let id = m
        .core_service(CoreService::Identity)
        .expect("identity enabled");
    assert_eq!(
        id.exec,
        [
            "/opt/strata/bin/strata-identity",
            "--node-id",
            "n",
            "--runtime-dir",
            "/run/strata",
            "--state-dir",
            "/var/lib/strata/identity",
            "--token-ttl-default",
            "1800",
            "--token-ttl-max",
            "86400"
        ]
    );
    assert!(id.after.is_empty());
    // Identity writes only its own runtime and state directories, and calls nobody.
    assert_eq!(
        id.capabilities,
        [
            Capability::FsRead("/run/strata".into()),
            Capability::FsWrite("/run/strata/identity".into()),
            Capability::FsWrite("/var/lib/strata/identity".into())
        ]
    );
    let names: Vec<String> = m.all_services().into_keys().collect();
    assert_eq!(names, ["audit", "fs", "identity", "registry"]);
}

#[test]
fn a_disabled_core_service_leaves_the_graph() {
    let m = parse("[node]\nid = \"n\"\n[core.fs]\nenable = false\n");
    assert!(m.core_service(CoreService::Fs).is_none());
    assert!(m.service("fs").is_none());
    assert!(m.service("registry").is_some());
    assert_eq!(m.all_services().len(), 3);
}

#[test]
fn locations_point_at_the_source() {
    let m = parse(FULL);
    let loc = m.locations.get("services.web.after[0]").expect("recorded");
    assert_eq!(loc.to_string(), "m.toml:27:10");
    assert!(m.locations.get("services.nope").is_none());
}

#[test]
fn several_errors_come_back_at_once_in_file_order() {
    let text = "[node]\nid = \"n\"\n[services.b]\nexec = [\"x\"]\n[services.a]\nbudget = { memory = \"1X\" }\n";
    let e = Manifest::parse("m.toml", text).expect_err("invalid");
    let lines: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "m.toml:4:9: services.b.exec[0] = \"x\": the program path `x` is not absolute: expected a path starting with /",
            "m.toml:5:11: missing key `exec` in [services.a]: expected the command line, e.g. exec = [\"/usr/bin/app\", \"--flag\"]",
            "m.toml:6:21: services.a.budget.memory = \"1X\": invalid size: expected a whole number of bytes with an optional binary suffix K, M, G or T, e.g. \"256M\"",
        ]
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    let text = "[node]\nid = \"n\"\n[services.a]\nexec = [\"/bin/é\", \"ü\"]\nbudget = { memory = \"ä\" }\n";
    let e = Manifest::parse("m.toml", text).expect_err("invalid");
    assert_eq!(e.errors[0].location.column, 21);
}

#[test]
fn windows_line_endings_are_accepted() {
    let m = parse("[node]\r\nid = \"n\"\r\n[services.a]\r\nexec = [\"/bin/a\"]\r\n");
    assert_eq!(m.services["a"].exec, ["/bin/a"]);
}
