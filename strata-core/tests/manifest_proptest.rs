//! No input makes the manifest parser (or what runs on a parsed manifest: the graph and the
//! derivation) panic: arbitrary text, and valid manifests mutated with TOML-ish fragments so
//! that the deep validation paths are reached too.

use proptest::prelude::*;
use strata_core::derive::{LaunchConfig, derive_all, render_unit};
use strata_core::graph::load;

const VALID: &str = include_str!("manifests/valid_full.toml");

/// Fragments that are meaningful to the parser or the validators.
const FRAGMENTS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ",",
    "\"",
    "'",
    "\n",
    " ",
    ".",
    "#",
    "\\",
    "\u{0}",
    "\u{feff}",
    "é",
    "🦀",
    "-",
    "_",
    "0",
    "1",
    "65536",
    "-1",
    "1.5",
    "1e99",
    "nan",
    "inf",
    "true",
    "false",
    "1979-05-27T07:32:00Z",
    "0x7f",
    "[services.x]",
    "[core.fs]",
    "[node]",
    "exec = [\"/bin/x\"]",
    "exec",
    "after",
    "requires",
    "capabilities",
    "budget",
    "restart",
    "quarantine",
    "environment",
    "working_directory",
    "ready",
    "enable",
    "roots",
    "writable",
    "memory",
    "cpu",
    "tasks",
    "io",
    "initial",
    "max",
    "reset_after",
    "crashes",
    "window",
    "\"fs.read:/\"",
    "\"fs.write:/\"",
    "\"net.bind:tcp:80\"",
    "\"call:x\"",
    "\"call:fs\"",
    "\"sys.cap:CAP_SYS_ADMIN\"",
    "\"1h30m\"",
    "\"250ms\"",
    "\"256M\"",
    "\"50%\"",
    "\"1.5\"",
    "\"notify\"",
    "\"/..\"",
    "\"//\"",
    "[\"x\"]",
    "[\"web\"]",
    "[\"db\"]",
    "{}",
    "[]",
];

fn check(text: &str) {
    match load("fuzz.toml", text) {
        Ok((manifest, graph)) => {
            let launch = LaunchConfig::for_manifest(&manifest);
            let units = derive_all(&manifest, &launch);
            assert_eq!(units.len(), graph.len());
            for spec in units.values() {
                assert!(!render_unit(spec).is_empty());
            }
        }
        Err(e) => {
            let lines = text.split('\n').count();
            assert!(!e.manifest.is_empty() || !e.graph.is_empty());
            for err in &e.manifest {
                assert!(err.location.line >= 1 && err.location.line <= lines);
                assert!(err.location.column >= 1);
            }
            for m in e.messages() {
                assert!(m.starts_with("fuzz.toml:"), "unlocated message: {m}");
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, usize),
    Delete(usize, usize),
}

fn apply(base: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = base.chars().collect();
    for edit in edits {
        match *edit {
            Edit::Insert(pos, frag) => {
                let at = pos % (chars.len() + 1);
                let fragment = FRAGMENTS[frag % FRAGMENTS.len()];
                chars.splice(at..at, fragment.chars());
            }
            Edit::Delete(pos, len) => {
                if chars.is_empty() {
                    continue;
                }
                let at = pos % chars.len();
                let end = (at + len % 16).min(chars.len());
                chars.drain(at..end);
            }
        }
    }
    chars.into_iter().collect()
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<usize>()).prop_map(|(p, f)| Edit::Insert(p, f)),
        (any::<usize>(), any::<usize>()).prop_map(|(p, l)| Edit::Delete(p, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        check(&text);
    }

    #[test]
    fn arbitrary_bytes_as_lossy_text_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_valid_manifests_never_panic(edits in proptest::collection::vec(edit(), 1..6)) {
        check(&apply(VALID, &edits));
    }

    #[test]
    fn generated_service_tables_never_panic(
        keys in proptest::collection::vec((0usize..FRAGMENTS.len(), 0usize..FRAGMENTS.len()), 0..8),
    ) {
        let mut text = String::from("[node]\nid = \"n\"\n[services.x]\nexec = [\"/bin/x\"]\n");
        for (k, v) in keys {
            text.push_str(FRAGMENTS[k]);
            text.push_str(" = ");
            text.push_str(FRAGMENTS[v]);
            text.push('\n');
        }
        check(&text);
    }
}

#[test]
fn the_valid_base_of_the_mutations_loads() {
    assert!(load("valid_full.toml", VALID).is_ok());
}
