//! `strata-ctl check`: exit statuses, every error printed, the summary, and --explain.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../strata-core/tests/manifests")
        .join(name)
}

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_strata-ctl"))
        .args(args)
        .output()
        .expect("strata-ctl runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn an_invalid_manifest_prints_every_error_and_exits_1() {
    let path = fixture("bad_quantities.toml");
    let path = path.to_str().expect("utf-8 path");
    let out = ctl(&["check", path]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let expected = std::fs::read_to_string(fixture("bad_quantities.expected")).expect("expected");
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    // The same messages as the library reports, file name as given, then a count.
    let n = expected.lines().count();
    assert_eq!(n, 20);
    for (got, want) in lines.iter().zip(expected.lines()) {
        let want = want.replacen("bad_quantities.toml", path, 1);
        assert_eq!(*got, want);
    }
    assert_eq!(lines.len(), n + 1);
    assert_eq!(lines[n], format!("{path}: invalid: 20 errors"));
}

#[test]
fn a_graph_error_exits_1_too() {
    let path = fixture("graph_cycle.toml");
    let out = ctl(&["check", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("dependency cycle: a -> b -> c -> a"));
}

#[test]
fn a_valid_manifest_prints_one_summary_line_and_exits_0() {
    let path = fixture("valid_full.toml");
    let path = path.to_str().expect("utf-8 path");
    let out = ctl(&["check", path]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{path}: ok: node node-1, 6 services (2 declared, 4 core) in 3 start layers\n")
    );
    assert!(out.stderr.is_empty());
}

#[test]
fn explain_prints_every_unit_in_start_order() {
    let path = fixture("valid_full.toml");
    let out = ctl(&[
        "check",
        "--explain",
        "--launcher",
        "/opt/strata/strata-launch",
        path.to_str().expect("utf-8"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("start order: [db identity] -> [audit fs registry] -> [web]\n"));
    let units: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("strata-") && l.contains(".service (service "))
        .collect();
    assert_eq!(units.len(), 6);
    assert!(units[0].starts_with("strata-db.service"));
    assert!(units[5].starts_with("strata-web.service"));
    // A few lines of web's unit, in unit-file syntax, and its Landlock rules.
    for line in [
        "  Description=Strata service web (capabilities: fs.read:/srv/www, net.bind:tcp:8080, call:fs)",
        "  MemoryMax=256M",
        "  CPUQuota=50%",
        "  SocketBindAllow=tcp:8080",
        "  LoadCredential=strata-token-fs:/run/strata/credentials/web/fs.token",
        "    read beneath:  /srv/www",
        "    bind tcp:      8080",
        "  starts after: db fs identity",
    ] {
        assert!(
            stdout.contains(&format!("{line}\n")),
            "missing {line:?} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("ExecStart=/opt/strata/strata-launch --service web --ruleset-json "));
}

#[test]
fn an_unreadable_file_exits_2_and_says_which() {
    let out = ctl(&["check", "/nonexistent/strata.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "strata-ctl: reading manifest /nonexistent/strata.toml: No such file or directory (os error 2)\n"
    );
}
