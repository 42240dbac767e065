import Foundation
import Logging
import PolyglotSupport
import FraudModel
import KafkaClient
import StreamEngine
import Observability

/// What `polyglot audit --once` reads: the processor's topics, with the processor's settings.
public struct TopicAuditOptions: Sendable {
    public var kafka: KafkaConfiguration
    public var inputTopic: String
    public var outputTopic: String
    public var deadLetterTopic: String
    public var configuration: AuditConfiguration
    /// The processor's partitioner: which output partition holds a card's outputs.
    public var partitioner: KafkaPartitioner
    /// How long start-up waits for the cluster to answer.
    public var connectTimeout: Duration

    public init(kafka: KafkaConfiguration, inputTopic: String, outputTopic: String, deadLetterTopic: String,
                configuration: AuditConfiguration, partitioner: KafkaPartitioner = .murmur2, connectTimeout: Duration = .seconds(15)) {
        self.partitioner = partitioner
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
            throw RuntimeError("stopped before the audit began")
        }
        let topics: [(String, Role)] = [(o.inputTopic, .input), (o.outputTopic, .output), (o.deadLetterTopic, .deadLetter)]
        for (topic, _) in topics where counts[topic] == nil { throw RuntimeError("topic \(topic) does not exist") }

        var config = o.kafka
        config.set("isolation.level", "read_committed")
        config.set("enable.partition.eof", "true")
        config.set("group.id", "polyglot-audit-once-\(UUID().uuidString.lowercased())")
        config.setDefault("fetch.wait.max.ms", "10")
        // A quarter of the processor's prefetch: the audit reads ~100 partitions at once, and
        // what waits in librdkafka's queue counts in its memory as much as what waits here.
        config.setDefault("queued.max.messages.kbytes", "32768")
        config.setConsumerPrefetchDefaults()
        let consumer = try KafkaConsumer(configuration: config, logger: logger)
        defer { consumer.close() }
        // The end offsets seen now: records written later are the next audit's.
        let partitions = topics.flatMap { topic, _ in (0..<Int32(counts[topic]!)).map { KafkaTopicPartition(topic, $0) } }
        let ends = try consumer.endOffsets(partitions, timeout: .seconds(30))
        let firsts = try consumer.beginningOffsets(partitions, timeout: .seconds(30))
        // The end offset still to reach per topic (in `topics` order) and partition; -1: done.
        var remaining: [[Int64]] = topics.map { topic, _ in Array(repeating: -1, count: counts[topic]!) }
        var left = 0
        for tp in partitions {
            guard let end = ends[tp], end > (firsts[tp] ?? 0) else { continue }
            remaining[topics.firstIndex { $0.0 == tp.topic }!][Int(tp.partition)] = end
            left += 1
        }
        var inputsLeft = remaining[0].filter { $0 >= 0 }.count
        try consumer.assign(partitions.map { KafkaTopicPartitionOffset($0, offset: KafkaOffset.beginning) })
        let reconciler = AuditReconciler(configuration: o.configuration)
        // Retention may have deleted the oldest records of a partition before this audit: they
        // are reported as `truncated`, and the records around the gap are judged with that known.
        var truncation = AuditTruncation(outputTopic: o.outputTopic, deadLetterTopic: o.deadLetterTopic)
        truncation.deadLettersOnInputPartitions = counts[o.deadLetterTopic] == counts[o.inputTopic]
        for tp in partitions {
            guard let first = firsts[tp], first > 0 else { continue }
            switch topics.first(where: { $0.0 == tp.topic })!.1 {
            case .input: truncation.inputs[tp.partition] = first
            case .output: truncation.outputs[tp.partition] = first
            case .deadLetter: truncation.deadLetters[tp.partition] = first
            }
        }
        if !truncation.isEmpty {
            let partitioner = o.partitioner, outputCount = Int32(counts[o.outputTopic]!)
            reconciler.setTruncation(truncation, inputTopic: o.inputTopic) { card in
                var card = card
                return card.withUTF8 { partitioner.partition(of: $0, count: outputCount) }
            }
            logger.warning("records were deleted before the audit could read them; they are reported as truncated", metadata: [
                "partitions": "\(truncation.inputs.count + truncation.outputs.count + truncation.deadLetters.count)",
            ])
        }
        let topicNames = topics.map(\.0)
        let inputTopicBytes = Array(o.inputTopic.utf8)
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        var fingerprints = RepeatedHeaderText(), detectors = RepeatedHeaderText()
        func source(_ bytes: UnsafeRawBufferPointer?) -> AuditPosition? {
            guard let bytes else { return nil }
            return Self.position(bytes, inputTopic: o.inputTopic, inputTopicBytes: inputTopicBytes)
        }
        func finishPartition(_ t: Int, _ p: Int) {
            remaining[t][p] = -1
            left -= 1
            if t == 0 {
                inputsLeft -= 1
                if inputsLeft == 0 { reconciler.endOfInputs() }
            }
        }
        var lastProgress = clock.now
        var balance = ReadBalance()
        func side(_ role: Role) -> [KafkaTopicPartition] {
            let t = topics.firstIndex { $0.1 == role }!
            return remaining[t].indices.filter { remaining[t][$0] >= 0 }.map { KafkaTopicPartition(topicNames[t], Int32($0)) }
        }
        while left > 0 {
            if isStopping() { throw RuntimeError("stopped before the audit finished") }
            var inputsRead = 0, outputsRead = 0
            _ = try consumer.pollBorrowing(maxMessages: 10_000, timeout: .milliseconds(100)) { m in
                guard let t = topicNames.firstIndex(of: m.topic), m.partition >= 0, Int(m.partition) < remaining[t].count else { return }
                let p = Int(m.partition)
                let end = remaining[t][p]
                guard m.offset < end else { return }
                let position = AuditPosition.record(topic: topicNames[t], partition: m.partition, offset: m.offset)
                switch topics[t].1 {
                case .input:
                    inputsRead += 1
                    reconciler.input(m.value ?? empty, position: position, kafkaTimestamp: m.timestamp)
                case .output:
                    outputsRead += 1
                    reconciler.output(m.value ?? empty, position: position, lane: m.partition,
                                      source: source(m.header(HeaderName.source)),
                                      fingerprint: fingerprints.text(of: m.header(HeaderName.fingerprint)),
                                      detector: detectors.text(of: m.header(DetectorParameters.headerName)))
                case .deadLetter:
                    reconciler.deadLetter(m.value ?? empty, code: m.header(HeaderName.error).map { String(decoding: $0, as: UTF8.self) },
                                          source: source(m.header(HeaderName.source)), position: position)
                }
                if m.offset + 1 >= end { finishPartition(t, p) }
            }
            // Transaction markers end a partition without a record: the end-of-partition
            // position says it is read.
            for t in remaining.indices {
                for p in remaining[t].indices where remaining[t][p] >= 0 {
                    if let eof = consumer.endOfPartition(KafkaTopicPartition(topicNames[t], Int32(p))), eof >= remaining[t][p] {
                        finishPartition(t, p)
                    }
                }
            }
            try findings(reconciler.takeFindings())
            let outputsLeft = remaining[1].contains { $0 >= 0 }
            switch balance.update(pendingInputs: reconciler.pendingInputCount ?? 0, waitingOutputs: reconciler.waitingOutputCount,
                                  inputsRead: inputsRead, outputsRead: outputsRead, inputsDone: inputsLeft == 0, outputsDone: !outputsLeft) {
            case .pause(let s)?: try consumer.pause(side(s == .inputs ? .input : .output))
            case .resume(let s)?: try consumer.resume(side(s == .inputs ? .input : .output))
            case nil: break
            }
            if clock.now - lastProgress >= .seconds(5) {
                lastProgress = clock.now
                let c = reconciler.counts
                logger.info("auditing", metadata: ["inputs": .number(c.inputs), "outputs": .number(c.outputs), "partitions_left": .number(left)])
            }
        }
        reconciler.endOfInputs()
        reconciler.finish()
        try findings(reconciler.takeFindings())
        return FileAuditSummary(counts: reconciler.counts, seconds: (clock.now - started).inSeconds)
    }

    /// A `polyglot-source` header (`topic/partition/offset`) without splitting it into Strings:
    /// every output carries one, and its topic is nearly always the input topic.
    static func position(_ bytes: UnsafeRawBufferPointer, inputTopic: String, inputTopicBytes: [UInt8]) -> AuditPosition? {
        guard let second = bytes.lastIndex(of: UInt8(ascii: "/")), second > 0,
              let first = bytes[..<second].lastIndex(of: UInt8(ascii: "/")), first > 0,
              let partition = Int32(decimal: bytes[(first + 1)..<second]), let offset = Int64(decimal: bytes[(second + 1)...])
        else { return nil }
        let topicBytes = bytes[..<first]
        let topic = same(UnsafeRawBufferPointer(rebasing: topicBytes), inputTopicBytes) ? inputTopic : String(decoding: topicBytes, as: UTF8.self)
        return .record(topic: topic, partition: partition, offset: offset)
    }
}

extension TopicAudit {
    /// Byte equality by memcmp (the generic `elementsEqual` showed in profiles).
    @inline(__always)
    static func same(_ a: UnsafeRawBufferPointer, _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        guard let base = a.baseAddress, !b.isEmpty else { return true }
        return b.withUnsafeBytes { memcmp(base, $0.baseAddress!, b.count) == 0 }
    }
}

extension FixedWidthInteger {
    /// A non-negative decimal of 1 to 19 digits, or nil.
    init?(decimal bytes: Slice<UnsafeRawBufferPointer>) {
        guard !bytes.isEmpty, bytes.count <= 19 else { return nil }
        var v: Self = 0
        for b in bytes {
            guard b >= 48, b <= 57 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Self(b - 48))
            guard !o1, !o2 else { return nil }
            v = a
        }
        self = v
    }
}
