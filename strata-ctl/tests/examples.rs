//! Every graph in examples/ is accepted by `strata-ctl check`, and each starts with the
//! comment that says what to run and what to watch.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The examples the documentation refers to; more may exist, these must.
const NAMED: [&str; 5] = [
    "hello.toml",
    "web-fs.toml",
    "crashloop.toml",
    "memhog.toml",
    "demo.toml",
];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("strata-ctl lives inside the workspace")
        .join("examples")
}

fn examples() -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(examples_dir())
        .expect("examples/ is readable")
        .map(|entry| entry.expect("examples/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    found.sort();
    found
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
fn the_named_examples_exist() {
    let names: Vec<String> = examples()
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for name in NAMED {
        assert!(
            names.iter().any(|n| n == name),
            "examples/{name} is missing"
        );
    }
}

#[test]
fn every_example_passes_check() {
    let mut failures = Vec::new();
    for path in examples() {
        let out = check(&path);
        if !out.status.success() {
            failures.push(format!("{}:\n{}", path.display(), describe(&out)));
        }
    }
    assert!(
        failures.is_empty(),
        "strata-ctl check rejected:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_example_says_what_to_run_and_watch() {
    for path in examples() {
        let text = std::fs::read_to_string(&path).expect("example is readable");
        let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
        let header = header.join("\n");
        assert!(
            header.contains("Run") && header.contains("Watch"),
            "{} does not start with a comment saying what to run and what to watch",
            path.display()
        );
    }
}

#[test]
fn check_rejects_a_broken_example() {
    // Negative control for every_example_passes_check: the same hello graph with its exec
    // made relative must be refused.
    let hello = examples_dir().join("hello.toml");
    let text = std::fs::read_to_string(&hello).expect("hello.toml is readable");
    let broken = text.replace("exec = [\"/bin/sh\"", "exec = [\"sh\"");
    assert_ne!(broken, text, "hello.toml no longer execs /bin/sh");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("examples");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let path = dir.join("hello-relative-exec.toml");
    std::fs::write(&path, broken).expect("write broken copy");

    let out = check(&path);
    assert!(
        !out.status.success(),
        "strata-ctl check accepted a relative exec:\n{}",
        describe(&out)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("hello-relative-exec.toml:") && all.contains("\"sh\""),
        "the error names neither the file nor the value:\n{}",
        describe(&out)
    );
}
