# The Strata package: every binary of the Cargo workspace, the D-Bus policy of the supervisor
# and the operator documentation. Built from Cargo.lock alone (no git dependencies), so
# `cargoLock.lockFile` needs no output hashes.
{
  lib,
  rustPlatform,
}:

let
  root = ../.;
  fs = lib.fileset;
in
rustPlatform.buildRustPackage {
  pname = "strata";
  version = (lib.importTOML ../Cargo.toml).workspace.package.version;

  # Everything but the Nix files, the examples and the CI scripts: editing the NixOS module or
  # the flake does not rebuild the binaries, and a new workspace member needs no change here.
  src = fs.toSource {
    inherit root;
    fileset = fs.difference root (
      fs.unions (
        map fs.maybeMissing [
          ../flake.nix
          ../flake.lock
          ../nixos-module
          ../examples
          ../scripts
          ../.ci
          ../target
          ../.git
        ]
      )
    );
  };

  cargoLock.lockFile = ../Cargo.lock;

  # The tests need what a build sandbox does not have: root, Landlock, cgroups and a booted
  # systemd (strata-testkit boots one in a PID+mount namespace, and a privileged test fails
  # rather than skips when it cannot). They run in CI (scripts/test.sh) and, against the
  # packaged binaries, in the flake's NixOS VM test (checks.<system>.vm).
  doCheck = false;

  postInstall = ''
    # The module and the docs rely on these; fail the build, not the boot, if one is missing.
    for bin in strata-supervisor strata-ctl strata-launch \
               strata-identity strata-fs strata-registry strata-audit; do
      if [ ! -x "$out/bin/$bin" ]; then
        echo "strata: the workspace did not produce bin/$bin" >&2
        exit 1
      fi
    done

    # test payloads and the test harness's namespace booter are not part of an install
    rm -f "$out/bin/strata-probe" "$out/bin/strata-testns"

    install -Dm0644 strata-systemd/dbus/org.strata.Supervisor1.conf \
      "$out/share/dbus-1/system.d/org.strata.Supervisor1.conf"

    install -Dm0644 -t "$out/share/doc/strata" docs/*.md
  '';

  meta = {
    description = "Capability-first service runtime: declared services as sandboxed systemd units";
    longDescription = ''
      strata-supervisor turns a declared service graph into sandboxed transient systemd
      units, derives each unit's sandbox (cgroup budgets, systemd hardening, Landlock) from
      the capabilities the service declares, and mediates every request between services
      with capability tokens. strata-ctl is its command-line client.
    '';
    license = lib.licenses.asl20;
    mainProgram = "strata-ctl";
    platforms = lib.platforms.linux;
  };
}
