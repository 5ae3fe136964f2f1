# NixOS VM test of services.strata (flake check `vm`; the flake imports the module into every
# node). A machine with two declared services; the test looks at them the way an operator
# would: systemctl, journalctl and strata-ctl.
{
  name = "strata";

  nodes.machine =
    { pkgs, ... }:
    {
      services.strata = {
        enable = true;
        nodeId = "vm";
        services = {
          # prints a line every second, forever
          ticker = {
            exec = [
              "${pkgs.bash}/bin/bash"
              "-c"
              "while :; do echo ticker-alive; ${pkgs.coreutils}/bin/sleep 1; done"
            ];
            budget = {
              memory = "64M";
              tasks = 8;
            };
            restart = {
              initial = "1s";
              max = "5s";
            };
          };
          # starts after ticker, says hello once and then idles
          greeter = {
            exec = [
              "${pkgs.python3}/bin/python3"
              "-u"
              "-c"
              "import time; print('greeter-hello', flush=True); time.sleep(1000000)"
            ];
            after = [ "ticker" ];
            budget.memory = "128M";
          };
        };
      };

      users.users.operator = {
        isNormalUser = true;
        extraGroups = [ "strata-admin" ];
      };
      users.users.visitor.isNormalUser = true;
    };

  testScript = ''
    import re

    # su may reset PATH: name the system profile's binary
    ctl = "/run/current-system/sw/bin/strata-ctl"

    def main_pid(unit):
        return int(machine.succeed(f"systemctl show -P MainPID {unit}").strip())

    machine.wait_for_unit("strata-supervisor.service")

    with subtest("both declared services run as their own units"):
        machine.wait_for_unit("strata-ticker.service")
        machine.wait_for_unit("strata-greeter.service")
        machine.succeed("systemctl is-active strata-ticker.service strata-greeter.service")
        # they live in strata.slice, not in the supervisor's cgroup
        machine.succeed("systemctl show -P Slice strata-ticker.service | grep -x strata.slice")

    with subtest("strata-ctl status lists them"):
        status = machine.succeed("strata-ctl status")
        print(status)
        for name in ("ticker", "greeter"):
            assert re.search(rf"\b{name}\b", status), f"{name} missing from strata-ctl status:\n{status}"
        # reading is open to everyone
        machine.succeed(f"su visitor -c '{ctl} status'")

    with subtest("journalctl -u shows the services' output"):
        machine.wait_until_succeeds(
            "journalctl -u strata-ticker.service --no-pager | grep -q ticker-alive", timeout=60
        )
        machine.wait_until_succeeds(
            "journalctl -u strata-greeter.service --no-pager | grep -q greeter-hello", timeout=60
        )

    with subtest("the rendered manifest is the one strata-ctl accepts"):
        machine.succeed("strata-ctl check /etc/strata/strata.toml")

    with subtest("a killed service comes back"):
        before = main_pid("strata-ticker.service")
        assert before != 0
        machine.succeed("systemctl kill -s KILL strata-ticker.service")
        machine.wait_until_succeeds(
            f"pid=$(systemctl show -P MainPID strata-ticker.service); "
            f"[ \"$pid\" -ne 0 ] && [ \"$pid\" -ne {before} ] && "
            "systemctl is-active strata-ticker.service",
            timeout=120,
        )

    with subtest("mutating calls: refused for strangers, allowed for strata-admin"):
        machine.fail(f"su visitor -c '{ctl} restart greeter'")
        machine.succeed(f"su operator -c '{ctl} restart greeter'")
        machine.wait_for_unit("strata-greeter.service")

    with subtest("restarting the supervisor adopts the running services"):
        ticker = main_pid("strata-ticker.service")
        greeter = main_pid("strata-greeter.service")
        machine.succeed("systemctl restart strata-supervisor.service")
        machine.wait_for_unit("strata-supervisor.service")
        status = machine.succeed("strata-ctl status")
        assert "ticker" in status and "greeter" in status, status
        assert main_pid("strata-ticker.service") == ticker, "ticker was restarted"
        assert main_pid("strata-greeter.service") == greeter, "greeter was restarted"

    with subtest("the supervisor's own sandbox"):
        print(machine.succeed("systemd-analyze security strata-supervisor.service --no-pager"))
  '';
}
