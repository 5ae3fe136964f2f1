//! `strata-ctl call METHOD [JSON] [--token T]`: one protocol v1 request to any service, also
//! in the original client's form `strata-ctl -token T METHOD '{...}'` (and
//! `strata-ctl METHOD '{...}'`), rewritten by [`rewrite_legacy_args`] before clap parses.
//!
//! The endpoint is resolved through the registry (`registry.resolve`), falling back to
//! `<runtime_dir>/<service>.sock` when the registry is unreachable or does not know the
//! service. The response envelope is printed as JSON; the exit status is 1 when `ok` is false.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::{Map, Value, json};
use strata_core::protocol::{Request, Response};
use strata_services::ipc::{Client, ClientConfig, ClientError};

/// Arguments of `strata-ctl call`.
#[derive(Debug, Args)]
pub struct CallArgs {
    /// The method, `service.action` (e.g. `fs.list`, `identity.issue`, `supervisor.status`).
    pub method: String,
    /// The params, a JSON object (default `{}`).
    pub params: Option<String>,
    /// The capability token sent in `auth.token`. Without one, inside a service that declares
    /// `call:<service>`, the token systemd delivered as its credential is used.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The runtime directory holding the sockets.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    pub runtime_dir: PathBuf,
    /// Connect to this socket instead of resolving the endpoint.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Seconds to wait for the response.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
    /// Print the envelope on one line instead of indented.
    #[arg(long)]
    pub compact: bool,
    /// Say on stderr which endpoint was used and why.
    #[arg(long, short)]
    pub verbose: bool,
}

/// The subcommands strata-ctl knows: an argument equal to one of these is never a method.
const SUBCOMMANDS: &[&str] = &[
    "check", "status", "start", "stop", "restart", "release", "reload", "logs", "events", "call",
    "audit", "token", "metrics", "help",
];

fn is_method(arg: &str) -> bool {
    arg.contains('.') && !arg.starts_with('-') && !SUBCOMMANDS.contains(&arg)
}

/// Rewrites the original client's argument shapes into `call …`:
/// `-token T METHOD [JSON]`, `-token=T METHOD [JSON]` (also with `--token`), and
/// `METHOD [JSON]`. Anything else is returned unchanged.
pub fn rewrite_legacy_args(args: Vec<OsString>) -> Vec<OsString> {
    let strs: Vec<Option<&str>> = args.iter().map(|a| a.to_str()).collect();
    let (token, rest_at) = match strs.get(1).copied().flatten() {
        Some("-token" | "--token") => match strs.get(2).copied().flatten() {
            Some(t) => (Some(t.to_owned()), 3),
            None => return args,
        },
        Some(a) if a.starts_with("-token=") || a.starts_with("--token=") => {
            let t = a.split_once('=').map(|(_, t)| t.to_owned());
            (t, 2)
        }
        Some(a) if is_method(a) => (None, 1),
        _ => return args,
    };
    match strs.get(rest_at).copied().flatten() {
        Some(m) if is_method(m) => {}
        _ => return args,
    }
    let mut out: Vec<OsString> = vec![args[0].clone(), "call".into()];
    out.extend(args[rest_at..].iter().cloned());
    if let Some(t) = token {
        out.push("--token".into());
        out.push(t.into());
    }
    out
}

/// The service part of a method (`fs` for `fs.read`).
fn service_of(method: &str) -> &str {
    method.split_once('.').map_or(method, |(s, _)| s)
}

/// Where to send a request for `service`: the registry's answer, else the socket by name.
async fn resolve(runtime_dir: &Path, service: &str, verbose: bool) -> Result<PathBuf> {
    let fallback = runtime_dir.join(format!("{service}.sock"));
    if service == "registry" {
        return Ok(fallback);
    }
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(1),
        call_timeout: Duration::from_secs(2),
    };
    let registry = runtime_dir.join("registry.sock");
    let answer = match Client::connect_with(&registry, config).await {
        Ok(mut c) => c
            .call("registry.resolve", json!({"service": service}), None)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match answer {
        Ok(v) => {
            let endpoint = v["endpoint"].as_str().unwrap_or_default();
            if let Some(path) = endpoint.strip_prefix("unix://") {
                if verbose {
                    eprintln!("strata-ctl: {service} resolved by the registry to {endpoint}");
                }
                Ok(PathBuf::from(path))
            } else {
                bail!(
                    "the registry places {service} at `{endpoint}`, which strata-ctl cannot reach (only unix:// endpoints are supported); use --socket"
                )
            }
        }
        Err(why) => {
            if verbose {
                eprintln!(
                    "strata-ctl: registry lookup of {service} failed ({why}); using {}",
                    fallback.display()
                );
            }
            Ok(fallback)
        }
    }
}

fn parse_params(text: Option<&str>) -> Result<Value> {
    let Some(text) = text else {
        return Ok(Value::Object(Map::new()));
    };
    let v: Value =
        serde_json::from_str(text).with_context(|| format!("params `{text}` are not JSON"))?;
    if !v.is_object() {
        bail!("params must be a JSON object, got `{text}`");
    }
    Ok(v)
}

/// Runs `strata-ctl call`.
pub fn run(args: &CallArgs) -> Result<ExitCode> {
    let params = parse_params(args.params.as_deref())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let response: Response = rt.block_on(async {
        let socket = match &args.socket {
            Some(s) => s.clone(),
            None => resolve(&args.runtime_dir, service_of(&args.method), args.verbose).await?,
        };
        let config = ClientConfig {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(args.timeout),
        };
        let mut client = Client::connect_with(&socket, config)
            .await
            .with_context(|| format!("calling {}", args.method))?;
        let mut req = Request::new(client.next_req_id(), args.method.clone());
        req.token = match args.token.clone().filter(|t| !t.is_empty()) {
            Some(t) => Some(t),
            None => {
                let service = service_of(&args.method);
                let delivered = strata_services::bootstrap::call_token(service)
                    .with_context(|| format!("reading the delivered token for `{service}`"))?;
                if delivered.is_some() && args.verbose {
                    eprintln!("strata-ctl: using the token delivered for call:{service}");
                }
                delivered
            }
        };
        req.params = params;
        client
            .send(&req)
            .await
            .map_err(|e: ClientError| anyhow::anyhow!(e))?;
        client
            .recv()
            .await
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("waiting for the answer to {}", args.method))
    })?;
    let envelope: Value = serde_json::from_slice(&response.to_json())
        .context("re-reading the response for printing")?;
    let text = if args.compact {
        envelope.to_string()
    } else {
        serde_json::to_string_pretty(&envelope).context("printing the response")?
    };
    println!("{text}");
    Ok(if response.outcome.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rw(args: &[&str]) -> Vec<String> {
        rewrite_legacy_args(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn the_original_clients_forms_become_call() {
        assert_eq!(
            rw(&[
                "strata-ctl",
                "-token",
                "T",
                "fs.list",
                "{\"path\":\"/tmp\"}"
            ]),
            vec![
                "strata-ctl",
                "call",
                "fs.list",
                "{\"path\":\"/tmp\"}",
                "--token",
                "T"
            ]
        );
        assert_eq!(
            rw(&["strata-ctl", "--token=T", "fs.read", "{}"]),
            vec!["strata-ctl", "call", "fs.read", "{}", "--token", "T"]
        );
        assert_eq!(
            rw(&["strata-ctl", "identity.issue", "{\"service\":\"fs\"}"]),
            vec![
                "strata-ctl",
                "call",
                "identity.issue",
                "{\"service\":\"fs\"}"
            ]
        );
        assert_eq!(
            rw(&["strata-ctl", "supervisor.status"]),
            vec!["strata-ctl", "call", "supervisor.status"]
        );
    }

    #[test]
    fn other_command_lines_are_left_alone() {
        for args in [
            vec!["strata-ctl", "status"],
            vec!["strata-ctl", "call", "fs.list", "{}"],
            vec!["strata-ctl", "check", "manifest.toml"],
            vec!["strata-ctl", "-token"],
            vec!["strata-ctl", "-token", "T", "status"],
            vec!["strata-ctl", "--help"],
            vec!["strata-ctl"],
        ] {
            assert_eq!(rw(&args), args, "{args:?}");
        }
    }

    #[test]
    fn params_must_be_a_json_object() {
        assert_eq!(parse_params(None).expect("default"), json!({}));
        assert_eq!(
            parse_params(Some("{\"a\":1}")).expect("object"),
            json!({"a":1})
        );
        assert!(parse_params(Some("[1]")).is_err());
        assert!(parse_params(Some("{")).is_err());
        assert_eq!(service_of("supervisor.svc.list"), "supervisor");
    }
}
