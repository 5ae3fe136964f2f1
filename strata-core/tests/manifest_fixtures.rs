//! Broken (and valid) manifests under tests/manifests/ with their exact expected output.
//!
//! Each `NAME.toml` has a `NAME.expected` holding, one per line, every message that
//! `strata_core::graph::load` reports for it, or `ok: <summary>` when it loads. Run with
//! `UPDATE_EXPECT=1` to rewrite the expected files after a deliberate change (and review the
//! diff: these files are the specification of the messages).

use std::fmt::Write as _;
use std::path::Path;

use strata_core::graph::load;

fn outcome(name: &str, text: &str) -> String {
    match load(name, text) {
        Ok((manifest, graph)) => format!(
            "ok: {} services ({} declared), {} layers\n",
            graph.len(),
            manifest.services.len(),
            graph.layers().len()
        ),
        Err(e) => {
            let mut out = String::new();
            for m in e.messages() {
                let _ = writeln!(out, "{m}");
            }
            out
        }
    }
}

#[test]
fn every_fixture_gives_exactly_its_expected_messages() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifests");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/manifests exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "fixtures missing in {}", dir.display());
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut mismatches = Vec::new();
    for path in names {
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 name");
        let text = std::fs::read_to_string(&path).expect("fixture readable");
        let got = outcome(file, &text);
        let expected_path = path.with_extension("expected");
        if update {
            std::fs::write(&expected_path, &got).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} missing", expected_path.display()));
        if got != expected {
            mismatches.push(format!("--- {file}\nexpected:\n{expected}got:\n{got}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
