//! The directories of the core services' units: as DynamicUser units they cannot create files
//! in root's <runtime_dir> or <state_dir>, so systemd creates theirs (RuntimeDirectory=,
//! StateDirectory=) and nothing of <runtime_dir> is left writable to them.

use strata_core::derive::{LaunchConfig, derive_unit};
use strata_core::manifest::Manifest;
use strata_core::unit::{PropValue, UnitSpec};

fn values<'a>(spec: &'a UnitSpec, name: &str) -> Vec<&'a PropValue> {
    spec.properties
        .iter()
        .filter(|p| p.name == name)
        .map(|p| &p.value)
        .collect()
}

fn strings(v: &[&str]) -> PropValue {
    PropValue::Strings(v.iter().map(|s| (*s).to_owned()).collect())
}

fn unit(manifest: &Manifest, service: &str) -> UnitSpec {
    derive_unit(
        manifest,
        service,
        &LaunchConfig {
            launcher: "/usr/lib/strata/strata-launch".into(),
        },
    )
    .expect("derives")
}

#[test]
fn core_services_get_their_own_runtime_and_state_directories() {
    let m = Manifest::parse(
        "t.toml",
        "[node]\nid = \"n\"\nruntime_dir = \"/run/strata\"\nstate_dir = \"/var/lib/strata-x\"\n[core.fs]\nroots = [\"/srv\"]\nwritable = true\n",
    )
    .expect("valid");
    for (service, state) in [
        ("identity", true),
        ("registry", true),
        ("audit", true),
        ("fs", false),
    ] {
        let u = unit(&m, service);
        let runtime = format!("strata/{service}");
        assert_eq!(
            values(&u, "RuntimeDirectory"),
            [&strings(&[runtime.as_str()])],
            "{service}"
        );
        let rw = values(&u, "ReadWritePaths");
        if state {
            let dir = format!("strata-x/{service}");
            assert_eq!(
                values(&u, "StateDirectory"),
                [&strings(&[dir.as_str()])],
                "{service}"
            );
            assert_eq!(values(&u, "StateDirectoryMode"), [&PropValue::U32(0o700)]);
            // Writable through StateDirectory=/RuntimeDirectory= only: no ReadWritePaths.
            assert!(rw.is_empty(), "{service}: {rw:?}");
        } else {
            assert!(values(&u, "StateDirectory").is_empty(), "{service}");
            // fs writes its roots (writable = true), never the runtime directory itself.
            assert_eq!(rw, [&strings(&["/srv"])], "{service}");
        }
        // Landlock: reads <runtime_dir>, writes only its own part of it.
        assert!(
            u.landlock.read.contains(&"/run/strata".to_owned()),
            "{service}"
        );
        assert!(
            u.landlock.write.contains(&format!("/run/strata/{service}")),
            "{service}"
        );
        assert!(
            !u.landlock.write.contains(&"/run/strata".to_owned()),
            "{service}"
        );
    }
    // fs and registry get a token for audit; identity and audit call nobody.
    for (service, calls_audit) in [
        ("fs", true),
        ("registry", true),
        ("identity", false),
        ("audit", false),
    ] {
        let u = unit(&m, service);
        let creds = values(&u, "LoadCredential");
        assert_eq!(!creds.is_empty(), calls_audit, "{service}: {creds:?}");
    }
}

#[test]
fn user_services_get_no_directories_from_strata() {
    let m = Manifest::parse(
        "t.toml",
        "[node]\nid = \"n\"\n[services.web]\nexec = [\"/usr/bin/true\"]\ncapabilities = [\"fs.write:/srv/web\"]\n",
    )
    .expect("valid");
    let u = unit(&m, "web");
    assert!(values(&u, "RuntimeDirectory").is_empty());
    assert!(values(&u, "StateDirectory").is_empty());
    assert_eq!(values(&u, "ReadWritePaths"), [&strings(&["/srv/web"])]);
}
