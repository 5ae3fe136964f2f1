//! Maps systemd's view of a unit (ActiveState, SubState, Result, ExecMainCode/Status) into
//! Strata's [`UnitPhase`] and [`ExitReason`], and decodes the property dictionaries systemd
//! sends in `PropertiesChanged` and `GetAll`.

use std::collections::HashMap;

use strata_core::observed::{ExitReason, UnitObservation, UnitPhase};
use zbus::zvariant::{OwnedValue, Value};

use super::transient::SPEC_HASH_ENV;

/// `si_code` values systemd reports in ExecMainCode.
pub const CLD_EXITED: i32 = 1;
pub const CLD_KILLED: i32 = 2;
pub const CLD_DUMPED: i32 = 3;

/// Everything about one unit that the observation is computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawUnitState {
    pub active_state: String,
    pub sub_state: String,
    /// Id of the unit's pending job (0 = none).
    pub job_id: u32,
    /// Type of that job (`start`, `stop`, ...; empty when unknown or none).
    pub job_type: String,
    pub result: String,
    pub exec_main_code: i32,
    pub exec_main_status: i32,
    pub main_pid: u32,
    /// ExecMainStartTimestampMonotonic: when the current (or last) main process started.
    pub exec_main_start: u64,
    pub spec_hash: Option<String>,
    /// Set when the cgroup v1 memory controller attributed the kill to the OOM killer.
    pub oom_killed: bool,
}

impl RawUnitState {
    /// Applies the `org.freedesktop.systemd1.Unit` properties present in `props`.
    pub fn apply_unit(&mut self, props: &HashMap<String, OwnedValue>) {
        if let Some(s) = str_prop(props, "ActiveState") {
            self.active_state = s.to_owned();
        }
        if let Some(s) = str_prop(props, "SubState") {
            self.sub_state = s.to_owned();
        }
        if let Some(Value::Structure(job)) = props.get("Job").map(|v| &**v) {
            if let Some(Value::U32(id)) = job.fields().first() {
                if *id != self.job_id {
                    // A different job: its type is looked up by the caller.
                    self.job_type.clear();
                }
                self.job_id = *id;
            }
        }
    }

    /// Applies the `org.freedesktop.systemd1.Service` properties present in `props`.
    pub fn apply_service(&mut self, props: &HashMap<String, OwnedValue>) {
        if let Some(s) = str_prop(props, "Result") {
            self.result = s.to_owned();
        }
        if let Some(Value::U32(pid)) = props.get("MainPID").map(|v| &**v) {
            self.main_pid = *pid;
        }
        if let Some(Value::I32(c)) = props.get("ExecMainCode").map(|v| &**v) {
            self.exec_main_code = *c;
        }
        if let Some(Value::I32(s)) = props.get("ExecMainStatus").map(|v| &**v) {
            self.exec_main_status = *s;
        }
        if let Some(Value::U64(t)) = props.get("ExecMainStartTimestampMonotonic").map(|v| &**v) {
            self.exec_main_start = *t;
        }
        if let Some(env) = strings_prop(props, "Environment") {
            self.spec_hash = spec_hash_from_env(&env);
        }
    }

    /// The observation of this state for `unit`.
    pub fn observation(&self, unit: &str) -> UnitObservation {
        UnitObservation {
            unit: unit.to_owned(),
            phase: phase(self),
            main_pid: self.main_pid,
            spec_hash: self.spec_hash.clone(),
            run: self.exec_main_start,
        }
    }

    /// True when the unit ended by SIGKILL, the signature of a cgroup v1 OOM kill.
    pub fn killed_by_sigkill(&self) -> bool {
        self.active_state == "failed"
            && matches!(self.result.as_str(), "signal" | "core-dump")
            && self.exec_main_status == libc::SIGKILL
    }
}

fn str_prop<'a>(props: &'a HashMap<String, OwnedValue>, name: &str) -> Option<&'a str> {
    match props.get(name).map(|v| &**v) {
        Some(Value::Str(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// Reads an `as` property.
pub fn strings_prop(props: &HashMap<String, OwnedValue>, name: &str) -> Option<Vec<String>> {
    match props.get(name).map(|v| &**v) {
        Some(Value::Array(arr)) => Some(
            arr.iter()
                .filter_map(|v| match v {
                    Value::Str(s) => Some(s.as_str().to_owned()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// The spec hash recorded in a unit's environment (the last assignment wins, as in systemd).
pub fn spec_hash_from_env(env: &[String]) -> Option<String> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(SPEC_HASH_ENV)?.strip_prefix('='))
        .map(str::to_owned)
}

/// The phase of a unit in Strata's terms.
pub fn phase(s: &RawUnitState) -> UnitPhase {
    match s.active_state.as_str() {
        "active" | "reloading" | "refreshing" => UnitPhase::Running,
        "activating" => UnitPhase::Starting,
        "deactivating" => UnitPhase::Stopping,
        "inactive" | "failed" if s.job_id != 0 && is_start_job(&s.job_type) => UnitPhase::Starting,
        "inactive" => UnitPhase::Exited,
        "failed" => UnitPhase::Failed(exit_reason(s)),
        // Not a state systemd 252 has for services ("maintenance" is for mounts).
        other => UnitPhase::Failed(ExitReason::Other(format!("unknown state {other:?}"))),
    }
}

/// Job types that bring a unit up.
fn is_start_job(job_type: &str) -> bool {
    matches!(
        job_type,
        "start" | "restart" | "try-restart" | "reload-or-start" | "verify-active"
    )
}

/// Why a failed unit failed.
pub fn exit_reason(s: &RawUnitState) -> ExitReason {
    match s.result.as_str() {
        "oom-kill" => ExitReason::OomKill,
        "signal" | "core-dump" if s.oom_killed && s.exec_main_status == libc::SIGKILL => {
            ExitReason::OomKill
        }
        "signal" | "core-dump" => ExitReason::Signal(s.exec_main_status),
        "exit-code" => match exec_setup_failure(s.exec_main_code, s.exec_main_status) {
            Some(step) => {
                ExitReason::StartFailed(format!("exit-code: status {}/{step}", s.exec_main_status))
            }
            None => ExitReason::ExitCode(s.exec_main_status),
        },
        "resources" | "timeout" | "start-limit-hit" | "protocol" | "exec-condition" => {
            ExitReason::StartFailed(s.result.clone())
        }
        other => ExitReason::Other(other.to_owned()),
    }
}

/// systemd's own exit statuses (200..=243) mean the process never reached the service's code:
/// a sandbox or exec setup step failed. Returns the step's name.
fn exec_setup_failure(code: i32, status: i32) -> Option<&'static str> {
    if code != CLD_EXITED {
        return None;
    }
    let name = match status {
        200 => "CHDIR",
        201 => "NICE",
        202 => "FDS",
        203 => "EXEC",
        204 => "MEMORY",
        205 => "LIMITS",
        206 => "OOM_ADJUST",
        207 => "SIGNAL_MASK",
        208 => "STDIN",
        209 => "STDOUT",
        210 => "CHROOT",
        211 => "IOPRIO",
        212 => "TIMERSLACK",
        213 => "SECUREBITS",
        214 => "SETSCHEDULER",
        215 => "CPUAFFINITY",
        216 => "GROUP",
        217 => "USER",
        218 => "CAPABILITIES",
        219 => "CGROUP",
        220 => "SETSID",
        221 => "CONFIRM",
        222 => "STDERR",
        224 => "PAM",
        225 => "NETWORK",
        226 => "NAMESPACE",
        227 => "NO_NEW_PRIVILEGES",
        228 => "SECCOMP",
        229 => "SELINUX_CONTEXT",
        230 => "PERSONALITY",
        231 => "APPARMOR_PROFILE",
        232 => "ADDRESS_FAMILIES",
        233 => "RUNTIME_DIRECTORY",
        235 => "CHOWN",
        236 => "SMACK_PROCESS_LABEL",
        237 => "KEYRING",
        238 => "STATE_DIRECTORY",
        239 => "CACHE_DIRECTORY",
        240 => "LOGS_DIRECTORY",
        241 => "CONFIGURATION_DIRECTORY",
        242 => "NUMA_POLICY",
        243 => "CREDENTIALS",
        _ => return None,
    };
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(active: &str, result: &str, code: i32, status: i32) -> RawUnitState {
        RawUnitState {
            active_state: active.into(),
            sub_state: String::new(),
            result: result.into(),
            exec_main_code: code,
            exec_main_status: status,
            ..Default::default()
        }
    }

    #[test]
    fn phases() {
        assert_eq!(phase(&st("active", "success", 0, 0)), UnitPhase::Running);
        assert_eq!(
            phase(&st("activating", "success", 0, 0)),
            UnitPhase::Starting
        );
        assert_eq!(
            phase(&st("deactivating", "success", 0, 0)),
            UnitPhase::Stopping
        );
        assert_eq!(phase(&st("inactive", "success", 1, 0)), UnitPhase::Exited);
        let mut queued = st("inactive", "success", 0, 0);
        queued.job_id = 7;
        queued.job_type = "start".into();
        assert_eq!(phase(&queued), UnitPhase::Starting);
        // A stop job that has not been removed yet leaves an inactive unit Exited.
        queued.job_type = "stop".into();
        assert_eq!(phase(&queued), UnitPhase::Exited);
        queued.job_type.clear();
        assert_eq!(phase(&queued), UnitPhase::Exited);
    }

    #[test]
    fn failures() {
        assert_eq!(
            phase(&st("failed", "signal", CLD_KILLED, 9)),
            UnitPhase::Failed(ExitReason::Signal(9))
        );
        assert_eq!(
            phase(&st("failed", "exit-code", CLD_EXITED, 3)),
            UnitPhase::Failed(ExitReason::ExitCode(3))
        );
        assert_eq!(
            phase(&st("failed", "exit-code", CLD_EXITED, 203)),
            UnitPhase::Failed(ExitReason::StartFailed("exit-code: status 203/EXEC".into()))
        );
        assert_eq!(
            phase(&st("failed", "oom-kill", CLD_KILLED, 9)),
            UnitPhase::Failed(ExitReason::OomKill)
        );
        let mut oom = st("failed", "signal", CLD_KILLED, 9);
        oom.oom_killed = true;
        assert_eq!(phase(&oom), UnitPhase::Failed(ExitReason::OomKill));
        // The OOM mark only re-labels a SIGKILL, never another signal.
        let mut term = st("failed", "signal", CLD_KILLED, 15);
        term.oom_killed = true;
        assert_eq!(phase(&term), UnitPhase::Failed(ExitReason::Signal(15)));
        assert_eq!(
            phase(&st("failed", "timeout", 0, 0)),
            UnitPhase::Failed(ExitReason::StartFailed("timeout".into()))
        );
        assert_eq!(
            phase(&st("failed", "watchdog", CLD_KILLED, 6)),
            UnitPhase::Failed(ExitReason::Other("watchdog".into()))
        );
    }

    #[test]
    fn spec_hash_is_read_from_the_environment() {
        let env = vec![
            "A=1".to_string(),
            "STRATA_SPEC_HASH=old".to_string(),
            "STRATA_SPEC_HASH=abc".to_string(),
        ];
        assert_eq!(spec_hash_from_env(&env).as_deref(), Some("abc"));
        assert_eq!(
            spec_hash_from_env(&["STRATA_SPEC_HASHX=1".to_string()]),
            None
        );
    }
}
