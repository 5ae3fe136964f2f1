# Example configuration of services.strata: three services with dependencies, capabilities,
# budgets and restart policies, plus core-service settings.
#
# Its rendered manifest is kept as a fixture, example-config.expected.toml, and checked both
# ways: strata-ctl/tests/nixos_fixture.rs runs `strata-ctl check` on the fixture, and
# scripts/check-nixos-fixture.sh re-renders this file with the offline evaluator and diffs
# (the flake's check `example-config` does the same with the real NixOS and nixpkgs).
#
# Programs are given by absolute paths outside the store (/bin/sh exists on NixOS too) so
# that the rendering does not depend on store hashes.
{
  services.strata = {
    enable = true;
    nodeId = "node-1";

    services = {
      # serves /srv/www on port 8080 and may ask fs for files
      web = {
        exec = [
          "/bin/sh"
          "-c"
          "exec python3 -m http.server 8080 --directory /srv/www"
        ];
        capabilities = [
          "fs.read:/srv/www"
          "net.bind:tcp:8080"
          "call:fs"
        ];
        after = [ "fs" ];
        requires = [ "cache" ];
        environment.PYTHONUNBUFFERED = "1";
        workingDirectory = "/srv/www";
        budget = {
          memory = "256M";
          cpu = "50%";
          tasks = 64;
        };
        restart = {
          initial = "1s";
          max = "5m";
          resetAfter = "10m";
          quarantine = {
            crashes = 5;
            window = "10m";
          };
        };
      };

      # a scratch cache the web service depends on
      cache = {
        exec = [
          "/bin/sh"
          "-c"
          "while :; do date > /var/cache/strata-example/stamp; sleep 60; done"
        ];
        capabilities = [ "fs.write:/var/cache/strata-example" ];
        ready = "exec";
        budget = {
          memory = "32M";
          io = 50;
        };
      };

      # talks to web over TCP, reports to the registry
      probe = {
        exec = [
          "/bin/sh"
          "-c"
          "while :; do sleep 30; done"
        ];
        capabilities = [
          "net.connect:tcp:8080"
          "call:registry"
        ];
        after = [
          "web"
          "registry"
        ];
        restart.quarantine.crashes = 3;
      };
    };

    core = {
      fs.roots = [ "/srv/www" ];
      identity.tokenTtlDefault = "15m";
      audit.budget.memory = "64M";
    };

    # a manifest key through the free-form escape hatch
    settings.services.probe.restart.initial = "2s";
  };
}
