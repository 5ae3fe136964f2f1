{
  description = "Strata: a capability-first service runtime for Linux and NixOS";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      # Strata drives systemd and Landlock: Linux only.
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];

      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      # `pkgs.strata` for those who prefer an overlay to the flake's packages.
      overlays.default = final: _prev: {
        strata = final.callPackage ./nixos-module/package.nix { };
      };

      packages = forAllSystems (pkgs: rec {
        strata = pkgs.callPackage ./nixos-module/package.nix { };
        default = strata;
      });

      # The module itself takes the package from `pkgs.strata`; imported from the flake, it
      # defaults to the flake's own build, so no overlay is needed.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nixos-module ];
          config.services.strata.package =
            lib.mkDefault
              self.packages.${pkgs.stdenv.hostPlatform.system}.strata;
        };
      nixosModules.strata = self.nixosModules.default;

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${pkgs.stdenv.hostPlatform.system}.strata ];
          packages = with pkgs; [
            cargo
            rustc
            clippy
            rustfmt
            rust-analyzer
            nixfmt-rfc-style
            # what the integration tests use besides cargo (scripts/test.sh)
            python3
            util-linux
            dbus
          ];
          RUST_SRC_PATH = "${pkgs.rustPlatform.rustLibSrc}";
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt-rfc-style);

      checks = forAllSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
        in
        {
          package = self.packages.${system}.strata;

          # Boots a NixOS machine with two declared services and checks them from the
          # operator's side: systemctl, journalctl, strata-ctl, a killed service coming back,
          # and a supervisor restart that does not restart the services.
          vm = pkgs.testers.runNixOSTest {
            imports = [ ./nixos-module/tests/vm-test.nix ];
            defaults.imports = [ self.nixosModules.default ];
          };

          # The module's rendering of its example configuration with the real NixOS and the
          # real pkgs.formats.toml: it must pass the build-time `strata-ctl check` (as every
          # `nixos-rebuild` does) and mean the same as the fixture that CI checks without Nix.
          example-config =
            let
              machine = lib.nixosSystem {
                modules = [
                  self.nixosModules.default
                  ./nixos-module/tests/example-config.nix
                  {
                    # enough of a machine to evaluate; never booted
                    nixpkgs.hostPlatform = system;
                    boot.loader.grub.enable = false;
                    fileSystems."/".device = "/dev/null";
                    system.stateVersion = "25.05";
                  }
                ];
              };
              rendered = machine.config.environment.etc."strata/strata.toml".source;
            in
            pkgs.runCommand "strata-example-config" { nativeBuildInputs = [ pkgs.python3 ]; } ''
              python3 - ${rendered} ${./nixos-module/tests/example-config.expected.toml} <<'EOF'
              import sys, tomllib
              with open(sys.argv[1], "rb") as f:
                  rendered = tomllib.load(f)
              with open(sys.argv[2], "rb") as f:
                  expected = tomllib.load(f)
              if rendered != expected:
                  sys.exit(f"rendered manifest differs from the fixture:\n{rendered}\n!=\n{expected}")
              EOF
              touch "$out"
            '';
        }
      );
    };
}
