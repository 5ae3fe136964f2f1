//! The service graph: dependencies of every service (declared and implicit), start order by
//! dependency layers, and the errors a graph can have (unknown or self dependencies, cycles).
//!
//! Edges come from `after` and `requires` (same meaning), plus implicit ones: core services
//! start after identity, and a service with a `call:` capability starts after identity (its
//! tokens are minted there before it starts).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::capability::Capability;
use crate::manifest::suggest::closest;
use crate::manifest::{CoreService, Location, Manifest, RESERVED_NAMES};

/// A validated, acyclic service graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceGraph {
    /// Service → its dependencies (sorted, without duplicates, implicit ones included).
    dependencies: BTreeMap<String, Vec<String>>,
    /// Start order: every service's dependencies are in earlier layers; names sorted within a
    /// layer, so the order is the same on every run.
    layers: Vec<Vec<String>>,
}

/// Every problem of a graph, in a stable order (by location, then by message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct GraphError {
    pub problems: Vec<GraphProblem>,
}

impl std::fmt::Display for GraphError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// One problem of the graph. `path` is the manifest element (`services.web.after[0]`) and
/// `location` its position, when the edge was written in a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphProblem {
    #[error("{}{path} = \"{dependency}\": {}", at(.location), unknown_tail(.dependency, .suggestion, *.disabled_core))]
    UnknownDependency {
        location: Option<Location>,
        path: String,
        service: String,
        dependency: String,
        suggestion: Option<String>,
        /// The name is a core service switched off with `enable = false`.
        disabled_core: bool,
    },
    #[error("{}{path} = \"{service}\": a service cannot depend on itself", at(.location))]
    SelfDependency {
        location: Option<Location>,
        path: String,
        service: String,
    },
    #[error("{}dependency cycle: {}", at(.location), .cycle.join(" -> "))]
    Cycle {
        /// The position of the cycle's first edge.
        location: Option<Location>,
        /// The services of the cycle, the first repeated at the end (`a -> b -> a`).
        cycle: Vec<String>,
    },
}

fn at(location: &Option<Location>) -> String {
    location
        .as_ref()
        .map(|l| format!("{l}: "))
        .unwrap_or_default()
}

fn unknown_tail(dependency: &str, suggestion: &Option<String>, disabled_core: bool) -> String {
    if disabled_core {
        return format!(
            "core service `{dependency}` is disabled ([core.{dependency}] enable = false)"
        );
    }
    match suggestion {
        Some(s) => format!("unknown service `{dependency}` (did you mean `{s}`?)"),
        None => format!("unknown service `{dependency}`: no such service in this manifest"),
    }
}

impl GraphProblem {
    fn sort_key(&self) -> (Option<Location>, String) {
        let location = match self {
            GraphProblem::UnknownDependency { location, .. }
            | GraphProblem::SelfDependency { location, .. }
            | GraphProblem::Cycle { location, .. } => location.clone(),
        };
        (location, self.to_string())
    }
}

/// One edge as declared: the dependency and the manifest path it was written at.
struct Edge {
    to: String,
    path: Option<String>,
}

impl ServiceGraph {
    /// Builds the graph of every service of the manifest (enabled core services included).
    pub fn new(manifest: &Manifest) -> Result<ServiceGraph, GraphError> {
        let services = manifest.all_services();
        let identity = CoreService::Identity.name();
        let mut edges: BTreeMap<String, Vec<Edge>> = BTreeMap::new();
        for (name, decl) in &services {
            let mut list = Vec::new();
            for (key, deps) in [("after", &decl.after), ("requires", &decl.requires)] {
                for (i, dep) in deps.iter().enumerate() {
                    let path = match decl.kind {
                        crate::manifest::ServiceKind::User => {
                            Some(format!("services.{name}.{key}[{i}]"))
                        }
                        crate::manifest::ServiceKind::Core(_) => None,
                    };
                    list.push(Edge {
                        to: dep.clone(),
                        path,
                    });
                }
            }
            let calls = decl
                .capabilities
                .iter()
                .any(|c| matches!(c, Capability::Call(_)));
            if calls && name != identity && services.contains_key(identity) {
                list.push(Edge {
                    to: identity.to_owned(),
                    path: None,
                });
            }
            edges.insert(name.clone(), list);
        }

        let mut problems = Vec::new();
        let mut dependencies: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // The manifest path of the first edge between two services, for cycle locations.
        let mut edge_paths: BTreeMap<(String, String), String> = BTreeMap::new();
        let known: Vec<&str> = services
            .keys()
            .map(String::as_str)
            .chain(
                RESERVED_NAMES
                    .iter()
                    .copied()
                    .filter(|n| *n != "supervisor"),
            )
            .collect();
        for (name, list) in &edges {
            let mut deps = BTreeSet::new();
            for edge in list {
                let location = edge.path.as_deref().and_then(|p| manifest.locations.get(p));
                let path = edge
                    .path
                    .clone()
                    .unwrap_or_else(|| format!("{name} (implicit)"));
                if edge.to == *name {
                    problems.push(GraphProblem::SelfDependency {
                        location,
                        path,
                        service: name.clone(),
                    });
                    continue;
                }
                if !services.contains_key(&edge.to) {
                    let disabled_core = CoreService::from_name(&edge.to).is_some();
                    let suggestion = if disabled_core {
                        None
                    } else {
                        closest(&edge.to, known.iter().copied()).map(str::to_owned)
                    };
                    problems.push(GraphProblem::UnknownDependency {
                        location,
                        path,
                        service: name.clone(),
                        dependency: edge.to.clone(),
                        suggestion,
                        disabled_core,
                    });
                    continue;
                }
                if let Some(p) = &edge.path {
                    edge_paths
                        .entry((name.clone(), edge.to.clone()))
                        .or_insert_with(|| p.clone());
                }
                deps.insert(edge.to.clone());
            }
            dependencies.insert(name.clone(), deps.into_iter().collect());
        }

        let (layers, rest) = layer(&dependencies);
        for cycle in find_cycles(&dependencies, &rest) {
            let location = edge_paths
                .get(&(cycle[0].clone(), cycle[1].clone()))
                .and_then(|p| manifest.locations.get(p));
            problems.push(GraphProblem::Cycle { location, cycle });
        }

        if problems.is_empty() {
            Ok(ServiceGraph {
                dependencies,
                layers,
            })
        } else {
            problems.sort_by_key(GraphProblem::sort_key);
            Err(GraphError { problems })
        }
    }

    /// Start order by layers: layer 0 has no dependencies; each later layer depends only on
    /// earlier ones. Services of one layer may start in parallel.
    pub fn layers(&self) -> &[Vec<String>] {
        &self.layers
    }

    /// The flattened start order (layer by layer, names sorted within a layer).
    pub fn start_order(&self) -> Vec<String> {
        self.layers.iter().flatten().cloned().collect()
    }

    /// The direct dependencies of a service (declared and implicit), sorted.
    pub fn dependencies(&self, service: &str) -> &[String] {
        self.dependencies
            .get(service)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The services that depend directly on `service`, sorted.
    pub fn dependents(&self, service: &str) -> Vec<String> {
        self.dependencies
            .iter()
            .filter(|(_, deps)| deps.iter().any(|d| d == service))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every service name, sorted.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.dependencies.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.dependencies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dependencies.is_empty()
    }
}

/// Why a manifest text did not load: its own errors and its graph's, all found in one run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    /// Errors of the manifest itself (syntax, keys, values).
    pub manifest: Vec<crate::manifest::ManifestError>,
    /// Errors of the service graph, looked for even when the manifest has errors (on what
    /// could be read), so that one run reports everything.
    pub graph: Vec<GraphProblem>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.messages().join("\n"))
    }
}

impl LoadError {
    /// Every error, one message each, in file order (errors without a position last).
    pub fn messages(&self) -> Vec<String> {
        let mut located: Vec<(Option<Location>, String)> = self
            .manifest
            .iter()
            .map(|e| (Some(e.location.clone()), e.to_string()))
            .chain(self.graph.iter().map(GraphProblem::sort_key))
            .collect();
        // `None` sorts first in Option's order; unlocated problems read better last.
        located.sort_by(|a, b| match (&a.0, &b.0) {
            (Some(x), Some(y)) => x.cmp(y).then_with(|| a.1.cmp(&b.1)),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.1.cmp(&b.1),
        });
        located.into_iter().map(|(_, m)| m).collect()
    }
}

/// Parses a manifest and builds its graph: everything `strata-ctl check` and the supervisor
/// need before deriving units. Every error of both is reported together.
pub fn load(file: &str, text: &str) -> Result<(Manifest, ServiceGraph), LoadError> {
    let (manifest, errors) = Manifest::parse_best_effort(file, text);
    let Some(manifest) = manifest else {
        return Err(LoadError {
            manifest: errors.errors,
            graph: Vec::new(),
        });
    };
    match ServiceGraph::new(&manifest) {
        Ok(graph) if errors.errors.is_empty() => Ok((manifest, graph)),
        Ok(_) => Err(LoadError {
            manifest: errors.errors,
            graph: Vec::new(),
        }),
        Err(g) => Err(LoadError {
            manifest: errors.errors,
            graph: g.problems,
        }),
    }
}

/// Kahn's algorithm by rounds. Returns the layers and the services left over (those in a cycle
/// or depending on one).
fn layer(deps: &BTreeMap<String, Vec<String>>) -> (Vec<Vec<String>>, BTreeSet<String>) {
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut rest: BTreeSet<String> = deps.keys().cloned().collect();
    let mut layers = Vec::new();
    loop {
        let ready: Vec<String> = rest
            .iter()
            .filter(|n| {
                deps.get(*n)
                    .is_none_or(|ds| ds.iter().all(|d| placed.contains(d)))
            })
            .cloned()
            .collect();
        if ready.is_empty() {
            break;
        }
        for n in &ready {
            rest.remove(n);
            placed.insert(n.clone());
        }
        layers.push(ready);
    }
    (layers, rest)
}

/// One cycle per strongly connected component of the left-over services: the shortest cycle
/// through the component's smallest name, following neighbours in sorted order.
fn find_cycles(deps: &BTreeMap<String, Vec<String>>, rest: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut cycles = Vec::new();
    let mut covered: BTreeSet<String> = BTreeSet::new();
    for start in rest {
        if covered.contains(start) {
            continue;
        }
        // Breadth-first from `start` back to `start`, within the left-over services.
        let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue: VecDeque<&str> = VecDeque::new();
        queue.push_back(start.as_str());
        let mut closing: Option<&str> = None;
        while let Some(node) = queue.pop_front() {
            for next in deps.get(node).into_iter().flatten() {
                if !rest.contains(next) {
                    continue;
                }
                if next == start {
                    closing = Some(node);
                    break;
                }
                if !parent.contains_key(next.as_str()) {
                    parent.insert(next.as_str(), node);
                    queue.push_back(next.as_str());
                }
            }
            if closing.is_some() {
                break;
            }
        }
        let Some(last) = closing else {
            // `start` only depends on a cycle; the cycle itself is reported from its members.
            continue;
        };
        let mut path = vec![last.to_owned()];
        let mut cur = last;
        while cur != start.as_str() {
            match parent.get(cur) {
                Some(p) => {
                    cur = p;
                    path.push(cur.to_owned());
                }
                None => break,
            }
        }
        path.reverse();
        // Mark the whole strongly connected component of `start` as covered: every service
        // reachable from it that also reaches it.
        let reach = reachable(deps, rest, start);
        for n in &reach {
            if reachable(deps, rest, n).contains(start) {
                covered.insert(n.clone());
            }
        }
        path.push(start.clone());
        cycles.push(path);
    }
    cycles
}

fn reachable(
    deps: &BTreeMap<String, Vec<String>>,
    within: &BTreeSet<String>,
    from: &str,
) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(n) = stack.pop() {
        for d in deps.get(&n).into_iter().flatten() {
            if within.contains(d) && seen.insert(d.clone()) {
                stack.push(d.clone());
            }
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(services: &str) -> Manifest {
        let text = format!("[node]\nid = \"n1\"\n{services}");
        match Manifest::parse("m.toml", &text) {
            Ok(m) => m,
            Err(e) => panic!("manifest does not parse:\n{e}"),
        }
    }

    fn graph_err(services: &str) -> String {
        match ServiceGraph::new(&manifest(services)) {
            Ok(g) => panic!("graph accepted: {:?}", g.layers()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn layers_follow_dependencies_and_are_deterministic() {
        let m = manifest(
            r#"
[services.web]
exec = ["/bin/web"]
after = ["db", "cache"]
capabilities = ["call:fs"]
[services.db]
exec = ["/bin/db"]
[services.cache]
exec = ["/bin/cache"]
requires = ["db"]
[services.batch]
exec = ["/bin/batch"]
"#,
        );
        let g = ServiceGraph::new(&m).expect("graph");
        assert_eq!(
            g.layers(),
            &[
                vec!["batch".to_owned(), "db".into(), "identity".into()],
                vec![
                    "audit".to_owned(),
                    "cache".into(),
                    "fs".into(),
                    "registry".into()
                ],
                vec!["web".to_owned()],
            ]
        );
        assert_eq!(g.dependencies("web"), ["cache", "db", "identity"]);
        assert_eq!(g.dependents("db"), ["cache", "web"]);
        assert_eq!(g.start_order().len(), 8);
        // Same input, same graph.
        assert_eq!(ServiceGraph::new(&m).expect("graph"), g);
    }

    #[test]
    fn cycles_are_reported_in_full() {
        let e = graph_err(
            r#"
[services.a]
exec = ["/bin/a"]
after = ["b"]
[services.b]
exec = ["/bin/b"]
after = ["c"]
[services.c]
exec = ["/bin/c"]
after = ["a"]
[services.d]
exec = ["/bin/d"]
after = ["a"]
"#,
        );
        assert_eq!(e, "m.toml:6:10: dependency cycle: a -> b -> c -> a");
    }

    #[test]
    fn two_independent_cycles_are_both_reported() {
        let e = graph_err(
            r#"
[services.a]
exec = ["/bin/a"]
after = ["b"]
[services.b]
exec = ["/bin/b"]
requires = ["a"]
[services.x]
exec = ["/bin/x"]
after = ["y"]
[services.y]
exec = ["/bin/y"]
after = ["x"]
"#,
        );
        assert_eq!(
            e,
            "m.toml:6:10: dependency cycle: a -> b -> a\nm.toml:12:10: dependency cycle: x -> y -> x"
        );
    }

    #[test]
    fn unknown_and_self_dependencies_are_located() {
        let e = graph_err(
            r#"
[services.web]
exec = ["/bin/web"]
after = ["web", "fss", "nothing-like-it"]
"#,
        );
        assert_eq!(
            e,
            "m.toml:6:10: services.web.after[0] = \"web\": a service cannot depend on itself\n\
             m.toml:6:17: services.web.after[1] = \"fss\": unknown service `fss` (did you mean `fs`?)\n\
             m.toml:6:24: services.web.after[2] = \"nothing-like-it\": unknown service `nothing-like-it`: no such service in this manifest"
        );
    }

    #[test]
    fn dependency_on_a_disabled_core_service_says_so() {
        let e = graph_err(
            r#"
[core.fs]
enable = false
[services.web]
exec = ["/bin/web"]
after = ["fs"]
"#,
        );
        assert_eq!(
            e,
            "m.toml:8:10: services.web.after[0] = \"fs\": core service `fs` is disabled ([core.fs] enable = false)"
        );
    }
}
