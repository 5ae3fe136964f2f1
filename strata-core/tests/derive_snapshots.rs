//! Snapshots of sandbox derivation: the full baseline unit once, then for each capability
//! kind and each budget exactly what it adds to (+) or removes from (-) that baseline.
//! Update with `UPDATE_EXPECT=1 cargo test -p strata-core --test derive_snapshots` and review.

use expect_test::{Expect, expect};
use strata_core::derive::{LaunchConfig, derive_all, derive_unit, render_unit, spec_hash};
use strata_core::manifest::Manifest;
use strata_core::unit::UnitSpec;

const LAUNCHER: &str = "/usr/lib/strata/strata-launch";

fn manifest(svc: &str) -> Manifest {
    let text = format!(
        "[node]\nid = \"node-1\"\n[services.db]\nexec = [\"/usr/bin/db\"]\n[services.svc]\nexec = [\"/usr/bin/svc\", \"--port\", \"8080\"]\n{svc}"
    );
    match Manifest::parse("test.toml", &text) {
        Ok(m) => m,
        Err(e) => panic!("fixture manifest invalid:\n{e}"),
    }
}

fn launch() -> LaunchConfig {
    LaunchConfig {
        launcher: LAUNCHER.to_owned(),
    }
}

fn unit(svc: &str) -> UnitSpec {
    derive_unit(&manifest(svc), "svc", &launch()).expect("svc derives")
}

/// Lines of `render_unit` added (+) and removed (-) relative to the baseline, hash left out.
fn delta(svc: &str) -> String {
    let base = render_unit(&unit(""));
    let new = render_unit(&unit(svc));
    let keep = |l: &&str| !l.trim_start().starts_with("spec hash:");
    let base_lines: Vec<&str> = base.lines().filter(keep).collect();
    let new_lines: Vec<&str> = new.lines().filter(keep).collect();
    let mut out = String::new();
    for l in &base_lines {
        if !new_lines.contains(l) {
            out.push_str(&format!("- {}\n", l.trim_start()));
        }
    }
    for l in &new_lines {
        if !base_lines.contains(l) {
            out.push_str(&format!("+ {}\n", l.trim_start()));
        }
    }
    out
}

fn check_delta(svc: &str, expected: &Expect) {
    expected.assert_eq(&delta(svc));
}

#[test]
fn baseline_unit_without_capabilities() {
    expect![[r#"
        strata-svc.service (service svc, slice strata.slice)
          Description=Strata service svc (no capabilities)
          ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
          Type=exec
          Restart=no
          DynamicUser=yes
          ProtectSystem=strict
          ProtectHome=yes
          PrivateTmp=yes
          PrivateDevices=yes
          PrivateNetwork=yes
          NoNewPrivileges=yes
          ProtectKernelTunables=yes
          ProtectKernelModules=yes
          ProtectKernelLogs=yes
          ProtectControlGroups=yes
          ProtectClock=yes
          ProtectHostname=yes
          ProtectProc=invisible
          ProcSubset=pid
          RestrictNamespaces=yes
          RestrictRealtime=yes
          RestrictSUIDSGID=yes
          LockPersonality=yes
          MemoryDenyWriteExecute=yes
          SystemCallFilter=@system-service landlock_create_ruleset landlock_add_rule landlock_restrict_self
          SystemCallFilter=~@privileged @resources
          SystemCallErrorNumber=EPERM
          SystemCallArchitectures=native
          CapabilityBoundingSet=
          UMask=0077
          InaccessiblePaths=-/run/dbus -/var/run/dbus
          RestrictAddressFamilies=AF_UNIX
          Landlock (applied by strata-launch, plus what exec needs):
            read beneath:  (nothing)
            write beneath: /tmp /var/tmp
            bind tcp:      (none)
            connect tcp:   (none)
            if the kernel cannot enforce all of it: refuse to start
          spec hash: cbd4b6c0b2262ca489e0f8bbd107b9b01bb4b3ec4f2ddc1472549648fc25c294
    "#]]
    .assert_eq(&render_unit(&unit("")));
}

#[test]
fn fs_read_adds_a_landlock_read_rule_only() {
    check_delta(
        r#"capabilities = ["fs.read:/srv/www"]"#,
        &expect![[r#"
        - Description=Strata service svc (no capabilities)
        - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        - read beneath:  (nothing)
        + Description=Strata service svc (capabilities: fs.read:/srv/www)
        + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[\"/srv/www\"],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        + read beneath:  /srv/www
    "#]],
    );
}

#[test]
fn fs_write_adds_read_write_paths_and_a_landlock_write_rule() {
    check_delta(
        r#"capabilities = ["fs.write:/var/lib/svc"]"#,
        &expect![[r#"
        - Description=Strata service svc (no capabilities)
        - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        - write beneath: /tmp /var/tmp
        + Description=Strata service svc (capabilities: fs.write:/var/lib/svc)
        + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/lib/svc\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        + ReadWritePaths=/var/lib/svc
        + write beneath: /tmp /var/lib/svc /var/tmp
    "#]],
    );
}

#[test]
fn net_bind_opens_inet_and_allows_binding_that_port_only() {
    check_delta(
        r#"capabilities = ["net.bind:tcp:8080"]"#,
        &expect![[r#"
        - Description=Strata service svc (no capabilities)
        - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        - PrivateNetwork=yes
        - RestrictAddressFamilies=AF_UNIX
        - bind tcp:      (none)
        + Description=Strata service svc (capabilities: net.bind:tcp:8080)
        + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[8080],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        + RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
        + SocketBindAllow=tcp:8080
        + SocketBindDeny=any
        + bind tcp:      8080
    "#]],
    );
}

#[test]
fn net_bind_below_1024_keeps_cap_net_bind_service() {
    check_delta(
        r#"capabilities = ["net.bind:tcp:80"]"#,
        &expect![[r#"
        - Description=Strata service svc (no capabilities)
        - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        - PrivateNetwork=yes
        - CapabilityBoundingSet=
        - RestrictAddressFamilies=AF_UNIX
        - bind tcp:      (none)
        + Description=Strata service svc (capabilities: net.bind:tcp:80)
        + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[80],\"connect_tcp\":[],\"allow_degraded\":false}" --keep-caps CAP_NET_BIND_SERVICE -- /usr/bin/svc --port 8080
        + CapabilityBoundingSet=CAP_NET_BIND_SERVICE
        + AmbientCapabilities=CAP_NET_BIND_SERVICE
        + RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
        + SocketBindAllow=tcp:80
        + SocketBindDeny=any
        + bind tcp:      80
    "#]],
    );
}

#[test]
fn net_connect_opens_inet_and_binds_nothing() {
    check_delta(
        r#"capabilities = ["net.connect:tcp:5432"]"#,
        &expect![[r#"
        - Description=Strata service svc (no capabilities)
        - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        - PrivateNetwork=yes
        - RestrictAddressFamilies=AF_UNIX
        - connect tcp:   (none)
        + Description=Strata service svc (capabilities: net.connect:tcp:5432)
        + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[5432],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        + RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
        + SocketBindDeny=any
        + connect tcp:   5432
    "#]],
    );
}

#[test]
fn call_loads_the_token_as_a_credential() {
    check_delta(
        r#"capabilities = ["call:db"]"#,
        &expect![[r#"
        - Description=Strata service svc (no capabilities)
        + Description=Strata service svc (capabilities: call:db)
        + LoadCredential=strata-token-db:/run/strata/credentials/svc/db.token
    "#]],
    );
}

#[test]
fn sys_cap_keeps_that_capability() {
    check_delta(
        r#"capabilities = ["sys.cap:CAP_NET_ADMIN"]"#,
        &expect![[r#"
        - Description=Strata service svc (no capabilities)
        - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
        - CapabilityBoundingSet=
        + Description=Strata service svc (capabilities: sys.cap:CAP_NET_ADMIN)
        + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" --keep-caps CAP_NET_ADMIN -- /usr/bin/svc --port 8080
        + CapabilityBoundingSet=CAP_NET_ADMIN
        + AmbientCapabilities=CAP_NET_ADMIN
    "#]],
    );
}

#[test]
fn sys_cap_sys_time_lifts_what_would_make_it_useless() {
    check_delta(
        r#"capabilities = ["sys.cap:CAP_SYS_TIME"]"#,
        &expect![[r#"
            - Description=Strata service svc (no capabilities)
            - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
            - ProtectClock=yes
            - SystemCallFilter=@system-service landlock_create_ruleset landlock_add_rule landlock_restrict_self
            - SystemCallFilter=~@privileged @resources
            - CapabilityBoundingSet=
            + Description=Strata service svc (capabilities: sys.cap:CAP_SYS_TIME)
            + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" --keep-caps CAP_SYS_TIME -- /usr/bin/svc --port 8080
            + ProtectClock=no
            + SystemCallFilter=@system-service landlock_create_ruleset landlock_add_rule landlock_restrict_self @clock
            + SystemCallFilter=~@resources
            + CapabilityBoundingSet=CAP_SYS_TIME
            + AmbientCapabilities=CAP_SYS_TIME
        "#]],
    );
}

#[test]
fn memory_budget_sets_memory_max() {
    check_delta(
        r#"budget = { memory = "256M" }"#,
        &expect![[r#"
        + MemoryMax=256M
    "#]],
    );
}

#[test]
fn cpu_budget_sets_the_quota_per_second() {
    check_delta(
        r#"budget = { cpu = "50%" }"#,
        &expect![[r#"
        + CPUQuota=50%
    "#]],
    );
}

#[test]
fn tasks_budget_sets_tasks_max() {
    check_delta(
        r#"budget = { tasks = 64 }"#,
        &expect![[r#"
        + TasksMax=64
    "#]],
    );
}

#[test]
fn io_budget_sets_io_weight() {
    check_delta(
        r#"budget = { io = 200 }"#,
        &expect![[r#"
        + IOWeight=200
    "#]],
    );
}

#[test]
fn settings_ready_environment_working_directory_degraded() {
    check_delta(
        r#"ready = "notify"
environment = { RUST_LOG = "info", GREETING = "hello world" }
working_directory = "/srv/svc"
allow_degraded_sandbox = true"#,
        &expect![[r#"
            - ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/bin/svc --port 8080
            - Type=exec
            - read beneath:  (nothing)
            - if the kernel cannot enforce all of it: refuse to start
            + ExecStart=/usr/lib/strata/strata-launch --service svc --ruleset-json "{\"read\":[\"/srv/svc\"],\"write\":[\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":true}" -- /usr/bin/svc --port 8080
            + Type=notify
            + Environment="GREETING=hello world" RUST_LOG=info
            + WorkingDirectory=/srv/svc
            + read beneath:  /srv/svc
            + if the kernel cannot enforce all of it: start anyway (allow_degraded_sandbox)
        "#]],
    );
}

#[test]
fn core_fs_unit_serves_its_roots() {
    let m = Manifest::parse(
        "test.toml",
        "[node]\nid = \"node-1\"\n[core.fs]\nroots = [\"/srv/www\", \"/srv/data\"]\n",
    )
    .expect("valid");
    expect![[r#"
        strata-fs.service (service fs, slice strata.slice)
          Description=Strata core service fs (capabilities: fs.read:/run/strata, fs.read:/srv/data, fs.read:/srv/www, fs.write:/run/strata/fs, call:audit)
          ExecStart=/usr/lib/strata/strata-launch --service fs --ruleset-json "{\"read\":[\"/run/strata\",\"/srv/data\",\"/srv/www\"],\"write\":[\"/run/strata/fs\",\"/tmp\",\"/var/tmp\"],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":false}" -- /usr/lib/strata/strata-fs --node-id node-1 --runtime-dir /run/strata --root /srv/www --root /srv/data
          Type=notify
          Restart=no
          DynamicUser=yes
          ProtectSystem=strict
          ProtectHome=yes
          PrivateTmp=yes
          PrivateDevices=yes
          PrivateNetwork=yes
          NoNewPrivileges=yes
          ProtectKernelTunables=yes
          ProtectKernelModules=yes
          ProtectKernelLogs=yes
          ProtectControlGroups=yes
          ProtectClock=yes
          ProtectHostname=yes
          ProtectProc=invisible
          ProcSubset=pid
          RestrictNamespaces=yes
          RestrictRealtime=yes
          RestrictSUIDSGID=yes
          LockPersonality=yes
          MemoryDenyWriteExecute=yes
          SystemCallFilter=@system-service landlock_create_ruleset landlock_add_rule landlock_restrict_self
          SystemCallFilter=~@privileged @resources
          SystemCallErrorNumber=EPERM
          SystemCallArchitectures=native
          CapabilityBoundingSet=
          UMask=0077
          InaccessiblePaths=-/run/dbus -/var/run/dbus
          RestrictAddressFamilies=AF_UNIX
          RuntimeDirectory=strata/fs
          LoadCredential=strata-token-audit:/run/strata/credentials/fs/audit.token
          Landlock (applied by strata-launch, plus what exec needs):
            read beneath:  /run/strata /srv/data /srv/www
            write beneath: /run/strata/fs /tmp /var/tmp
            bind tcp:      (none)
            connect tcp:   (none)
            if the kernel cannot enforce all of it: refuse to start
          spec hash: 64c8e7ee48d3ca0634b713b0a5654f4b9c531f938175a984ba527361894817bb
    "#]].assert_eq(&render_unit(
        &derive_unit(&m, "fs", &launch()).expect("fs derives"),
    ));
}

#[test]
fn spec_hash_is_pinned() {
    // The same manifest gives this hash on every machine and every run. If a deliberate
    // change to derivation moves it, every running unit will be rolled once: say so.
    expect!["cbd4b6c0b2262ca489e0f8bbd107b9b01bb4b3ec4f2ddc1472549648fc25c294"]
        .assert_eq(&unit("").spec_hash);
}

#[test]
fn spec_hash_covers_everything_derived() {
    let base = unit(r#"capabilities = ["net.bind:tcp:8080", "call:db"]"#);
    assert_eq!(spec_hash(&base), base.spec_hash);
    let mut variants: Vec<UnitSpec> = Vec::new();
    let mut push = |f: &dyn Fn(&mut UnitSpec)| {
        let mut s = base.clone();
        f(&mut s);
        variants.push(s);
    };
    push(&|s| s.service.push('x'));
    push(&|s| s.unit.push('x'));
    push(&|s| s.description.push('x'));
    push(&|s| s.slice.push('x'));
    push(&|s| s.exec.push("x".into()));
    push(&|s| s.exec[0].push('x'));
    push(&|s| {
        s.properties.pop();
    });
    push(&|s| s.properties.swap(0, 1));
    push(&|s| s.properties[0].name.push('x'));
    push(&|s| s.landlock.read.push("/x".into()));
    push(&|s| s.landlock.write.pop().map(|_| ()).unwrap_or(()));
    push(&|s| s.landlock.bind_tcp.push(1));
    push(&|s| s.landlock.connect_tcp.push(1));
    push(&|s| s.landlock.allow_degraded = true);
    // Moving an element between adjacent lists must change the hash too.
    push(&|s| {
        let w = s.landlock.write.remove(0);
        s.landlock.read.push(w);
    });
    let mut hashes: Vec<String> = variants.iter().map(spec_hash).collect();
    hashes.push(base.spec_hash.clone());
    let n = hashes.len();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), n, "two different specs share a hash");
}

#[test]
fn spec_hash_ignores_the_order_capabilities_are_written_in() {
    let a = unit(r#"capabilities = ["fs.read:/srv", "net.bind:tcp:80", "call:db"]"#);
    let b = unit(r#"capabilities = ["call:db", "net.bind:tcp:80", "fs.read:/srv"]"#);
    assert_eq!(a, b);
}

#[test]
fn every_service_of_a_manifest_derives() {
    let m = manifest(r#"capabilities = ["call:fs"]"#);
    let all = derive_all(&m, &LaunchConfig::for_manifest(&m));
    let names: Vec<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(names, ["audit", "db", "fs", "identity", "registry", "svc"]);
    for (name, spec) in &all {
        assert_eq!(spec.unit, format!("strata-{name}.service"));
        assert_eq!(spec.exec[0], "/usr/lib/strata/strata-launch");
    }
    assert!(derive_unit(&m, "nope", &launch()).is_err());
}
