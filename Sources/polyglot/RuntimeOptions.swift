import ArgumentParser
import Roles

/// The settings every role on the stream runtime takes, `process` and `audit` alike: the Kafka
/// cluster, the processor's topics, the state, the guarantee and the detector's parameters. Nil
/// is "not given": the environment, then the settings file, then the default decide.
struct RuntimeOptions: ParsableArguments {
    @Option(help: "Kafka bootstrap servers, required; env KAFKA_BOOTSTRAP_SERVERS.")
    var bootstrapServers: String?

    @Option(help: "Input topic (default: \(Setting.inputTopic.defaultText)).")
    var inputTopic: String?

    @Option(help: "Output topic (default: \(Setting.outputTopic.defaultText)).")
    var outputTopic: String?

    @Option(help: "Dead-letter topic (default: \(Setting.deadLetterTopic.defaultText)).")
    var dlqTopic: String?

    @Option(help: "Directory of the task stores, made private (0700); its absolute path is logged at start (default: $STATE_DIRECTORY under systemd, else ./state).")
    var stateDir: String?

    @Option(help: "exactly-once or at-least-once (default: \(Setting.guarantee.defaultText)).")
    var guarantee: String?

    @Option(parsing: .unconditional, help: "How often the open transaction commits (default: \(Setting.commitInterval.defaultText)).")
    var commitInterval: String?

    @Option(parsing: .unconditional, help: "Stream threads of this instance, each a group member with its own partitions (default: \(Setting.processStreamThreads) for process, \(Setting.auditStreamThreads) for audit).")
    var streamThreads: String?

    @Option(help: "Stable id of this instance for its transactional producer (default: the one kept in the state directory's instance-id file, created at first start).")
    var instanceId: String?

    @Option(help: "Which partition a card belongs to: murmur2 (Java's and Kafka Streams') or crc32 (librdkafka's); records elsewhere go through the repartition topic (default: \(Setting.partitioner.defaultText)).")
    var partitioner: String?

    @Option(help: "How long start-up waits for the Kafka cluster to answer (default: \(Setting.connectTimeout.defaultText)).")
    var connectTimeout: String?

    @Flag(help: "Run up to the end offsets seen at start, commit, and exit 0.")
    var untilEnd = false

    @Option(name: .customShort("X"), parsing: .unconditionalSingleValue,
            help: ArgumentHelp("librdkafka property, repeatable (SASL and SSL included; secrets are never logged).",
                               valueName: "key=value"))
    var properties: [String] = []

    @Option(help: "tumbling (epoch-aligned windows) or sliding (the window ending at each record) (default: \(Setting.windowKind.defaultText)).")
    var windowKind: String?

    @Option(parsing: .unconditional, help: "Window size: ms, s, m, h, or compound as 1m30s; a bare number is ms (default: \(Setting.window.defaultText)).")
    var window: String?

    @Option(parsing: .unconditional, help: "Flag a transaction when its window's count exceeds this (default: \(Setting.threshold.defaultText)).")
    var threshold: String?

    @Option(parsing: .unconditional, help: "How long after its end a window still accepts records (default: \(Setting.grace.defaultText)).")
    var grace: String?

    @Option(parsing: .unconditional, help: "How far behind stream time a window is kept (default: \(Setting.retention.defaultText)).")
    var retention: String?

    @Option(parsing: .unconditional, help: "Reject a record whose event time is this far ahead of its Kafka timestamp (default: \(Setting.maxFutureSkew.defaultText)).")
    var maxFutureSkew: String?

    @Option(help: "Settings file of NAME=value lines with the environment variables' names; env POLYGLOT_CONFIG.")
    var config: String?

    /// The flags as the processor's settings (the application id is the role's own).
    var settings: ProcessorSettings {
        var settings = ProcessorSettings()
        settings.bootstrapServers = bootstrapServers
        settings.inputTopic = inputTopic
        settings.outputTopic = outputTopic
        settings.deadLetterTopic = dlqTopic
        settings.stateDirectory = stateDir
        settings.guarantee = guarantee
        settings.commitInterval = commitInterval
        settings.streamThreads = streamThreads
        settings.instanceID = instanceId
        settings.untilEnd = untilEnd
        settings.partitioner = partitioner
        settings.connectTimeout = connectTimeout
        settings.kafkaProperties = properties
        settings.windowKind = windowKind
        settings.window = window
        settings.threshold = threshold
        settings.grace = grace
        settings.retention = retention
        settings.maxFutureSkew = maxFutureSkew
        settings.configFile = config
        return settings
    }
}
