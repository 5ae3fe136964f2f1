#!/usr/bin/env bash
# Runs Strata's main job: builds the workspace, starts a systemd, runs strata-supervisor with an
# example graph (default examples/demo.toml), waits until it has converged and prints
# `strata-ctl status`, then tells how to look at the units and how to stop everything.
#
#   scripts/demo.sh [MANIFEST]          private systemd in a namespace (the default; required
#                                       when PID 1 is not systemd)
#   scripts/demo.sh --host [MANIFEST]   the host's systemd (PID 1 must be systemd; installs the
#                                       D-Bus policy and the binaries under /usr/local)
#   scripts/demo.sh --stop              stops what the last run started
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STATE=/var/lib/strata-demo
mkdir -p "$STATE"

die() { echo "demo: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root: the supervisor drives systemd and the demo boots a private one"

mode=namespace
if [ "${1-}" = --stop ]; then
    # The supervisor first (SIGTERM to its session: nsenter and the supervisor it runs): a
    # supervisor left to die with the namespace would stay a zombie of nsenter, and the
    # namespace's PID 1 waits for every one of its processes to be reaped.
    if [ -f "$STATE/supervisor.pgid" ]; then
        pgid=$(cat "$STATE/supervisor.pgid")
        kill -TERM -- "-$pgid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 -- "-$pgid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pgid" 2>/dev/null || true
        rm -f "$STATE/supervisor.pgid"
    fi
    if [ -f "$STATE/testns.pid" ]; then
        pid=$(cat "$STATE/testns.pid")
        if "$ROOT/target/debug/strata-testns" stop "$pid"; then
            echo "demo: stopped the private systemd $pid (and every unit in it)"
        else
            echo "demo: the private systemd $pid did not stop cleanly (see above)" >&2
            stop_failed=1
        fi
        rm -f "$STATE/testns.pid"
    fi
    if [ -f "$STATE/host-supervisor.pid" ]; then
        kill "$(cat "$STATE/host-supervisor.pid")" 2>/dev/null || true
        rm -f "$STATE/host-supervisor.pid"
        systemctl stop strata.slice || true
        echo "demo: stopped the supervisor and strata.slice on the host"
    fi
    exit "${stop_failed:-0}"
fi
if [ "${1-}" = --host ]; then mode=host; shift; fi
MANIFEST=${1:-examples/demo.toml}
[ -f "$MANIFEST" ] || die "no manifest $MANIFEST"

echo "==> building (cargo build --workspace --bins)"
cargo build --workspace --bins --locked --quiet
BIN=$ROOT/target/debug

echo "==> checking $MANIFEST"
"$BIN/strata-ctl" check "$MANIFEST"

if [ "$mode" = host ]; then
    [ "$(cat /proc/1/comm)" = systemd ] || die "--host needs PID 1 to be systemd; run without --host for a private one"
    install -m 0644 strata-systemd/dbus/org.strata.Supervisor1.conf /etc/dbus-1/system.d/
    systemctl reload dbus || true
    install -d /usr/local/lib/strata
    install -m 0755 "$BIN"/strata-{supervisor,launch,identity,fs,registry,audit,ctl} /usr/local/lib/strata/
    sed "s|^\[node\]|[node]\nbinaries_dir = \"/usr/local/lib/strata\"|" "$MANIFEST" >"$STATE/strata.toml"
    /usr/local/lib/strata/strata-supervisor --config "$STATE/strata.toml" >"$STATE/supervisor.log" 2>&1 &
    echo $! >"$STATE/host-supervisor.pid"
    ctl=(/usr/local/lib/strata/strata-ctl)
    inside=()
    sysctl_hint="systemctl status 'strata-*'"
    journal_hint="journalctl -u strata-web.service"
else
    if [ -f "$STATE/testns.pid" ] && kill -0 "$(cat "$STATE/testns.pid")" 2>/dev/null; then
        die "a demo is already running (private systemd $(cat "$STATE/testns.pid")); stop it with: scripts/demo.sh --stop"
    fi
    echo "==> booting a private systemd (PID 1 here is $(cat /proc/1/comm))"
    out=$STATE/testns.out
    setsid "$BIN/strata-testns" boot \
        --bind "$ROOT/strata-systemd/dbus/org.strata.Supervisor1.conf:/run/strata-test/dbus-policy/org.strata.Supervisor1.conf" \
        --bind "$BIN:/run/strata-test/bin" \
        </dev/null >"$out" 2>"$STATE/testns.err" &
    for _ in $(seq 100); do grep -q '^DBUS_SYSTEM_BUS_ADDRESS=' "$out" 2>/dev/null && break; sleep 0.2; done
    grep -q '^DBUS_SYSTEM_BUS_ADDRESS=' "$out" || { cat "$STATE/testns.err" >&2; die "the private systemd did not boot"; }
    pid=$(sed -n 's/^STRATA_TESTNS_PID=//p' "$out")
    echo "$pid" >"$STATE/testns.pid"
    inside=(nsenter -t "$pid" -m -p -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin)
    mkdir -p "/proc/$pid/root/run/strata-demo"
    # Binaries from the build; durable state in the namespace's private /var/lib/strata-test
    # (the host's /var/lib/strata is never touched).
    sed "s|^\[node\]|[node]\nbinaries_dir = \"/run/strata-test/bin\"\nstate_dir = \"/var/lib/strata-test/state\"|" \
        "$MANIFEST" >"/proc/$pid/root/run/strata-demo/strata.toml"
    # The supervisor runs inside the namespace, like a unit of that systemd would.
    setsid "${inside[@]}" /run/strata-test/bin/strata-supervisor --config /run/strata-demo/strata.toml \
        </dev/null >"$STATE/supervisor.log" 2>&1 &
    echo $! >"$STATE/supervisor.pgid" # setsid made it a session (and process group) leader
    ctl=("${inside[@]}" /run/strata-test/bin/strata-ctl)
    sysctl_hint="nsenter -t $pid -m -p systemctl status 'strata-*'"
    journal_hint="journalctl -D /proc/$pid/root/run/log/journal -u strata-web.service"
fi

echo "==> waiting for the graph to converge"
for _ in $(seq 60); do
    if st=$("${ctl[@]}" status --json 2>/dev/null) && [ -n "$st" ] &&
        ! grep -qE '"state": "(declared|waiting|starting|backing-off)"' <<<"$st"; then
        break
    fi
    sleep 0.5
done
echo
"${ctl[@]}" status || { echo "supervisor log:" >&2; cat "$STATE/supervisor.log" >&2; die "the supervisor is not answering"; }
cat <<EOF

Strata is running ($mode mode). Look around:
  $sysctl_hint
  $journal_hint
  ${ctl[*]} events
  ${ctl[*]} logs web
Supervisor log: $STATE/supervisor.log
Stop everything: scripts/demo.sh --stop
EOF
