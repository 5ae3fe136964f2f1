//! The TOML walk: turns the spanned document into typed declarations, collecting every error.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::suggest::closest;
use super::{
    Budget, CoreConfig, CoreService, CoreServiceSettings, FsConfig, IdentityConfig, Location,
    Locations, Manifest, ManifestError, ManifestErrorKind, ManifestErrors, NodeConfig,
    PlainCoreConfig, RESERVED_NAMES, ReadyMode, RestartConfig, ServiceDecl, ServiceKind,
};
use crate::capability::{Capability, check_absolute_path, check_service_name, path_is_beneath};
use crate::quantity::{self, format_duration};

type Value<'i> = Spanned<DeValue<'i>>;

const TOP_KEYS: &[&str] = &["node", "services", "core"];
const NODE_KEYS: &[&str] = &[
    "id",
    "runtime_dir",
    "state_dir",
    "binaries_dir",
    "allow_degraded_sandbox",
];
const SERVICE_KEYS: &[&str] = &[
    "exec",
    "capabilities",
    "after",
    "requires",
    "budget",
    "restart",
    "environment",
    "working_directory",
    "ready",
    "allow_degraded_sandbox",
];
const BUDGET_KEYS: &[&str] = &["memory", "cpu", "tasks", "io"];
const RESTART_KEYS: &[&str] = &["initial", "max", "reset_after", "quarantine"];
const QUARANTINE_KEYS: &[&str] = &["crashes", "window"];
const CORE_KEYS: &[&str] = &["identity", "registry", "fs", "audit"];
const CORE_COMMON_KEYS: &[&str] = &["enable", "budget", "restart", "allow_degraded_sandbox"];
const IDENTITY_KEYS: &[&str] = &[
    "enable",
    "budget",
    "restart",
    "allow_degraded_sandbox",
    "token_ttl_default",
    "token_ttl_max",
];
const FS_KEYS: &[&str] = &[
    "enable",
    "budget",
    "restart",
    "allow_degraded_sandbox",
    "roots",
    "writable",
];

/// Environment variables systemd sets itself; a manifest value would be overridden.
const SYSTEMD_ENV: &[&str] = &[
    "CREDENTIALS_DIRECTORY",
    "INVOCATION_ID",
    "JOURNAL_STREAM",
    "LISTEN_FDNAMES",
    "LISTEN_FDS",
    "LISTEN_PID",
    "MAINPID",
    "MANAGERPID",
    "NOTIFY_SOCKET",
    "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY",
    "SYSTEMD_EXEC_PID",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

const EXPECT_DURATION: &str = "a duration such as \"250ms\", \"5m\" or \"1h30m\"";

pub(super) fn parse(file: &str, text: &str) -> Result<Manifest, ManifestErrors> {
    match parse_best_effort(file, text) {
        (Some(manifest), errors) if errors.errors.is_empty() => Ok(manifest),
        (_, errors) => Err(errors),
    }
}

/// Parses as much as possible: every error, and (unless the TOML itself is broken) a manifest
/// of what could be read, with defaults where values were invalid. That manifest is only good
/// for finding more errors (the service graph's), never for running anything.
pub(crate) fn parse_best_effort(file: &str, text: &str) -> (Option<Manifest>, ManifestErrors) {
    let mut p = Parser::new(file, text);
    let (root, syntax_errors) = DeTable::parse_recoverable(text);
    // Only the first syntax error is reported: after it the parser's recovery produces
    // follow-on errors that would point at correct text.
    if let Some(first) = syntax_errors.first() {
        let span = first.span().unwrap_or(0..0);
        let mut message = first.message().trim().to_owned();
        if message == "duplicate key" {
            // toml names neither the key nor the rule; the span covers the key.
            let key = text.get(span.clone()).unwrap_or("").trim();
            message = format!(
                "duplicate key `{}`: a key may appear once per table",
                shorten(key)
            );
        }
        p.push(span.start, ManifestErrorKind::Syntax { message });
        return (None, p.finish_errors());
    }
    let root = root.get_ref();
    p.check_keys(root, "the top level", TOP_KEYS);

    let node = match root.get_key_value("node") {
        Some((_, v)) => p.node(v),
        None => {
            p.push(
                0,
                ManifestErrorKind::MissingKey {
                    table: "the top level".to_owned(),
                    key: "node",
                    expected: "a [node] table with at least id = \"…\"",
                },
            );
            None
        }
    };
    let core = match root.get_key_value("core") {
        Some((_, v)) => p.core(v),
        None => CoreConfig::default(),
    };
    let mut services = BTreeMap::new();
    if let Some((_, v)) = root.get_key_value("services") {
        if let Some(table) = p.table(v, "services", "a table of services ([services.NAME])") {
            for (key, value) in table.iter() {
                if let Some(decl) = p.service(key, value) {
                    services.insert(key.get_ref().to_string(), decl);
                }
            }
        }
    }
    if let Some(node) = &node {
        p.cross_checks(node, &services, &core);
    }
    let errors = p.finish_errors();
    let manifest = Manifest {
        node: node.unwrap_or_else(|| NodeConfig {
            id: String::new(),
            runtime_dir: super::DEFAULT_RUNTIME_DIR.to_owned(),
            state_dir: super::DEFAULT_STATE_DIR.to_owned(),
            binaries_dir: super::DEFAULT_BINARIES_DIR.to_owned(),
            allow_degraded_sandbox: false,
        }),
        services,
        core,
        locations: std::mem::take(&mut p.locations),
    };
    (Some(manifest), errors)
}

struct Parser<'s> {
    file: &'s str,
    src: &'s str,
    line_starts: Vec<usize>,
    errors: Vec<ManifestError>,
    locations: Locations,
    /// Capabilities per service with their paths, for the checks that need every name.
    capability_paths: Vec<(String, String, Capability)>,
    /// The accepted fs roots with their manifest paths (`core.fs.roots[2]`).
    fs_root_paths: Vec<(String, String)>,
}

/// How a value is shown in a message: as written, whitespace collapsed, at most 60 chars.
fn shorten(text: &str) -> String {
    let collapsed: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.chars().count() > 60 {
        let mut s: String = collapsed.chars().take(57).collect();
        s.push('…');
        s
    } else {
        collapsed
    }
}

fn quoted(text: &str) -> String {
    shorten(&format!("{text:?}"))
}

impl<'s> Parser<'s> {
    fn new(file: &'s str, src: &'s str) -> Self {
        let mut line_starts = vec![0];
        for (i, b) in src.bytes().enumerate() {
            if b == b'\n' {
                line_starts.push(i + 1);
            }
        }
        Self {
            file,
            src,
            line_starts,
            errors: Vec::new(),
            locations: Locations::new(file),
            capability_paths: Vec::new(),
            fs_root_paths: Vec::new(),
        }
    }

    fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        // Count characters, not bytes; a span never splits a character, but be safe.
        let column = self
            .src
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count())
            + 1;
        (line, column)
    }

    fn location(&self, offset: usize) -> Location {
        let (line, column) = self.line_col(offset);
        Location {
            file: self.file.to_owned(),
            line,
            column,
        }
    }

    fn push(&mut self, offset: usize, kind: ManifestErrorKind) {
        let location = self.location(offset);
        self.errors.push(ManifestError { location, kind });
    }

    fn push_at(&mut self, location: Location, kind: ManifestErrorKind) {
        self.errors.push(ManifestError { location, kind });
    }

    fn remember(&mut self, path: &str, span: &Range<usize>) {
        let (line, column) = self.line_col(span.start);
        self.locations.insert(path.to_owned(), line, column);
    }

    fn finish_errors(&mut self) -> ManifestErrors {
        let mut errors = std::mem::take(&mut self.errors);
        errors.sort_by(|a, b| a.location.cmp(&b.location));
        errors.dedup();
        ManifestErrors { errors }
    }

    fn source(&self, span: &Range<usize>) -> String {
        shorten(self.src.get(span.clone()).unwrap_or(""))
    }

    fn invalid(&mut self, v: &Value<'_>, path: &str, problem: impl Into<String>) {
        let value = self.source(&v.span());
        self.push(
            v.span().start,
            ManifestErrorKind::InvalidValue {
                path: path.to_owned(),
                value,
                problem: problem.into(),
            },
        );
    }

    fn wrong_type(&mut self, v: &Value<'_>, path: &str, expected: &'static str) {
        let value = self.source(&v.span());
        self.push(
            v.span().start,
            ManifestErrorKind::WrongType {
                path: path.to_owned(),
                value,
                expected,
                found: v.get_ref().type_str(),
            },
        );
    }

    fn check_keys(&mut self, table: &DeTable<'_>, shown: &str, allowed: &[&'static str]) {
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if allowed.contains(&name) {
                continue;
            }
            let suggestion = closest(name, allowed.iter().copied()).map(str::to_owned);
            self.push(
                key.span().start,
                ManifestErrorKind::UnknownKey {
                    table: shown.to_owned(),
                    key: shorten(name),
                    suggestion,
                    expected: allowed.to_vec(),
                },
            );
        }
    }

    fn table<'v, 'i>(
        &mut self,
        v: &'v Value<'i>,
        path: &str,
        expected: &'static str,
    ) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(v, path, expected);
                None
            }
        }
    }

    fn string<'v>(
        &mut self,
        v: &'v Value<'_>,
        path: &str,
        expected: &'static str,
    ) -> Option<&'v str> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.as_ref()),
            _ => {
                self.wrong_type(v, path, expected);
                None
            }
        }
    }

    fn boolean(&mut self, v: &Value<'_>, path: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(v, path, "true or false");
                None
            }
        }
    }

    /// An integer within `min..=max`.
    fn integer(
        &mut self,
        v: &Value<'_>,
        path: &str,
        min: u64,
        max: u64,
        expected: &'static str,
    ) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            self.wrong_type(v, path, expected);
            return None;
        };
        match u64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.invalid(v, path, format!("expected {expected}"));
                None
            }
        }
    }

    fn abs_path(&mut self, v: &Value<'_>, path: &str) -> Option<String> {
        let s = self.string(v, path, "an absolute path such as \"/srv/www\"")?;
        match check_absolute_path(s) {
            Ok(()) => Some(s.to_owned()),
            Err(e) => {
                self.invalid(v, path, format!("path {e}"));
                None
            }
        }
    }

    fn duration(&mut self, v: &Value<'_>, path: &str) -> Option<Duration> {
        let s = self.string(v, path, EXPECT_DURATION)?;
        match quantity::parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.invalid(v, path, e.to_string());
                None
            }
        }
    }

    fn string_list(
        &mut self,
        v: &Value<'_>,
        path: &str,
        expected: &'static str,
    ) -> Vec<(String, Range<usize>)> {
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, path, expected);
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            if let DeValue::String(s) = item.get_ref() {
                out.push((s.to_string(), item.span()));
            } else {
                self.wrong_type(item, &item_path, "a string");
            }
        }
        out
    }

    fn node(&mut self, v: &Value<'_>) -> Option<NodeConfig> {
        let table = self.table(v, "node", "a table ([node])")?;
        self.check_keys(table, "[node]", NODE_KEYS);
        let id = match table.get_key_value("id") {
            Some((_, v)) => match self.string(v, "node.id", "a node name such as \"node-1\"") {
                Some(s) if valid_node_id(s) => Some(s.to_owned()),
                Some(_) => {
                    self.invalid(
                        v,
                        "node.id",
                        "expected 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
                    );
                    None
                }
                None => None,
            },
            None => {
                self.push(
                    v.span().start,
                    ManifestErrorKind::MissingKey {
                        table: "[node]".to_owned(),
                        key: "id",
                        expected: "a node name such as id = \"node-1\"",
                    },
                );
                None
            }
        };
        let dir = |p: &mut Self, key: &str, default: &str| -> Option<String> {
            match table.get_key_value(key) {
                Some((_, v)) => {
                    // Located for the checks that need the core services too (cross_checks).
                    p.remember(&format!("node.{key}"), &v.span());
                    p.abs_path(v, &format!("node.{key}"))
                }
                None => Some(default.to_owned()),
            }
        };
        let runtime_dir = dir(self, "runtime_dir", super::DEFAULT_RUNTIME_DIR);
        let state_dir = dir(self, "state_dir", super::DEFAULT_STATE_DIR);
        let binaries_dir = dir(self, "binaries_dir", super::DEFAULT_BINARIES_DIR);
        let allow_degraded_sandbox = match table.get_key_value("allow_degraded_sandbox") {
            Some((_, v)) => self
                .boolean(v, "node.allow_degraded_sandbox")
                .unwrap_or(false),
            None => false,
        };
        let (runtime_dir, state_dir, binaries_dir) = (runtime_dir?, state_dir?, binaries_dir?);
        for (key, value) in [("runtime_dir", &runtime_dir), ("state_dir", &state_dir)] {
            if value == "/" {
                if let Some((_, v)) = table.get_key_value(key) {
                    self.invalid(
                        v,
                        &format!("node.{key}"),
                        "expected a dedicated directory, not /",
                    );
                }
            }
        }
        if path_is_beneath(&runtime_dir, &state_dir) || path_is_beneath(&state_dir, &runtime_dir) {
            let (key, v) = match table.get_key_value("state_dir") {
                Some((_, v)) => ("state_dir", v),
                None => match table.get_key_value("runtime_dir") {
                    Some((_, v)) => ("runtime_dir", v),
                    None => ("state_dir", v),
                },
            };
            self.invalid(
                v,
                &format!("node.{key}"),
                format!("runtime_dir ({runtime_dir}) and state_dir ({state_dir}) must not contain each other"),
            );
        }
        Some(NodeConfig {
            id: id?,
            runtime_dir,
            state_dir,
            binaries_dir,
            allow_degraded_sandbox,
        })
    }

    fn service(
        &mut self,
        key: &Spanned<std::borrow::Cow<'_, str>>,
        v: &Value<'_>,
    ) -> Option<ServiceDecl> {
        let name: &str = key.get_ref();
        let path = format!("services.{name}");
        let shown = format!("[services.{name}]");
        self.remember(&path, &key.span());
        let name_problem = match check_service_name(name) {
            Err(e) => Some(format!("invalid service name: {e}")),
            Ok(()) if CoreService::from_name(name).is_some() => Some(format!(
                "`{name}` is a core service: configure it under [core.{name}]"
            )),
            Ok(()) if RESERVED_NAMES.contains(&name) => {
                Some(format!("`{name}` is reserved for strata-supervisor"))
            }
            Ok(()) => None,
        };
        let name_ok = name_problem.is_none();
        if let Some(problem) = name_problem {
            self.push(
                key.span().start,
                ManifestErrorKind::InvalidName {
                    table: shorten(&shown),
                    problem,
                },
            );
        }
        let table = self.table(v, &path, "a table ([services.NAME])")?;
        self.check_keys(table, &shown, SERVICE_KEYS);

        let exec = match table.get_key_value("exec") {
            Some((_, v)) => self.exec(v, &format!("{path}.exec")),
            None => {
                self.push(
                    key.span().start,
                    ManifestErrorKind::MissingKey {
                        table: shown.clone(),
                        key: "exec",
                        expected: "the command line, e.g. exec = [\"/usr/bin/app\", \"--flag\"]",
                    },
                );
                None
            }
        };
        let capabilities = match table.get_key_value("capabilities") {
            Some((_, v)) => self.capabilities(v, name, &format!("{path}.capabilities")),
            None => Vec::new(),
        };
        let after = self.deps(table, &path, "after");
        let requires = self.deps(table, &path, "requires");
        let budget = match table.get_key_value("budget") {
            Some((_, v)) => self.budget(v, &format!("{path}.budget")),
            None => Budget::default(),
        };
        let restart = match table.get_key_value("restart") {
            Some((_, v)) => self.restart(v, &format!("{path}.restart")),
            None => RestartConfig::default(),
        };
        let environment = match table.get_key_value("environment") {
            Some((_, v)) => self.environment(v, &format!("{path}.environment")),
            None => BTreeMap::new(),
        };
        let working_directory = match table.get_key_value("working_directory") {
            Some((_, v)) => self.abs_path(v, &format!("{path}.working_directory")),
            None => None,
        };
        let ready = match table.get_key_value("ready") {
            Some((_, v)) => {
                match self.string(v, &format!("{path}.ready"), "\"exec\" or \"notify\"") {
                    Some("exec") => ReadyMode::Exec,
                    Some("notify") => ReadyMode::Notify,
                    Some(_) => {
                        self.invalid(
                        v,
                        &format!("{path}.ready"),
                        "expected \"exec\" (started once executed) or \"notify\" (started on READY=1)",
                    );
                        ReadyMode::Exec
                    }
                    None => ReadyMode::Exec,
                }
            }
            None => ReadyMode::Exec,
        };
        let allow_degraded_sandbox = match table.get_key_value("allow_degraded_sandbox") {
            Some((_, v)) => self.boolean(v, &format!("{path}.allow_degraded_sandbox")),
            None => None,
        };
        // Errors are already recorded; a declaration is still returned (best effort) so that
        // the graph can be checked in the same run. Only an invalid name keeps it out.
        if !name_ok {
            return None;
        }
        Some(ServiceDecl {
            kind: ServiceKind::User,
            exec: exec.unwrap_or_default(),
            capabilities,
            after,
            requires,
            budget,
            restart,
            environment,
            working_directory,
            ready,
            allow_degraded_sandbox,
        })
    }

    fn exec(&mut self, v: &Value<'_>, path: &str) -> Option<Vec<String>> {
        const EXPECTED: &str =
            "a non-empty array of strings such as [\"/usr/bin/app\", \"--flag\"]";
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type(v, path, EXPECTED);
            return None;
        };
        if items.is_empty() {
            self.invalid(v, path, format!("expected {EXPECTED}"));
            return None;
        }
        let mut argv = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            let Some(s) = self.string(item, &item_path, "a string") else {
                ok = false;
                continue;
            };
            if i == 0 {
                if let Err(e) = check_absolute_path(s) {
                    self.invalid(item, &item_path, format!("the program path {e}"));
                    ok = false;
                    continue;
                }
                if s == "/" {
                    self.invalid(item, &item_path, "expected the absolute path of a program");
                    ok = false;
                    continue;
                }
            } else if s.contains('\0') {
                self.invalid(
                    item,
                    &item_path,
                    "arguments cannot contain NUL (execve would truncate them)",
                );
                ok = false;
                continue;
            }
            argv.push(s.to_owned());
        }
        ok.then_some(argv)
    }

    fn capabilities(&mut self, v: &Value<'_>, service: &str, path: &str) -> Vec<Capability> {
        let items = self.string_list(
            v,
            path,
            "an array of capabilities such as [\"fs.read:/srv/www\", \"net.bind:tcp:8080\"]",
        );
        let mut out: Vec<Capability> = Vec::new();
        for (i, (text, span)) in items.into_iter().enumerate() {
            let item_path = format!("{path}[{i}]");
            match Capability::parse(&text) {
                Ok(cap) => {
                    self.remember(&item_path, &span);
                    if out.contains(&cap) {
                        // Harmless, but almost always a copy-paste slip worth pointing out.
                        let value = self.source(&span);
                        self.push(
                            span.start,
                            ManifestErrorKind::InvalidValue {
                                path: item_path,
                                value,
                                problem: "capability declared twice".to_owned(),
                            },
                        );
                        continue;
                    }
                    self.capability_paths
                        .push((service.to_owned(), item_path, cap.clone()));
                    out.push(cap);
                }
                Err(e) => {
                    let value = self.source(&span);
                    self.push(
                        span.start,
                        ManifestErrorKind::InvalidValue {
                            path: item_path,
                            value,
                            problem: e.to_string(),
                        },
                    );
                }
            }
        }
        out
    }

    fn deps(&mut self, table: &DeTable<'_>, path: &str, key: &str) -> Vec<String> {
        let Some((_, v)) = table.get_key_value(key) else {
            return Vec::new();
        };
        let list_path = format!("{path}.{key}");
        let items = self.string_list(v, &list_path, "an array of service names such as [\"fs\"]");
        let mut out: Vec<String> = Vec::new();
        for (i, (name, span)) in items.into_iter().enumerate() {
            let item_path = format!("{list_path}[{i}]");
            let value = self.source(&span);
            if let Err(e) = check_service_name(&name) {
                self.push(
                    span.start,
                    ManifestErrorKind::InvalidValue {
                        path: item_path,
                        value,
                        problem: format!("service name {e}"),
                    },
                );
                continue;
            }
            if name == "supervisor" {
                self.push(
                    span.start,
                    ManifestErrorKind::InvalidValue {
                        path: item_path,
                        value,
                        problem: "strata-supervisor is not a service of the graph: every service already runs under it".to_owned(),
                    },
                );
                continue;
            }
            if out.contains(&name) {
                self.push(
                    span.start,
                    ManifestErrorKind::InvalidValue {
                        path: item_path,
                        value,
                        problem: format!("`{name}` listed twice"),
                    },
                );
                continue;
            }
            self.remember(&item_path, &span);
            out.push(name);
        }
        out
    }

    fn budget(&mut self, v: &Value<'_>, path: &str) -> Budget {
        let mut budget = Budget::default();
        let Some(table) = self.table(
            v,
            path,
            "a table such as { memory = \"256M\", cpu = \"50%\" }",
        ) else {
            return budget;
        };
        self.check_keys(table, path, BUDGET_KEYS);
        if let Some((_, v)) = table.get_key_value("memory") {
            let p = format!("{path}.memory");
            let text = match v.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                DeValue::Integer(i) if i.radix() == 10 => Some(i.as_str().to_owned()),
                _ => {
                    self.wrong_type(v, &p, "a size such as \"256M\" or \"1G\"");
                    None
                }
            };
            if let Some(text) = text {
                match quantity::parse_size(&text) {
                    Ok(0) => self.invalid(v, &p, "expected a size above zero"),
                    Ok(n) => budget.memory = Some(n),
                    Err(e) => self.invalid(v, &p, e.to_string()),
                }
            }
        }
        if let Some((_, v)) = table.get_key_value("cpu") {
            let p = format!("{path}.cpu");
            let text = match v.get_ref() {
                DeValue::String(s) => Some(s.to_string()),
                DeValue::Integer(i) if i.radix() == 10 => Some(i.as_str().to_owned()),
                DeValue::Float(f) => Some(f.as_str().to_owned()),
                _ => {
                    self.wrong_type(v, &p, "a CPU quota such as \"50%\" or 1.5 (CPUs)");
                    None
                }
            };
            if let Some(text) = text {
                match quantity::parse_cpu(&text) {
                    Ok(q) => budget.cpu = Some(q),
                    Err(e) => self.invalid(v, &p, e.to_string()),
                }
            }
        }
        if let Some((_, v)) = table.get_key_value("tasks") {
            budget.tasks = self.integer(
                v,
                &format!("{path}.tasks"),
                1,
                4_194_304,
                "a number of tasks from 1 to 4194304",
            );
        }
        if let Some((_, v)) = table.get_key_value("io") {
            budget.io = self
                .integer(
                    v,
                    &format!("{path}.io"),
                    1,
                    10_000,
                    "an IO weight from 1 to 10000",
                )
                .and_then(|n| u16::try_from(n).ok());
        }
        budget
    }

    fn restart(&mut self, v: &Value<'_>, path: &str) -> RestartConfig {
        let mut r = RestartConfig::default();
        let Some(table) = self.table(
            v,
            path,
            "a table such as { initial = \"1s\", max = \"5m\", reset_after = \"10m\" }",
        ) else {
            return r;
        };
        self.check_keys(table, path, RESTART_KEYS);
        let mut initial_v = None;
        if let Some((_, v)) = table.get_key_value("initial") {
            if let Some(d) = self.duration(v, &format!("{path}.initial")) {
                r.initial = d;
                initial_v = Some(v);
            }
        }
        let mut max_v = None;
        if let Some((_, v)) = table.get_key_value("max") {
            if let Some(d) = self.duration(v, &format!("{path}.max")) {
                r.max = d;
                max_v = Some(v);
            }
        }
        if let Some((_, v)) = table.get_key_value("reset_after") {
            let p = format!("{path}.reset_after");
            if let Some(d) = self.duration(v, &p) {
                if d.is_zero() {
                    self.invalid(v, &p, "expected a duration above zero");
                } else {
                    r.reset_after = d;
                }
            }
        }
        if r.max < r.initial {
            let problem = format!(
                "restart.max ({}) is smaller than restart.initial ({})",
                format_duration(r.max),
                format_duration(r.initial)
            );
            if let Some(v) = max_v.or(initial_v) {
                let p = if max_v.is_some() { "max" } else { "initial" };
                self.invalid(v, &format!("{path}.{p}"), problem);
            }
        }
        if let Some((_, qv)) = table.get_key_value("quarantine") {
            let qpath = format!("{path}.quarantine");
            if let Some(q) = self.table(
                qv,
                &qpath,
                "a table such as { crashes = 5, window = \"10m\" }",
            ) {
                self.check_keys(q, &qpath, QUARANTINE_KEYS);
                if let Some((_, v)) = q.get_key_value("crashes") {
                    if let Some(n) = self.integer(
                        v,
                        &format!("{qpath}.crashes"),
                        1,
                        1000,
                        "a number of crashes from 1 to 1000",
                    ) {
                        r.quarantine_crashes = u32::try_from(n).unwrap_or(1000);
                    }
                }
                if let Some((_, v)) = q.get_key_value("window") {
                    let p = format!("{qpath}.window");
                    if let Some(d) = self.duration(v, &p) {
                        if d.is_zero() {
                            self.invalid(v, &p, "expected a duration above zero");
                        } else {
                            r.quarantine_window = d;
                        }
                    }
                }
            }
        }
        r
    }

    fn environment(&mut self, v: &Value<'_>, path: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Some(table) = self.table(
            v,
            path,
            "a table of strings such as { RUST_LOG = \"info\" }",
        ) else {
            return env;
        };
        for (key, value) in table.iter() {
            let name: &str = key.get_ref();
            let item_path = format!("{path}.{name}");
            let name_problem = if !valid_env_name(name) {
                Some(format!(
                    "invalid variable name {}: expected a letter or _ followed by letters, digits or _",
                    quoted(name)
                ))
            } else if SYSTEMD_ENV.contains(&name) {
                Some(format!(
                    "`{name}` is set by systemd and cannot be overridden"
                ))
            } else {
                None
            };
            if let Some(problem) = name_problem {
                self.push(
                    key.span().start,
                    ManifestErrorKind::InvalidName {
                        table: path.to_owned(),
                        problem,
                    },
                );
                continue;
            }
            let Some(text) = self.string(value, &item_path, "a string (quote numbers: \"8080\")")
            else {
                continue;
            };
            if text.contains('\0') {
                self.invalid(value, &item_path, "values cannot contain NUL");
                continue;
            }
            env.insert(name.to_owned(), text.to_owned());
        }
        env
    }

    fn core(&mut self, v: &Value<'_>) -> CoreConfig {
        let mut core = CoreConfig::default();
        let Some(table) = self.table(v, "core", "a table of core services ([core.fs])") else {
            return core;
        };
        self.check_keys(table, "[core]", CORE_KEYS);
        for which in CoreService::ALL {
            let name = which.name();
            let Some((key, v)) = table.get_key_value(name) else {
                continue;
            };
            let path = format!("core.{name}");
            self.remember(&path, &key.span());
            let shown = format!("[core.{name}]");
            let Some(t) = self.table(v, &path, "a table") else {
                continue;
            };
            let allowed = match which {
                CoreService::Identity => IDENTITY_KEYS,
                CoreService::Fs => FS_KEYS,
                _ => CORE_COMMON_KEYS,
            };
            self.check_keys(t, &shown, allowed);
            let settings = self.core_settings(t, &path);
            match which {
                CoreService::Identity => {
                    let mut id = IdentityConfig {
                        settings,
                        ..IdentityConfig::default()
                    };
                    let mut dv = None;
                    for (k, slot) in [
                        ("token_ttl_default", &mut id.token_ttl_default),
                        ("token_ttl_max", &mut id.token_ttl_max),
                    ] {
                        if let Some((_, v)) = t.get_key_value(k) {
                            let p = format!("{path}.{k}");
                            if let Some(d) = self.duration(v, &p) {
                                if d.is_zero() || d.subsec_nanos() != 0 {
                                    self.invalid(v, &p, "expected a whole number of seconds above zero, e.g. \"1h\"");
                                } else {
                                    *slot = d;
                                    if k == "token_ttl_default" {
                                        dv = Some(v);
                                    }
                                }
                            }
                        }
                    }
                    if id.token_ttl_default > id.token_ttl_max {
                        let problem = format!(
                            "token_ttl_default ({}) is larger than token_ttl_max ({})",
                            format_duration(id.token_ttl_default),
                            format_duration(id.token_ttl_max)
                        );
                        // Point at the default when it was written, else at the max.
                        let (key, at) = match dv {
                            Some(d) => ("token_ttl_default", d),
                            None => match t.get_key_value("token_ttl_max") {
                                Some((_, m)) => ("token_ttl_max", m),
                                None => ("token_ttl_default", v),
                            },
                        };
                        self.invalid(at, &format!("{path}.{key}"), problem);
                    }
                    core.identity = id;
                }
                CoreService::Fs => {
                    let mut fs = FsConfig {
                        settings,
                        ..FsConfig::default()
                    };
                    if let Some((_, v)) = t.get_key_value("writable") {
                        fs.writable = self
                            .boolean(v, &format!("{path}.writable"))
                            .unwrap_or(false);
                    }
                    if let Some((_, v)) = t.get_key_value("roots") {
                        let rp = format!("{path}.roots");
                        let items = self.string_list(
                            v,
                            &rp,
                            "an array of absolute paths such as [\"/srv/www\"]",
                        );
                        for (i, (root, span)) in items.into_iter().enumerate() {
                            let item_path = format!("{rp}[{i}]");
                            let value = self.source(&span);
                            let problem = match check_absolute_path(&root) {
                                Err(e) => Some(format!("path {e}")),
                                Ok(()) if root == "/" => Some(
                                    "expected a directory to serve, not the whole file system"
                                        .to_owned(),
                                ),
                                Ok(()) if fs.roots.contains(&root) => {
                                    Some(format!("`{root}` listed twice"))
                                }
                                Ok(()) => None,
                            };
                            if let Some(problem) = problem {
                                self.push(
                                    span.start,
                                    ManifestErrorKind::InvalidValue {
                                        path: item_path,
                                        value,
                                        problem,
                                    },
                                );
                                continue;
                            }
                            self.remember(&item_path, &span);
                            self.fs_root_paths.push((item_path, root.clone()));
                            fs.roots.push(root);
                        }
                    }
                    core.fs = fs;
                }
                CoreService::Registry => core.registry = PlainCoreConfig { settings },
                CoreService::Audit => core.audit = PlainCoreConfig { settings },
            }
        }
        core
    }

    fn core_settings(&mut self, t: &DeTable<'_>, path: &str) -> CoreServiceSettings {
        let mut s = CoreServiceSettings::default();
        if let Some((_, v)) = t.get_key_value("enable") {
            s.enable = self.boolean(v, &format!("{path}.enable")).unwrap_or(true);
        }
        if let Some((_, v)) = t.get_key_value("budget") {
            s.budget = self.budget(v, &format!("{path}.budget"));
        }
        if let Some((_, v)) = t.get_key_value("restart") {
            s.restart = self.restart(v, &format!("{path}.restart"));
        }
        if let Some((_, v)) = t.get_key_value("allow_degraded_sandbox") {
            s.allow_degraded_sandbox = self.boolean(v, &format!("{path}.allow_degraded_sandbox"));
        }
        s
    }

    /// Checks that need the whole manifest: call targets, identity presence, paths that would
    /// expose Strata's own state.
    fn cross_checks(
        &mut self,
        node: &NodeConfig,
        services: &BTreeMap<String, ServiceDecl>,
        core: &CoreConfig,
    ) {
        let credentials = format!("{}/credentials", node.runtime_dir);
        let protected = [node.state_dir.as_str(), credentials.as_str()];
        let caps = std::mem::take(&mut self.capability_paths);
        let mut first_call: Option<String> = None;
        for (service, path, cap) in &caps {
            let Some(location) = self.locations.get(path) else {
                continue;
            };
            let value = quoted(&cap.to_string());
            let problem = match cap {
                Capability::Call(target) => {
                    if first_call.is_none() {
                        first_call = Some(path.clone());
                    }
                    if target == service {
                        Some("a service cannot call itself".to_owned())
                    } else if let Some(c) = CoreService::from_name(target) {
                        (!core.enabled(c)).then(|| {
                            format!("core service `{target}` is disabled ([core.{target}] enable = false)")
                        })
                    } else if target == "supervisor" || services.contains_key(target) {
                        None
                    } else {
                        let names: Vec<&str> = services
                            .keys()
                            .map(String::as_str)
                            .chain(RESERVED_NAMES)
                            .collect();
                        Some(match closest(target, names) {
                            Some(s) => format!("no service named `{target}` (did you mean `{s}`?)"),
                            None => format!("no service named `{target}` in this manifest"),
                        })
                    }
                }
                Capability::FsRead(p) | Capability::FsWrite(p) => {
                    let writes = matches!(cap, Capability::FsWrite(_));
                    protected
                        .iter()
                        .find(|dir| {
                            path_is_beneath(p, dir) || (writes && path_is_beneath(dir, p))
                        })
                        .map(|dir| {
                            format!("`{p}` would give access to {dir}, which holds Strata's own secrets and state")
                        })
                }
                _ => None,
            };
            if let Some(problem) = problem {
                self.push_at(
                    location,
                    ManifestErrorKind::InvalidValue {
                        path: path.clone(),
                        value,
                        problem,
                    },
                );
            }
        }
        if let Some(path) = first_call {
            if !core.enabled(CoreService::Identity) {
                if let Some(location) = self.locations.get(&path) {
                    self.push_at(
                        location,
                        ManifestErrorKind::InvalidValue {
                            path: path.clone(),
                            value: self.capability_text(&caps, &path),
                            problem: "tokens for call: capabilities come from the identity service, which is disabled ([core.identity] enable = false)".to_owned(),
                        },
                    );
                }
            }
        }
        for which in [CoreService::Registry, CoreService::Fs, CoreService::Audit] {
            if core.enabled(which) && !core.enabled(CoreService::Identity) {
                let loc = self
                    .locations
                    .get("core.identity")
                    .unwrap_or_else(|| self.location(0));
                self.push_at(
                    loc,
                    ManifestErrorKind::InvalidValue {
                        path: "core.identity.enable".to_owned(),
                        value: "false".to_owned(),
                        problem: format!(
                            "core service `{}` verifies tokens with identity's key: disable it too or enable identity",
                            which.name()
                        ),
                    },
                );
            }
        }
        // Core services are DynamicUser units whose directories systemd creates
        // (RuntimeDirectory=, StateDirectory=), which only exist beneath /run and /var/lib.
        if let Some(first) = CoreService::ALL.into_iter().find(|c| core.enabled(*c)) {
            for (key, value, base, setting) in [
                (
                    "runtime_dir",
                    &node.runtime_dir,
                    "/run",
                    "RuntimeDirectory=",
                ),
                ("state_dir", &node.state_dir, "/var/lib", "StateDirectory="),
            ] {
                if value.as_str() != base && path_is_beneath(value, base) {
                    continue;
                }
                let path = format!("node.{key}");
                let location = self
                    .locations
                    .get(&path)
                    .unwrap_or_else(|| self.location(0));
                self.push_at(
                    location,
                    ManifestErrorKind::InvalidValue {
                        path,
                        value: quoted(value),
                        problem: format!(
                            "expected a directory beneath {base} (such as {base}/strata): the core services run as dynamic users whose directories systemd creates there ({setting}); core service `{}` is enabled",
                            first.name()
                        ),
                    },
                );
            }
        }
        if core.enabled(CoreService::Fs) {
            for (path, root) in std::mem::take(&mut self.fs_root_paths) {
                let hit = [node.state_dir.as_str(), node.runtime_dir.as_str()]
                    .into_iter()
                    .find(|dir| path_is_beneath(&root, dir) || path_is_beneath(dir, &root));
                if let (Some(dir), Some(location)) = (hit, self.locations.get(&path)) {
                    self.push_at(
                        location,
                        ManifestErrorKind::InvalidValue {
                            path,
                            value: quoted(&root),
                            problem: format!("fs must not serve Strata's own directory {dir}"),
                        },
                    );
                }
            }
        }
    }
}

impl Parser<'_> {
    fn capability_text(&self, caps: &[(String, String, Capability)], path: &str) -> String {
        caps.iter()
            .find(|(_, p, _)| p == path)
            .map(|(_, _, c)| quoted(&c.to_string()))
            .unwrap_or_default()
    }
}

fn valid_node_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn valid_env_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
