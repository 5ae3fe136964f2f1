//! `strata-ctl check FILE [--explain]`: validate a manifest offline, and show what would run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use strata_core::derive::{LaunchConfig, derive_unit, render_unit};
use strata_core::graph::load;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The manifest (TOML), e.g. /etc/strata/strata.toml.
    pub file: PathBuf,
    /// Also print, per service in start order, its unit: name, every systemd property in
    /// unit-file syntax, and the Landlock rules strata-launch will apply.
    #[arg(long)]
    pub explain: bool,
    /// Path of strata-launch to show in ExecStart= (default: <binaries_dir>/strata-launch).
    #[arg(long, value_name = "PATH", requires = "explain")]
    pub launcher: Option<String>,
}

/// Prints every validation error to stderr and returns exit status 1, or prints a one-line
/// summary (and with --explain every unit) to stdout and returns 0.
pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let name = args.file.display().to_string();
    let text =
        std::fs::read_to_string(&args.file).with_context(|| format!("reading manifest {name}"))?;
    let (manifest, graph) = match load(&name, &text) {
        Ok(loaded) => loaded,
        Err(err) => {
            let messages = err.messages();
            for m in &messages {
                eprintln!("{m}");
            }
            let n = messages.len();
            eprintln!(
                "{name}: invalid: {n} error{}",
                if n == 1 { "" } else { "s" }
            );
            return Ok(ExitCode::from(1));
        }
    };
    let core = graph.len() - manifest.services.len();
    println!(
        "{name}: ok: node {}, {} services ({} declared, {core} core) in {} start layers",
        manifest.node.id,
        graph.len(),
        manifest.services.len(),
        graph.layers().len(),
    );
    if args.explain {
        let launch = match &args.launcher {
            Some(path) => LaunchConfig {
                launcher: path.clone(),
            },
            None => LaunchConfig::for_manifest(&manifest),
        };
        let layers: Vec<String> = graph
            .layers()
            .iter()
            .map(|layer| format!("[{}]", layer.join(" ")))
            .collect();
        println!("start order: {}", layers.join(" -> "));
        for service in graph.start_order() {
            let spec = derive_unit(&manifest, &service, &launch)
                .with_context(|| format!("deriving the unit of {service}"))?;
            let deps = graph.dependencies(&service);
            println!();
            print!("{}", render_unit(&spec));
            if !deps.is_empty() {
                println!("  starts after: {}", deps.join(" "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
