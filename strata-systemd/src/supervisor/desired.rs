//! From manifest to desired graph: parse and validate the file, check the service graph, and
//! derive the unit of every service.

use std::path::Path;

use strata_core::derive::{DeriveError, LaunchConfig, derive_unit};
use strata_core::graph::{GraphError, ServiceGraph};
use strata_core::manifest::{Manifest, ManifestErrors};
use strata_core::reconcile::{Desired, DesiredService};

/// Where strata-launch is: by default `<binaries_dir>/strata-launch` of the manifest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchSettings {
    /// Overrides the manifest's location of strata-launch (`--launcher`).
    pub launcher: Option<String>,
}

impl LaunchSettings {
    fn config(&self, manifest: &Manifest) -> LaunchConfig {
        match &self.launcher {
            Some(l) => LaunchConfig {
                launcher: l.clone(),
            },
            None => LaunchConfig::for_manifest(manifest),
        }
    }
}

/// Why a manifest could not become a desired graph.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] ManifestErrors),
    #[error("{0}")]
    Graph(#[from] GraphError),
    #[error("{0}")]
    Derive(#[from] DeriveError),
    #[error("inconsistent desired graph: {0}")]
    Desired(#[from] strata_core::reconcile::DesiredError),
}

/// Reads and validates the manifest at `path`, including its service graph.
pub fn load_manifest(path: &Path) -> Result<Manifest, DesiredError> {
    let text = std::fs::read_to_string(path).map_err(|source| DesiredError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let manifest = Manifest::parse(&path.display().to_string(), &text)?;
    ServiceGraph::new(&manifest)?;
    Ok(manifest)
}

/// Derives the desired graph: every service (core and user) with its unit, dependencies and
/// restart policy.
pub fn desired_from_manifest(
    manifest: &Manifest,
    launch: &LaunchSettings,
) -> Result<Desired, DesiredError> {
    let graph = ServiceGraph::new(manifest)?;
    let launch = launch.config(manifest);
    let mut services = Vec::new();
    for (name, decl) in manifest.all_services() {
        let spec = derive_unit(manifest, &name, &launch)?;
        services.push(DesiredService {
            after: graph.dependencies(&name).to_vec(),
            restart: decl.restart_policy(),
            name,
            spec,
        });
    }
    Ok(Desired::new(services)?)
}
