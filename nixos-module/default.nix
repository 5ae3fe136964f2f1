# NixOS module for Strata: `services.strata`.
#
# Renders the declared service graph into /etc/strata/strata.toml (checked at build time with
# `strata-ctl check`, so a bad graph fails `nixos-rebuild`, not the boot) and runs
# `strata-supervisor`, which turns every declared service into a sandboxed transient unit
# `strata-<name>.service` in `strata.slice`.
{
  config,
  lib,
  pkgs,
  ...
}:

let
  inherit (lib)
    any
    attrNames
    concatMap
    concatStringsSep
    elem
    filter
    filterAttrs
    hasPrefix
    hasSuffix
    isAttrs
    isDerivation
    literalExpression
    mapAttrs
    mkEnableOption
    mkIf
    mkOption
    mkPackageOption
    optional
    optionalAttrs
    optionals
    removePrefix
    types
    ;

  cfg = config.services.strata;

  format = pkgs.formats.toml { };

  # The core services are part of every graph; declared services may not take their names.
  coreServiceNames = [
    "identity"
    "registry"
    "fs"
    "audit"
  ];

  # The D-Bus policy shipped in the package grants the mutating methods to this group.
  defaultAdminGroup = "strata-admin";

  configPath = "/etc/strata/strata.toml";

  # Removes nulls and, after that, empty tables and lists, so that an option left unset falls
  # back to the manifest's own default instead of being spelled out (and possibly disagreeing).
  isEmpty = v: v == [ ] || (isAttrs v && !isDerivation v && v == { });
  clean =
    value:
    if isAttrs value && !isDerivation value then
      filterAttrs (_: v: !isEmpty v) (mapAttrs (_: clean) (filterAttrs (_: v: v != null) value))
    else if builtins.isList value then
      map clean (filter (v: v != null) value)
    else
      value;

  renderBudget = budget: {
    inherit (budget)
      memory
      cpu
      tasks
      io
      ;
  };

  renderRestart = restart: {
    inherit (restart) initial max;
    reset_after = restart.resetAfter;
    quarantine = {
      inherit (restart.quarantine) crashes window;
    };
  };

  # One `[services.<name>]` table of the manifest, in the manifest's own key names.
  renderService = svc: {
    inherit (svc)
      exec
      capabilities
      after
      requires
      environment
      ready
      ;
    working_directory = svc.workingDirectory;
    allow_degraded_sandbox = svc.allowDegradedSandbox;
    budget = renderBudget svc.budget;
    restart = renderRestart svc.restart;
  };

  # The settings every `[core.<name>]` table shares.
  renderCoreCommon = core: {
    inherit (core) enable;
    allow_degraded_sandbox = core.allowDegradedSandbox;
    budget = renderBudget core.budget;
    restart = renderRestart core.restart;
  };

  # A `[core.<name>]` table: the typed options renamed, free-form keys passed through.
  renderCoreService =
    svc: typed: rendered:
    builtins.removeAttrs svc (
      [
        "enable"
        "allowDegradedSandbox"
        "budget"
        "restart"
      ]
      ++ typed
    )
    // renderCoreCommon svc
    // rendered;

  renderCore =
    core:
    builtins.removeAttrs core coreServiceNames
    // {
      identity =
        renderCoreService core.identity
          [
            "tokenTtlDefault"
            "tokenTtlMax"
          ]
          {
            token_ttl_default = core.identity.tokenTtlDefault;
            token_ttl_max = core.identity.tokenTtlMax;
          };
      registry = renderCoreService core.registry [ ] { };
      fs = renderCoreService core.fs [ ] { };
      audit = renderCoreService core.audit [ ] { };
    };

  budgetOption = mkOption {
    default = { };
    description = "Resource budget: the cgroup limits of the unit. Null means no limit.";
    type = types.submodule {
      options = {
        memory = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "256M";
          description = "Memory limit (`MemoryMax=`): bytes with an optional binary suffix K, M, G or T.";
        };
        cpu = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "50%";
          description = ''CPU quota (`CPUQuota=`): a percentage of one CPU ("50%") or a number of CPUs ("1.5").'';
        };
        tasks = mkOption {
          type = types.nullOr (types.ints.between 1 4194304);
          default = null;
          example = 64;
          description = "Maximum number of tasks (`TasksMax=`).";
        };
        io = mkOption {
          type = types.nullOr (types.ints.between 1 10000);
          default = null;
          example = 100;
          description = "I/O weight (`IOWeight=`), 1 to 10000.";
        };
      };
    };
  };

  restartOption = mkOption {
    default = { };
    description = ''
      Restart policy. Units run with `Restart=no`: the supervisor restarts a failed service
      with exponential backoff and full jitter, and quarantines it (it stays failed until
      `strata-ctl release NAME`) after too many crashes. Null keeps the manifest's default,
      given in each option's description. Durations are written like "250ms", "5m", "1h30m".
    '';
    type = types.submodule {
      options = {
        initial = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "2s";
          description = "First backoff delay (manifest default 1s).";
        };
        max = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "1m";
          description = "Largest backoff delay (manifest default 5m).";
        };
        resetAfter = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "30m";
          description = ''
            Healthy running time after which the backoff starts again from
            {option}`initial` (`reset_after`; manifest default 10m).
          '';
        };
        quarantine = mkOption {
          default = { };
          description = "Quarantine after {option}`crashes` failures within {option}`window`.";
          type = types.submodule {
            options = {
              crashes = mkOption {
                type = types.nullOr (types.ints.between 1 1000);
                default = null;
                example = 3;
                description = "Number of failures that quarantines the service (manifest default 5).";
              };
              window = mkOption {
                type = types.nullOr types.str;
                default = null;
                example = "1m";
                description = "Time window in which failures are counted (manifest default 10m).";
              };
            };
          };
        };
      };
    };
  };

  degradedOption = mkOption {
    type = types.nullOr types.bool;
    default = null;
    description = ''
      Override of {option}`services.strata.allowDegradedSandbox` for this service
      (`allow_degraded_sandbox`). Null follows the node's setting.
    '';
  };

  serviceModule =
    { name, ... }:
    {
      options = {
        exec = mkOption {
          type = types.nonEmptyListOf types.str;
          example = literalExpression ''[ "''${pkgs.python3}/bin/python3" "-m" "http.server" "8080" ]'';
          description = ''
            Program and arguments of the service. The first element must be an absolute path:
            Strata does not search {env}`PATH`. The unit is named `strata-${name}.service`.
          '';
        };

        capabilities = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [
            "fs.read:/srv/www"
            "net.bind:tcp:8080"
            "call:fs"
          ];
          description = ''
            What the service may do; everything else is denied. The sandbox (systemd
            properties and a Landlock ruleset) is derived from this list. Forms:
            `fs.read:PATH`, `fs.write:PATH`, `net.bind:tcp:PORT`, `net.connect:tcp:PORT`,
            `call:SERVICE` (the service receives a token for SERVICE as a systemd credential)
            and `sys.cap:CAP_X`. `strata-ctl check --explain /etc/strata/strata.toml` shows
            the sandbox each service gets.
          '';
        };

        after = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "fs" ];
          description = ''
            Services (declared here, or core services) that must be running before this one
            starts. The service waits, and its status says so, while one of them is not running.
          '';
        };

        requires = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "fs" ];
          description = ''
            Hard dependencies: as {option}`after`, and in addition this service is stopped
            while one of them is stopped, failed or quarantined.
          '';
        };

        environment = mkOption {
          type = types.attrsOf types.str;
          default = { };
          example = {
            PYTHONUNBUFFERED = "1";
          };
          description = ''
            Environment variables of the service. Not for secrets: they are part of the unit's
            visible configuration (tokens for `call:` capabilities arrive as systemd
            credentials instead).
          '';
        };

        workingDirectory = mkOption {
          type = types.nullOr types.str;
          default = null;
          example = "/srv/www";
          description = "Working directory of the service (`working_directory`).";
        };

        ready = mkOption {
          type = types.nullOr (
            types.enum [
              "exec"
              "notify"
            ]
          );
          default = null;
          example = "notify";
          description = ''
            When the service counts as started, for the services that come after it: `exec`
            once its binary runs (`Type=exec`, the manifest's default), `notify` when it sends
            `READY=1` (`Type=notify`).
          '';
        };

        allowDegradedSandbox = degradedOption;

        budget = budgetOption;

        restart = restartOption;
      };
    };

  # `[core.<name>]`: every core service has these; some have more.
  coreCommonOptions = name: {
    enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether the core service ${name} is part of the graph. A service that depends on a
        disabled core service (`after`, `requires`, `call:`) is rejected.
      '';
    };
    allowDegradedSandbox = degradedOption;
    budget = budgetOption;
    restart = restartOption;
  };

  coreServiceOption =
    name: description: extraOptions:
    mkOption {
      default = { };
      inherit description;
      type = types.submodule {
        freeformType = format.type;
        options = coreCommonOptions name // extraOptions;
      };
    };

  # The rendered manifest, then the same file after `strata-ctl check` accepted it.
  renderedConfig = format.generate "strata.toml" cfg.settings;

  checkedConfig =
    if cfg.checkConfig then
      pkgs.runCommand "strata.toml"
        {
          nativeBuildInputs = [ cfg.package ];
          preferLocalBuild = true;
        }
        ''
          # checked under its final name, so that errors read strata.toml:LINE:COLUMN
          cp ${renderedConfig} strata.toml
          if ! strata-ctl check strata.toml; then
            echo "services.strata renders this /etc/strata/strata.toml, which strata-ctl rejected:" >&2
            cat -n strata.toml >&2
            exit 1
          fi
          cp strata.toml "$out"
        ''
    else
      renderedConfig;

  declaredNames = attrNames (cfg.settings.services or { });
  enabledCoreNames = filter (n: cfg.core.${n}.enable) coreServiceNames;
  knownNames = declaredNames ++ enabledCoreNames;
  disabledIdentityUsers = filter (n: n != "identity") enabledCoreNames;
  servedOwnDirs = filter (
    root:
    any (dir: beneath root dir || beneath dir root) [
      cfg.stateDir
      cfg.runtimeDir
    ]
  ) cfg.core.fs.roots;

  runtimeUnderRun = hasPrefix "/run/" cfg.runtimeDir;
  stateUnderVarLib = hasPrefix "/var/lib/" cfg.stateDir;

  nested = outer: inner: outer == inner || hasPrefix "${outer}/" inner;

  # `path` is `base` or below it (strata-core's path_is_beneath)
  beneath = path: base: base == "/" || nested base path;

  # a manifest list, also when the escape hatch set something else (strata-ctl names that)
  stringsIn = v: if builtins.isList v then filter builtins.isString v else [ ];

  serviceSettings = name: cfg.settings.services.${name};

  # (kind, argument) of each `kind:argument` capability of a service
  capabilitiesOf =
    name:
    concatMap (
      c:
      let
        m = builtins.match "([a-z.]+):(.*)" c;
      in
      optional (m != null) {
        kind = builtins.elemAt m 0;
        arg = builtins.elemAt m 1;
        text = c;
      }
    ) (stringsIn ((serviceSettings name).capabilities or [ ]));

  callTargetsOf = name: map (c: c.arg) (filter (c: c.kind == "call") (capabilitiesOf name));

  depsOf =
    name:
    stringsIn ((serviceSettings name).after or [ ]) ++ stringsIn ((serviceSettings name).requires or [ ]);

  # The first dependency cycle among the declared services (`[ a b a ]`), or `[ ]`. Services
  # whose dependencies all lie outside a cycle are peeled off until none is left; what remains
  # depends on a cycle, and following remaining dependencies from any of it runs into one.
  # (a service depending on itself has an assertion of its own)
  declaredDepsOf = name: filter (d: d != name && elem d declaredNames) (depsOf name);
  peel =
    remaining:
    let
      next = filter (n: any (d: elem d remaining) (declaredDepsOf n)) remaining;
    in
    if next == remaining then remaining else peel next;
  cyclic = peel declaredNames;
  fromFirst = x: l: if builtins.head l == x then l else fromFirst x (builtins.tail l);
  walk =
    path: n:
    if elem n path then
      fromFirst n path ++ [ n ]
    else
      walk (path ++ [ n ]) (builtins.head (filter (d: elem d cyclic) (declaredDepsOf n)));
  dependencyCycle = if cyclic == [ ] then [ ] else walk [ ] (builtins.head cyclic);

  # Directories a service's fs capability may not reach (strata-ctl check refuses them too).
  protectedDirs = [
    cfg.stateDir
    "${cfg.runtimeDir}/credentials"
  ];

  # absolute, no trailing slash, no whitespace (the paths go into unit and tmpfiles lines)
  goodDir =
    dir:
    hasPrefix "/" dir
    && !(hasSuffix "/" dir)
    && builtins.match ".*[[:space:]].*" dir == null
    && !(elem dir [
      "/run"
      "/var/lib"
    ]);

  serviceAssertions = concatMap (
    name:
    let
      svc = cfg.settings.services.${name};
      exec = svc.exec or [ ];
      deps = depsOf name;
      onDisabledCore = filter (d: elem d coreServiceNames && !(elem d enabledCoreNames)) deps;
      unknown = filter (d: !(elem d knownNames) && !(elem d onDisabledCore)) deps;
      calls = callTargetsOf name;
      unknownCalls = filter (
        t: t != name && t != "supervisor" && !(elem t knownNames) && !(elem t coreServiceNames)
      ) calls;
      callsDisabledCore = filter (t: elem t coreServiceNames && !(elem t enabledCoreNames)) calls;
      exposed = filter (
        c:
        (c.kind == "fs.read" || c.kind == "fs.write")
        && any (dir: beneath c.arg dir || (c.kind == "fs.write" && beneath dir c.arg)) protectedDirs
      ) (capabilitiesOf name);
      opt = "services.strata.services.${name}";
    in
    [
      {
        assertion = !(elem name coreServiceNames);
        message = ''
          ${opt}: `${name}` is the name of a core service (${concatStringsSep ", " coreServiceNames}); core services are configured under services.strata.core.${name}, pick another name for your service.'';
      }
      {
        assertion = name != "supervisor";
        message = "${opt}: `supervisor` is reserved (it names strata-supervisor itself, as in the capability call:supervisor); pick another name.";
      }
      {
        assertion = builtins.match "[a-z0-9][a-z0-9-]*" name != null && builtins.stringLength name <= 48;
        message = ''
          ${opt}: the name `${name}` is not a service name; use at most 48 lower-case letters, digits and `-`, not starting with `-` (the unit is strata-<name>.service).'';
      }
      {
        assertion = exec != [ ] && hasPrefix "/" (toString (builtins.head exec));
        message = ''
          ${opt}.exec: the first element must be an absolute path to the program (got ${
            if exec == [ ] then "an empty list" else "\"${toString (builtins.head exec)}\""
          }); Strata does not search PATH, write e.g. "''${pkgs.hello}/bin/hello".'';
      }
      {
        assertion = unknown == [ ];
        message = ''
          ${opt}: depends on ${concatStringsSep ", " (map (d: "`${d}`") unknown)}, which is neither a service declared in services.strata.services nor an enabled core service (${concatStringsSep ", " enabledCoreNames}); declared services: ${
            if declaredNames == [ ] then "none" else concatStringsSep ", " declaredNames
          }.'';
      }
      {
        assertion = onDisabledCore == [ ];
        message = "${opt}: depends on the core service ${concatStringsSep ", " onDisabledCore}, which is disabled (services.strata.core.<name>.enable = false).";
      }
      {
        assertion = !(elem name deps);
        message = "${opt}: a service cannot depend on itself (after/requires contains `${name}`).";
      }
      {
        assertion = unknownCalls == [ ];
        message = ''
          ${opt}.capabilities: ${
            concatStringsSep ", " (map (t: "call:${t}") unknownCalls)
          } names no service: call targets are the services declared in services.strata.services (${
            if declaredNames == [ ] then "none" else concatStringsSep ", " declaredNames
          }), the enabled core services (${concatStringsSep ", " enabledCoreNames}) and `supervisor`.'';
      }
      {
        assertion = callsDisabledCore == [ ];
        message = "${opt}.capabilities: ${
          concatStringsSep ", " (map (t: "call:${t}") callsDisabledCore)
        } calls a core service that is disabled (services.strata.core.<name>.enable = false).";
      }
      {
        assertion = !(elem name calls);
        message = "${opt}.capabilities: a service cannot call itself (call:${name}).";
      }
      {
        assertion = calls == [ ] || cfg.core.identity.enable;
        message = "${opt}.capabilities: call: capabilities need the identity service, which issues the tokens, but services.strata.core.identity.enable is false.";
      }
      {
        assertion = exposed == [ ];
        message = ''
          ${opt}.capabilities: ${
            concatStringsSep ", " (map (c: "`${c.text}`") exposed)
          } would give the service access to Strata's own secrets and state (${concatStringsSep " and " protectedDirs}).'';
      }
    ]
  ) declaredNames;

  # The shipped policy names strata-admin; another admin group gets the same rights here.
  adminGroupPolicy = pkgs.writeTextFile {
    name = "strata-dbus-admin-group";
    destination = "/share/dbus-1/system.d/org.strata.Supervisor1-admin-group.conf";
    text = ''
      <?xml version="1.0"?>
      <!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
       "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
      <!-- Generated by the NixOS module: services.strata.adminGroup = "${cfg.adminGroup}". -->
      <busconfig>
        <policy group="${cfg.adminGroup}">
          <allow send_destination="org.strata.Supervisor1"/>
        </policy>
      </busconfig>
    '';
  };
in
{
  options.services.strata = {
    enable = mkEnableOption "Strata, the capability-first service runtime (strata-supervisor)";

    package = mkPackageOption pkgs "strata" {
      extraDescription = ''
        It must provide `strata-supervisor`, `strata-ctl`, `strata-launch` and the core
        services in {file}`bin/`, and the D-Bus policy in
        {file}`share/dbus-1/system.d/org.strata.Supervisor1.conf`. The flake's module sets
        it to the flake's own package.
      '';
    };

    nodeId = mkOption {
      type = types.str;
      example = literalExpression "config.networking.hostName";
      description = ''
        Identifier of this node (`node.id` in the manifest). It appears in the supervisor's
        status and in the tokens it issues; set it explicitly (often to the host name) so that
        renaming the host does not silently change it.
      '';
    };

    runtimeDir = mkOption {
      type = types.str;
      default = "/run/strata";
      description = ''
        Directory of the services' sockets (`<runtimeDir>/<service>.sock`) and of the
        published public key of the identity service: the supervisor's `RuntimeDirectory=`
        (kept across supervisor restarts, so running services keep their sockets). It must
        lie beneath {file}`/run` while a core service is enabled (they run as dynamic users
        whose directories systemd creates only there); with every core service disabled it
        may lie elsewhere and is then created by systemd-tmpfiles.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/strata";
      description = ''
        Directory of the durable state: the identity root key, revocations, quarantine marks
        and the audit log: the supervisor's `StateDirectory=`. It must lie beneath
        {file}`/var/lib` while a core service is enabled; with every core service disabled
        it may lie elsewhere and is then created by systemd-tmpfiles.
      '';
    };

    logLevel = mkOption {
      type = types.enum [
        "error"
        "warn"
        "info"
        "debug"
        "trace"
      ];
      default = "info";
      description = "Log level of the supervisor (its journal, `journalctl -u strata-supervisor`).";
    };

    adminGroup = mkOption {
      type = types.str;
      default = defaultAdminGroup;
      description = ''
        Group whose members may call the mutating methods of the supervisor (start, stop,
        restart, release, reload) and issue tokens with `strata-ctl`, besides root. The group
        is created; add users with {option}`users.users.<name>.extraGroups`.
      '';
    };

    binariesDir = mkOption {
      type = types.str;
      default = "/run/current-system/sw/bin";
      example = literalExpression ''"''${config.services.strata.package}/bin"'';
      description = ''
        Where the supervisor finds `strata-launch` (the ExecStart of every unit) and the core
        services' binaries (`node.binaries_dir`). The default, the system profile, keeps these
        paths the same across package upgrades: the units' specs do not change, so upgrading
        Strata restarts the supervisor, which adopts the running services instead of
        restarting them all. A store path pins the binaries instead, at the price of rolling
        every service on each upgrade. {option}`package` is in the system profile.
      '';
    };

    allowDegradedSandbox = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Let services start when the kernel cannot fully enforce their Landlock ruleset
        (`node.allow_degraded_sandbox`). Off, such a launch fails with a clear error; each
        service can override this.
      '';
    };

    checkConfig = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Check the rendered manifest with `strata-ctl check` while building the system, so
        that a bad service graph fails `nixos-rebuild` instead of the supervisor's start.
        Disable only when cross-compiling (the check runs the package's `strata-ctl`).
      '';
    };

    services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
      example = literalExpression ''
        {
          web = {
            exec = [ "''${pkgs.python3}/bin/python3" "-m" "http.server" "8080" "--directory" "/srv/www" ];
            capabilities = [ "fs.read:/srv/www" "net.bind:tcp:8080" "call:fs" ];
            after = [ "fs" ];
            budget = { memory = "256M"; cpu = "50%"; tasks = 64; };
            restart = { initial = "1s"; max = "5m"; quarantine = { crashes = 5; window = "10m"; }; };
          };
        }
      '';
      description = ''
        The declared service graph (`[services.<name>]` in the manifest). Each service runs as
        the transient unit `strata-<name>.service`, inspect it with `systemctl status` and
        `journalctl -u`.
      '';
    };

    core = mkOption {
      default = { };
      description = ''
        The core services, part of every graph (`[core.<name>]` in the manifest). They run
        as `strata-<name>.service` like the declared ones. Keys without an option here are
        passed through as they are.
      '';
      type = types.submodule {
        freeformType = format.type;
        options = {
          identity = coreServiceOption "identity" "The identity service: issues, checks and revokes capability tokens." {
            tokenTtlDefault = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "15m";
              description = "Lifetime of a token issued without `ttl_seconds` (`token_ttl_default`; manifest default 1h).";
            };
            tokenTtlMax = mkOption {
              type = types.nullOr types.str;
              default = null;
              example = "12h";
              description = "Longest lifetime a token is issued for (`token_ttl_max`; manifest default 24h).";
            };
          };
          registry = coreServiceOption "registry" "The registry service: where each service's endpoint is." { };
          audit = coreServiceOption "audit" "The audit service: the hash-chained log of authorization decisions." { };
          fs = coreServiceOption "fs" "The fs service: capability-guarded file access." {
            roots = mkOption {
              type = types.listOf types.str;
              default = [ ];
              example = [ "/srv/www" ];
              description = ''
                Directories the fs service may serve; they become its own `fs.read` (or
                `fs.write`, see {option}`writable`) capabilities. A client sees paths relative
                to the prefix of its token and cannot leave it.
              '';
            };
            writable = mkOption {
              type = types.bool;
              default = false;
              description = "Whether the fs service may write beneath its roots.";
            };
          };
        };
      };
    };

    settings = mkOption {
      type = format.type;
      default = { };
      example = literalExpression ''
        {
          services.web.restart.reset_after = "30m";
        }
      '';
      description = ''
        The manifest as a free-form attribute set (RFC 42), rendered to
        {file}`/etc/strata/strata.toml`. The typed options above are merged into it; use it
        for manifest keys that have no option. Key names are the manifest's
        (`working_directory`, `reset_after`). Set each key in one place: a key set both here
        and through a typed option is a conflict (strings, numbers) or concatenated (lists).
      '';
    };
  };

  config = mkIf cfg.enable {
    services.strata.settings = {
      node = {
        id = cfg.nodeId;
        runtime_dir = cfg.runtimeDir;
        state_dir = cfg.stateDir;
        binaries_dir = cfg.binariesDir;
        allow_degraded_sandbox = cfg.allowDegradedSandbox;
      };
      core = clean (renderCore cfg.core);
    }
    // optionalAttrs (cfg.services != { }) {
      services = mapAttrs (_: svc: clean (renderService svc)) cfg.services;
    };

    assertions = [
      {
        assertion = builtins.match "[A-Za-z0-9._-]+" cfg.nodeId != null && builtins.stringLength cfg.nodeId <= 64;
        message = ''services.strata.nodeId: "${cfg.nodeId}" is not a node id; use 1 to 64 letters, digits, `.`, `-` and `_`.'';
      }
      {
        assertion = goodDir cfg.runtimeDir;
        message = ''services.strata.runtimeDir: "${cfg.runtimeDir}" must be an absolute path without spaces or a trailing slash, and not /run itself.'';
      }
      {
        assertion = goodDir cfg.stateDir;
        message = ''services.strata.stateDir: "${cfg.stateDir}" must be an absolute path without spaces or a trailing slash, and not /var/lib itself.'';
      }
      {
        assertion = !(nested cfg.runtimeDir cfg.stateDir || nested cfg.stateDir cfg.runtimeDir);
        message = "services.strata: runtimeDir (${cfg.runtimeDir}) and stateDir (${cfg.stateDir}) must not contain each other.";
      }
      {
        assertion = builtins.match "[a-z_][a-z0-9_-]*" cfg.adminGroup != null;
        message = ''services.strata.adminGroup: "${cfg.adminGroup}" is not a valid group name.'';
      }
      # The core services are DynamicUser units: systemd creates their directories
      # (RuntimeDirectory=, StateDirectory=) only beneath /run and /var/lib.
      {
        assertion = enabledCoreNames == [ ] || runtimeUnderRun;
        message = ''services.strata.runtimeDir: "${cfg.runtimeDir}" must be a directory beneath /run (such as /run/strata) while a core service is enabled (${concatStringsSep ", " enabledCoreNames}): they run as dynamic users whose runtime directories systemd creates there.'';
      }
      {
        assertion = enabledCoreNames == [ ] || stateUnderVarLib;
        message = ''services.strata.stateDir: "${cfg.stateDir}" must be a directory beneath /var/lib (such as /var/lib/strata) while a core service is enabled (${concatStringsSep ", " enabledCoreNames}): they run as dynamic users whose state directories systemd creates there.'';
      }
      {
        assertion = cfg.core.identity.enable || disabledIdentityUsers == [ ];
        message = "services.strata.core.identity.enable is false, but the core services ${concatStringsSep ", " disabledIdentityUsers} are enabled and verify tokens with identity's key: disable them too (services.strata.core.<name>.enable = false) or enable identity.";
      }
      {
        assertion = !cfg.core.fs.enable || servedOwnDirs == [ ];
        message = "services.strata.core.fs.roots: ${concatStringsSep ", " servedOwnDirs} would let the fs service serve Strata's own directories (stateDir ${cfg.stateDir}, runtimeDir ${cfg.runtimeDir}).";
      }
      {
        assertion = dependencyCycle == [ ];
        message = "services.strata.services: dependency cycle ${concatStringsSep " -> " dependencyCycle} (after/requires): no service of it could ever start.";
      }
    ]
    ++ serviceAssertions;

    environment.etc."strata/strata.toml".source = checkedConfig;

    environment.systemPackages = [ cfg.package ];

    users.groups.${cfg.adminGroup} = { };

    services.dbus.packages = [
      cfg.package
    ]
    ++ optional (cfg.adminGroup != defaultAdminGroup) adminGroupPolicy;

    # Outside /run and /var/lib, systemd cannot manage the directories for us. `d` (not `D`):
    # NixOS re-runs tmpfiles with --remove on every switch, which would empty a `D` directory
    # under the running services' feet.
    systemd.tmpfiles.rules =
      optional (!runtimeUnderRun) "d ${cfg.runtimeDir} 0755 root root - -"
      ++ optional (!stateUnderVarLib) "d ${cfg.stateDir} 0711 root root - -";

    systemd.services.strata-supervisor = {
      description = "Strata supervisor: runs the declared service graph as sandboxed units";
      documentation = [ "file:${cfg.package}/share/doc/strata/operations.md" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "dbus.socket" ];
      after = [ "dbus.socket" ];

      # A changed manifest is applied by a reload (SIGHUP: re-read, reconcile), which
      # restarts only the services whose spec changed. A changed package or unit restarts the
      # supervisor, which adopts the running units by their spec hash.
      reloadTriggers = [ checkedConfig ];

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        # The group name and the level are checked by the options' types, the paths by the
        # assertions: no quoting needed.
        ExecStart = concatStringsSep " " [
          "${cfg.package}/bin/strata-supervisor"
          "--config ${configPath}"
          "--launcher ${cfg.binariesDir}/strata-launch"
          "--admin-group ${cfg.adminGroup}"
          "--log-level ${cfg.logLevel}"
        ];
        ExecReload = "${pkgs.coreutils}/bin/kill -HUP $MAINPID";
        Restart = "on-failure";
        RestartSec = "2s";

        # The services are transient units of their own (in strata.slice), not processes of
        # this unit, so stopping the supervisor never stops them; KillMode=process also
        # leaves alone anything it spawned, so an upgrade never takes a service down.
        KillMode = "process";

        # The directories the services depend on (sockets, the published key) must outlive a
        # supervisor restart.
        RuntimeDirectoryPreserve = "yes";
        UMask = "0022";

        # Hardening. The supervisor runs as root because it starts DynamicUser units over
        # D-Bus; it needs the system bus (an AF_UNIX socket), the journal, sd_notify and its
        # two directories, and nothing else.
        CapabilityBoundingSet = [
          # reach files and sockets that DynamicUser services created in the runtime and
          # state directories
          "CAP_DAC_OVERRIDE"
          "CAP_DAC_READ_SEARCH"
          # signal a service's processes if systemd cannot (fallback of stop)
          "CAP_KILL"
        ];
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        PrivateNetwork = true;
        IPAddressDeny = "any";
        RestrictAddressFamilies = [ "AF_UNIX" ];
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        # it learns about the services' processes from systemd, not from /proc
        ProtectProc = "invisible";
        ProcSubset = "pid";
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
          "~@resources"
        ];
        SystemCallErrorNumber = "EPERM";
      }
      // optionalAttrs runtimeUnderRun {
        RuntimeDirectory = removePrefix "/run/" cfg.runtimeDir;
        RuntimeDirectoryMode = "0755";
      }
      // optionalAttrs stateUnderVarLib {
        StateDirectory = removePrefix "/var/lib/" cfg.stateDir;
        # traversable, not listable: DynamicUser services reach their own subdirectories,
        # the files in it are created 0600
        StateDirectoryMode = "0711";
      }
      // optionalAttrs (!runtimeUnderRun || !stateUnderVarLib) {
        ReadWritePaths =
          optionals (!runtimeUnderRun) [ cfg.runtimeDir ]
          ++ optionals (!stateUnderVarLib) [ cfg.stateDir ];
      };
    };
  };
}
