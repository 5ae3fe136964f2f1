//! The manifest the NixOS module renders for its example configuration
//! (nixos-module/tests/example-config.expected.toml) is accepted by `strata-ctl check`.
//!
//! The other direction — that the module still renders exactly this file — is checked by
//! scripts/check-nixos-fixture.sh (offline evaluator) and the flake's `example-config` check.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("strata-ctl lives inside the workspace")
        .to_path_buf()
}

fn fixture() -> PathBuf {
    repo_root().join("nixos-module/tests/example-config.expected.toml")
}

fn check(path: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata-ctl"))
        .arg("check")
        .arg(path)
        .output()
        .expect("strata-ctl runs")
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn rendered_example_config_passes_check() {
    let path = fixture();
    let out = check(&path);
    assert!(
        out.status.success(),
        "strata-ctl check rejected the NixOS module's rendering {}:\n{}",
        path.display(),
        describe(&out)
    );
}

#[test]
fn fixture_declares_what_the_example_config_declares() {
    let text = std::fs::read_to_string(fixture()).expect("fixture is readable");
    // The example configuration declares these; the offline re-render keeps them in sync,
    // this keeps the fixture from being emptied into something trivially valid.
    for table in [
        "[node]",
        "[services.web]",
        "[services.cache]",
        "[services.probe]",
        "[core.fs]",
        "[services.web.restart.quarantine]",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == table),
            "fixture lacks {table}"
        );
    }
}

#[test]
fn check_rejects_a_broken_rendering_and_names_the_place() {
    // Negative control next to the positive one above: the same file with a dependency on a
    // service that does not exist must be refused, with file:line:column of the culprit.
    let text = std::fs::read_to_string(fixture()).expect("fixture is readable");
    let broken = text.replace("requires = [ \"cache\" ]", "requires = [ \"cahce\" ]");
    assert_ne!(
        broken, text,
        "the fixture no longer has web's requires line"
    );
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nixos-fixture");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("broken.toml");
    std::fs::write(&path, broken).expect("write broken copy");

    let out = check(&path);
    assert!(
        !out.status.success(),
        "strata-ctl check accepted an unknown dependency:\n{}",
        describe(&out)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .position(|l| l.contains("requires = [ \"cache\" ]"))
        .map(|i| i + 1)
        .expect("line of requires");
    assert!(
        all.contains(&format!("broken.toml:{line}:")),
        "the error does not point at broken.toml line {line}:\n{}",
        describe(&out)
    );
    assert!(
        all.contains("cahce"),
        "the error does not name the value:\n{}",
        describe(&out)
    );
}
