import Foundation
import Synchronization
import PolyglotSupport
import FraudModel
import KafkaClient
import StateStore
import StreamEngine
import Observability

/// Counters of the fraud role, beside the runtime's.
public struct FraudDetectionCounters: Sendable, Hashable {
    public var outputs = 0
    public var deadLetters = 0
    /// Of the dead letters, how many per rejection code.
    public var deadLettersByCode: [RejectionCode: Int] = [:]
    public var repartitioned = 0
    public var flagged = 0
    public var late = 0
}

/// `polyglot process` as a role on the ``StreamRuntime``: reads the input topic and its
/// repartition topic, keeps one SQLite window store per partition and, per record, decodes it
/// (SEMANTICS.md §1), moves it to its card's partition when it is elsewhere, runs the detector
/// (§2) and sends one enriched record (§3) or one dead letter (§4).
///
/// Used from the runtime's thread only; ``counters`` may be read from any thread.
public final class FraudDetectionRole: StreamRole, @unchecked Sendable {
    // @unchecked: the scratch buffers, decoder and topic handles are used on the runtime's
    // thread only; `shared` is locked.
    public typealias Task = FraudDetectionTask

    public let configuration: ProcessorConfiguration
    public let sources: [SourceTopic]
    public var changelogTopic: String { configuration.changelogTopic }
    public var sinkTopics: [String] { [configuration.outputTopic, configuration.deadLetterTopic] }

    static let input = 0
    static let repartition = 1

    var decoder = TransactionDecoder()
    let encoder: EnrichedRecordEncoder
    /// Reused per record: the output value and the `polyglot-source` header.
    let out = ByteBuffer(capacity: 4_096)
    let source = ByteBuffer(capacity: 256)
    let fingerprintBytes: [UInt8]
    let inputTopicBytes: [UInt8]
    let versionBytes: [UInt8]
    /// The `polyglot-detector` header of every output and dead letter (SEMANTICS.md §2c).
    let detectorBytes: [UInt8]
    struct Topics {
        var output: KafkaProducerTopic
        var deadLetter: KafkaProducerTopic
        var repartition: KafkaProducerTopic
    }
    var topics: Topics?
    /// Counted per record without a lock, published once per poll.
    var cycle = FraudDetectionCounters()
    /// What the run counts, shared by the role's instances on the run's stream threads.
    private final class Shared: Sendable {
        let counters = Mutex(FraudDetectionCounters())
    }
    private let shared: Shared

    public convenience init(configuration: ProcessorConfiguration) {
        self.init(configuration: configuration, shared: Shared())
    }

    private init(configuration: ProcessorConfiguration, shared: Shared) {
        self.configuration = configuration
        self.shared = shared
        sources = [SourceTopic(configuration.inputTopic, label: "input"),
                   SourceTopic(configuration.repartitionTopic, isInternal: true, label: "repartition")]
        encoder = EnrichedRecordEncoder(parameters: configuration.parameters)
        fingerprintBytes = Array(configuration.fingerprintDigest.utf8)
        inputTopicBytes = Array(configuration.inputTopic.utf8)
        versionBytes = Array(ProductVersion.version.utf8)
        detectorBytes = Array(configuration.parameters.header.utf8)
    }

    public var counters: FraudDetectionCounters { shared.counters.withLock { $0 } }

    /// Another instance for another stream thread of the same run, counting into the same
    /// ``counters``.
    public func makeThreadInstance() -> FraudDetectionRole {
        FraudDetectionRole(configuration: configuration, shared: shared)
    }

    public func openStore(directory: String) throws(SQLiteError) -> SQLiteDetectorStore {
        try SQLiteDetectorStore(directory: directory, parameters: configuration.parameters, options: configuration.storeOptions)
    }

    public func destroyStore(directory: String) throws(SQLiteError) {
        try SQLiteDetectorStore.destroy(directory: directory)
    }

    public func makeTask(partition: Int32, partitionCount: Int, store: SQLiteDetectorStore,
                         collector: RecordCollector) throws -> FraudDetectionTask {
        if topics == nil {
            let c = configuration
            topics = Topics(output: try collector.topic(c.outputTopic), deadLetter: try collector.topic(c.deadLetterTopic),
                            repartition: try collector.topic(c.repartitionTopic))
        }
        let c = configuration
        return FraudDetectionTask(role: self, partition: partition, partitionCount: Int32(partitionCount),
                                  outputPartitionCount: Int32(collector.partitionCounts[c.outputTopic] ?? partitionCount),
                                  deadLetterPartitionCount: Int32(collector.partitionCounts[c.deadLetterTopic] ?? 0),
                                  store: store, collector: collector)
    }

    public func didHandleBatch() {
        let c = cycle
        guard c != FraudDetectionCounters() else { return }
        cycle = FraudDetectionCounters()
        shared.counters.withLock {
            $0.outputs += c.outputs
            $0.deadLetters += c.deadLetters
            for (code, n) in c.deadLettersByCode { $0.deadLettersByCode[code, default: 0] += n }
            $0.repartitioned += c.repartitioned
            $0.flagged += c.flagged
            $0.late += c.late
        }
    }

    /// The fraud role's families on `/metrics`, beside the runtime's.
    public static let metricFamilies: [MetricFamily] = [
        .counter("polyglot_records_out_total", help: "Enriched records sent to the output topic."),
        .counter("polyglot_records_dead_lettered_total", help: "Records sent to the dead-letter topic, by rejection code."),
        .counter("polyglot_records_flagged_total", help: "Enriched records flagged as suspicious."),
        .counter("polyglot_records_late_total", help: "Records whose window had closed (late)."),
        .counter("polyglot_records_repartitioned_total", help: "Records moved to their card's partition through the repartition topic."),
    ]

    /// The counters as samples of ``metricFamilies``: every rejection code, seen or not, so a
    /// rate over a code that appears later starts from zero.
    public var metricSamples: [MetricSample] {
        let c = counters
        var samples = [
            MetricSample("polyglot_records_out_total", value: c.outputs),
            MetricSample("polyglot_records_flagged_total", value: c.flagged),
            MetricSample("polyglot_records_late_total", value: c.late),
            MetricSample("polyglot_records_repartitioned_total", value: c.repartitioned),
        ]
        for code in RejectionCode.allCases {
            samples.append(MetricSample("polyglot_records_dead_lettered_total", labels: ["code": code.rawValue],
                                        value: c.deadLettersByCode[code] ?? 0))
        }
        return samples
    }

    public var summary: [String: String] {
        let c = counters
        return ["outputs": "\(c.outputs)", "deadLetters": "\(c.deadLetters)", "repartitioned": "\(c.repartitioned)",
                "flagged": "\(c.flagged)", "late": "\(c.late)"]
    }

    /// Handles one record, borrowed from the consumer: the hot path decodes in place
    /// (`decodeView`), copies ids and numbers straight into one reused output buffer, and builds
    /// no String unless an id holds escapes.
    @inline(__always)
    func handle(_ m: borrowing KafkaRecordView, source from: Int, task: FraudDetectionTask) {
        let topics = self.topics!
        let collector = task.collector
        let fromInput = from == Self.input
        let offset = m.offset
        source.removeAll()
        if !fromInput, let h = m.header(HeaderName.source) {
            source.append(h)
        } else {
            if fromInput { source.append(inputTopicBytes) } else { source.append(Array(m.topic.utf8)) }
            source.append(UInt8(ascii: "/"))
            source.appendInteger(Int64(m.partition))
            source.append(UInt8(ascii: "/"))
            source.appendInteger(offset)
        }
        do throws(Rejection) {
            guard let value = m.value else { throw Rejection(.invalidJSON, "empty record (null value)") }
            let view = try decoder.decodeView(value, kafkaTimestamp: m.timestamp, maxFutureSkew: configuration.parameters.maxFutureSkew)
            let record = value.baseAddress!.assumingMemoryBound(to: UInt8.self)
            // The card's id as its decoded bytes: in place when it holds no escapes.
            let escaped: Transaction? = view.idsAreRaw ? nil : decoder.transaction(from: view, in: value)
            Self.withCardBytes(view: view, record: record, escaped: escaped) { card in
                let home = configuration.partitioner.partition(of: card, count: task.partitionCount)
                if fromInput, home != m.partition {
                    // Not on its card's partition (another producer's partitioner, or another
                    // key): through the repartition topic to the task that owns the card, as
                    // Kafka Streams' groupBy does. Placed explicitly, by the same rule. Unlike the
                    // auditor's forward it keeps the input's headers, as Kafka Streams does.
                    let source = source
                    collector.send(to: topics.repartition, partition: home, key: UnsafeRawBufferPointer(card), value: value,
                                   timestamp: m.timestamp) { headers in
                        for h in m.headers where h.name != HeaderName.source {
                            if let v = h.value { v.withUnsafeBytes { headers.add(h.name, $0) } } else { headers.add(h.name, nil) }
                        }
                        headers.add(HeaderName.source, source.bytes)
                    }
                    cycle.repartitioned += 1
                } else {
                    let verdict = task.store.process(card: CardBytes(card), eventTime: view.timestamp)
                    out.removeAll()
                    if let escaped {
                        encoder.append(escaped, verdict, to: out)
                    } else {
                        encoder.append(view: view, record: record, verdict, to: out)
                    }
                    let source = source, fingerprint = fingerprintBytes, version = versionBytes, detector = detectorBytes
                    // On the card's partition of the output topic, placed explicitly like the
                    // repartition records: with co-partitioned topics, the task's own partition,
                    // so an auditor finds an input and its output in one task.
                    let outputPartition = task.outputPartitionCount == task.partitionCount
                        ? home : configuration.partitioner.partition(of: card, count: task.outputPartitionCount)
                    collector.send(to: topics.output, partition: outputPartition, key: UnsafeRawBufferPointer(card),
                                   value: out.bytes) { headers in
                        headers.add(HeaderName.source, source.bytes)
                        fingerprint.withUnsafeBytes { headers.add(HeaderName.fingerprint, $0) }
                        version.withUnsafeBytes { headers.add(HeaderName.version, $0) }
                        detector.withUnsafeBytes { headers.add(DetectorParameters.headerName, $0) }
                    }
                    cycle.outputs += 1
                    if verdict.isFlagged { cycle.flagged += 1 }
                    if verdict.isLate { cycle.late += 1 }
                }
            }
        } catch {
            let source = source, fingerprint = fingerprintBytes, detector = detectorBytes
            // A null value is dead-lettered as an empty one. On the input record's partition when
            // the dead-letter topic has as many: an auditor reads both in one task.
            let partition: Int32? = task.deadLetterPartitionCount == task.partitionCount ? m.partition : nil
            collector.send(to: topics.deadLetter, partition: partition, key: m.key,
                           value: m.value ?? UnsafeRawBufferPointer(start: nil, count: 0)) { headers in
                Array(error.code.rawValue.utf8).withUnsafeBytes { headers.add(HeaderName.error, $0) }
                Array(error.message.utf8).withUnsafeBytes { headers.add(HeaderName.errorMessage, $0) }
                headers.add(HeaderName.source, source.bytes)
                fingerprint.withUnsafeBytes { headers.add(HeaderName.fingerprint, $0) }
                detector.withUnsafeBytes { headers.add(DetectorParameters.headerName, $0) }
            }
            cycle.deadLetters += 1
            cycle.deadLettersByCode[error.code, default: 0] += 1
        }
    }

    /// Calls `body` with the card id's decoded bytes: in the record when the ids hold no
    /// escapes, else from the decoded transaction.
    @inline(__always)
    static func withCardBytes(view: TransactionView, record: UnsafePointer<UInt8>, escaped: Transaction?,
                              _ body: (UnsafeBufferPointer<UInt8>) -> Void) {
        if let escaped {
            var id = escaped.cardId
            id.withUTF8 { body($0) }
        } else {
            body(UnsafeBufferPointer(start: record + view.cardId.start, count: view.cardId.length))
        }
    }
}

/// One input partition's fraud task: its detector and window state.
public final class FraudDetectionTask: StreamTask {
    unowned let role: FraudDetectionRole
    let partition: Int32
    let partitionCount: Int32
    let outputPartitionCount: Int32
    let deadLetterPartitionCount: Int32
    public let store: SQLiteDetectorStore
    let collector: RecordCollector

    init(role: FraudDetectionRole, partition: Int32, partitionCount: Int32, outputPartitionCount: Int32,
         deadLetterPartitionCount: Int32, store: SQLiteDetectorStore, collector: RecordCollector) {
        self.role = role
        self.partition = partition
        self.partitionCount = partitionCount
        self.outputPartitionCount = outputPartitionCount
        self.deadLetterPartitionCount = deadLetterPartitionCount
        self.store = store
        self.collector = collector
    }

    @inline(__always)
    public func handle(_ record: borrowing KafkaRecordView, source: Int) throws {
        role.handle(record, source: source, task: self)
    }

    public func rolledBack() {
        store.rolledBack()
    }
}

/// The window store is the fraud task's store on the runtime.
extension SQLiteWindowStore: TaskStore {}

/// The detector store (either window kind) is a task store for both roles.
extension SQLiteDetectorStore: TaskStore {}
