import Foundation
import Logging
import Synchronization
import PolyglotSupport
import FraudModel
import KafkaClient
import StateStore
import StreamEngine
import Observability

/// Settings of `polyglot demo`.
public struct DemoOptions: Sendable {
    /// Transactions generated (malformed ones included).
    public var records: Int
    public var cards: Int
    public var partitions: Int
    /// Fraction of malformed lines.
    public var badFraction: Double
    /// Up to this many ms of event-time disorder, so some records arrive late.
    public var jitter: Int64
    public var seed: UInt64
    /// Leave both roles running after the audit, until graceful shutdown.
    public var keepRunning: Bool
    /// The auditor's settle time: how long after the processor caught up the demo still waits
    /// for an output before the auditor calls its input missing.
    public var settle: Duration
    /// Where the generated input and both roles' state go (a new temporary directory when nil).
    public var workDirectory: String?
    /// The environment fingerprint both roles stamp and check (the running one's when nil).
    public var fingerprintDigest: String?
    /// The window kind of the processor and the auditor (the other parameters are the defaults).
    public var windowKind: WindowKind = .tumbling

    public init(records: Int = 20_000, cards: Int = 2_000, partitions: Int = 6, badFraction: Double = 0.01,
                jitter: Int64 = 20_000, seed: UInt64 = 1, keepRunning: Bool = false, settle: Duration = .seconds(10),
                workDirectory: String? = nil) {
        self.records = records
        self.cards = cards
        self.partitions = partitions
        self.badFraction = badFraction
        self.jitter = jitter
        self.seed = seed
        self.keepRunning = keepRunning
        self.settle = settle
        self.workDirectory = workDirectory
    }

    public func validate() throws(ConfigurationError) {
        guard records >= 1 else { throw ConfigurationError("--records must be at least 1, got \(records)") }
        guard cards >= 1 else { throw ConfigurationError("--cards must be at least 1, got \(cards)") }
        guard (0...1).contains(badFraction) else { throw ConfigurationError("--bad must be between 0 and 1, got \(badFraction)") }
        guard (1...1_000).contains(partitions) else { throw ConfigurationError("--partitions must be between 1 and 1000, got \(partitions)") }
        guard settle >= .zero else { throw ConfigurationError("--settle must not be negative") }
    }
}

/// What the demo shows while it runs.
public struct DemoProgress: Sendable, Hashable {
    public var loaded = 0
    public var processed = 0
    public var flagged = 0
    public var deadLetters = 0
    /// Input records loaded but not yet processed.
    public var lag: Int { max(0, loaded - processed) }
    public var audited = 0
    public var discrepancies = 0
    /// Whether both roles hold their partitions (the dev broker makes a new group wait a few
    /// seconds).
    public var assigned = false

    /// One terminal line.
    public var line: String {
        (assigned ? "" : "joining the consumer groups  ") + "records \(processed)/\(loaded)  flagged \(flagged)  dead letters \(deadLetters)  lag \(lag)  audited \(audited)  discrepancies \(discrepancies)"
    }
}

/// What the demo found.
public struct DemoSummary: Sendable {
    public var records: Int
    public var outputs: Int
    public var flagged: Int
    /// Dead letters by their `polyglot-error` code, as read back from the dead-letter topic.
    public var rejectedByCode: [String: Int]
    public var audit: AuditCounts
    public var seconds: Double

    /// Whether the audit found no discrepancy: the demo's exit status.
    public var isClean: Bool { !audit.hasDiscrepancies }

    /// The final summary, several lines.
    public var text: String {
        var lines = ["demo: \(records) transactions in \(String(format: "%.1f", seconds)) s: \(outputs) enriched, \(flagged) flagged, \(rejectedByCode.values.reduce(0, +)) rejected"]
        if !rejectedByCode.isEmpty {
            lines.append("  rejected by code: " + rejectedByCode.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))
        }
        let a = audit
        lines.append("  audit findings: missing \(a.missing), duplicate \(a.duplicate), orphan \(a.orphan), mismatch \(a.mismatch), drift \(a.drift), unreadable \(a.unreadable), highValue \(a.highValue), flagged \(a.flagged)")
        lines.append(isClean ? "  audit: clean, every verdict recomputed and equal" : "  audit: DISCREPANCIES (see the findings topic audit-findings)")
        return lines.joined(separator: "\n")
    }
}

/// `polyglot demo`: the whole pipeline in one process, with no Kafka installed. The dev broker
/// (librdkafka's mock cluster) starts in-process with the pipeline's topics; generated
/// transactions (bursts, late and malformed lines) are loaded as `polyglot produce` loads them;
/// the processor and the continuous auditor run on them as they run in production, each on its
/// runtime thread; the demo ends when the auditor has matched every input (or, after the
/// processor caught up, the settle time has passed) and reads the dead letters back by code.
public final class PipelineDemo: Sendable {
    public let options: DemoOptions
    private let logger: Logger
    private let processorObserver: (any RuntimeObserver)?
    private let auditorObserver: (any RuntimeObserver)?
    private let stopRequested = Atomic<Bool>(false)
    /// A role that fails ends the demo: its error is the demo's.
    private let roleFailed = Atomic<Bool>(false)

    /// The observers hear of each role's commits (``RoleMetrics`` is one).
    public init(options: DemoOptions, logger: Logger, processorObserver: (any RuntimeObserver)? = nil,
                auditorObserver: (any RuntimeObserver)? = nil) throws(ConfigurationError) {
        try options.validate()
        self.options = options
        self.logger = logger
        self.processorObserver = processorObserver
        self.auditorObserver = auditorObserver
    }

    /// Ends the demo early (or, with `keepRunning`, at all): both roles commit and stop. Any thread.
    public func requestStop() { stopRequested.store(true, ordering: .releasing) }

    private var isStopping: Bool { stopRequested.load(ordering: .acquiring) }

    /// The roles, once started: for `onStarted` (HTTP endpoints, say).
    public struct Roles: Sendable {
        public let processor: StreamProcessor
        public let auditor: ContinuousAuditor
    }

    /// Runs the demo. `progress` is called about four times a second; `onStarted` once both
    /// roles exist.
    public func run(progress: @escaping @Sendable (DemoProgress) -> Void,
                    onStarted: @escaping @Sendable (Roles) async throws -> Void = { _ in }) async throws -> DemoSummary {
        let o = options
        let clock = ContinuousClock()
        let started = clock.now
        let work = try o.workDirectory ?? Self.temporaryDirectory()
        defer { if o.workDirectory == nil { try? FileManager.default.removeItem(atPath: work) } }

        let brokerOptions = DevBrokerOptions(partitions: o.partitions)
        let cluster = try MockCluster(brokers: 1, logger: logger)
        defer { cluster.destroy() }
        for topic in brokerOptions.topics { try cluster.createTopic(topic, partitions: o.partitions) }
        var kafka = KafkaConfiguration()
        kafka.set("bootstrap.servers", cluster.bootstrapServers)
        // The mock cluster waits this long (less a second) before a group's first assignment.
        kafka.set("session.timeout.ms", "6000")
        kafka.set("heartbeat.interval.ms", "500")

        // Event times end within the last hour or two, so nothing is future-skewed against the
        // records' Kafka timestamps. They start on the hour: windows are aligned to the epoch
        // and an hour holds a whole number of them, so every run with the same seed puts each
        // record in the same window and gives the same verdicts, whenever it runs.
        let rate = 200
        let generator = try GeneratorOptions(count: o.records, cards: o.cards, seed: o.seed, ratePerSecond: rate,
                                             badFraction: o.badFraction, jitter: o.jitter,
                                             startTime: Self.startTime(records: o.records, ratePerSecond: rate))
        let input = work + "/transactions.jsonl"
        try GeneratedFile.write(options: generator, to: input)

        let digest = try o.fingerprintDigest ?? EnvironmentFingerprint.runningDigest()
        var processorConfiguration = ProcessorConfiguration(
            kafka: kafka, stateDirectory: work + "/state", fingerprintDigest: digest, instanceID: "demo")
        processorConfiguration.storeOptions = SQLiteWindowStore.Options(integrityCheck: .quick)
        processorConfiguration.parameters = try DetectorParameters(kind: o.windowKind)
        var auditorRuntime = processorConfiguration
        auditorRuntime.applicationID = AuditorConfiguration.defaultGroupID
        let auditorConfiguration = AuditorConfiguration(
            pipeline: auditorRuntime,
            audit: AuditConfiguration(parameters: auditorRuntime.parameters, fingerprintDigest: digest),
            processorGroup: processorConfiguration.applicationID, settle: o.settle)
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .error)
        let processor = try StreamProcessor(configuration: processorConfiguration, logger: quiet, observer: processorObserver)
        let auditor = try ContinuousAuditor(configuration: auditorConfiguration, logger: quiet, observer: auditorObserver)

        let loaded = try await InputLoader(configuration: InputLoaderConfiguration(input: input, kafka: kafka), logger: quiet)
            .runOnDedicatedThread()
        let expected = loaded.records

        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                do { try await processor.runOnDedicatedThread() } catch {
                    self.roleFailed.store(true, ordering: .releasing)
                    throw error
                }
            }
            group.addTask {
                do { try await auditor.runtime.runOnDedicatedThread(threadName: "polyglot-audit") } catch {
                    self.roleFailed.store(true, ordering: .releasing)
                    throw error
                }
            }
            defer {
                processor.requestStop()
                auditor.requestStop()
            }
            try await onStarted(Roles(processor: processor, auditor: auditor))
            var caughtUpAt: ContinuousClock.Instant?
            var finished = false
            while !isStopping, !roleFailed.load(ordering: .acquiring) {
                let p = processor.statistics, a = auditor.counts
                let handled = p.outputs + p.deadLetters
                progress(DemoProgress(loaded: expected, processed: handled, flagged: p.flagged, deadLetters: p.deadLetters,
                                      audited: a.inputs, discrepancies: Self.discrepancies(a),
                                      assigned: p.assignedPartitions > 0 && auditor.runtime.statistics.assignedPartitions > 0))
                if !finished {
                    if handled >= expected, caughtUpAt == nil { caughtUpAt = clock.now }
                    let matched = a.inputs == expected && a.outputs == p.outputs && a.deadLetters == p.deadLetters && handled >= expected
                    // An input the processor lost is missing only once the settle time has passed.
                    let settled = caughtUpAt.map { clock.now - $0 >= o.settle + .seconds(2) } ?? false
                    if matched || settled {
                        finished = true
                        if !o.keepRunning { break }
                        logger.notice("the demo keeps running until Ctrl-C")
                    }
                }
                try await Task.sleep(for: .milliseconds(250))
            }
            processor.requestStop()
            auditor.requestStop()
            try await group.waitForAll()
            let p = processor.statistics
            let rejected = try await Self.countDeadLetters(kafka: kafka, topic: PipelineNames.deadLetterTopic,
                                                          partitions: o.partitions, expected: p.deadLetters, logger: quiet)
            return DemoSummary(records: expected, outputs: p.outputs, flagged: p.flagged, rejectedByCode: rejected,
                               audit: auditor.counts, seconds: (clock.now - started).inSeconds)
        }
    }

    /// The first event time: the start of the hour before the one `records` at
    /// `ratePerSecond` would have to begin in to end `now`.
    static func startTime(records: Int, ratePerSecond: Int, now: Int64 = Int64(Date().timeIntervalSince1970 * 1000)) -> Int64 {
        let hour: Int64 = 3_600_000
        let span = Int64(records) * 1000 / Int64(ratePerSecond)
        return (now - span) / hour * hour
    }

    static func discrepancies(_ c: AuditCounts) -> Int {
        c.missing + c.duplicate + c.orphan + c.mismatch + c.drift + c.unreadable
    }

    static func temporaryDirectory() throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("polyglot-demo-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// The dead-letter topic read back (read_committed) by `polyglot-error` code.
    static func countDeadLetters(kafka: KafkaConfiguration, topic: String, partitions: Int, expected: Int,
                                 logger: Logger) async throws -> [String: Int] {
        var config = kafka
        config.set("isolation.level", "read_committed")
        config.set("group.id", "polyglot-demo-\(UUID().uuidString.lowercased())")
        config.set("enable.partition.eof", "true")
        let consumer = try KafkaConsumer(configuration: config, logger: logger)
        return try await withCheckedThrowingContinuation { continuation in
            DedicatedThread.detach(name: "polyglot-demo") {
                continuation.resume(with: Result {
                    defer { consumer.close() }
                    try consumer.assign((0..<Int32(partitions)).map {
                        KafkaTopicPartitionOffset(topic, $0, offset: KafkaOffset.beginning)
                    })
                    var counts: [String: Int] = [:]
                    var read = 0
                    let deadline = ContinuousClock.now + .seconds(20)
                    while read < expected, ContinuousClock.now < deadline {
                        _ = try consumer.pollBorrowing(maxMessages: 10_000, timeout: .milliseconds(100)) { m in
                            let code = m.header(HeaderName.error).map { String(decoding: $0, as: UTF8.self) } ?? "(none)"
                            counts[code, default: 0] += 1
                            read += 1
                        }
                    }
                    return counts
                })
            }
        }
    }
}
