//! `strata-ctl token issue|attenuate|inspect|revoke`: capability tokens from the command line.
//!
//! `issue` and `revoke` call the identity service on `<runtime_dir>/identity.sock`;
//! `attenuate` and `inspect` work offline (Biscuit allows holders to narrow a token without
//! its issuer), checking against `<runtime_dir>/identity.pub` when it is readable. A token
//! argument of `-` is read from standard input, so it need not appear in argv.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};
use strata_core::token::{
    self, Attenuation, PublicKey, RunLimits, attenuate, attenuate_unverified, inspect_unverified,
};
use strata_services::ipc::{Client, ClientError, socket_path};
use strata_services::verifier::read_public_key;

/// Exit status when identity answered with an error (refused, invalid).
pub const EXIT_REFUSED: u8 = 1;
/// Exit status when the identity service cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Ask the identity service for a new token (needs root, strata-admin, or --token).
    Issue(IssueArgs),
    /// Narrow a token offline: fewer actions, shorter lifetime, narrower path, lower rate.
    Attenuate(AttenuateArgs),
    /// Show what a token grants (offline; --online asks the identity service).
    Inspect(InspectArgs),
    /// Revoke a cap_id (or the cap_id of a token): every token derived from it dies.
    Revoke(RevokeArgs),
}

#[derive(Debug, Args)]
pub struct Common {
    /// Where identity.sock and identity.pub live.
    #[arg(long, env = "STRATA_RUNTIME_DIR", default_value = "/run/strata")]
    pub runtime_dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    #[command(flatten)]
    pub common: Common,
    /// The service the token is for.
    #[arg(long)]
    pub service: String,
    /// An action within the service (repeatable, or comma separated; `*` for all).
    #[arg(long = "action", value_delimiter = ',')]
    pub actions: Vec<String>,
    /// A right `service.action` (repeatable, or comma separated).
    #[arg(long = "right", value_delimiter = ',')]
    pub rights: Vec<String>,
    /// Confine paths beneath this absolute prefix.
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// Requests per second (sub-1 rates work: 0.1 = one request per 10 s).
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// Lifetime in seconds.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// A token with the right identity.issue, for callers that are not root or strata-admin.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct AttenuateArgs {
    #[command(flatten)]
    pub common: Common,
    /// The token to narrow (`-` reads it from standard input).
    pub token: String,
    /// Keep only these actions (repeatable, or comma separated).
    #[arg(long = "action", value_delimiter = ',')]
    pub actions: Vec<String>,
    /// New lifetime in seconds from now (must end before the token's expiry).
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Confine paths beneath this prefix (beneath the token's own).
    #[arg(long)]
    pub path_prefix: Option<String>,
    /// A lower rate limit for the derived token.
    #[arg(long)]
    pub rate_limit: Option<f64>,
    /// The identity public key file (default: <runtime-dir>/identity.pub).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Append without the public key: widening is then only refused when the token is used.
    #[arg(long)]
    pub unverified: bool,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[command(flatten)]
    pub common: Common,
    /// The token (`-` reads it from standard input).
    pub token: String,
    /// The identity public key file (default: <runtime-dir>/identity.pub).
    #[arg(long)]
    pub public_key: Option<PathBuf>,
    /// Ask the identity service (identity.introspect): also tells whether it is revoked.
    #[arg(long)]
    pub online: bool,
}

#[derive(Debug, Args)]
pub struct RevokeArgs {
    #[command(flatten)]
    pub common: Common,
    /// A cap_id (hex), or a token whose cap_id to revoke (`-` reads from standard input).
    pub target: String,
    /// A token with the right identity.revoke, for callers that are not root or strata-admin.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Runs a `token` subcommand.
pub fn run(args: &TokenArgs) -> Result<ExitCode> {
    match &args.command {
        TokenCommand::Issue(a) => issue(a),
        TokenCommand::Attenuate(a) => attenuate_cmd(a),
        TokenCommand::Inspect(a) => inspect(a),
        TokenCommand::Revoke(a) => revoke(a),
    }
}

fn read_token_arg(arg: &str) -> Result<String> {
    if arg != "-" {
        return Ok(arg.trim().to_owned());
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("cannot read the token from standard input")?;
    let t = s.trim().to_owned();
    if t.is_empty() {
        bail!("standard input held no token");
    }
    Ok(t)
}

fn print_json(v: &Value) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("cannot render JSON")?
    );
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Calls identity; prints the result, or the error with the exit status it deserves.
fn call_identity(
    common: &Common,
    method: &str,
    params: Value,
    token: Option<&str>,
) -> Result<ExitCode> {
    let sock = socket_path(&common.runtime_dir, "identity");
    let result = runtime()?.block_on(async {
        let mut c = Client::connect(&sock).await?;
        c.call(method, params, token).await
    });
    match result {
        Ok(v) => {
            print_json(&v)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(ClientError::Rpc(e)) => {
            eprintln!(
                "strata-ctl: {method} refused: {} ({})",
                e.message,
                e.code.name()
            );
            if !e.details.is_empty() {
                eprintln!("details: {}", Value::Object(e.details.clone()));
            }
            Ok(ExitCode::from(EXIT_REFUSED))
        }
        Err(e @ ClientError::Connect { .. }) => {
            eprintln!("strata-ctl: {e}");
            eprintln!("hint: is strata-identity running? `systemctl status strata-identity`");
            Ok(ExitCode::from(EXIT_UNREACHABLE))
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("calling {method}"))),
    }
}

fn issue(a: &IssueArgs) -> Result<ExitCode> {
    let mut params = json!({"service": a.service});
    if !a.actions.is_empty() {
        params["actions"] = json!(a.actions);
    }
    if !a.rights.is_empty() {
        params["rights"] = json!(a.rights);
    }
    if let Some(p) = &a.path_prefix {
        params["path_prefix"] = json!(p);
    }
    if let Some(r) = a.rate_limit {
        // JSON cannot carry NaN or infinities: refuse them here with the same words.
        token::check_rate_limit(r)?;
        params["rate_limit"] = json!(r);
    }
    if let Some(t) = a.ttl {
        params["ttl_seconds"] = json!(t);
    }
    call_identity(&a.common, "identity.issue", params, a.token.as_deref())
}

fn public_key(common: &Common, explicit: Option<&Path>) -> Result<Option<PublicKey>> {
    match explicit {
        Some(path) => Ok(Some(read_public_key(path)?)),
        None => {
            let path = common.runtime_dir.join("identity.pub");
            match read_public_key(&path) {
                Ok(k) => Ok(Some(k)),
                Err(strata_services::verifier::PublicKeyError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn attenuate_cmd(a: &AttenuateArgs) -> Result<ExitCode> {
    let token = read_token_arg(&a.token)?;
    let att = Attenuation {
        actions: (!a.actions.is_empty())
            .then(|| a.actions.iter().cloned().collect::<BTreeSet<_>>()),
        ttl: a.ttl.map(Duration::from_secs),
        path_prefix: a.path_prefix.clone(),
        rate_limit: a.rate_limit,
    };
    let now = SystemTime::now();
    let attenuated = if a.unverified {
        attenuate_unverified(&token, &att, now)
    } else {
        let Some(key) = public_key(&a.common, a.public_key.as_deref())? else {
            bail!(
                "{} not found: give --public-key FILE, or --unverified to append without checking",
                a.common.runtime_dir.join("identity.pub").display()
            );
        };
        attenuate(&token, &key, &att, now, &RunLimits::default())
    };
    let minted = match attenuated {
        Ok(m) => m,
        Err(e) => {
            // A widening attempt or a token that does not verify: refused, not a usage error.
            eprintln!("strata-ctl: {e}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
    };
    print_json(&json!({
        "token": minted.token,
        "cap_id": minted.cap_id,
        "expires": if a.unverified && a.ttl.is_none() { Value::Null } else { json!(minted.expires) },
        "revocation_ids": minted.revocation_ids,
    }))?;
    Ok(ExitCode::SUCCESS)
}

fn inspect(a: &InspectArgs) -> Result<ExitCode> {
    let token = read_token_arg(&a.token)?;
    if a.online {
        return call_identity(
            &a.common,
            "identity.introspect",
            json!({"token": token}),
            None,
        );
    }
    match public_key(&a.common, a.public_key.as_deref())? {
        Some(key) => match token::verify(&token, &key, &RunLimits::default()) {
            Ok(v) => {
                let mut out = serde_json::to_value(&v.info).context("cannot render the claims")?;
                out["verified"] = json!(true);
                out["block_sources"] = json!(v.block_sources());
                print_json(&out)?;
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                eprintln!("strata-ctl: token does not verify: {e}");
                Ok(ExitCode::from(EXIT_REFUSED))
            }
        },
        None => {
            let u = inspect_unverified(&token)?;
            let mut out = serde_json::to_value(&u).context("cannot render the token")?;
            out["verified"] = json!(false);
            print_json(&out)?;
            eprintln!(
                "strata-ctl: no identity.pub in {}: signatures NOT checked (give --public-key)",
                a.common.runtime_dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn revoke(a: &RevokeArgs) -> Result<ExitCode> {
    let target = read_token_arg(&a.target)?;
    let is_hex = token::unhex(&target).is_some();
    let cap_id = if is_hex {
        target
    } else {
        inspect_unverified(&target)
            .context("the argument is neither a cap_id (hex) nor a token")?
            .cap_id
    };
    call_identity(
        &a.common,
        "identity.revoke",
        json!({"cap_id": cap_id}),
        a.token.as_deref(),
    )
}
