import Foundation
import Logging

/// What `polyglot audit --once` reads: the processor's topics, with the processor's settings.
public struct TopicAuditOptions: Sendable {
    public var kafka: KafkaConfiguration
    public var inputTopic: String
    public var outputTopic: String
    public var deadLetterTopic: String
    public var configuration: AuditConfiguration
    /// How long start-up waits for the cluster to answer.
    public var connectTimeout: Duration

    public init(kafka: KafkaConfiguration, inputTopic: String, outputTopic: String, deadLetterTopic: String,
                configuration: AuditConfiguration, connectTimeout: Duration = .seconds(15)) {
        self.kafka = kafka
        self.inputTopic = inputTopic
        self.outputTopic = outputTopic
        self.deadLetterTopic = deadLetterTopic
        self.configuration = configuration
        self.connectTimeout = connectTimeout
    }
}

/// A batch reconciliation of the processor's topics, independent of any consumer group or
/// state: every partition of the input, output and dead-letter topics is read from its start to
/// the end offset seen when the audit began (read_committed), through one
/// ``AuditReconciler``, whose lanes are the output partitions (each holds its cards' outputs in
/// the order the processor handled them). At the end, a valid input without output is missing.
public struct TopicAudit {
    public let options: TopicAuditOptions
    let logger: Logger

    public init(options: TopicAuditOptions, logger: Logger = Logger(label: "polyglot.audit")) {
        self.options = options
        self.logger = logger
    }

    private enum Role { case input, output, deadLetter }

    /// Runs the audit on the calling thread (blocking: call it off the cooperative pool),
    /// handing each batch of findings to `findings`. `isStopping` is polled between batches.
    public func run(isStopping: () -> Bool = { false },
                    findings: ([AuditFinding]) throws -> Void) throws -> FileAuditSummary {
        let o = options
        let clock = ContinuousClock()
        let started = clock.now
        let admin = try KafkaAdmin(configuration: o.kafka, logger: logger)
        let counts: [String: Int]
        do {
            defer { admin.close() }
            counts = try InternalTopics.partitionCounts(admin, [o.inputTopic, o.outputTopic, o.deadLetterTopic], kafka: o.kafka,
                                                        timeout: o.connectTimeout, isStopping: isStopping)
        } catch is RuntimeStopped {
            throw ProcessorError("stopped before the audit began")
        }
        let topics: [(String, Role)] = [(o.inputTopic, .input), (o.outputTopic, .output), (o.deadLetterTopic, .deadLetter)]
        for (topic, _) in topics where counts[topic] == nil { throw ProcessorError("topic \(topic) does not exist") }

        var config = o.kafka
        config.set("isolation.level", "read_committed")
        config.set("enable.partition.eof", "true")
        config.set("group.id", "polyglot-audit-once-\(UUID().uuidString.lowercased())")
        config.setDefault("fetch.wait.max.ms", "10")
        StreamRuntime<FraudDetectionRole>.setPrefetchDefaults(&config)
        let consumer = try KafkaConsumer(configuration: config, logger: logger)
        defer { consumer.close() }
        // The end offsets seen now: records written later are the next audit's.
        var remaining: [KafkaTopicPartition: Int64] = [:]
        var starts: [KafkaTopicPartitionOffset] = []
        for (topic, _) in topics {
            for p in 0..<Int32(counts[topic]!) {
                let tp = KafkaTopicPartition(topic, p)
                let marks = try consumer.queryWatermarks(tp, timeout: .seconds(30))
                if marks.high > marks.low { remaining[tp] = marks.high }
                starts.append(KafkaTopicPartitionOffset(tp, offset: KafkaOffset.beginning))
            }
        }
        try consumer.assign(starts)
        let reconciler = AuditReconciler(configuration: o.configuration)
        let roleOf = Dictionary(uniqueKeysWithValues: topics.map { ($0.0, $0.1) })
        var inputsLeft = Set(remaining.keys.filter { $0.topic == o.inputTopic })
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        var lastProgress = clock.now
        while !remaining.isEmpty {
            if isStopping() { throw ProcessorError("stopped before the audit finished") }
            _ = try consumer.pollBorrowing(maxMessages: 10_000, timeout: .milliseconds(100)) { m in
                let tp = KafkaTopicPartition(m.topic, m.partition)
                guard let end = remaining[tp], m.offset < end, let role = roleOf[m.topic] else { return }
                let position = AuditPosition.record(topic: m.topic, partition: m.partition, offset: m.offset)
                switch role {
                case .input:
                    reconciler.input(m.value ?? empty, position: position, kafkaTimestamp: m.timestamp)
                case .output:
                    reconciler.output(m.value ?? empty, position: position, lane: m.partition,
                                      source: m.header("polyglot-source").flatMap { AuditPosition(source: String(decoding: $0, as: UTF8.self)) },
                                      fingerprint: m.header("polyglot-fingerprint").map { String(decoding: $0, as: UTF8.self) })
                case .deadLetter:
                    reconciler.deadLetter(m.value ?? empty, code: m.header("polyglot-error").map { String(decoding: $0, as: UTF8.self) },
                                          source: m.header("polyglot-source").flatMap { AuditPosition(source: String(decoding: $0, as: UTF8.self)) },
                                          position: position)
                }
                if m.offset + 1 >= end { remaining[tp] = nil }
            }
            // Transaction markers end a partition without a record: the end-of-partition
            // position says it is read.
            for (tp, end) in remaining {
                if let eof = consumer.endOfPartition(tp), eof >= end { remaining[tp] = nil }
            }
            if !inputsLeft.isEmpty {
                inputsLeft = inputsLeft.filter { remaining[$0] != nil }
                if inputsLeft.isEmpty { reconciler.endOfInputs() }
            }
            try findings(reconciler.takeFindings())
            if clock.now - lastProgress >= .seconds(5) {
                lastProgress = clock.now
                let c = reconciler.counts
                logger.info("auditing", metadata: ["inputs": "\(c.inputs)", "outputs": "\(c.outputs)", "partitionsLeft": "\(remaining.count)"])
            }
        }
        reconciler.endOfInputs()
        reconciler.finish()
        try findings(reconciler.takeFindings())
        return FileAuditSummary(counts: reconciler.counts, seconds: ProgressBar.seconds(clock.now - started))
    }
}
