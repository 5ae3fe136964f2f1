//! `strata-ctl token …` against a real identity service on a socket in a temporary
//! directory: issue, attenuate offline (and a refused widening), inspect, revoke, and the
//! exit statuses of a refused caller (nobody, via setpriv) and of an unreachable service.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use serde_json::Value;
use strata_services::identity::{Identity, IdentityConfig};
use strata_services::ipc::{ServerConfig, bind, serve};

struct TestDir(PathBuf);

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ctl(runtime: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strata-ctl"));
    cmd.args(args)
        .env("STRATA_RUNTIME_DIR", runtime)
        .env_remove("STRATA_TOKEN")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("strata-ctl runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("strata-ctl output")
}

fn json_of(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "strata-ctl failed: {:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_commands_end_to_end() {
    // /proc/self belongs to the effective uid.
    let euid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("proc"));
    assert_eq!(
        euid, 0,
        "this test must run as root: it also runs strata-ctl as nobody with setpriv"
    );
    let dir =
        TestDir(std::env::temp_dir().join(format!("strata-ctl-token-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    let runtime = dir.0.join("run");
    std::fs::create_dir_all(&runtime).expect("mkdir");
    for p in [&dir.0, &runtime] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let identity = Arc::new(
        Identity::open(IdentityConfig::new(dir.0.join("state"), &runtime, "node-1"))
            .expect("identity"),
    );
    let listener = bind(&identity.socket_path()).expect("bind");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, identity, ServerConfig::default(), async {
        let _ = stopped.await;
    }));

    let rt = runtime.clone();
    let results = tokio::task::spawn_blocking(move || {
        let issued = json_of(&ctl(
            &rt,
            &[
                "token",
                "issue",
                "--service",
                "fs",
                "--action",
                "read,list",
                "--path-prefix",
                "/srv",
                "--ttl",
                "600",
            ],
            None,
        ));
        let token = issued["token"].as_str().expect("token").to_owned();
        let cap_id = issued["cap_id"].as_str().expect("cap_id").to_owned();

        // Offline attenuation, token read from stdin.
        let narrowed = json_of(&ctl(
            &rt,
            &[
                "token",
                "attenuate",
                "-",
                "--action",
                "read",
                "--path-prefix",
                "/srv/www",
            ],
            Some(&token),
        ));
        assert_eq!(narrowed["cap_id"].as_str(), Some(cap_id.as_str()));
        let child = narrowed["token"].as_str().expect("token").to_owned();
        let info = json_of(&ctl(&rt, &["token", "inspect", &child], None));
        assert_eq!(info["verified"], Value::Bool(true));
        assert_eq!(info["rights"], serde_json::json!(["read"]));
        assert_eq!(info["path_prefix"], serde_json::json!("/srv/www"));
        assert_eq!(info["blocks"], serde_json::json!(2));

        // Widening is refused offline with exit status 1.
        let widen = ctl(
            &rt,
            &["token", "attenuate", &token, "--action", "write"],
            None,
        );
        assert_eq!(widen.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&widen.stderr).contains("would widen"));

        // Revoke by token; the derived token is reported revoked by identity.
        let r = json_of(&ctl(&rt, &["token", "revoke", "-"], Some(&token)));
        assert_eq!(r["status"], serde_json::json!("revoked"));
        let online = json_of(&ctl(&rt, &["token", "inspect", "--online", &child], None));
        assert_eq!(online["revoked"], Value::Bool(true));
        assert_eq!(online["valid"], Value::Bool(false));

        // An unprivileged caller is refused (exit 1, PERMISSION_DENIED); positive control above.
        let nobody = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_strata-ctl"))
            .args(["token", "issue", "--service", "fs", "--action", "read"])
            .env("STRATA_RUNTIME_DIR", &rt)
            .env_remove("STRATA_TOKEN")
            .output()
            .expect("setpriv runs");
        assert_eq!(
            nobody.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&nobody.stderr)
        );
        assert!(String::from_utf8_lossy(&nobody.stderr).contains("PERMISSION_DENIED"));

        // No identity service: exit 3.
        let missing = rt.join("nowhere");
        let out = ctl(
            &missing,
            &["token", "issue", "--service", "fs", "--action", "read"],
            None,
        );
        assert_eq!(out.status.code(), Some(3));
    });
    results.await.expect("ctl checks");
    let _ = stop.send(());
}
