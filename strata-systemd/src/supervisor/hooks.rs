//! What the supervisor does around a unit's life besides talking to systemd: mint the tokens
//! of a service's `call:` capabilities before it starts (delivered as systemd credentials),
//! and register running services with the registry.
//!
//! The loop drives a [`Hooks`] implementation; tests of the loop use [`NoHooks`].

use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use strata_core::capability::call_actions;
use strata_core::manifest::CoreService;
use strata_core::unit::{PropValue, UnitSpec};
use strata_services::ipc::client::{Client, ClientConfig};

/// Prefix of the credential ids that carry tokens (`strata-token-<target>`).
const TOKEN_CREDENTIAL_PREFIX: &str = "strata-token-";

/// Side effects around a unit's start and life.
pub trait Hooks: Send + 'static {
    /// Runs before the unit of `spec` is started. An error fails the start: it is counted
    /// like a crash (backoff, quarantine), with the error as the reason.
    fn before_start(&mut self, spec: &UnitSpec) -> impl Future<Output = Result<(), String>> + Send;
    /// The service is running; `running` lists every running service (after a registry
    /// restart, all of them are registered again).
    fn running(&mut self, service: &str, running: &[String]) -> impl Future<Output = ()> + Send;
}

/// Does nothing (tests of the loop, graphs without core services).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    async fn before_start(&mut self, _spec: &UnitSpec) -> Result<(), String> {
        Ok(())
    }
    async fn running(&mut self, _service: &str, _running: &[String]) {}
}

/// A core service listens in its own RuntimeDirectory (`<runtime_dir>/<svc>/<svc>.sock`,
/// created by systemd for its dynamic user); clients use the documented
/// `<runtime_dir>/<svc>.sock` (and identity's `identity.pub`): symlinks that the supervisor
/// (root) puts in place before the core service starts. Does nothing for a user service.
pub fn link_core_endpoints(runtime_dir: &Path, service: &str) -> Result<(), String> {
    if CoreService::from_name(service).is_none() {
        return Ok(());
    }
    link(runtime_dir, service, &format!("{service}.sock"))?;
    if service == CoreService::Identity.name() {
        link(runtime_dir, service, "identity.pub")?;
    }
    Ok(())
}

/// `<runtime_dir>/<file>` → `<service>/<file>` (relative, so it holds from any mount view).
fn link(runtime_dir: &Path, service: &str, file: &str) -> Result<(), String> {
    let link = runtime_dir.join(file);
    let target = PathBuf::from(service).join(file);
    let err = |e: std::io::Error| {
        format!(
            "cannot link {} to {}: {e}",
            link.display(),
            target.display()
        )
    };
    std::fs::create_dir_all(runtime_dir).map_err(err)?;
    match std::fs::read_link(&link) {
        Ok(existing) if existing == target => return Ok(()),
        Ok(_) => std::fs::remove_file(&link).map_err(err)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(_) => std::fs::remove_file(&link).map_err(err)?,
    }
    std::os::unix::fs::symlink(&target, &link).map_err(err)
}

/// The production hooks: tokens from identity, registration with the registry.
#[derive(Debug, Clone)]
pub struct NodeHooks {
    runtime_dir: PathBuf,
    registry_enabled: bool,
}

impl NodeHooks {
    pub fn new(runtime_dir: impl Into<PathBuf>, registry_enabled: bool) -> Self {
        Self {
            runtime_dir: runtime_dir.into(),
            registry_enabled,
        }
    }

    fn socket(&self, service: &str) -> PathBuf {
        self.runtime_dir.join(format!("{service}.sock"))
    }

    async fn client(&self, service: &str) -> Result<Client, String> {
        let config = ClientConfig {
            call_timeout: Duration::from_secs(3),
            ..ClientConfig::default()
        };
        let path = self.socket(service);
        Client::connect_with(&path, config)
            .await
            .map_err(|e| format!("cannot reach {service} at {}: {e}", path.display()))
    }

    /// Mints a token for `service`'s `call:<target>` and writes it, root-only, to `path`.
    async fn deliver_token(&self, service: &str, target: &str, path: &Path) -> Result<(), String> {
        let mut identity = self.client("identity").await?;
        let result = identity
            .call(
                "identity.issue",
                json!({ "service": target, "actions": call_actions(target) }),
                None,
            )
            .await
            .map_err(|e| format!("identity refused a token for {service}'s call:{target}: {e}"))?;
        let token = result
            .get("token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| format!("identity answered without a token for call:{target}"))?;
        write_secret(path, token.as_bytes()).map_err(|e| {
            format!(
                "cannot write the token for call:{target} to {}: {e}",
                path.display()
            )
        })?;
        tracing::info!(
            STRATA_SERVICE = service,
            STRATA_EVENT = "token.delivered",
            STRATA_CAP_ID = result.get("cap_id").and_then(|c| c.as_str()).unwrap_or(""),
            "delivered a token for call:{target} to {service}"
        );
        Ok(())
    }

    async fn register(&self, service: &str) -> Result<(), String> {
        let mut registry = self.client("registry").await?;
        let endpoint = format!("unix://{}", self.socket(service).display());
        registry
            .call(
                "registry.register",
                json!({ "service": service, "endpoint": endpoint, "api_v": 1 }),
                None,
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("registry refused {service}: {e}"))
    }
}

impl Hooks for NodeHooks {
    async fn before_start(&mut self, spec: &UnitSpec) -> Result<(), String> {
        link_core_endpoints(&self.runtime_dir, &spec.service)?;
        for prop in &spec.properties {
            let PropValue::Credentials(creds) = &prop.value else {
                continue;
            };
            for (id, path) in creds {
                if let Some(target) = id.strip_prefix(TOKEN_CREDENTIAL_PREFIX) {
                    self.deliver_token(&spec.service, target, Path::new(path))
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn running(&mut self, service: &str, running: &[String]) {
        if !self.registry_enabled {
            return;
        }
        // A (re)started registry has lost nothing (it is durable), but re-registering
        // everything makes it right even after its state was wiped.
        let names: Vec<&str> = if service == "registry" {
            running.iter().map(String::as_str).collect()
        } else if running.iter().any(|r| r == "registry") {
            vec![service]
        } else {
            return; // registered when the registry comes up
        };
        for name in names {
            match self.register(name).await {
                Ok(()) => tracing::info!(
                    STRATA_SERVICE = name,
                    STRATA_EVENT = "registry.registered",
                    "registered {name}"
                ),
                Err(e) => tracing::warn!(
                    STRATA_SERVICE = name,
                    STRATA_EVENT = "registry.register_failed",
                    "{e}"
                ),
            }
        }
    }
}

/// Writes a secret root-only: the directory 0700, the file 0600, atomically (a service never
/// reads a half-written token).
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("/"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
