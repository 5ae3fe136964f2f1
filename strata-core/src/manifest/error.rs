//! Validation errors of the manifest, each located at a file, line and column.

use std::collections::BTreeMap;

/// A position in the manifest file (1-based line and column; the column counts characters).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Where each element of a parsed manifest came from, keyed by its path
/// (`services.web`, `services.web.after[0]`, `services.web.capabilities[2]`), so that checks
/// made after parsing (the service graph) can still point at the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locations {
    file: String,
    positions: BTreeMap<String, (usize, usize)>,
}

impl Locations {
    /// An empty map for manifests built in code.
    pub fn new(file: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            positions: BTreeMap::new(),
        }
    }

    pub(crate) fn insert(&mut self, path: String, line: usize, column: usize) {
        self.positions.insert(path, (line, column));
    }

    /// The name of the file the manifest was read from.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The location of the element at `path`, if known.
    pub fn get(&self, path: &str) -> Option<Location> {
        self.positions.get(path).map(|&(line, column)| Location {
            file: self.file.clone(),
            line,
            column,
        })
    }
}

/// One validation error, located where the offending text is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {kind}")]
pub struct ManifestError {
    pub location: Location,
    pub kind: ManifestErrorKind,
}

/// What is wrong. `value` fields hold the offending text as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestErrorKind {
    #[error("invalid TOML: {message}")]
    Syntax { message: String },
    #[error("unknown key `{key}` in {table}{}", unknown_key_tail(.suggestion, .expected))]
    UnknownKey {
        /// The table as written in the file (`[services.web]`, `the top level`).
        table: String,
        key: String,
        suggestion: Option<String>,
        expected: Vec<&'static str>,
    },
    #[error("missing key `{key}` in {table}: expected {expected}")]
    MissingKey {
        table: String,
        key: &'static str,
        expected: &'static str,
    },
    #[error("{path} = {value}: expected {expected}, found {found}")]
    WrongType {
        path: String,
        value: String,
        expected: &'static str,
        found: &'static str,
    },
    /// A key that names something (a service, an environment variable) is not a valid name.
    #[error("{table}: {problem}")]
    InvalidName { table: String, problem: String },
    #[error("{path} = {value}: {problem}")]
    InvalidValue {
        path: String,
        value: String,
        problem: String,
    },
}

fn unknown_key_tail(suggestion: &Option<String>, expected: &[&'static str]) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None if expected.is_empty() => ": this table takes no keys".to_owned(),
        None => format!(": expected one of {}", expected.join(", ")),
    }
}

/// Every validation error of one manifest, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors {
    pub errors: Vec<ManifestError>,
}

impl std::fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
