#!/usr/bin/env bash
# Installs what Strata's tests need on Debian: systemd and dbus (already present on the CI
# machines), util-linux for unshare/nsenter, python3 for test payloads, and nix-bin for
# `nix-instantiate --parse` of the NixOS module. Idempotent; only installs what is missing.
set -euo pipefail
need=()
command -v unshare >/dev/null || need+=(util-linux)
command -v dbus-daemon >/dev/null || need+=(dbus)
[ -x /lib/systemd/systemd ] || need+=(systemd)
command -v python3 >/dev/null || need+=(python3)
command -v nix-instantiate >/dev/null || need+=(nix-bin)
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
