//! Durable quarantine marks: a quarantined service stays quarantined across supervisor restarts.
//!
//! The marks live in `<state_dir>/supervisor/quarantine.json`, rewritten atomically (temporary
//! file, fsync, rename, fsync of the directory) on every change, so a kill -9 at any instant
//! leaves either the old or the new file, never a torn one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the quarantine store could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read quarantine marks {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("quarantine marks {path} are corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write quarantine marks {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The persisted set of quarantined services and why.
#[derive(Debug, Clone)]
pub struct QuarantineStore {
    path: Option<PathBuf>,
    marks: BTreeMap<String, String>,
}

impl QuarantineStore {
    /// A store that persists nothing (tests of the loop).
    pub fn in_memory() -> Self {
        Self {
            path: None,
            marks: BTreeMap::new(),
        }
    }

    /// Opens `<dir>/quarantine.json`, creating `dir` (0700) when missing.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join("quarantine.json");
        let io = |source| StoreError::Read {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let marks = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io(e)),
        };
        Ok(Self {
            path: Some(path),
            marks,
        })
    }

    pub fn entries(&self) -> impl Iterator<Item = (&String, &String)> {
        self.marks.iter()
    }

    pub fn insert(&mut self, service: &str, reason: &str) -> Result<(), StoreError> {
        self.marks.insert(service.to_owned(), reason.to_owned());
        self.persist()
    }

    pub fn remove(&mut self, service: &str) -> Result<(), StoreError> {
        if self.marks.remove(service).is_some() {
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&self) -> Result<(), StoreError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let bytes = serde_json::to_vec_pretty(&self.marks).unwrap_or_default();
        atomic_write(path, &bytes).map_err(|source| StoreError::Write {
            path: path.clone(),
            source,
        })
    }
}

/// Writes `bytes` to `path` atomically and durably (mode 0600).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_survive_reopen_and_removal_is_durable() {
        let dir = std::env::temp_dir().join(format!("strata-qstore-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut s = QuarantineStore::open(&dir).expect("open");
        s.insert("web", "5 failures within 10m").expect("insert");
        s.insert("db", "3 failures within 1m").expect("insert");
        s.remove("db").expect("remove");
        let again = QuarantineStore::open(&dir).expect("reopen");
        let got: Vec<_> = again.entries().collect();
        assert_eq!(
            got,
            vec![(&"web".to_owned(), &"5 failures within 10m".to_owned())]
        );
        std::fs::write(dir.join("quarantine.json"), b"{not json").expect("write");
        assert!(matches!(
            QuarantineStore::open(&dir),
            Err(StoreError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
