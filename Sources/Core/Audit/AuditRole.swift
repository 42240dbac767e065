import Foundation
import Logging
import Synchronization

/// Everything the continuous auditor needs, already validated.
public struct AuditorConfiguration: Sendable {
    /// The processor's settings, resolved the same way: Kafka, its topics, the state directory,
    /// the guarantee, the partitioner and the detector's parameters. Its `applicationID` is the
    /// auditor's own consumer group, and the prefix of the auditor's internal topics.
    public var runtime: ProcessorConfiguration
    /// The high-value threshold and the fingerprint the auditor checks against.
    public var audit: AuditConfiguration
    /// Where findings go, one JSON record each, keyed by transaction id.
    public var findingsTopic: String
    /// How long after the auditor read it a valid input may wait for its output (or dead letter)
    /// before it is missing; also how long an output or dead letter waits for its input.
    public var settle: Duration

    public static let defaultGroupID = DevBrokerOptions.auditorGroupID
    public static let defaultFindingsTopic = DevBrokerOptions.findingsTopic

    public init(runtime: ProcessorConfiguration, audit: AuditConfiguration, findingsTopic: String = Self.defaultFindingsTopic,
                settle: Duration = .seconds(30)) {
        self.runtime = runtime
        self.audit = audit
        self.findingsTopic = findingsTopic
        self.settle = settle
    }

    /// `<group>-ledger-changelog`: the auditor's store.
    public var changelogTopic: String { "\(runtime.applicationID)-ledger-changelog" }
    /// `<group>-repartition`: inputs read away from their card's partition go there, to the task
    /// that reads that card's outputs.
    public var repartitionTopic: String { "\(runtime.applicationID)-repartition" }

    public func validate() throws(ConfigurationError) {
        try runtime.validate()
        guard ProcessorConfiguration.isValidTopicName(findingsTopic) else {
            throw ConfigurationError("invalid findings topic name '\(findingsTopic)' (1 to 249 of [a-zA-Z0-9._-])")
        }
        let r = runtime
        guard Set([r.inputTopic, r.outputTopic, r.deadLetterTopic, findingsTopic, changelogTopic, repartitionTopic]).count == 6 else {
            throw ConfigurationError("the findings topic and the auditor's internal topics must differ from the processor's topics")
        }
        guard settle >= .zero else { throw ConfigurationError("the settle time must not be negative") }
    }
}

/// `polyglot audit` as a role on the ``StreamRuntime``, beside the processor's: SEMANTICS.md §5,
/// continuously and exactly once.
///
/// Task p reads partition p of the input, output and dead-letter topics, and of its own
/// repartition topic. The processor writes a card's output to the card's partition and a dead
/// letter to its input's partition, so task p sees every output of its cards and every dead
/// letter of its inputs; an input read on a partition that is not its card's is forwarded,
/// unchanged, to that partition of the repartition topic, and reconciled there. Each task runs
/// an ``AuditReconciler`` whose one lane is its output partition, over its ``AuditStore``: the
/// ledger and the window store it recomputes verdicts in are changelogged and committed with the
/// findings, which go to the findings topic in the same transaction; a finding is logged, and
/// counted, once its transaction committed.
///
/// Used from the runtime's thread only; ``counts`` may be read from any thread.
public final class AuditRole: StreamRole, @unchecked Sendable {
    // @unchecked: the scratch state and topic handles are used on the runtime's thread only;
    // `shared` is locked, and the logger is Sendable.
    public typealias Task = AuditTask

    public let configuration: AuditorConfiguration
    public let sources: [SourceTopic]
    public var changelogTopic: String { configuration.changelogTopic }
    public var sinkTopics: [String] { [configuration.findingsTopic] }
    /// Expiry runs once a second: a settle time is seconds long.
    public var punctuationInterval: Duration? { .seconds(1) }

    static let input = 0
    static let repartition = 1
    static let output = 2
    static let deadLetter = 3

    let logger: Logger
    let inputTopicBytes: [UInt8]
    let fingerprintBytes: [UInt8]
    let findingBuffer = ByteBuffer(capacity: 2_048)
    struct Topics {
        var findings: KafkaProducerTopic
        var repartition: KafkaProducerTopic
    }
    var topics: Topics?
    private let shared = Mutex(AuditCounts())

    public init(configuration: AuditorConfiguration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
        let r = configuration.runtime
        sources = [SourceTopic(r.inputTopic), SourceTopic(configuration.repartitionTopic, isInternal: true),
                   SourceTopic(r.outputTopic), SourceTopic(r.deadLetterTopic)]
        inputTopicBytes = Array(r.inputTopic.utf8)
        fingerprintBytes = Array(configuration.audit.fingerprintDigest.map { Array($0.utf8) } ?? [])
    }

    /// Counts of committed work: records read and findings by kind.
    public var counts: AuditCounts { shared.withLock { $0 } }

    public func openStore(directory: String) throws(SQLiteError) -> AuditStore {
        try AuditStore(directory: directory, parameters: configuration.runtime.parameters, options: configuration.runtime.storeOptions)
    }

    public func destroyStore(directory: String) throws(SQLiteError) {
        try AuditStore.destroy(directory: directory)
    }

    public func makeTask(partition: Int32, partitionCount: Int, store: AuditStore, collector: RecordCollector) throws -> AuditTask {
        if topics == nil {
            topics = Topics(findings: try collector.topic(configuration.findingsTopic),
                            repartition: try collector.topic(configuration.repartitionTopic))
        }
        store.ledger.loadQueue()
        return AuditTask(role: self, partition: partition, partitionCount: Int32(partitionCount), store: store, collector: collector)
    }

    public func didHandleBatch() {}

    public static let metricFamilies: [MetricFamily] = [
        .counter("polyglot_audit_findings_total", help: "Audit findings committed, by kind."),
        .counter("polyglot_audit_records_total", help: "Records the auditor reconciled, by what they are (input, output, dead_letter)."),
    ]

    /// The committed counts as samples of ``metricFamilies``: every kind, seen or not.
    public var metricSamples: [MetricSample] {
        let c = counts
        let kinds: [(String, Int)] = [("missing", c.missing), ("duplicate", c.duplicate), ("orphan", c.orphan), ("mismatch", c.mismatch),
                                      ("high_value", c.highValue), ("flagged", c.flagged), ("drift", c.drift), ("unreadable", c.unreadable)]
        return kinds.map { MetricSample("polyglot_audit_findings_total", labels: ["kind": $0.0], value: $0.1) }
            + [("input", c.inputs), ("output", c.outputs), ("dead_letter", c.deadLetters)].map {
                MetricSample("polyglot_audit_records_total", labels: ["record": $0.0], value: $0.1)
            }
    }

    public var summary: [String: String] {
        Dictionary(uniqueKeysWithValues: counts.entries.map { ($0.name, "\($0.value)") })
    }

    /// A committed cycle's findings and counts.
    func publish(_ findings: [AuditFinding], _ counts: AuditCounts) {
        for finding in findings {
            logger.warning("\(finding.logLine)", metadata: ["kind": "\(finding.kind.rawValue)"])
        }
        shared.withLock { $0.add(counts) }
    }

    /// Sends one finding to the findings topic, keyed by its transaction id.
    func send(_ finding: AuditFinding, collector: RecordCollector) {
        findingBuffer.removeAll()
        finding.appendJSON(to: findingBuffer)
        let fingerprint = fingerprintBytes
        let key = finding.transactionId.map { Array($0.utf8) }
        let send = { (key: UnsafeRawBufferPointer?) in
            collector.send(to: self.topics!.findings, key: key, value: self.findingBuffer.bytes) { headers in
                if !fingerprint.isEmpty { fingerprint.withUnsafeBytes { headers.add("polyglot-fingerprint", $0) } }
            }
        }
        if let key { key.withUnsafeBytes { send($0) } } else { send(nil) }
    }
}

/// One partition's audit: its reconciler over its store.
public final class AuditTask: StreamTask {
    unowned let role: AuditRole
    let partition: Int32
    let partitionCount: Int32
    public let store: AuditStore
    let collector: RecordCollector
    private var reconciler: AuditReconciler<SQLiteWindowStore>
    private var decoder = TransactionDecoder()
    private let outputTopic: String
    private let deadLetterTopic: String
    private let settleMilliseconds: Int64
    /// Findings and counts of the open cycle, and of the sealed one whose commit is in flight.
    private var cycleFindings: [AuditFinding] = []
    private var sealedFindings: [AuditFinding] = []
    private var sealedCounts = AuditCounts()
    private let source = ByteBuffer(capacity: 256)

    init(role: AuditRole, partition: Int32, partitionCount: Int32, store: AuditStore, collector: RecordCollector) {
        self.role = role
        self.partition = partition
        self.partitionCount = partitionCount
        self.store = store
        self.collector = collector
        outputTopic = role.configuration.runtime.outputTopic
        deadLetterTopic = role.configuration.runtime.deadLetterTopic
        let settle = role.configuration.settle.components
        settleMilliseconds = settle.seconds * 1000 + settle.attoseconds / 1_000_000_000_000_000
        reconciler = Self.reconciler(role: role, store: store)
    }

    private static func reconciler(role: AuditRole, store: AuditStore) -> AuditReconciler<SQLiteWindowStore> {
        AuditReconciler(configuration: role.configuration.audit, ledger: store.ledger, windows: { _ in store.windows })
    }

    static func wallClock() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    public func handle(_ m: borrowing KafkaRecordView, source from: Int) throws {
        let value = m.value ?? UnsafeRawBufferPointer(start: nil, count: 0)
        let now = Self.wallClock()
        switch from {
        case AuditRole.input:
            let position = AuditPosition.record(topic: role.configuration.runtime.inputTopic, partition: m.partition, offset: m.offset)
            // Read once, here: the reader's view says where the card belongs and is what the
            // reconciler checks. A rejected record is reconciled here, with its dead letter.
            let parameters = role.configuration.runtime.parameters
            if m.value != nil, let view = try? decoder.decodeView(value, kafkaTimestamp: m.timestamp, maxFutureSkew: parameters.maxFutureSkew) {
                if forwardIfAway(m, value: value, view: view) { return }
                reconciler.input(value, view: view, position: position, readAt: now)
            } else {
                reconciler.input(value, position: position, kafkaTimestamp: m.timestamp, readAt: now)
            }
        case AuditRole.repartition:
            let position = m.header("polyglot-source").flatMap {
                TopicAudit.position($0, inputTopic: role.configuration.runtime.inputTopic, inputTopicBytes: role.inputTopicBytes)
            } ?? .record(topic: role.configuration.repartitionTopic, partition: m.partition, offset: m.offset)
            reconciler.input(value, position: position, kafkaTimestamp: m.timestamp, readAt: now)
        case AuditRole.output:
            reconciler.output(value, position: .record(topic: outputTopic, partition: m.partition, offset: m.offset),
                              lane: partition, source: sourcePosition(m), fingerprint: m.header("polyglot-fingerprint").map {
                                  String(decoding: $0, as: UTF8.self)
                              }, receivedAt: now)
        default:
            reconciler.deadLetter(value, code: m.header("polyglot-error").map { String(decoding: $0, as: UTF8.self) },
                                  source: sourcePosition(m),
                                  position: .record(topic: deadLetterTopic, partition: m.partition, offset: m.offset),
                                  receivedAt: now)
        }
        sendFindings()
    }

    private func sourcePosition(_ m: borrowing KafkaRecordView) -> AuditPosition? {
        m.header("polyglot-source").flatMap {
            TopicAudit.position($0, inputTopic: role.configuration.runtime.inputTopic, inputTopicBytes: role.inputTopicBytes)
        }
    }

    /// A valid input whose card belongs to another partition goes there, through the auditor's
    /// repartition topic, by the processor's rule; true when it went.
    private func forwardIfAway(_ m: borrowing KafkaRecordView, value: UnsafeRawBufferPointer, view: TransactionView) -> Bool {
        let record = value.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let escaped: Transaction? = view.idsAreRaw ? nil : decoder.transaction(from: view, in: value)
        var home: Int32 = partition
        FraudDetectionRole.withCardBytes(view: view, record: record, escaped: escaped) { card in
            home = role.configuration.runtime.partitioner.partition(of: card, count: partitionCount)
            guard home != partition else { return }
            source.removeAll()
            source.append(role.inputTopicBytes)
            source.append(UInt8(ascii: "/"))
            source.appendInteger(Int64(m.partition))
            source.append(UInt8(ascii: "/"))
            source.appendInteger(m.offset)
            let source = source
            collector.send(to: role.topics!.repartition, partition: home, key: UnsafeRawBufferPointer(card), value: value,
                           timestamp: m.timestamp) { headers in
                headers.add("polyglot-source", source.bytes)
            }
        }
        return home != partition
    }

    private func sendFindings() {
        let findings = reconciler.takeFindings()
        guard !findings.isEmpty else { return }
        for finding in findings { role.send(finding, collector: collector) }
        cycleFindings += findings
    }

    public func heldBack(source: Int) -> Int64? {
        guard source == AuditRole.output, case .record(_, _, let offset)? = reconciler.firstWaitingOutput(lane: partition) else {
            return nil
        }
        return offset
    }

    public func punctuate(wallClock: Int64) throws -> Bool {
        let changed = reconciler.expire(olderThan: wallClock - settleMilliseconds)
        sendFindings()
        return changed
    }

    public func sealed() {
        sealedFindings += cycleFindings
        cycleFindings.removeAll()
        sealedCounts.add(reconciler.takeCounts())
    }

    public func committed() {
        role.publish(sealedFindings, sealedCounts)
        sealedFindings.removeAll()
        sealedCounts = AuditCounts()
    }

    public func rolledBack() {
        // The store (ledger and windows) is back at the last commit; what the reconciler holds in
        // memory (waiting outputs, the lane's detector) is derived from records read since then,
        // which the runtime reads again.
        reconciler = Self.reconciler(role: role, store: store)
        cycleFindings.removeAll()
        sealedFindings.removeAll()
        sealedCounts = AuditCounts()
    }
}

extension AuditCounts {
    mutating func add(_ other: AuditCounts) {
        inputs += other.inputs
        outputs += other.outputs
        deadLetters += other.deadLetters
        missing += other.missing
        duplicate += other.duplicate
        orphan += other.orphan
        mismatch += other.mismatch
        highValue += other.highValue
        flagged += other.flagged
        drift += other.drift
        unreadable += other.unreadable
    }
}

/// `polyglot audit`, continuous: the audit role (``AuditRole``) on the stream runtime, with the
/// auditor's settings.
public final class ContinuousAuditor: Sendable {
    public let configuration: AuditorConfiguration
    public let role: AuditRole
    public let runtime: StreamRuntime<AuditRole>

    /// `observer` hears of each commit (``RoleMetrics`` is one).
    public init(configuration: AuditorConfiguration, logger: Logger = Logger(label: "polyglot.audit"),
                observer: (any RuntimeObserver)? = nil) throws(ConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        role = AuditRole(configuration: configuration, logger: logger)
        runtime = StreamRuntime(role: role, configuration: RuntimeConfiguration(role: configuration.runtime), logger: logger,
                                observer: observer)
    }

    /// What `/metrics` and `/healthz` show.
    public var snapshot: RoleSnapshot {
        RoleSnapshot(runtime: runtime.statistics, samples: role.metricSamples)
    }

    /// Asks the run to finish: it commits (or aborts) the open transaction, leaves the group and
    /// returns. Any thread.
    public func requestStop() { runtime.requestStop() }

    /// Committed counts: records read and findings by kind.
    public var counts: AuditCounts { role.counts }
}
