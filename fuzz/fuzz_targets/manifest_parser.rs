//! Fuzzes the manifest parser and everything run on an accepted manifest: `graph::load` never
//! panics; an error names at least one problem, each at a position inside the text; an
//! accepted manifest agrees with `Manifest::parse`, has a start order in which every
//! dependency comes first, and derives a unit for every service whose hash, launcher
//! arguments and rendering are consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use strata_core::derive::{LaunchConfig, derive_all, render_unit, spec_hash};
use strata_core::graph::load;
use strata_core::launch_args;
use strata_core::manifest::Manifest;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match load(FILE, text) {
        Ok((manifest, graph)) => {
            assert_eq!(Manifest::parse(FILE, text).as_ref(), Ok(&manifest));
            let all = manifest.all_services();
            let order = graph.start_order();
            assert_eq!(order.len(), all.len(), "start order covers every service");
            for (i, name) in order.iter().enumerate() {
                assert!(
                    all.contains_key(name),
                    "{name} in the order but not declared"
                );
                for dep in graph.dependencies(name) {
                    let at = order.iter().position(|n| n == dep);
                    assert!(
                        at.is_some_and(|at| at < i),
                        "{dep} must start before {name}"
                    );
                }
            }
            let specs = derive_all(&manifest, &LaunchConfig::for_manifest(&manifest));
            assert_eq!(specs.len(), all.len());
            for (name, spec) in &specs {
                assert_eq!(spec_hash(spec), spec.spec_hash, "hash of {name}");
                let decoded = launch_args::decode(spec.exec.iter().skip(1).cloned())
                    .unwrap_or_else(|e| panic!("launcher arguments of {name} do not decode: {e}"));
                assert_eq!(&decoded.service, name);
                assert_eq!(decoded.ruleset, spec.landlock);
                assert_eq!(Some(&decoded.argv), all.get(name).map(|d| &d.exec));
                let _ = render_unit(spec);
            }
        }
        Err(e) => {
            let messages = e.messages();
            assert!(!messages.is_empty(), "an error without a message");
            let lines = text.lines().count().max(1);
            for err in &e.manifest {
                let l = &err.location;
                assert_eq!(l.file, FILE);
                assert!(
                    l.line >= 1 && l.line <= lines + 1,
                    "line {} of {lines}: {err}",
                    l.line
                );
                assert!(l.column >= 1, "column {}: {err}", l.column);
            }
        }
    }
});
