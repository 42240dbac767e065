import PolyglotSupport
import FraudModel
import KafkaClient
import StreamEngine

/// One setting of the binary, declared once: its environment variable (which is also its name
/// in a settings file), its flag, its default, its help and the roles that read it.
///
/// ``Setting/all`` is the single list the settings file is checked against, each role's
/// `--help` names its variables from, and the image's `polyglot.env` is rendered from.
public struct Setting: Sendable, Hashable {
    /// The commands that read a setting.
    public enum Role: String, Sendable, Hashable, CaseIterable {
        /// `polyglot process`.
        case process
        /// `polyglot audit`, continuous or `--once`.
        case audit
        /// `polyglot produce`.
        case produce
    }

    /// Where a setting is listed in the rendered environment file, in this order; the raw
    /// value is the section's heading.
    public enum Section: String, Sendable, Hashable, CaseIterable {
        /// The cluster and the clients.
        case kafka = "Kafka cluster"
        /// The processor's topics, which the auditor reads too.
        case topics = "Topics"
        /// The runtime: group, state, guarantee, commits.
        case processing = "Processing and state"
        /// The detector's parameters, shared by both roles.
        case detector = "Detector"
        /// The auditor's own.
        case auditor = "Auditor (read by `audit` only)"
        /// Logging and the HTTP endpoints.
        case observability = "Logs, metrics and health"
    }

    /// The environment variable, and the name a settings file uses.
    public let variable: String
    /// The command-line flag that overrides it (`-X` for librdkafka properties).
    public let flag: String
    /// The default as a setting's text; empty when there is none to write (decided elsewhere).
    public let defaultText: String
    /// One line of help.
    public let help: String
    /// A few words after the name in `--help`'s list of variables, if any.
    public let hint: String?
    /// More of the environment file's comment, after ``help`` (wrapped when rendered).
    public let notes: String?
    /// The commands that read it.
    public let roles: Set<Role>
    /// Its group in the environment file.
    public let section: Section

    init(_ variable: String, flag: String, default defaultText: String, help: String, hint: String? = nil,
         notes: String? = nil, roles: Set<Role>, section: Section) {
        self.variable = variable
        self.flag = flag
        self.defaultText = defaultText
        self.help = help
        self.hint = hint
        self.notes = notes
        self.roles = roles
        self.section = section
    }

    /// Names the settings file with `POLYGLOT_CONFIG` when `--config` is not given; it is read
    /// from the environment only, so it is no setting a file may hold.
    public static let configFileVariable = "POLYGLOT_CONFIG"

    static let runtimeRoles: Set<Role> = [.process, .audit]
    static let everyRole: Set<Role> = Set(Role.allCases)

    // Kafka

    /// `KAFKA_BOOTSTRAP_SERVERS`.
    public static let bootstrapServers = Setting(
        "KAFKA_BOOTSTRAP_SERVERS", flag: "--bootstrap-servers", default: "",
        help: "Kafka bootstrap servers: comma-separated host:port.", roles: everyRole, section: .kafka)
    /// `POLYGLOT_KAFKA_PROPERTIES`.
    public static let kafkaProperties = Setting(
        "POLYGLOT_KAFKA_PROPERTIES", flag: "-X", default: "",
        help: "librdkafka properties (SASL, SSL, client tuning): key=value pairs separated by newlines, or by ';' before a property name.",
        hint: "key=value pairs separated by newlines, or by ';' before a property name",
        notes: "A ';' followed by anything but a property name stays in the value (a password may hold one). In a settings file the name may repeat, one pair a line; here (read by systemd) give them on one line, e.g. security.protocol=SASL_SSL;sasl.mechanisms=PLAIN. -X flags come after these. group.id, bootstrap.servers, transactional.id, isolation.level and enable.auto.commit are refused: the settings above and below set them.",
        roles: everyRole, section: .kafka)
    /// `POLYGLOT_CONNECT_TIMEOUT`.
    public static let connectTimeout = Setting(
        "POLYGLOT_CONNECT_TIMEOUT", flag: "--connect-timeout", default: "15s",
        help: "How long start-up waits for the Kafka cluster to answer.", roles: everyRole, section: .kafka)
    /// `POLYGLOT_PARTITIONER`.
    public static let partitioner = Setting(
        "POLYGLOT_PARTITIONER", flag: "--partitioner", default: KafkaPartitioner.murmur2.rawValue,
        help: "Which partition a card belongs to: murmur2 (Java's and Kafka Streams') or crc32 (librdkafka's).",
        notes: "Every role, and whatever produces the input, must use the same.",
        roles: everyRole, section: .kafka)

    // Topics

    /// `POLYGLOT_INPUT_TOPIC`.
    public static let inputTopic = Setting(
        "POLYGLOT_INPUT_TOPIC", flag: "--input-topic", default: PipelineNames.inputTopic,
        help: "Input topic of transactions.", roles: everyRole, section: .topics)
    /// `POLYGLOT_OUTPUT_TOPIC`.
    public static let outputTopic = Setting(
        "POLYGLOT_OUTPUT_TOPIC", flag: "--output-topic", default: PipelineNames.outputTopic,
        help: "Output topic of verdicts.", roles: runtimeRoles, section: .topics)
    /// `POLYGLOT_DLQ_TOPIC`.
    public static let deadLetterTopic = Setting(
        "POLYGLOT_DLQ_TOPIC", flag: "--dlq-topic", default: PipelineNames.deadLetterTopic,
        help: "Dead-letter topic of rejected records.", roles: runtimeRoles, section: .topics)

    // Processing and state

    /// `POLYGLOT_APPLICATION_ID`.
    public static let applicationID = Setting(
        "POLYGLOT_APPLICATION_ID", flag: "--application-id", default: PipelineNames.applicationID,
        help: "Application id of `process`: its consumer group and the prefix of its internal topics.",
        notes: "They are <id>-windows-changelog and <id>-repartition. The continuous auditor reads this group's committed offsets to know which inputs are due.",
        roles: [.process, .audit], section: .processing)
    /// `POLYGLOT_STATE_DIR`.
    public static let stateDirectory = Setting(
        "POLYGLOT_STATE_DIR", flag: "--state-dir", default: "/var/lib/polyglot/process",
        help: "Directory of the SQLite window stores (default $STATE_DIRECTORY under systemd, else ./state).",
        notes: "The unit sets it to /var/lib/polyglot/<role>, its StateDirectory; the sandbox lets the service write nowhere else, so leave it unset here.",
        roles: runtimeRoles, section: .processing)
    /// `POLYGLOT_GUARANTEE`.
    public static let guarantee = Setting(
        "POLYGLOT_GUARANTEE", flag: "--guarantee", default: ProcessingGuarantee.exactlyOnce.rawValue,
        help: "Processing guarantee: exactly-once or at-least-once.", roles: runtimeRoles, section: .processing)
    /// `POLYGLOT_COMMIT_INTERVAL`.
    public static let commitInterval = Setting(
        "POLYGLOT_COMMIT_INTERVAL", flag: "--commit-interval", default: "100ms",
        help: "How often a role commits its Kafka transaction (and SQLite with it).", roles: runtimeRoles, section: .processing)
    /// `POLYGLOT_STREAM_THREADS`.
    public static let streamThreads = Setting(
        "POLYGLOT_STREAM_THREADS", flag: "--stream-threads", default: "",
        help: "Stream threads of this instance, each a group member with its own partitions, as Kafka Streams' num.stream.threads.",
        notes: "Unset: \(processStreamThreads) for process, \(auditStreamThreads) for audit, which reads two records (an input and its output) for each one the processor reads. More threads than cores, or than partitions, gain nothing.",
        roles: runtimeRoles, section: .processing)
    /// The processor's stream threads when nothing sets them.
    public static let processStreamThreads = 1
    /// The continuous auditor's: it reads twice the records the processor reads, so it gets
    /// twice the threads to keep up.
    public static let auditStreamThreads = 2
    /// `POLYGLOT_INSTANCE_ID`.
    public static let instanceID = Setting(
        "POLYGLOT_INSTANCE_ID", flag: "--instance-id", default: "",
        help: "Stable id of this instance for its transactional producer.",
        notes: "Unset: the one kept in the state directory's instance-id file, created at first start.",
        roles: runtimeRoles, section: .processing)
    /// `POLYGLOT_UNTIL_END`.
    public static let untilEnd = Setting(
        "POLYGLOT_UNTIL_END", flag: "--until-end", default: "false",
        help: "1, true or yes: run up to the end offsets seen at start, commit and exit.",
        hint: "1/true",
        notes: "A service leaves it false.",
        roles: runtimeRoles, section: .processing)

    // Detector

    /// `POLYGLOT_WINDOW_KIND`.
    public static let windowKind = Setting(
        "POLYGLOT_WINDOW_KIND", flag: "--window-kind", default: DetectorParameters.default.kind.rawValue,
        help: "tumbling: windows of W aligned to the epoch; sliding: the W ending at each record's own event time.",
        hint: "tumbling/sliding",
        notes: "Changing it (or W, N, G, R) needs a new application id, or deleting the state and the changelog.",
        roles: runtimeRoles, section: .detector)
    /// `POLYGLOT_WINDOW`.
    public static let window = Setting(
        "POLYGLOT_WINDOW", flag: "--window", default: DurationText.format(milliseconds: DetectorParameters.default.window),
        help: "Window size W (tumbling windows are aligned to the epoch).", roles: runtimeRoles, section: .detector)
    /// `POLYGLOT_THRESHOLD`.
    public static let threshold = Setting(
        "POLYGLOT_THRESHOLD", flag: "--threshold", default: String(DetectorParameters.default.threshold),
        help: "A record is flagged when its card's count in the window exceeds this (N).", roles: runtimeRoles, section: .detector)
    /// `POLYGLOT_GRACE`.
    public static let grace = Setting(
        "POLYGLOT_GRACE", flag: "--grace", default: DurationText.format(milliseconds: DetectorParameters.default.grace),
        help: "Grace G: how long after its end a window still accepts late records.", roles: runtimeRoles, section: .detector)
    /// `POLYGLOT_RETENTION`.
    public static let retention = Setting(
        "POLYGLOT_RETENTION", flag: "--retention", default: DurationText.format(milliseconds: DetectorParameters.default.retention),
        help: "Retention R: how far behind the partition's stream time a window is kept.", roles: runtimeRoles, section: .detector)
    /// `POLYGLOT_MAX_FUTURE_SKEW`.
    public static let maxFutureSkew = Setting(
        "POLYGLOT_MAX_FUTURE_SKEW", flag: "--max-future-skew",
        default: DurationText.format(milliseconds: DetectorParameters.default.maxFutureSkew),
        help: "Maximum future skew F: a record whose event time is further ahead of its Kafka timestamp is rejected.",
        roles: runtimeRoles, section: .detector)

    // Auditor

    /// `POLYGLOT_AUDIT_GROUP`.
    public static let auditGroup = Setting(
        "POLYGLOT_AUDIT_GROUP", flag: "--group", default: AuditorConfiguration.defaultGroupID,
        help: "The auditor's consumer group and internal topic prefix.",
        notes: "Its topics are <group>-ledger-changelog and <group>-repartition.",
        roles: [.audit], section: .auditor)
    /// `POLYGLOT_AUDIT_FINDINGS_TOPIC`.
    public static let auditFindingsTopic = Setting(
        "POLYGLOT_AUDIT_FINDINGS_TOPIC", flag: "--findings-topic", default: AuditorConfiguration.defaultFindingsTopic,
        help: "Topic of the auditor's findings, one JSON record each, keyed by transactionId.", roles: [.audit], section: .auditor)
    /// `POLYGLOT_AUDIT_SETTLE`.
    public static let auditSettle = Setting(
        "POLYGLOT_AUDIT_SETTLE", flag: "--settle", default: "30s",
        help: "How long the continuous auditor remembers a matched transaction id, so a second output for it is a duplicate rather than an orphan.",
        notes: "Missing and orphan never depend on it: they come from the processor group's committed offsets and what the auditor has read.",
        roles: [.audit], section: .auditor)
    /// `POLYGLOT_AUDIT_STALL_AFTER`.
    public static let auditStallAfter = Setting(
        "POLYGLOT_AUDIT_STALL_AFTER", flag: "--stall-after", default: "5m",
        help: "How long the oldest input the processor's group has not committed past may wait before its partition is reported stalled.",
        roles: [.audit], section: .auditor)
    /// `POLYGLOT_AUDIT_HIGH_VALUE`.
    public static let auditHighValue = Setting(
        "POLYGLOT_AUDIT_HIGH_VALUE", flag: "--high-value", default: AuditConfiguration.defaultHighValueThreshold.text,
        help: "The auditor reports inputs whose amount is above this, compared exactly.", roles: [.audit], section: .auditor)

    // Logs, metrics and health

    /// `POLYGLOT_LOG_LEVEL`.
    public static let logLevel = Setting(
        "POLYGLOT_LOG_LEVEL", flag: "--log-level", default: "info",
        help: "Log level: trace, debug, info, notice, warning, error or critical.", roles: everyRole, section: .observability)
    /// `POLYGLOT_METRICS_PORT`.
    public static let metricsPort = Setting(
        "POLYGLOT_METRICS_PORT", flag: "--metrics-port", default: "",
        help: "Port of GET /metrics and GET /healthz (on POLYGLOT_METRICS_ADDRESS); 0 turns them off.",
        hint: "0: off",
        notes: "Unset: \(ObservabilitySettings.processMetricsPort) for process, \(ObservabilitySettings.auditMetricsPort) for audit, so both can run on one host.",
        roles: runtimeRoles, section: .observability)
    /// `POLYGLOT_METRICS_ADDRESS`.
    public static let metricsAddress = Setting(
        "POLYGLOT_METRICS_ADDRESS", flag: "--metrics-address", default: ObservabilitySettings.everyInterface,
        help: "Address /metrics and /healthz listen on: \(ObservabilitySettings.everyInterface) (every interface), 127.0.0.1 (this host only) or one interface's IP address.",
        notes: "127.0.0.1 keeps them off the network when only an agent on the host scrapes them.",
        roles: runtimeRoles, section: .observability)
    /// `POLYGLOT_HEALTH_BROKER_TIMEOUT`.
    public static let healthBrokerTimeout = Setting(
        "POLYGLOT_HEALTH_BROKER_TIMEOUT", flag: "--health-broker-timeout",
        default: DurationText.format(milliseconds: HealthPolicy.defaultBrokerUnreachableLimit.wholeMilliseconds),
        help: "How long the broker may be unreachable before /healthz answers 503.", roles: runtimeRoles, section: .observability)

    /// Every setting, in the order `--help` and the environment file list them.
    public static let all: [Setting] = [
        bootstrapServers, kafkaProperties, connectTimeout, partitioner,
        inputTopic, outputTopic, deadLetterTopic,
        applicationID, stateDirectory, guarantee, commitInterval, streamThreads, instanceID, untilEnd,
        windowKind, window, threshold, grace, retention, maxFutureSkew,
        auditGroup, auditFindingsTopic, auditSettle, auditStallAfter, auditHighValue,
        logLevel, metricsPort, metricsAddress, healthBrokerTimeout,
    ]

    /// The names a settings file may hold.
    public static let fileNames: Set<String> = Set(all.map(\.variable))

    /// The settings `role` reads.
    public static func read(by role: Role) -> [Setting] { all.filter { $0.roles.contains(role) } }

    /// The variables `role` reads, with their hints, for its `--help`.
    /// The value given by `flag`, else by this setting's variable in `environment` when set and
    /// not empty, with where it came from (the flag's name or the variable's). Every setting is
    /// picked this way: flags over the environment over the settings file (which
    /// ``SettingsLayers`` merges under the environment).
    public func pick(_ flag: String?, in environment: [String: String]) -> (text: String, source: String)? {
        if let flag { return (flag, self.flag) }
        if let value = environment[variable], !value.isEmpty { return (value, variable) }
        return nil
    }

    public static func environmentHelp(for role: Role) -> String {
        let names = read(by: role).map { setting in setting.hint.map { "\(setting.variable) (\($0))" } ?? setting.variable }
        return (names + ["\(configFileVariable) (the settings file)"]).joined(separator: ", ")
    }
}

extension Duration {
    /// Whole milliseconds, rounded toward zero.
    var wholeMilliseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000 + attoseconds / 1_000_000_000_000_000
    }
}
