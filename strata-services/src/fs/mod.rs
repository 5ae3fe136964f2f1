//! strata-fs: capability-guarded file access over protocol v1 (`fs.open`, `fs.read`,
//! `fs.list`, `fs.stat`, `fs.close`).
//!
//! Every method goes through the one `authorize()` (via [`Verifier`]) with the path it is
//! about; the path is then opened confined beneath the token's prefix and the served roots
//! ([`resolve`]). Handles are bound to the capability that opened them and re-authorized on
//! every use against the path they were opened as, so an attenuated token with a narrower
//! prefix cannot read a file its parent opened outside that prefix.

pub mod handles;
pub mod read;
pub mod resolve;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use rustix::fs::{AtFlags, FileType, Stat};
use serde::Deserialize;
use serde_json::{Value, json};
use strata_core::authorize::{AuthzRequest, Grant, MAX_PATH_LEN};
use strata_core::protocol::{MAX_FRAME_LEN, Request, RpcError};
use strata_core::token::unhex;
use tokio::sync::broadcast;

use crate::ipc::{Handler, Peer};
use crate::verifier::Verifier;
use handles::{Handle, HandleError, HandleTable};
use resolve::{OpenKind, Resolver};

pub use handles::{DEFAULT_MAX_PER_CAP, DEFAULT_MAX_TOTAL};
pub use resolve::RootError;

/// The methods strata-fs serves.
pub const METHODS: &[&str] = &["fs.open", "fs.read", "fs.list", "fs.stat", "fs.close"];

/// Entries one fs.list answers at most (a longer listing is paged with `offset`).
pub const MAX_LIST_ENTRIES: usize = 10_000;

/// Entries a listed directory may have at all (they are read and sorted in memory).
pub const MAX_DIR_ENTRIES: usize = 1_000_000;

/// Settings of the fs service.
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Directories served (`--root`).
    pub roots: Vec<String>,
    /// Handles one capability may hold.
    pub max_handles_per_cap: usize,
    /// Handles the service may hold.
    pub max_handles_total: usize,
}

impl FsConfig {
    /// Defaults for these roots.
    pub fn new(roots: Vec<String>) -> Self {
        Self {
            roots,
            max_handles_per_cap: DEFAULT_MAX_PER_CAP,
            max_handles_total: DEFAULT_MAX_TOTAL,
        }
    }
}

/// The fs service.
#[derive(Debug)]
pub struct FsService {
    verifier: Arc<Verifier>,
    resolver: Resolver,
    handles: HandleTable,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathParams {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadParams {
    handle: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    size: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HandleParams {
    handle: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatParams {
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    handle: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    path: String,
    #[serde(default)]
    offset: Option<u64>,
    #[serde(default)]
    limit: Option<u64>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        FileType::Fifo => "fifo",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "char_device",
        FileType::BlockDevice => "block_device",
        FileType::Unknown => "unknown",
    }
}

fn stat_json(st: &Stat) -> Value {
    let t = FileType::from_raw_mode(st.st_mode);
    json!({
        "type": type_name(t),
        "is_dir": t == FileType::Directory,
        "size": st.st_size.max(0),
        "mode": format!("{:04o}", st.st_mode & 0o7777),
        "mtime": st.st_mtime,
        "uid": st.st_uid,
        "gid": st.st_gid,
    })
}

/// Rejects a path parameter before it reaches authorize, with the cause named (authorize
/// checks the same; this keeps the answer INVALID_ARGUMENT whatever the token).
fn check_path_param(path: &str) -> Result<(), RpcError> {
    if path.contains('\0') {
        return Err(RpcError::invalid_argument("path contains a NUL byte")
            .with_detail("reason", "invalid_path"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(RpcError::invalid_argument(format!(
            "path is {} bytes long, at most {MAX_PATH_LEN} are allowed",
            path.len()
        ))
        .with_detail("reason", "invalid_path"));
    }
    Ok(())
}

impl FsService {
    /// The service over these roots, deciding with `verifier`.
    pub fn new(config: &FsConfig, verifier: Arc<Verifier>) -> Result<Self, RootError> {
        Ok(Self {
            verifier,
            resolver: Resolver::new(&config.roots)?,
            handles: HandleTable::new(config.max_handles_per_cap, config.max_handles_total),
        })
    }

    /// The handle table (tests and metrics).
    pub fn handles(&self) -> &HandleTable {
        &self.handles
    }

    /// Closes the handles opened under any of these revoked ids (hex); the number closed.
    pub fn on_revoked(&self, ids: &[String]) -> usize {
        let n = self.handles.revoke(ids);
        if n > 0 {
            tracing::info!(
                STRATA_EVENT = "fs.handles_revoked",
                closed = n,
                "closed handles of revoked capabilities"
            );
        }
        n
    }

    /// Follows the revocation follower's news (closing handles at once) and sweeps handles
    /// of expired tokens every `sweep`. Runs until the sender is gone.
    pub async fn maintain(
        self: Arc<Self>,
        mut revoked: broadcast::Receiver<Arc<[String]>>,
        sweep: Duration,
    ) {
        let mut tick = tokio::time::interval(sweep);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                news = revoked.recv() => match news {
                    Ok(ids) => {
                        self.on_revoked(&ids);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        // Some news was lost: check every handle against the full set.
                        tracing::warn!(missed = n, "revocation news lagged; rechecking every handle");
                        self.recheck_all();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick() => {
                    let n = self.handles.expire(now_secs());
                    if n > 0 {
                        tracing::info!(closed = n, "closed handles of expired tokens");
                    }
                    self.recheck_all();
                }
            }
        }
    }

    /// Closes every handle whose token has a revoked id in the verifier's set.
    pub fn recheck_all(&self) -> usize {
        let set = self
            .verifier
            .revocations()
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ids: Vec<String> = self.handles.all_revocation_ids();
        let revoked: Vec<String> = ids
            .into_iter()
            .filter(|id| {
                unhex(id).is_some_and(|raw| {
                    strata_core::authorize::RevocationView::is_revoked(&*set, &raw)
                })
            })
            .collect();
        drop(set);
        self.on_revoked(&revoked)
    }

    fn authorize(
        &self,
        req: &Request,
        action: &str,
        path: Option<&str>,
    ) -> Result<Grant, RpcError> {
        self.verifier.authorize(
            req.token.as_deref(),
            &AuthzRequest {
                service: "fs",
                action,
                path,
            },
        )
    }

    /// Authorizes a request about an open handle: against the path it was opened as, then
    /// checks that the presenting capability opened it and that nothing of the token that
    /// opened it was revoked since.
    fn authorize_handle(
        &self,
        req: &Request,
        action: &str,
        name: &str,
    ) -> Result<Arc<Handle>, RpcError> {
        handles::parse_handle(name)?;
        let peeked = self.handles.peek(name);
        let grant = self.authorize(req, action, peeked.as_ref().map(|h| h.path.as_str()))?;
        let handle = self.handles.get(name, &grant.cap_id)?;
        if !Arc::ptr_eq(&handle.revocation_ids, &grant.revocation_ids) {
            let set = self
                .verifier
                .revocations()
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let hit = handle.revocation_ids.iter().find(|id| {
                unhex(id).is_some_and(|raw| {
                    strata_core::authorize::RevocationView::is_revoked(&*set, &raw)
                })
            });
            if let Some(id) = hit {
                let id = id.clone();
                drop(set);
                self.handles.kill(name, &id);
                return Err(HandleError::Revoked {
                    handle: name.to_owned(),
                    id,
                }
                .into());
            }
        }
        Ok(handle)
    }

    fn open(&self, req: &Request) -> Result<Value, RpcError> {
        let p: PathParams = req.params()?;
        check_path_param(&p.path)?;
        let grant = self.authorize(req, "open", Some(&p.path))?;
        let scoped = grant
            .path
            .as_ref()
            .ok_or_else(|| RpcError::internal("authorize granted fs.open without a path"))?;
        let fd = self.resolver.open(scoped, &p.path, OpenKind::File)?;
        let st = rustix::fs::fstat(&fd)
            .map_err(|e| RpcError::internal(format!("stat of `{}` failed: {e}", p.path)))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => {
                return Err(RpcError::invalid_argument(format!(
                    "`{}` is a directory: list it with fs.list",
                    p.path
                ))
                .with_detail("path", p.path.as_str()));
            }
            other => {
                return Err(RpcError::invalid_argument(format!(
                    "`{}` is not a regular file (it is a {})",
                    p.path,
                    type_name(other)
                ))
                .with_detail("path", p.path.as_str()));
            }
        }
        let name = self.handles.insert(Handle {
            file: File::from(fd),
            cap_id: Arc::clone(&grant.cap_id),
            revocation_ids: Arc::clone(&grant.revocation_ids),
            path: scoped.absolute(),
            expires: grant.expires,
            cursor: AtomicU64::new(0),
        })?;
        Ok(json!({"handle": name, "size": st.st_size.max(0)}))
    }

    fn read(&self, req: &Request) -> Result<Value, RpcError> {
        let p: ReadParams = req.params()?;
        let handle = self.authorize_handle(req, "read", &p.handle)?;
        let size = match p.size {
            None => read::DEFAULT_READ_SIZE,
            Some(s) => usize::try_from(s)
                .unwrap_or(usize::MAX)
                .min(read::MAX_READ_SIZE),
        };
        let offset = p
            .offset
            .unwrap_or_else(|| handle.cursor.load(Ordering::Relaxed));
        // One byte more than asked tells whether the file goes on, without a stat per read.
        let mut buf = vec![0u8; size + 1];
        let mut got = 0;
        while got < buf.len() {
            match handle.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(RpcError::internal(format!(
                        "reading `{}` at offset {offset} failed: {e}",
                        handle.path
                    ))
                    .with_detail("handle", p.handle.as_str()));
                }
            }
        }
        let more = got > size;
        let got = got.min(size);
        let chunk = read::choose(&buf[..got]);
        let eof = chunk.len == got && !more;
        handle
            .cursor
            .store(offset + chunk.len as u64, Ordering::Relaxed);
        Ok(read::result(&buf[..chunk.len], chunk.utf8, offset, eof))
    }

    fn close(&self, req: &Request) -> Result<Value, RpcError> {
        let p: HandleParams = req.params()?;
        // The right to open includes the right to close what was opened.
        let handle = self.authorize_handle(req, "open", &p.handle);
        match handle {
            Ok(h) => {
                self.handles.close(&p.handle, &h.cap_id)?;
                Ok(json!({"status": "closed", "handle": p.handle}))
            }
            Err(e) => Err(e),
        }
    }

    fn stat(&self, req: &Request) -> Result<Value, RpcError> {
        let p: StatParams = req.params()?;
        match (p.path, p.handle) {
            (Some(path), None) => {
                check_path_param(&path)?;
                let grant = self.authorize(req, "stat", Some(&path))?;
                let scoped = grant.path.as_ref().ok_or_else(|| {
                    RpcError::internal("authorize granted fs.stat without a path")
                })?;
                let fd = self.resolver.open(scoped, &path, OpenKind::Path)?;
                let st = rustix::fs::fstat(&fd)
                    .map_err(|e| RpcError::internal(format!("stat of `{path}` failed: {e}")))?;
                let mut v = stat_json(&st);
                v["path"] = Value::String(path);
                Ok(v)
            }
            (None, Some(name)) => {
                let h = self.authorize_handle(req, "stat", &name)?;
                let st = rustix::fs::fstat(&h.file)
                    .map_err(|e| RpcError::internal(format!("stat of `{}` failed: {e}", h.path)))?;
                let mut v = stat_json(&st);
                v["handle"] = Value::String(name);
                Ok(v)
            }
            _ => Err(RpcError::invalid_argument(
                "fs.stat needs exactly one of `path` or `handle`",
            )),
        }
    }

    fn list(&self, req: &Request) -> Result<Value, RpcError> {
        let p: ListParams = req.params()?;
        check_path_param(&p.path)?;
        let grant = self.authorize(req, "list", Some(&p.path))?;
        let scoped = grant
            .path
            .as_ref()
            .ok_or_else(|| RpcError::internal("authorize granted fs.list without a path"))?;
        // Resolve without opening content first, so that a file is named as such.
        let pathfd = self.resolver.open(scoped, &p.path, OpenKind::Path)?;
        let st = rustix::fs::fstat(&pathfd)
            .map_err(|e| RpcError::internal(format!("stat of `{}` failed: {e}", p.path)))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Err(RpcError::invalid_argument(format!(
                "`{}` is not a directory (it is a {}): open it with fs.open",
                p.path,
                type_name(FileType::from_raw_mode(st.st_mode))
            ))
            .with_detail("path", p.path.as_str()));
        }
        let fd = rustix::fs::openat(
            &pathfd,
            ".",
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| resolve::open_error(e, &p.path, &scoped.base))?;
        let mut dir = rustix::fs::Dir::read_from(&fd).map_err(|e| {
            RpcError::internal(format!("reading directory `{}` failed: {e}", p.path))
        })?;
        let mut names: Vec<Vec<u8>> = Vec::new();
        for entry in &mut dir {
            let entry = entry.map_err(|e| {
                RpcError::internal(format!("reading directory `{}` failed: {e}", p.path))
            })?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                if names.len() >= MAX_DIR_ENTRIES {
                    return Err(RpcError::resource_exhausted(format!(
                        "directory `{}` has more than {MAX_DIR_ENTRIES} entries: too many to list",
                        p.path
                    ))
                    .with_detail("path", p.path.as_str())
                    .with_detail("limit", MAX_DIR_ENTRIES));
                }
                names.push(name.to_vec());
            }
        }
        names.sort();
        let total = names.len();
        let offset = usize::try_from(p.offset.unwrap_or(0)).unwrap_or(usize::MAX);
        let limit = p
            .limit
            .map_or(MAX_LIST_ENTRIES, |l| {
                usize::try_from(l).unwrap_or(usize::MAX)
            })
            .min(MAX_LIST_ENTRIES);
        // Keep the answer well inside one frame, whatever the names.
        let budget = MAX_FRAME_LEN / 2;
        let mut used = 0usize;
        let mut entries = Vec::new();
        let mut truncated = false;
        for name in names.iter().skip(offset) {
            if entries.len() >= limit || used > budget {
                truncated = true;
                break;
            }
            let st = rustix::fs::statat(&fd, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW);
            let (t, size) = match &st {
                Ok(st) => (FileType::from_raw_mode(st.st_mode), st.st_size.max(0)),
                // Removed since it was listed: report what is known.
                Err(_) => (FileType::Unknown, 0),
            };
            let text = String::from_utf8_lossy(name);
            let mut e = json!({
                "name": text,
                "is_dir": t == FileType::Directory,
                "size": size,
                "type": type_name(t),
            });
            if std::str::from_utf8(name).is_err() {
                use base64::Engine;
                e["name_b64"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(name));
            }
            used += 6 * name.len() + 96;
            entries.push(e);
        }
        Ok(json!({
            "path": p.path,
            "entries": entries,
            "total": total,
            "offset": offset.min(total),
            "truncated": truncated,
        }))
    }
}

impl Handler for FsService {
    fn methods(&self) -> &[&str] {
        METHODS
    }

    async fn handle(&self, _peer: &Peer, req: Request) -> Result<Value, RpcError> {
        match req.method.as_str() {
            "fs.open" => self.open(&req),
            "fs.read" => self.read(&req),
            "fs.list" => self.list(&req),
            "fs.stat" => self.stat(&req),
            "fs.close" => self.close(&req),
            other => Err(RpcError::not_found(format!("unknown method `{other}`"))),
        }
    }
}
