/// `user-data-<role>.yaml`: cloud-init user data for one role's Auto Scaling Group.
enum UserData {
    static func render(_ options: ImageOptions, role: String) -> String {
        """
        #cloud-config
        # \(ImageRenderer.banner(options))
        #
        # User data of the Auto Scaling Group running the `\(role)` role on the polyglot
        # image: writes this group's settings, which override /etc/polyglot/polyglot.env,
        # then enables and starts polyglot@\(role).service.
        write_files:
          - path: /etc/polyglot/\(role).env
            owner: root:root
            permissions: "0600"
            content: |
              # Settings of the `\(role)` role; same syntax and names as
              # /etc/polyglot/polyglot.env, which documents each of them.
              KAFKA_BOOTSTRAP_SERVERS=\(options.bootstrapServers)
        runcmd:
          - [systemctl, enable, --now, polyglot@\(role).service]

        """
    }
}

/// `polyglot.env`: the environment file of the unit, every setting documented.
enum EnvironmentFile {
    static func render(_ options: ImageOptions) -> String {
        let detector = DetectorParameters.default
        return """
        # \(ImageRenderer.banner(options))
        #
        # Settings of both polyglot roles, read by polyglot@.service. Installed as
        # /etc/polyglot/polyglot.env (mode 0600: it may hold credentials). A role's
        # /etc/polyglot/<role>.env, written by its Auto Scaling Group's user data, is
        # read after this file and overrides it; command-line flags override both.
        #
        # Syntax: KEY=VALUE, one per line, no shell expansion. Durations take an ms,
        # s, m or h suffix, or several from largest to smallest (1m30s); a bare integer
        # means milliseconds. A setting left commented out takes the default shown.

        # Kafka bootstrap servers: comma-separated host:port.
        KAFKA_BOOTSTRAP_SERVERS=\(options.bootstrapServers)

        # Application id of `process`: its consumer group and the prefix of its
        # internal topics (<id>-windows-changelog, <id>-repartition).
        #POLYGLOT_APPLICATION_ID=fraud-detector-processor

        # The auditor's consumer group and internal topic prefix
        # (<group>-ledger-changelog, <group>-repartition), read by `audit` only.
        #POLYGLOT_AUDIT_GROUP=\(AuditorConfiguration.defaultGroupID)

        # Topic of the auditor's findings, one JSON record each, keyed by transactionId.
        #POLYGLOT_AUDIT_FINDINGS_TOPIC=\(AuditorConfiguration.defaultFindingsTopic)

        # How long the auditor waits for an input's output (or dead letter), and for an
        # output's input, before it reports it missing (or orphan).
        #POLYGLOT_AUDIT_SETTLE=30s

        # The auditor reports inputs whose amount is above this, compared exactly.
        #POLYGLOT_AUDIT_HIGH_VALUE=10000

        # Directory of the SQLite window stores. The unit sets it to
        # /var/lib/polyglot/<role>, its StateDirectory; the sandbox lets the service
        # write nowhere else, so leave it unset here.
        #POLYGLOT_STATE_DIR=/var/lib/polyglot/process

        # Processing guarantee: exactly-once or at-least-once.
        #POLYGLOT_GUARANTEE=exactly-once

        # Tumbling window size W; windows are aligned to the epoch.
        #POLYGLOT_WINDOW=\(DurationText.format(milliseconds: detector.window))

        # A record is flagged when its card's count in the window exceeds this (N).
        #POLYGLOT_THRESHOLD=\(detector.threshold)

        # Grace G: how long after its end a window still accepts late records.
        #POLYGLOT_GRACE=\(DurationText.format(milliseconds: detector.grace))

        # Retention R: how far behind the partition's stream time a window is kept.
        #POLYGLOT_RETENTION=\(DurationText.format(milliseconds: detector.retention))

        # Input topic of transactions.
        #POLYGLOT_INPUT_TOPIC=financial-transactions

        # Output topic of verdicts.
        #POLYGLOT_OUTPUT_TOPIC=enriched-transactions

        # Dead-letter topic of rejected records.
        #POLYGLOT_DLQ_TOPIC=financial-transactions.dlq

        # How often `process` commits its Kafka transaction (and SQLite with it).
        #POLYGLOT_COMMIT_INTERVAL=100ms

        # Log level: trace, debug, info, notice, warning, error or critical.
        #POLYGLOT_LOG_LEVEL=info

        """
    }
}
