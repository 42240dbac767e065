import StateStore

/// `polyglot@.service`: one hardened template unit; the instance name is the role.
enum ServiceUnit {
    static func render(_ options: ImageOptions) -> String {
        let binary = options.installPath
        return """
        # \(ImageRenderer.banner(options))
        #
        # One unit for both roles: polyglot@process.service and polyglot@audit.service.
        # The instance name is the subcommand it runs. The tests hold the sandbox below
        # to an exposure of 3.0 or lower in
        # `systemd-analyze security --offline=yes polyglot@.service`.
        [Unit]
        Description=polyglot %i (card-fraud stream pipeline)
        After=network-online.target
        Wants=network-online.target
        # Never give up: while Kafka (or SSM) is unreachable the role keeps
        # restarting every RestartSec, and /healthz tells the load balancer.
        StartLimitIntervalSec=0

        [Service]
        Type=exec
        # Later files override earlier ones: the role's own settings come from its
        # Auto Scaling Group's user data.
        EnvironmentFile=/etc/polyglot/polyglot.env
        EnvironmentFile=-/etc/polyglot/%i.env
        # Kafka secrets, fetched from SSM Parameter Store through the instance
        # profile by the first ExecStartPre (as root, outside the sandbox) before
        # every start; never in user data.
        EnvironmentFile=-\(SecretsScript.environmentFileTemplate)
        Environment=POLYGLOT_STATE_DIR=%S/polyglot/%i
        ExecStartPre=+\(SecretsScript.installPath(options)) %i
        # Refuse to start on an environment that is no longer the baked one.
        ExecStartPre=\(binary) image verify
        ExecStart=\(binary) %i
        Restart=on-failure
        RestartSec=5s
        # SIGTERM makes a role finish or abort its open Kafka transaction, commit and
        # leave its group; this leaves room for that before SIGKILL.
        TimeoutStopSec=\(options.stopTimeoutSeconds)s
        KillMode=mixed

        # Sandbox.
        DynamicUser=yes
        StateDirectory=polyglot/%i
        StateDirectoryMode=0700
        UMask=0077
        NoNewPrivileges=yes
        CapabilityBoundingSet=
        AmbientCapabilities=
        ProtectSystem=strict
        ProtectHome=yes
        PrivateTmp=yes
        PrivateDevices=yes
        PrivateUsers=yes
        PrivateIPC=yes
        PrivateMounts=yes
        DevicePolicy=closed
        ProtectClock=yes
        ProtectHostname=yes
        ProtectKernelTunables=yes
        ProtectKernelModules=yes
        ProtectKernelLogs=yes
        ProtectControlGroups=yes
        ProtectProc=invisible
        ProcSubset=pid
        RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
        RestrictNamespaces=yes
        RestrictRealtime=yes
        RestrictSUIDSGID=yes
        LockPersonality=yes
        MemoryDenyWriteExecute=yes
        RemoveIPC=yes
        KeyringMode=private
        SystemCallArchitectures=native
        SystemCallFilter=@system-service
        SystemCallFilter=~@privileged @resources
        # libdispatch sets each worker thread's nice level; denied, every thread start
        # logs an EPERM. Raising priority still needs a capability the unit lacks.
        SystemCallFilter=setpriority
        SystemCallErrorNumber=EPERM

        [Install]
        WantedBy=multi-user.target

        """
    }
}
