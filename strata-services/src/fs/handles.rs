//! Open file handles of strata-fs: each bound to the capability (cap_id) that opened it,
//! limited per capability and in total, freed on close, on revocation of any block of the
//! token that opened it, and on that token's expiry.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use strata_core::protocol::RpcError;

/// Handles one capability may hold open at once.
pub const DEFAULT_MAX_PER_CAP: usize = 256;
/// Handles the service holds open at once.
pub const DEFAULT_MAX_TOTAL: usize = 16_384;

/// One open file.
#[derive(Debug)]
pub struct Handle {
    /// The file, opened read-only.
    pub file: File,
    /// The capability that opened it.
    pub cap_id: Arc<str>,
    /// Every revocation id of the token that opened it.
    pub revocation_ids: Arc<[String]>,
    /// The path as authorized at open (absolute), re-authorized on every use.
    pub path: String,
    /// Expiry of the opening token (seconds since the epoch).
    pub expires: u64,
    /// Where a read without `offset` continues.
    pub cursor: AtomicU64,
}

/// Why a handle could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// The handle text is not `h<number>`.
    #[error("malformed handle `{0}`: expected `h<number>` as returned by fs.open")]
    Malformed(String),
    /// No such handle (closed, expired, or never opened).
    #[error("no open handle `{0}` (closed, expired, or never opened)")]
    Unknown(String),
    /// The handle belongs to another capability.
    #[error("handle `{0}` was opened by another capability")]
    Foreign(String),
    /// The capability that opened it was revoked: the handle is gone.
    #[error("handle `{handle}` was closed because its capability was revoked ({id})")]
    Revoked {
        /// The handle.
        handle: String,
        /// The revoked id.
        id: String,
    },
    /// The capability holds too many handles.
    #[error(
        "capability {cap_id} already holds {limit} open handles (the limit); close some with fs.close"
    )]
    PerCapLimit {
        /// The capability.
        cap_id: String,
        /// The limit.
        limit: usize,
    },
    /// The service holds too many handles.
    #[error("strata-fs holds {limit} open handles (its limit); retry later")]
    TotalLimit {
        /// The limit.
        limit: usize,
    },
}

impl HandleError {
    /// The error answered.
    pub fn to_rpc(&self) -> RpcError {
        let e = match self {
            HandleError::Malformed(_) => RpcError::invalid_argument(self.to_string()),
            HandleError::Unknown(_) => RpcError::not_found(self.to_string()),
            HandleError::Foreign(_) => RpcError::permission_denied(self.to_string()),
            HandleError::Revoked { id, .. } => RpcError::permission_denied(self.to_string())
                .with_detail("reason", "revoked")
                .with_detail("revoked_id", id.as_str()),
            HandleError::PerCapLimit { limit, .. } | HandleError::TotalLimit { limit } => {
                RpcError::resource_exhausted(self.to_string()).with_detail("limit", *limit)
            }
        };
        match self {
            HandleError::Malformed(h)
            | HandleError::Unknown(h)
            | HandleError::Foreign(h)
            | HandleError::Revoked { handle: h, .. } => e.with_detail("handle", h.as_str()),
            HandleError::PerCapLimit { cap_id, .. } => e.with_detail("cap_id", cap_id.as_str()),
            HandleError::TotalLimit { .. } => e,
        }
    }
}

impl From<HandleError> for RpcError {
    fn from(e: HandleError) -> Self {
        e.to_rpc()
    }
}

#[derive(Debug, Default)]
struct Inner {
    handles: HashMap<u64, Arc<Handle>>,
    per_cap: HashMap<Arc<str>, usize>,
    /// Revoked ids seen, with the handles they closed: a later use of such a handle says
    /// "revoked" rather than "unknown". Bounded.
    tombstones: HashMap<u64, String>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Arc<Handle>> {
        let h = self.handles.remove(&id)?;
        if let Some(n) = self.per_cap.get_mut(&h.cap_id) {
            *n -= 1;
            if *n == 0 {
                self.per_cap.remove(&h.cap_id);
            }
        }
        Some(h)
    }
}

/// Most tombstones kept (handles closed by revocation, remembered for the message).
const MAX_TOMBSTONES: usize = 65_536;

/// The table of open handles.
#[derive(Debug)]
pub struct HandleTable {
    inner: Mutex<Inner>,
    next: AtomicU64,
    max_per_cap: usize,
    max_total: usize,
}

/// Parses `h<number>`.
pub fn parse_handle(text: &str) -> Result<u64, HandleError> {
    text.strip_prefix('h')
        .filter(|d| !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| HandleError::Malformed(text.chars().take(64).collect()))
}

/// `h<number>`.
pub fn handle_name(id: u64) -> String {
    format!("h{id}")
}

impl HandleTable {
    /// A table with these limits.
    pub fn new(max_per_cap: usize, max_total: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            next: AtomicU64::new(1),
            max_per_cap: max_per_cap.max(1),
            max_total: max_total.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers an open file; its handle name.
    pub fn insert(&self, handle: Handle) -> Result<String, HandleError> {
        let mut inner = self.lock();
        if inner.handles.len() >= self.max_total {
            return Err(HandleError::TotalLimit {
                limit: self.max_total,
            });
        }
        let count = inner.per_cap.get(&handle.cap_id).copied().unwrap_or(0);
        if count >= self.max_per_cap {
            return Err(HandleError::PerCapLimit {
                cap_id: handle.cap_id.to_string(),
                limit: self.max_per_cap,
            });
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        inner.per_cap.insert(Arc::clone(&handle.cap_id), count + 1);
        inner.handles.insert(id, Arc::new(handle));
        Ok(handle_name(id))
    }

    /// The handle `name`, if `cap_id` opened it.
    pub fn get(&self, name: &str, cap_id: &str) -> Result<Arc<Handle>, HandleError> {
        let id = parse_handle(name)?;
        let inner = self.lock();
        match inner.handles.get(&id) {
            Some(h) if &*h.cap_id == cap_id => Ok(Arc::clone(h)),
            Some(_) => Err(HandleError::Foreign(name.to_owned())),
            None => Err(match inner.tombstones.get(&id) {
                Some(revoked) => HandleError::Revoked {
                    handle: name.to_owned(),
                    id: revoked.clone(),
                },
                None => HandleError::Unknown(name.to_owned()),
            }),
        }
    }

    /// The handle `name` whoever opened it (to authorize a request against its path first).
    pub fn peek(&self, name: &str) -> Option<Arc<Handle>> {
        let id = parse_handle(name).ok()?;
        self.lock().handles.get(&id).cloned()
    }

    /// Every distinct revocation id of the open handles.
    pub fn all_revocation_ids(&self) -> Vec<String> {
        let inner = self.lock();
        let mut ids: Vec<String> = inner
            .handles
            .values()
            .flat_map(|h| h.revocation_ids.iter().cloned())
            .collect();
        drop(inner);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Closes `name` if `cap_id` opened it.
    pub fn close(&self, name: &str, cap_id: &str) -> Result<(), HandleError> {
        let id = parse_handle(name)?;
        let mut inner = self.lock();
        match inner.handles.get(&id) {
            Some(h) if &*h.cap_id == cap_id => {
                inner.remove(id);
                Ok(())
            }
            Some(_) => Err(HandleError::Foreign(name.to_owned())),
            None => Err(HandleError::Unknown(name.to_owned())),
        }
    }

    /// Closes every handle opened by a token with any of `revoked` among its revocation ids
    /// (hex); the number closed.
    pub fn revoke(&self, revoked: &[String]) -> usize {
        if revoked.is_empty() {
            return 0;
        }
        let mut inner = self.lock();
        let victims: Vec<(u64, String)> = inner
            .handles
            .iter()
            .filter_map(|(id, h)| {
                h.revocation_ids
                    .iter()
                    .find(|r| revoked.contains(r))
                    .map(|r| (*id, r.clone()))
            })
            .collect();
        for (id, why) in &victims {
            inner.remove(*id);
            if inner.tombstones.len() >= MAX_TOMBSTONES {
                inner.tombstones.clear();
            }
            inner.tombstones.insert(*id, why.clone());
        }
        victims.len()
    }

    /// Closes one handle found revoked at use (the follower had not told us yet).
    pub fn kill(&self, name: &str, revoked_id: &str) {
        if let Ok(id) = parse_handle(name) {
            let mut inner = self.lock();
            inner.remove(id);
            inner.tombstones.insert(id, revoked_id.to_owned());
        }
    }

    /// Closes every handle whose token expired before `now_secs`; the number closed.
    pub fn expire(&self, now_secs: u64) -> usize {
        let mut inner = self.lock();
        let victims: Vec<u64> = inner
            .handles
            .iter()
            .filter(|(_, h)| h.expires < now_secs)
            .map(|(id, _)| *id)
            .collect();
        for id in &victims {
            inner.remove(*id);
        }
        victims.len()
    }

    /// Open handles, in total.
    pub fn len(&self) -> usize {
        self.lock().handles.len()
    }

    /// True when no handle is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open handles of one capability.
    pub fn count_for(&self, cap_id: &str) -> usize {
        self.lock().per_cap.get(cap_id).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(cap: &str, ids: &[&str], expires: u64) -> Handle {
        Handle {
            file: File::open("/dev/null").expect("/dev/null opens"),
            cap_id: Arc::from(cap),
            revocation_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            path: "/x".into(),
            expires,
            cursor: AtomicU64::new(0),
        }
    }

    #[test]
    fn handle_names_parse_strictly() {
        assert_eq!(parse_handle("h1"), Ok(1));
        assert_eq!(parse_handle(&handle_name(42)), Ok(42));
        for bad in [
            "",
            "h",
            "1",
            "h-1",
            "h1x",
            "H1",
            "h 1",
            "h99999999999999999999999",
        ] {
            assert!(
                matches!(parse_handle(bad), Err(HandleError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn handles_are_bound_to_their_capability_and_limited() {
        let t = HandleTable::new(2, 10);
        let a1 = t.insert(handle("a", &["a"], 100)).expect("first");
        let _a2 = t.insert(handle("a", &["a"], 100)).expect("second");
        assert_eq!(
            t.insert(handle("a", &["a"], 100)),
            Err(HandleError::PerCapLimit {
                cap_id: "a".into(),
                limit: 2
            })
        );
        let b1 = t
            .insert(handle("b", &["b"], 100))
            .expect("other cap unaffected");
        assert!(t.get(&a1, "a").is_ok());
        assert_eq!(
            t.get(&a1, "b").map(|_| ()),
            Err(HandleError::Foreign(a1.clone()))
        );
        assert_eq!(t.close(&a1, "b"), Err(HandleError::Foreign(a1.clone())));
        t.close(&a1, "a").expect("own handle closes");
        assert_eq!(
            t.get(&a1, "a").map(|_| ()),
            Err(HandleError::Unknown(a1.clone()))
        );
        assert_eq!(t.count_for("a"), 1);
        t.insert(handle("a", &["a"], 100))
            .expect("room again after close");
        assert_eq!(t.len(), 3);
        assert!(t.get(&b1, "b").is_ok());
    }

    #[test]
    fn revocation_of_any_block_closes_and_is_remembered() {
        let t = HandleTable::new(10, 10);
        let parent = t.insert(handle("a", &["a"], 100)).expect("parent");
        let child = t
            .insert(handle("a", &["a", "a2"], 100))
            .expect("attenuated");
        let other = t.insert(handle("b", &["b"], 100)).expect("other");
        assert_eq!(t.revoke(&["a2".into()]), 1);
        assert!(t.get(&parent, "a").is_ok());
        assert_eq!(
            t.get(&child, "a").map(|_| ()),
            Err(HandleError::Revoked {
                handle: child.clone(),
                id: "a2".into()
            })
        );
        assert_eq!(t.revoke(&["a".into()]), 1);
        assert_eq!(t.count_for("a"), 0);
        assert!(t.get(&other, "b").is_ok());
        let e = t.get(&parent, "a").map(|_| ()).expect_err("revoked");
        assert!(e.to_string().contains("revoked"), "{e}");
    }

    #[test]
    fn expired_handles_are_swept_and_the_total_is_bounded() {
        let t = HandleTable::new(10, 2);
        t.insert(handle("a", &["a"], 5)).expect("one");
        t.insert(handle("b", &["b"], 50)).expect("two");
        assert_eq!(
            t.insert(handle("c", &["c"], 50)),
            Err(HandleError::TotalLimit { limit: 2 })
        );
        assert_eq!(t.expire(10), 1);
        assert_eq!(t.len(), 1);
        t.insert(handle("c", &["c"], 50)).expect("room after sweep");
    }
}
