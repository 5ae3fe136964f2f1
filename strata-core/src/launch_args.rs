//! The command-line contract between the derived unit and strata-launch, owned here so that
//! the side that writes it (sandbox derivation) and the side that reads it (strata-launch)
//! cannot drift apart:
//!
//! ```text
//! strata-launch --service NAME --ruleset-json '<LandlockRuleset as JSON>' \
//!     [--keep-caps CAP_A,CAP_B] -- /abs/program args...
//! ```
//!
//! `--keep-caps` is left out when no capability is kept. Options may also be written
//! `--opt=value` when decoding. The JSON is `serde_json` of [`LandlockRuleset`] (fields in
//! declaration order, so the same ruleset always encodes to the same text).

use crate::capability::{LINUX_CAPABILITIES, check_absolute_path, check_service_name};
use crate::unit::LandlockRuleset;

/// Everything strata-launch needs to sandbox and exec one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchArgs {
    pub service: String,
    pub ruleset: LandlockRuleset,
    /// Linux capabilities to keep (`CAP_NET_BIND_SERVICE`), in bit order; all others dropped.
    pub keep_caps: Vec<String>,
    /// The service's own command line; `argv[0]` is an absolute path.
    pub argv: Vec<String>,
}

/// Why a strata-launch command line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaunchArgsError {
    #[error("unknown option `{0}`: expected --service, --ruleset-json, --keep-caps or --")]
    UnknownOption(String),
    #[error("option {0} given twice")]
    Duplicate(&'static str),
    #[error("option {0} needs a value")]
    MissingValue(&'static str),
    #[error("missing option {0}")]
    Missing(&'static str),
    #[error("invalid service name: {0}")]
    ServiceName(String),
    #[error("invalid --ruleset-json: {0}")]
    Ruleset(String),
    #[error("unknown Linux capability `{0}` in --keep-caps")]
    UnknownCapability(String),
    #[error("missing `-- /abs/program [args…]` after the options")]
    MissingProgram,
    #[error("program path {0}")]
    Program(String),
}

/// The full ExecStart argv: `launcher` followed by the options, `--` and the service's argv.
pub fn encode(launcher: &str, args: &LaunchArgs) -> Vec<String> {
    // Serializing a struct of strings, integers and a bool cannot fail.
    let json = serde_json::to_string(&args.ruleset).unwrap_or_default();
    let mut out = vec![
        launcher.to_owned(),
        "--service".to_owned(),
        args.service.clone(),
        "--ruleset-json".to_owned(),
        json,
    ];
    if !args.keep_caps.is_empty() {
        out.push("--keep-caps".to_owned());
        out.push(args.keep_caps.join(","));
    }
    out.push("--".to_owned());
    out.extend(args.argv.iter().cloned());
    out
}

/// Parses the arguments after argv[0] of strata-launch.
pub fn decode<I, S>(args: I) -> Result<LaunchArgs, LaunchArgsError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut service: Option<String> = None;
    let mut ruleset: Option<String> = None;
    let mut keep_caps: Option<String> = None;
    loop {
        let Some(arg) = args.next() else {
            return Err(LaunchArgsError::MissingProgram);
        };
        if arg == "--" {
            break;
        }
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        let (slot, opt) = match name.as_str() {
            "--service" => (&mut service, "--service"),
            "--ruleset-json" => (&mut ruleset, "--ruleset-json"),
            "--keep-caps" => (&mut keep_caps, "--keep-caps"),
            _ => return Err(LaunchArgsError::UnknownOption(arg)),
        };
        if slot.is_some() {
            return Err(LaunchArgsError::Duplicate(opt));
        }
        let value = match inline {
            Some(v) => v,
            None => args.next().ok_or(LaunchArgsError::MissingValue(opt))?,
        };
        *slot = Some(value);
    }
    let service = service.ok_or(LaunchArgsError::Missing("--service"))?;
    check_service_name(&service).map_err(|e| LaunchArgsError::ServiceName(e.to_string()))?;
    let ruleset = ruleset.ok_or(LaunchArgsError::Missing("--ruleset-json"))?;
    let ruleset: LandlockRuleset =
        serde_json::from_str(&ruleset).map_err(|e| LaunchArgsError::Ruleset(e.to_string()))?;
    let mut caps = Vec::new();
    for cap in keep_caps.as_deref().unwrap_or("").split(',') {
        if cap.is_empty() {
            continue;
        }
        if !LINUX_CAPABILITIES.contains(&cap) {
            return Err(LaunchArgsError::UnknownCapability(cap.to_owned()));
        }
        caps.push(cap.to_owned());
    }
    let argv: Vec<String> = args.collect();
    let program = argv.first().ok_or(LaunchArgsError::MissingProgram)?;
    check_absolute_path(program).map_err(|e| LaunchArgsError::Program(e.to_string()))?;
    Ok(LaunchArgs {
        service,
        ruleset,
        keep_caps: caps,
        argv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LaunchArgs {
        LaunchArgs {
            service: "web".into(),
            ruleset: LandlockRuleset {
                read: vec!["/srv/www".into()],
                write: vec!["/tmp".into()],
                bind_tcp: vec![80],
                connect_tcp: vec![],
                allow_degraded: false,
            },
            keep_caps: vec!["CAP_NET_BIND_SERVICE".into()],
            argv: vec![
                "/usr/bin/python3".into(),
                "-m".into(),
                "http.server".into(),
                "--".into(),
            ],
        }
    }

    #[test]
    fn encode_then_decode_is_identity() {
        let args = sample();
        let argv = encode("/usr/lib/strata/strata-launch", &args);
        assert_eq!(argv[0], "/usr/lib/strata/strata-launch");
        assert_eq!(
            argv[4],
            r#"{"read":["/srv/www"],"write":["/tmp"],"bind_tcp":[80],"connect_tcp":[],"allow_degraded":false}"#
        );
        assert_eq!(decode(argv[1..].iter().cloned()), Ok(args));
    }

    #[test]
    fn no_caps_leaves_the_option_out() {
        let mut args = sample();
        args.keep_caps.clear();
        let argv = encode("/l", &args);
        assert!(!argv.contains(&"--keep-caps".to_owned()));
        assert_eq!(decode(argv[1..].iter().cloned()), Ok(args));
    }

    #[test]
    fn inline_values_are_accepted() {
        let decoded = decode([
            "--service=web",
            "--ruleset-json={\"read\":[],\"write\":[],\"bind_tcp\":[],\"connect_tcp\":[],\"allow_degraded\":true}",
            "--",
            "/bin/true",
        ])
        .expect("decodes");
        assert!(decoded.ruleset.allow_degraded);
        assert_eq!(decoded.argv, ["/bin/true"]);
    }

    #[test]
    fn malformed_command_lines_are_rejected_precisely() {
        let rs = r#"{"read":[],"write":[],"bind_tcp":[],"connect_tcp":[],"allow_degraded":false}"#;
        let cases: Vec<(Vec<&str>, LaunchArgsError)> = vec![
            (vec![], LaunchArgsError::MissingProgram),
            (
                vec!["--service", "web", "--ruleset-json", rs, "--"],
                LaunchArgsError::MissingProgram,
            ),
            (
                vec!["--sevice", "web"],
                LaunchArgsError::UnknownOption("--sevice".into()),
            ),
            (
                vec!["--service"],
                LaunchArgsError::MissingValue("--service"),
            ),
            (
                vec!["--service", "a", "--service", "b"],
                LaunchArgsError::Duplicate("--service"),
            ),
            (
                vec!["--ruleset-json", rs, "--", "/bin/x"],
                LaunchArgsError::Missing("--service"),
            ),
            (
                vec!["--service", "web", "--", "/bin/x"],
                LaunchArgsError::Missing("--ruleset-json"),
            ),
            (
                vec![
                    "--service",
                    "web",
                    "--ruleset-json",
                    rs,
                    "--keep-caps",
                    "CAP_NOPE",
                    "--",
                    "/bin/x",
                ],
                LaunchArgsError::UnknownCapability("CAP_NOPE".into()),
            ),
            (
                vec!["--service", "web", "--ruleset-json", rs, "--", "bin/x"],
                LaunchArgsError::Program(
                    "`bin/x` is not absolute: expected a path starting with /".into(),
                ),
            ),
        ];
        for (argv, expected) in cases {
            assert_eq!(decode(argv.clone()), Err(expected), "{argv:?}");
        }
        assert!(matches!(
            decode(["--service", "web", "--ruleset-json", "{", "--", "/bin/x"]),
            Err(LaunchArgsError::Ruleset(_))
        ));
        assert!(matches!(
            decode(["--service", "Web", "--ruleset-json", rs, "--", "/bin/x"]),
            Err(LaunchArgsError::ServiceName(_))
        ));
    }
}
