//! Capability tokens (Biscuit): claims, minting, offline attenuation, and reading a token back.
//!
//! The authority block of a Strata token, minted by the identity service, is:
//!
//! ```text
//! service("fs");  right("fs", "read");  right("fs", "open");   // "*" = every action
//! path_prefix("/srv/www");  rate_limit("0.5");                 // optional
//! issuer("strata-identity@node-1");  audience("node-1");
//! issued_at(2026-…);  expires(2026-…);
//! check if time($t), $t <= 2026-…;
//! check if request_pathless(true) or request_path($p), $p.starts_with("/srv/www/");
//! ```
//!
//! Attenuation appends blocks made only of checks of the same three shapes (expiry, path,
//! `request_action` in a set) plus informational facts. Facts of later blocks are invisible
//! to the verifier's policies, so a block can only narrow. A token whose blocks hold only
//! these shapes is "compiled": its effective rights, expiry and path prefix are computed once
//! and checked in Rust on every request; any other block content makes it "opaque" and the
//! Biscuit engine runs on every request instead. Either way the verdict is the Datalog one.
//!
//! Everything here is pure: the caller supplies the key pair and the current time (Biscuit
//! itself draws the random keys of each block).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use biscuit_auth::builder::{self, BlockBuilder, Check, CheckKind, Expression, Op, Term};
use biscuit_auth::{AuthorizerBuilder, AuthorizerLimits, Biscuit};
use serde::Serialize;

use crate::capability::{PathError, ServiceNameError, check_absolute_path, check_service_name};

/// Key types, re-exported so that users of tokens need no direct Biscuit dependency.
pub use biscuit_auth::{Algorithm, KeyPair, PrivateKey, PublicKey};

/// Predicates the verifier supplies; a token that asserts any of them itself is opaque.
pub(crate) const AMBIENT_PREDICATES: [&str; 6] = [
    "time",
    "request_service",
    "request_action",
    "request_path",
    "request_pathless",
    "verifier_audience",
];

/// Shortest lifetime a token may be issued with.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest lifetime a token may be issued with (30 days).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Lifetime when the issuer does not ask for one (1 hour).
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// The action that stands for every action of the token's service.
pub const ANY_ACTION: &str = "*";
/// Longest accepted issuer or audience label.
const MAX_LABEL_LEN: usize = 128;

/// Why a token could not be minted, attenuated or read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TokenError {
    /// The service name is not a valid Strata service name.
    #[error("service name {0}")]
    ServiceName(#[from] ServiceNameError),
    /// An action is not `word[.word…]` (lower-case) or `*`.
    #[error("action `{action}` is malformed: expected lower-case words separated by dots, or `*`")]
    Action {
        /// The offending action.
        action: String,
    },
    /// A right is not `service.action`.
    #[error("right `{right}` is malformed: expected `service.action`")]
    MalformedRight {
        /// The offending right.
        right: String,
    },
    /// A right names another service than the token's.
    #[error("right `{right}` does not belong to service `{service}`")]
    ForeignRight {
        /// The offending right.
        right: String,
        /// The token's service.
        service: String,
    },
    /// Neither actions nor rights were given.
    #[error("a token needs at least one action or right (deny by default)")]
    NoRights,
    /// The path prefix is not a normalized absolute path.
    #[error("path_prefix {0}")]
    PathPrefix(PathError),
    /// The rate limit is NaN, infinite, zero or negative.
    #[error("rate_limit {value} is not a finite positive rate in requests per second")]
    RateLimit {
        /// The offending value.
        value: f64,
    },
    /// The lifetime is outside the allowed bounds.
    #[error("ttl of {secs} s is outside the allowed range {min}..={max} s")]
    Ttl {
        /// The requested lifetime in seconds.
        secs: u64,
        /// Lower bound.
        min: u64,
        /// Upper bound.
        max: u64,
    },
    /// The issuer or audience label is empty, too long or has control characters.
    #[error("{field} `{value}` is invalid: expected 1 to 128 printable characters")]
    Label {
        /// `issuer` or `audience`.
        field: &'static str,
        /// The offending value.
        value: String,
    },
    /// `now` is before 1970 or the expiry does not fit.
    #[error("the current time cannot be represented as a token date")]
    Clock,
    /// Not a Biscuit at all (bad base64, bad protobuf, …).
    #[error("token is not a valid Biscuit: {0}")]
    Malformed(String),
    /// A signature in the chain does not verify with the root public key.
    #[error("token signature does not verify with the identity public key: {0}")]
    Signature(String),
    /// A valid Biscuit whose authority block is not a Strata capability.
    #[error("token is not a Strata capability: {0}")]
    NotStrata(String),
    /// The attenuation asks for more than the token grants.
    #[error("attenuation would widen the token: {0}")]
    Widening(String),
    /// The attenuation changes nothing.
    #[error(
        "attenuation is empty: give narrower actions, a shorter ttl, a narrower path_prefix or a lower rate_limit"
    )]
    EmptyAttenuation,
    /// The Biscuit library refused to build or evaluate a block.
    #[error("biscuit: {0}")]
    Biscuit(String),
}

impl From<biscuit_auth::error::Token> for TokenError {
    fn from(e: biscuit_auth::error::Token) -> Self {
        TokenError::Biscuit(e.to_string())
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Bytes of a hex string (either case); `None` when it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// Seconds since the epoch; `None` before 1970.
pub(crate) fn unix_secs(t: SystemTime) -> Option<u64> {
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Checks an action name: `*`, or lower-case words separated by dots (`read`, `svc.list`).
pub fn check_action(action: &str) -> Result<(), TokenError> {
    let ok = action == ANY_ACTION
        || (action.len() <= 64
            && action.split('.').all(|w| {
                let mut chars = w.chars();
                chars.next().is_some_and(|c| c.is_ascii_lowercase())
                    && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            }));
    if ok {
        Ok(())
    } else {
        Err(TokenError::Action {
            action: action.to_owned(),
        })
    }
}

/// Checks a rate limit: finite and strictly positive (sub-1 rates are fine).
pub fn check_rate_limit(value: f64) -> Result<(), TokenError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(TokenError::RateLimit { value })
    }
}

/// Checks a path prefix: a normalized absolute path.
pub fn check_path_prefix(prefix: &str) -> Result<(), TokenError> {
    check_absolute_path(prefix).map_err(TokenError::PathPrefix)
}

/// Checks a lifetime against [`MIN_TTL`]..=[`MAX_TTL`] (whole seconds).
pub fn check_ttl(ttl: Duration) -> Result<(), TokenError> {
    if ttl < MIN_TTL || ttl > MAX_TTL || ttl.subsec_nanos() != 0 {
        return Err(TokenError::Ttl {
            secs: ttl.as_secs(),
            min: MIN_TTL.as_secs(),
            max: MAX_TTL.as_secs(),
        });
    }
    Ok(())
}

fn check_label(field: &'static str, value: &str) -> Result<(), TokenError> {
    if value.is_empty() || value.len() > MAX_LABEL_LEN || value.chars().any(char::is_control) {
        return Err(TokenError::Label {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Merges `actions` (relative to `service`) and `rights` (`service.action`) into one set of
/// actions, validating every entry. At least one is required.
pub fn parse_rights(
    service: &str,
    actions: &[String],
    rights: &[String],
) -> Result<BTreeSet<String>, TokenError> {
    let mut out = BTreeSet::new();
    for a in actions {
        check_action(a)?;
        out.insert(a.clone());
    }
    for r in rights {
        let Some((svc, action)) = r.split_once('.') else {
            return Err(TokenError::MalformedRight { right: r.clone() });
        };
        if svc != service {
            check_service_name(svc).map_err(|_| TokenError::MalformedRight { right: r.clone() })?;
            return Err(TokenError::ForeignRight {
                right: r.clone(),
                service: service.to_owned(),
            });
        }
        check_action(action).map_err(|_| TokenError::MalformedRight { right: r.clone() })?;
        out.insert(action.to_owned());
    }
    if out.is_empty() {
        return Err(TokenError::NoRights);
    }
    Ok(out)
}

/// The actions a token grants within its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rights {
    /// Every action (`*`).
    Any,
    /// Exactly these actions.
    Only(BTreeSet<String>),
}

impl Rights {
    /// True when `action` is granted.
    pub fn allows(&self, action: &str) -> bool {
        match self {
            Rights::Any => true,
            Rights::Only(set) => set.contains(action),
        }
    }

    /// The rights as a list (`["*"]` for every action).
    pub fn to_list(&self) -> Vec<String> {
        match self {
            Rights::Any => vec![ANY_ACTION.to_owned()],
            Rights::Only(set) => set.iter().cloned().collect(),
        }
    }

    fn from_set(set: BTreeSet<String>) -> Rights {
        if set.contains(ANY_ACTION) {
            Rights::Any
        } else {
            Rights::Only(set)
        }
    }

    fn intersect(&self, narrower: &BTreeSet<String>) -> Rights {
        match self {
            Rights::Any => Rights::Only(narrower.clone()),
            Rights::Only(set) => Rights::Only(set.intersection(narrower).cloned().collect()),
        }
    }

    /// True when every action of `wanted` is granted.
    fn covers(&self, wanted: &BTreeSet<String>) -> bool {
        wanted.iter().all(|a| self.allows(a))
    }
}

/// What the identity service puts into a new token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSpec {
    /// The service the token is for.
    pub service: String,
    /// Actions within `service` (`*` for all); see [`parse_rights`].
    pub actions: BTreeSet<String>,
    /// Paths are confined beneath this prefix (and relative to it).
    pub path_prefix: Option<String>,
    /// Requests per second (token bucket, burst of max(1, rate)).
    pub rate_limit: Option<f64>,
    /// Lifetime from `now`.
    pub ttl: Duration,
    /// Who minted it (`strata-identity@node-1`).
    pub issuer: String,
    /// Where it is valid (the node id); verifiers check it.
    pub audience: String,
}

impl TokenSpec {
    /// Validates every field, so that bad values fail at issue time, not at use.
    pub fn validate(&self) -> Result<(), TokenError> {
        check_service_name(&self.service)?;
        if self.actions.is_empty() {
            return Err(TokenError::NoRights);
        }
        for a in &self.actions {
            check_action(a)?;
        }
        if let Some(p) = &self.path_prefix {
            check_path_prefix(p)?;
        }
        if let Some(r) = self.rate_limit {
            check_rate_limit(r)?;
        }
        check_ttl(self.ttl)?;
        check_label("issuer", &self.issuer)?;
        check_label("audience", &self.audience)?;
        Ok(())
    }
}

/// A freshly minted or attenuated token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Minted {
    /// The token (URL-safe base64).
    pub token: String,
    /// Hex of the authority block's revocation id: revoking it kills every derived token.
    pub cap_id: String,
    /// Effective expiry, seconds since the epoch.
    pub expires: u64,
    /// Hex of every block's revocation id (index 0 is `cap_id`).
    pub revocation_ids: Vec<String>,
}

fn minted(token: &Biscuit, expires: u64) -> Result<Minted, TokenError> {
    let revocation_ids: Vec<String> = token
        .revocation_identifiers()
        .iter()
        .map(|id| hex(id))
        .collect();
    Ok(Minted {
        token: token.to_base64()?,
        cap_id: revocation_ids.first().cloned().unwrap_or_default(),
        expires,
        revocation_ids,
    })
}

/// `"/srv/"` for `"/srv"`, `"/"` for the root: what a path beneath the prefix starts with.
pub(crate) fn prefix_with_slash(prefix: &str) -> String {
    if prefix == "/" {
        "/".to_owned()
    } else {
        format!("{prefix}/")
    }
}

fn date_secs(secs: u64) -> Term {
    Term::Date(secs)
}

fn expiry_check(expires: u64) -> Result<BlockBuilder, TokenError> {
    let params = HashMap::from([("exp".to_owned(), date_secs(expires))]);
    Ok(BlockBuilder::new().code_with_params(
        "check if time($t), $t <= {exp};",
        params,
        HashMap::new(),
    )?)
}

fn path_check(prefix: &str) -> Result<BlockBuilder, TokenError> {
    let params = HashMap::from([("p".to_owned(), Term::Str(prefix_with_slash(prefix)))]);
    Ok(BlockBuilder::new().code_with_params(
        "check if request_pathless(true) or request_path($p), $p.starts_with({p});",
        params,
        HashMap::new(),
    )?)
}

fn actions_check(actions: &BTreeSet<String>) -> Result<BlockBuilder, TokenError> {
    let set: BTreeSet<Term> = actions.iter().map(|a| Term::Str(a.clone())).collect();
    let params = HashMap::from([("set".to_owned(), Term::Set(set))]);
    Ok(BlockBuilder::new().code_with_params(
        "check if request_action($a), {set}.contains($a);",
        params,
        HashMap::new(),
    )?)
}

fn str_fact(name: &str, values: &[&str]) -> builder::Fact {
    let terms: Vec<Term> = values.iter().map(|v| builder::string(v)).collect();
    builder::fact(name, &terms)
}

/// Renders a rate for a fact: Rust's shortest round-tripping decimal form.
fn rate_text(rate: f64) -> String {
    format!("{rate}")
}

/// Mints a token for `spec`, valid from `now` for `spec.ttl`.
pub fn mint(root: &KeyPair, spec: &TokenSpec, now: SystemTime) -> Result<Minted, TokenError> {
    spec.validate()?;
    let now_secs = unix_secs(now).ok_or(TokenError::Clock)?;
    let expires = now_secs
        .checked_add(spec.ttl.as_secs())
        .ok_or(TokenError::Clock)?;
    let mut block = BlockBuilder::new()
        .fact(str_fact("service", &[&spec.service]))?
        .fact(str_fact("issuer", &[&spec.issuer]))?
        .fact(str_fact("audience", &[&spec.audience]))?
        .fact(builder::fact("issued_at", &[date_secs(now_secs)]))?
        .fact(builder::fact("expires", &[date_secs(expires)]))?;
    for a in &spec.actions {
        block = block.fact(str_fact("right", &[&spec.service, a]))?;
    }
    if let Some(p) = &spec.path_prefix {
        block = block.fact(str_fact("path_prefix", &[p]))?;
    }
    if let Some(r) = spec.rate_limit {
        block = block.fact(str_fact("rate_limit", &[&rate_text(r)]))?;
    }
    block = block.merge(expiry_check(expires)?);
    if let Some(p) = &spec.path_prefix {
        block = block.merge(path_check(p)?);
    }
    let token = Biscuit::builder().merge(block).build(root)?;
    minted(&token, expires)
}

/// How to narrow a token. Every field is optional; at least one must be set.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attenuation {
    /// Keep only these actions (each must already be granted).
    pub actions: Option<BTreeSet<String>>,
    /// Expire `ttl` after `now` (must not outlive the token).
    pub ttl: Option<Duration>,
    /// Confine paths beneath this prefix (must lie beneath the token's prefix).
    pub path_prefix: Option<String>,
    /// A lower rate limit for this derived token (its own bucket; the parent's still applies).
    pub rate_limit: Option<f64>,
}

impl Attenuation {
    fn validate(&self) -> Result<(), TokenError> {
        if let Some(actions) = &self.actions {
            if actions.is_empty() {
                return Err(TokenError::NoRights);
            }
            for a in actions {
                check_action(a)?;
                if a == ANY_ACTION {
                    return Err(TokenError::Widening(
                        "`*` cannot be used to narrow actions".to_owned(),
                    ));
                }
            }
        }
        if let Some(ttl) = self.ttl {
            check_ttl(ttl)?;
        }
        if let Some(p) = &self.path_prefix {
            check_path_prefix(p)?;
        }
        if let Some(r) = self.rate_limit {
            check_rate_limit(r)?;
        }
        if *self == Attenuation::default() {
            return Err(TokenError::EmptyAttenuation);
        }
        Ok(())
    }

    fn block(&self, expires: Option<u64>) -> Result<BlockBuilder, TokenError> {
        let mut block = BlockBuilder::new();
        if let Some(actions) = &self.actions {
            let set: BTreeSet<Term> = actions.iter().map(|a| Term::Str(a.clone())).collect();
            block = block
                .fact(builder::fact("rights", &[Term::Set(set)]))?
                .merge(actions_check(actions)?);
        }
        if let Some(exp) = expires {
            block = block
                .fact(builder::fact("expires", &[date_secs(exp)]))?
                .merge(expiry_check(exp)?);
        }
        if let Some(p) = &self.path_prefix {
            block = block
                .fact(str_fact("path_prefix", &[p]))?
                .merge(path_check(p)?);
        }
        if let Some(r) = self.rate_limit {
            block = block.fact(str_fact("rate_limit", &[&rate_text(r)]))?;
        }
        Ok(block)
    }
}

/// Narrows a token offline, checking against its verified claims that nothing widens.
pub fn attenuate(
    token: &str,
    root: &PublicKey,
    att: &Attenuation,
    now: SystemTime,
    limits: &RunLimits,
) -> Result<Minted, TokenError> {
    att.validate()?;
    let verified = verify(token.trim(), root, limits)?;
    let info = &verified.info;
    if let Some(actions) = &att.actions
        && !info.rights.covers(actions)
    {
        return Err(TokenError::Widening(format!(
            "actions {:?} are not all granted (granted: {:?})",
            actions.iter().collect::<Vec<_>>(),
            info.rights.to_list()
        )));
    }
    if let Some(p) = &att.path_prefix
        && let Some(current) = &info.path_prefix
        && !crate::capability::path_is_beneath(p, current)
    {
        return Err(TokenError::Widening(format!(
            "path_prefix `{p}` is not beneath the token's path_prefix `{current}`"
        )));
    }
    if let Some(r) = att.rate_limit
        && let Some(current) = info.effective_rate_limit()
        && r > current
    {
        return Err(TokenError::Widening(format!(
            "rate_limit {r} is higher than the token's {current}"
        )));
    }
    let expires = match att.ttl {
        Some(ttl) => {
            let exp = unix_secs(now)
                .and_then(|n| n.checked_add(ttl.as_secs()))
                .ok_or(TokenError::Clock)?;
            if exp > info.expires {
                return Err(TokenError::Widening(format!(
                    "ttl would end at {exp}, after the token's expiry {}",
                    info.expires
                )));
            }
            Some(exp)
        }
        None => None,
    };
    let appended = verified.biscuit.append(att.block(expires)?)?;
    minted(&appended, expires.unwrap_or(info.expires))
}

/// Appends an attenuation block without the public key: nothing is checked, so a widening
/// attempt is only refused later, by `authorize` (as Biscuit guarantees).
pub fn attenuate_unverified(
    token: &str,
    att: &Attenuation,
    now: SystemTime,
) -> Result<Minted, TokenError> {
    att.validate()?;
    let unverified = biscuit_auth::UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    let expires = match att.ttl {
        Some(ttl) => Some(
            unix_secs(now)
                .and_then(|n| n.checked_add(ttl.as_secs()))
                .ok_or(TokenError::Clock)?,
        ),
        None => None,
    };
    let appended = unverified.append(att.block(expires)?)?;
    let revocation_ids: Vec<String> = appended
        .revocation_identifiers()
        .iter()
        .map(|id| hex(id))
        .collect();
    Ok(Minted {
        token: appended.to_base64()?,
        cap_id: revocation_ids.first().cloned().unwrap_or_default(),
        expires: expires.unwrap_or(0),
        revocation_ids,
    })
}

/// Explicit limits for the Datalog engine (the library's 1 ms default fails under load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunLimits {
    /// Most facts the engine may hold.
    pub max_facts: u64,
    /// Most rule iterations.
    pub max_iterations: u64,
    /// Wall-clock budget of one evaluation.
    pub max_time: Duration,
}

impl Default for RunLimits {
    fn default() -> Self {
        Self {
            max_facts: 1000,
            max_iterations: 100,
            max_time: Duration::from_millis(50),
        }
    }
}

impl RunLimits {
    pub(crate) fn to_biscuit(&self) -> AuthorizerLimits {
        AuthorizerLimits {
            max_facts: self.max_facts,
            max_iterations: self.max_iterations,
            max_time: self.max_time,
        }
    }
}

/// What a verified token grants, once every block has been taken into account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    /// Hex of revocation id 0.
    pub cap_id: String,
    /// Hex of every block's revocation id.
    pub revocation_ids: Vec<String>,
    /// The service the token is for.
    pub service: String,
    /// Effective actions (authority rights narrowed by every attenuation).
    #[serde(serialize_with = "ser_rights")]
    pub rights: Rights,
    /// Effective (narrowest) path prefix.
    pub path_prefix: Option<String>,
    /// Two prefixes of the token that do not nest: every request with a path is denied.
    pub conflicting_prefixes: Option<(String, String)>,
    /// The authority's rate limit (bucket keyed by `cap_id`).
    pub rate_limit: Option<f64>,
    /// The lowest rate limit of the attenuation blocks (bucket keyed by the last block id).
    pub attenuated_rate_limit: Option<f64>,
    /// Effective expiry, seconds since the epoch.
    pub expires: u64,
    /// When it was minted, seconds since the epoch.
    pub issued_at: u64,
    /// Who minted it.
    pub issuer: String,
    /// Where it is valid.
    pub audience: String,
    /// Number of blocks (1 = not attenuated).
    pub blocks: usize,
    /// Checks that are not of the three known shapes (evaluated by the Biscuit engine).
    pub foreign_checks: Vec<String>,
    /// True when the Biscuit engine must run on every request.
    pub opaque: bool,
}

fn ser_rights<S: serde::Serializer>(r: &Rights, s: S) -> Result<S::Ok, S::Error> {
    r.to_list().serialize(s)
}

impl TokenInfo {
    /// The lowest rate limit anywhere in the token.
    pub fn effective_rate_limit(&self) -> Option<f64> {
        match (self.rate_limit, self.attenuated_rate_limit) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A token whose signatures verified, with its claims compiled.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    pub(crate) biscuit: Biscuit,
    /// The compiled claims.
    pub info: TokenInfo,
    /// Raw revocation ids, for revocation lookups.
    pub(crate) revocation_ids_raw: Vec<Vec<u8>>,
}

/// Parses `token`, verifies every signature with `root`, and compiles its claims.
pub fn verify(
    token: &str,
    root: &PublicKey,
    limits: &RunLimits,
) -> Result<VerifiedToken, TokenError> {
    let biscuit = Biscuit::from_base64(token, root).map_err(classify_parse_error)?;
    compile(biscuit, limits)
}

fn classify_parse_error(e: biscuit_auth::error::Token) -> TokenError {
    use biscuit_auth::error::{Format, Token};
    match e {
        Token::Format(
            f @ (Format::Signature(_)
            | Format::SealedSignature
            | Format::UnknownPublicKey
            | Format::InvalidSignatureSize(_)
            | Format::SignatureDeserializationError(_)
            | Format::BlockSignatureDeserializationError(_)
            | Format::UnknownExternalKey),
        ) => TokenError::Signature(f.to_string()),
        other => TokenError::Malformed(other.to_string()),
    }
}

/// A check of one of the three known shapes.
enum KnownCheck {
    Expiry(u64),
    /// The prefix without its trailing slash.
    Prefix(String),
    Actions(BTreeSet<String>),
}

fn single_var(preds: &[builder::Predicate], name: &str) -> Option<String> {
    match preds {
        [p] if p.name == name => match p.terms.as_slice() {
            [Term::Variable(v)] => Some(v.clone()),
            _ => None,
        },
        _ => None,
    }
}

fn classify_check(check: &Check) -> Option<KnownCheck> {
    if !matches!(check.kind, CheckKind::One) || check.queries.iter().any(|q| !q.scopes.is_empty()) {
        return None;
    }
    match check.queries.as_slice() {
        [q] => {
            if let Some(v) = single_var(&q.body, "time") {
                if let [Expression { ops }] = q.expressions.as_slice()
                    && let [
                        Op::Value(Term::Variable(x)),
                        Op::Value(Term::Date(d)),
                        Op::Binary(builder::Binary::LessOrEqual),
                    ] = ops.as_slice()
                    && *x == v
                {
                    return Some(KnownCheck::Expiry(*d));
                }
                return None;
            }
            let v = single_var(&q.body, "request_action")?;
            if let [Expression { ops }] = q.expressions.as_slice()
                && let [
                    Op::Value(Term::Set(set)),
                    Op::Value(Term::Variable(x)),
                    Op::Binary(builder::Binary::Contains),
                ] = ops.as_slice()
                && *x == v
            {
                let mut actions = BTreeSet::new();
                for t in set {
                    let Term::Str(s) = t else { return None };
                    actions.insert(s.clone());
                }
                return Some(KnownCheck::Actions(actions));
            }
            None
        }
        [pathless, q] => {
            let is_pathless = pathless.expressions.is_empty()
                && matches!(pathless.body.as_slice(),
                    [p] if p.name == "request_pathless" && p.terms == [Term::Bool(true)]);
            let v = single_var(&q.body, "request_path")?;
            if is_pathless
                && let [Expression { ops }] = q.expressions.as_slice()
                && let [
                    Op::Value(Term::Variable(x)),
                    Op::Value(Term::Str(s)),
                    Op::Binary(builder::Binary::Prefix),
                ] = ops.as_slice()
                && *x == v
            {
                let prefix = if s == "/" {
                    "/".to_owned()
                } else {
                    s.strip_suffix('/')?.to_owned()
                };
                check_absolute_path(&prefix).ok()?;
                return Some(KnownCheck::Prefix(prefix));
            }
            None
        }
        _ => None,
    }
}

fn query_strings(a: &mut biscuit_auth::Authorizer, rule: &str) -> Result<Vec<String>, TokenError> {
    let rows: Vec<(String,)> = a
        .query(rule)
        .map_err(|e| TokenError::NotStrata(e.to_string()))?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}

fn query_dates(a: &mut biscuit_auth::Authorizer, rule: &str) -> Result<Vec<u64>, TokenError> {
    let rows: Vec<(SystemTime,)> = a
        .query(rule)
        .map_err(|e| TokenError::NotStrata(e.to_string()))?;
    Ok(rows.into_iter().filter_map(|(t,)| unix_secs(t)).collect())
}

fn exactly_one(what: &str, mut v: Vec<String>) -> Result<String, TokenError> {
    if v.len() != 1 {
        return Err(TokenError::NotStrata(format!(
            "the authority block must have exactly one {what} fact, found {}",
            v.len()
        )));
    }
    Ok(v.remove(0))
}

fn parse_rate(text: &str) -> Result<f64, TokenError> {
    let r: f64 = text
        .parse()
        .map_err(|_| TokenError::NotStrata(format!("rate_limit `{text}` is not a number")))?;
    check_rate_limit(r)?;
    Ok(r)
}

/// Reads the claims of a signature-verified token.
fn compile(biscuit: Biscuit, limits: &RunLimits) -> Result<VerifiedToken, TokenError> {
    let mut a = AuthorizerBuilder::new()
        .set_limits(limits.to_biscuit())
        .build(&biscuit)
        .map_err(|e| TokenError::NotStrata(e.to_string()))?;
    // Facts and checks of every block, as loaded (before any rule ran).
    let (facts, rules, checks, _) = a.dump();

    // Authority facts only: `query` sees the authority block and the authorizer.
    let service = exactly_one("service", query_strings(&mut a, "q($s) <- service($s)")?)?;
    check_service_name(&service).map_err(|e| TokenError::NotStrata(format!("service name {e}")))?;
    let rows: Vec<(String, String)> = a
        .query("q($s, $a) <- right($s, $a)")
        .map_err(|e| TokenError::NotStrata(e.to_string()))?;
    let granted: BTreeSet<String> = rows
        .into_iter()
        .filter(|(s, _)| *s == service)
        .map(|(_, a)| a)
        .collect();
    let prefixes_fact = query_strings(&mut a, "q($p) <- path_prefix($p)")?;
    let rates = query_strings(&mut a, "q($r) <- rate_limit($r)")?;
    let issuer = exactly_one("issuer", query_strings(&mut a, "q($x) <- issuer($x)")?)?;
    let audience = exactly_one("audience", query_strings(&mut a, "q($x) <- audience($x)")?)?;
    let expires_fact = query_dates(&mut a, "q($d) <- expires($d)")?;
    let issued_at = query_dates(&mut a, "q($d) <- issued_at($d)")?;
    let [expires_fact] = expires_fact.as_slice() else {
        return Err(TokenError::NotStrata(
            "the authority block must have exactly one expires date".to_owned(),
        ));
    };
    if prefixes_fact.len() > 1 || rates.len() > 1 {
        return Err(TokenError::NotStrata(
            "the authority block has several path_prefix or rate_limit facts".to_owned(),
        ));
    }
    let rate_limit = rates.first().map(|r| parse_rate(r)).transpose()?;

    // Rate limits of every block (`query_all` sees them all); the lowest beyond the
    // authority's is the attenuated one.
    let all_rates: Vec<(String,)> = a
        .query_all("q($r) <- rate_limit($r)")
        .map_err(|e| TokenError::NotStrata(e.to_string()))?;
    let mut attenuated_rate_limit: Option<f64> = None;
    for (text,) in &all_rates {
        // A malformed rate in an attenuation block only restricts its author: skip it.
        if let Ok(r) = parse_rate(text)
            && rate_limit.is_none_or(|auth| r < auth)
        {
            attenuated_rate_limit = Some(attenuated_rate_limit.map_or(r, |x| x.min(r)));
        }
    }

    let mut opaque = !rules.is_empty()
        || facts
            .iter()
            .any(|f| AMBIENT_PREDICATES.contains(&f.predicate.name.as_str()));
    let mut rights = Rights::from_set(granted);
    let mut expires = *expires_fact;
    let mut prefixes: Vec<String> = prefixes_fact.clone();
    let mut foreign_checks = Vec::new();
    for check in &checks {
        match classify_check(check) {
            Some(KnownCheck::Expiry(d)) => expires = expires.min(d),
            Some(KnownCheck::Prefix(p)) => {
                if !prefixes.contains(&p) {
                    prefixes.push(p);
                }
            }
            Some(KnownCheck::Actions(set)) => rights = rights.intersect(&set),
            None => {
                opaque = true;
                foreign_checks.push(check.to_string());
            }
        }
    }
    // The narrowest prefix; every other must contain it, else no path can satisfy all.
    prefixes.sort_by_key(String::len);
    let path_prefix = prefixes.last().cloned();
    let conflicting_prefixes = path_prefix.as_ref().and_then(|narrowest| {
        prefixes
            .iter()
            .find(|p| !crate::capability::path_is_beneath(narrowest, p))
            .map(|p| (p.clone(), narrowest.clone()))
    });

    let revocation_ids_raw = biscuit.revocation_identifiers();
    let revocation_ids: Vec<String> = revocation_ids_raw.iter().map(|id| hex(id)).collect();
    let info = TokenInfo {
        cap_id: revocation_ids.first().cloned().unwrap_or_default(),
        revocation_ids,
        service,
        rights,
        path_prefix,
        conflicting_prefixes,
        rate_limit,
        attenuated_rate_limit,
        expires,
        issued_at: issued_at.first().copied().unwrap_or(0),
        issuer,
        audience,
        blocks: biscuit.block_count(),
        foreign_checks,
        opaque,
    };
    Ok(VerifiedToken {
        biscuit,
        info,
        revocation_ids_raw,
    })
}

impl VerifiedToken {
    /// The Datalog source of every block, for display (`strata-ctl token inspect`).
    pub fn block_sources(&self) -> Vec<String> {
        (0..self.biscuit.block_count())
            .map(|i| self.biscuit.print_block_source(i).unwrap_or_default())
            .collect()
    }
}

/// What can be read from a token without its public key (nothing here is trustworthy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnverifiedInfo {
    /// Hex of revocation id 0.
    pub cap_id: String,
    /// Hex of every block's revocation id.
    pub revocation_ids: Vec<String>,
    /// The Datalog source of every block.
    pub blocks: Vec<String>,
}

/// Reads a token's revocation ids and block sources without verifying anything.
pub fn inspect_unverified(token: &str) -> Result<UnverifiedInfo, TokenError> {
    let u = biscuit_auth::UnverifiedBiscuit::from_base64(token.trim())
        .map_err(|e| TokenError::Malformed(e.to_string()))?;
    let revocation_ids: Vec<String> = u.revocation_identifiers().iter().map(|i| hex(i)).collect();
    Ok(UnverifiedInfo {
        cap_id: revocation_ids.first().cloned().unwrap_or_default(),
        revocation_ids,
        blocks: (0..u.block_count())
            .map(|i| u.print_block_source(i).unwrap_or_default())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TokenSpec {
        TokenSpec {
            service: "fs".into(),
            actions: ["open", "read", "list"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            path_prefix: Some("/srv/www".into()),
            rate_limit: Some(0.5),
            ttl: Duration::from_secs(600),
            issuer: "strata-identity@node-1".into(),
            audience: "node-1".into(),
        }
    }

    fn t0() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(unhex("00AB10"), Some(vec![0, 0xab, 0x10]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }

    #[test]
    fn minted_claims_read_back() {
        let kp = KeyPair::new();
        let m = mint(&kp, &spec(), t0()).expect("mint");
        assert_eq!(m.expires, 1_800_000_600);
        assert_eq!(m.cap_id.len(), 128);
        let v = verify(&m.token, &kp.public(), &RunLimits::default()).expect("verify");
        let i = &v.info;
        assert_eq!(i.cap_id, m.cap_id);
        assert_eq!(i.service, "fs");
        assert_eq!(i.rights.to_list(), vec!["list", "open", "read"]);
        assert_eq!(i.path_prefix.as_deref(), Some("/srv/www"));
        assert_eq!(i.rate_limit, Some(0.5));
        assert_eq!(i.expires, 1_800_000_600);
        assert_eq!(i.issued_at, 1_800_000_000);
        assert_eq!(i.issuer, "strata-identity@node-1");
        assert_eq!(i.audience, "node-1");
        assert!(!i.opaque, "a minted token compiles: {:?}", i.foreign_checks);
        assert_eq!(i.blocks, 1);
    }

    #[test]
    fn spec_validation_rejects_bad_values_at_issue_time() {
        let kp = KeyPair::new();
        type Mutation = Box<dyn Fn(&mut TokenSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|s| s.rate_limit = Some(f64::NAN)),
                "rate_limit NaN",
            ),
            (
                Box::new(|s| s.rate_limit = Some(f64::INFINITY)),
                "rate_limit inf",
            ),
            (
                Box::new(|s| s.rate_limit = Some(0.0)),
                "rate_limit 0 is not",
            ),
            (
                Box::new(|s| s.rate_limit = Some(-1.0)),
                "rate_limit -1 is not",
            ),
            (Box::new(|s| s.ttl = Duration::ZERO), "ttl of 0 s"),
            (
                Box::new(|s| s.ttl = MAX_TTL + Duration::from_secs(1)),
                "ttl of 2592001 s",
            ),
            (
                Box::new(|s| s.path_prefix = Some("srv".into())),
                "path_prefix `srv` is not absolute",
            ),
            (
                Box::new(|s| s.path_prefix = Some("/srv/../etc".into())),
                "contains `..`",
            ),
            (
                Box::new(|s| s.path_prefix = Some("/srv/".into())),
                "is not normalized",
            ),
            (Box::new(|s| s.service = "Fs".into()), "service name"),
            (Box::new(|s| s.actions.clear()), "at least one action"),
            (
                Box::new(|s| {
                    s.actions.insert("Read".into());
                }),
                "action `Read` is malformed",
            ),
            (
                Box::new(|s| s.audience = String::new()),
                "audience `` is invalid",
            ),
        ];
        for (mutate, fragment) in cases {
            let mut s = spec();
            mutate(&mut s);
            let e = mint(&kp, &s, t0()).expect_err(fragment);
            assert!(
                e.to_string().contains(fragment),
                "{e} should contain {fragment}"
            );
        }
        // Positive control: sub-1 rates and the bounds themselves are fine.
        let mut s = spec();
        s.rate_limit = Some(0.001);
        s.ttl = MAX_TTL;
        mint(&kp, &s, t0()).expect("sub-1 rate and max ttl");
    }

    #[test]
    fn rights_merge_actions_and_qualified_rights() {
        let set = parse_rights("identity", &["issue".into()], &["identity.revoke".into()])
            .expect("valid");
        assert_eq!(set.into_iter().collect::<Vec<_>>(), vec!["issue", "revoke"]);
        let e = parse_rights("fs", &[], &["identity.issue".into()]).expect_err("foreign");
        assert_eq!(
            e.to_string(),
            "right `identity.issue` does not belong to service `fs`"
        );
        let e = parse_rights("fs", &[], &["read".into()]).expect_err("unqualified");
        assert_eq!(
            e.to_string(),
            "right `read` is malformed: expected `service.action`"
        );
        assert_eq!(parse_rights("fs", &[], &[]), Err(TokenError::NoRights));
        let set = parse_rights("supervisor", &[], &["supervisor.svc.list".into()]).expect("dotted");
        assert!(set.contains("svc.list"));
    }

    #[test]
    fn attenuation_narrows_and_refuses_widening() {
        let kp = KeyPair::new();
        let m = mint(&kp, &spec(), t0()).expect("mint");
        let lim = RunLimits::default();
        let att = Attenuation {
            actions: Some(["read".to_string()].into()),
            ttl: Some(Duration::from_secs(60)),
            path_prefix: Some("/srv/www/sub".into()),
            rate_limit: Some(0.25),
        };
        let n = attenuate(&m.token, &kp.public(), &att, t0(), &lim).expect("narrowing");
        assert_eq!(n.cap_id, m.cap_id, "derived tokens keep the cap_id");
        assert_eq!(n.revocation_ids.len(), 2);
        let v = verify(&n.token, &kp.public(), &lim).expect("verify attenuated");
        assert_eq!(v.info.rights.to_list(), vec!["read"]);
        assert_eq!(v.info.expires, 1_800_000_060);
        assert_eq!(v.info.path_prefix.as_deref(), Some("/srv/www/sub"));
        assert_eq!(v.info.attenuated_rate_limit, Some(0.25));
        assert!(!v.info.opaque);
        assert_eq!(v.info.conflicting_prefixes, None);

        let widen = |att: Attenuation| {
            attenuate(&m.token, &kp.public(), &att, t0(), &lim).expect_err("widening")
        };
        assert!(matches!(
            widen(Attenuation {
                actions: Some(["write".to_string()].into()),
                ..Default::default()
            }),
            TokenError::Widening(_)
        ));
        assert!(matches!(
            widen(Attenuation {
                ttl: Some(Duration::from_secs(601)),
                ..Default::default()
            }),
            TokenError::Widening(_)
        ));
        assert!(matches!(
            widen(Attenuation {
                path_prefix: Some("/srv".into()),
                ..Default::default()
            }),
            TokenError::Widening(_)
        ));
        assert!(matches!(
            widen(Attenuation {
                rate_limit: Some(2.0),
                ..Default::default()
            }),
            TokenError::Widening(_)
        ));
        assert_eq!(widen(Attenuation::default()), TokenError::EmptyAttenuation);
    }

    #[test]
    fn wrong_key_and_garbage_are_told_apart() {
        let kp = KeyPair::new();
        let other = KeyPair::new();
        let m = mint(&kp, &spec(), t0()).expect("mint");
        let lim = RunLimits::default();
        assert!(matches!(
            verify(&m.token, &other.public(), &lim),
            Err(TokenError::Signature(_))
        ));
        assert!(matches!(
            verify("not-a-token", &kp.public(), &lim),
            Err(TokenError::Malformed(_))
        ));
        let mut bytes = m.token.clone().into_bytes();
        let mid = bytes.len() / 2;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert!(verify(&tampered, &kp.public(), &lim).is_err());
    }

    #[test]
    fn a_foreign_biscuit_is_not_a_strata_token() {
        let kp = KeyPair::new();
        let b = Biscuit::builder()
            .fact(str_fact("user", &["alice"]))
            .expect("fact")
            .build(&kp)
            .expect("build");
        let e = verify(
            &b.to_base64().expect("b64"),
            &kp.public(),
            &RunLimits::default(),
        )
        .expect_err("foreign");
        assert!(matches!(e, TokenError::NotStrata(_)), "{e}");
    }

    #[test]
    fn unverified_inspection_reads_ids_and_sources() {
        let kp = KeyPair::new();
        let m = mint(&kp, &spec(), t0()).expect("mint");
        let u = inspect_unverified(&m.token).expect("inspect");
        assert_eq!(u.cap_id, m.cap_id);
        assert!(u.blocks[0].contains("service(\"fs\")"), "{}", u.blocks[0]);
        let att = Attenuation {
            actions: Some(["read".to_string()].into()),
            ..Default::default()
        };
        let n = attenuate_unverified(&m.token, &att, t0()).expect("offline append");
        assert_eq!(n.cap_id, m.cap_id);
        let v = verify(&n.token, &kp.public(), &RunLimits::default()).expect("still verifies");
        assert_eq!(v.info.rights.to_list(), vec!["read"]);
    }
}
