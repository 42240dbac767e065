import Crypto
import Dispatch
import Foundation
import Logging
import Synchronization

/// Counters of one processor run.
public struct ProcessorStatistics: Sendable, Hashable {
    /// Input and repartition records handled (committed or not).
    public var records = 0
    public var outputs = 0
    public var deadLetters = 0
    public var repartitioned = 0
    public var transactionsCommitted = 0
    public var transactionsAborted = 0
    public var changelogRecords = 0
    public var restoredRecords = 0
    /// Time spent restoring stores from the changelog.
    public var restoreSeconds = 0.0
    /// From the first record handled to the last commit (excludes joining the group and restoring).
    public var processingSeconds = 0.0
    /// Of which: waiting in poll, and committing (changelog, offsets, Kafka and SQLite commits).
    public var pollSeconds = 0.0
    public var commitSeconds = 0.0
    /// Of the commit time: writing changelog records, the Kafka transaction's offsets and
    /// commit, and the stores' commits (with their periodic SQLite writes).
    public var changelogSeconds = 0.0
    public var kafkaCommitSeconds = 0.0
    public var storeCommitSeconds = 0.0
}

/// A processor failure that stops the run: the message is one line for the operator.
public struct ProcessorError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One input partition's task: its window store, its detector and its positions.
final class PartitionTask {
    let partition: Int32
    let store: SQLiteWindowStore
    var detector: Detector
    /// Next offset to process, per source topic (input and repartition).
    var next = SourcePositions()
    /// Next offset as of the last commit, per source topic: where an abort rewinds to.
    var committed = SourcePositions()
    /// Next offset as of the sealed cycle whose commit is in flight.
    var sealed = SourcePositions()
    /// Records handled since the last commit.
    var changed = false
    /// Reused per commit: the store's changelog records.
    var changelog = ChangelogBatch()

    init(partition: Int32, store: SQLiteWindowStore, parameters: DetectorParameters) {
        self.partition = partition
        self.store = store
        self.detector = Detector(parameters: parameters)
    }
}

/// The two topics a task reads: the input and, for mis-keyed records, the repartition topic.
enum SourceTopic: CaseIterable {
    case input, repartition
}

/// A task's offset per source topic (nil: none known yet). A struct, not a dictionary by topic
/// name: the hot path reads and writes one per record.
struct SourcePositions: Equatable {
    var input: Int64?
    var repartition: Int64?

    @inline(__always)
    subscript(source: SourceTopic) -> Int64? {
        get { source == .input ? input : repartition }
        set { if source == .input { input = newValue } else { repartition = newValue } }
    }
}

/// The `polyglot process` engine (issue: exactly-once processor with SQLite window stores).
///
/// Runs on one dedicated thread (``run()`` blocks): the consumer poll, the rebalance hooks
/// (restore on assignment, commit and close on revocation), the detector, the stores and the
/// Kafka transaction calls all happen there, so none of them touches the Swift cooperative pool
/// and no state needs a lock. Two helpers take blocking work off it: a ``KafkaEmitter`` thread
/// produces the records it hands over, and each `commit_transaction` runs on a short-lived
/// thread while this one handles the next cycle. ``requestStop()`` may be called from any thread.
///
/// Per commit interval, exactly-once: one Kafka transaction holds outputs, dead letters,
/// repartitioned records, the stores' changelog records (one per changed card, the last of a
/// partition carrying the source positions it covers in headers) and the consumed offsets. The
/// stores seal the cycle's changes when its commit starts and commit them, with their
/// checkpoints, once Kafka has; records handled meanwhile are held until the next transaction
/// begins. An abort rolls the stores back (both cycles) and rewinds the consumer to the last
/// committed positions.
public final class StreamProcessor: @unchecked Sendable {
    public let configuration: ProcessorConfiguration
    private let logger: Logger
    private let stopRequested = Atomic<Bool>(false)
    private let statsBox = Mutex(ProcessorStatistics())

    // Touched only on the processing thread.
    private var producer: KafkaProducer!
    private var consumer: KafkaConsumer!
    private var restorer: KafkaConsumer!
    private var tasks: [Int32: PartitionTask] = [:]
    private var inTransaction = false
    private var pendingRecords = 0
    private var decoder = TransactionDecoder()
    private let encoder: EnrichedRecordEncoder
    /// Reused per record: the output value and the `polyglot-source` header.
    private let out = ByteBuffer(capacity: 4_096)
    private let source = ByteBuffer(capacity: 256)
    private let fingerprintBytes: [UInt8]
    private let inputTopicBytes: [UInt8]
    private let versionBytes: [UInt8]
    /// Counters of records handled since the last ``publishCycleStats()``.
    private var cycleStats = ProcessorStatistics()
    private struct Topics {
        var output: KafkaProducerTopic
        var deadLetter: KafkaProducerTopic
        var repartition: KafkaProducerTopic
        var changelog: KafkaProducerTopic
    }
    private var topics: Topics!
    private var endOffsets: [Int32: Int64] = [:]
    private var partitionCount = 0
    private var failedDeliveriesAtCycleStart = 0
    /// An error raised inside a rebalance hook (which cannot throw), rethrown after the poll.
    private var hookError: (any Error)?
    private var firstRecordAt: ContinuousClock.Instant?
    /// Set when ``run()`` is leaving because of an error.
    private var failing = false

    static let sourceOffsetHeader = "polyglot-source-offset"
    static let repartitionOffsetHeader = "polyglot-repartition-offset"
    /// Upper bound of records in one transaction, whatever the interval.
    static let maxRecordsPerTransaction = 50_000

    public init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "polyglot.process")) throws(ConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        self.encoder = EnrichedRecordEncoder(parameters: configuration.parameters)
        self.fingerprintBytes = Array(configuration.fingerprintDigest.utf8)
        self.inputTopicBytes = Array(configuration.inputTopic.utf8)
        self.versionBytes = Array(ProductVersion.version.utf8)
    }

    /// Asks ``run()`` to finish: it commits (or aborts) the open transaction, leaves the group and
    /// returns. Any thread.
    public func requestStop() { stopRequested.store(true, ordering: .releasing) }

    public var statistics: ProcessorStatistics { statsBox.withLock { $0 } }

    /// The transactional id: stable for one state directory (one instance), so a restarted
    /// instance fences its predecessor's open transaction instead of waiting for it to time out.
    public var transactionalID: String {
        if let id = configuration.instanceID { return "\(configuration.applicationID)-\(id)" }
        let path = URL(fileURLWithPath: configuration.stateDirectory).standardizedFileURL.path
        let digest = SHA256.hash(data: Data("\(ProcessInfo.processInfo.hostName)\n\(path)".utf8))
        return "\(configuration.applicationID)-" + digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// Runs on a dedicated thread until stopped (or, with `untilEnd`, until the end offsets seen
    /// at start are processed), bridged to async.
    public func runOnDedicatedThread() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                // Named from inside: on Linux a name set before start does not reach the OS thread (15 bytes at most).
                Thread.current.name = "polyglot-proc"
                continuation.resume(with: Result { try self.run() })
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    // MARK: - Run

    /// Blocking: the whole run. Call on a dedicated thread.
    public func run() throws {
        let c = configuration
        let started = ContinuousClock.now
        try checkTopics()
        var producerConfig = c.kafka
        // Under exactly-once nothing is visible before the commit, which sends whatever waits
        // at once: lingering up to half the default interval costs no latency and makes
        // batches several times larger (fewer requests, and far less work for the broker).
        producerConfig.setDefault("linger.ms", c.guarantee == .exactlyOnce ? "50" : "5")
        producerConfig.setDefault("batch.num.messages", "10000")
        producerConfig.setDefault("queue.buffering.max.messages", "1000000")
        producerConfig.setDefault("queue.buffering.max.kbytes", "1048576")
        // Java-compatible key hashing: the repartition topic places a card where Kafka Streams would.
        producerConfig.setDefault("partitioner", "murmur2_random")
        // A record just over the 1 MiB input limit must still fit in its dead letter.
        producerConfig.setDefault("message.max.bytes", "4194304")
        if c.guarantee == .exactlyOnce {
            producerConfig.set("transactional.id", transactionalID)
            producerConfig.setDefault("transaction.timeout.ms", "30000")
        }
        producer = try KafkaProducer(configuration: producerConfig, logger: logger)
        defer { producer.close(flushTimeout: .seconds(5)) }
        if c.guarantee == .exactlyOnce {
            try producer.initTransactions(timeout: .seconds(60))
        }
        emitter = KafkaEmitter(producer: producer)
        defer { emitter.stop() }
        topics = Topics(output: try producer.topic(c.outputTopic), deadLetter: try producer.topic(c.deadLetterTopic),
                        repartition: try producer.topic(c.repartitionTopic), changelog: try producer.topic(c.changelogTopic))

        var restoreConfig = c.kafka
        restoreConfig.set("isolation.level", "read_committed")
        restoreConfig.set("group.id", "\(c.applicationID)-restore-\(UUID().uuidString.lowercased())")
        restoreConfig.setDefault("fetch.wait.max.ms", "10")
        restoreConfig.setDefault("max.partition.fetch.bytes", "4194304")
        Self.setPrefetchDefaults(&restoreConfig)
        restorer = try KafkaConsumer(configuration: restoreConfig, logger: logger)
        defer { restorer.close() }

        if c.untilEnd {
            for p in 0..<partitionCount {
                endOffsets[Int32(p)] = try restorer.queryWatermarks(KafkaTopicPartition(c.inputTopic, Int32(p)), timeout: .seconds(30)).high
            }
            logger.info("processing up to the end offsets seen at start", metadata: ["end": "\(endOffsets.sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))"])
        }

        var consumerConfig = c.kafka
        consumerConfig.set("group.id", c.applicationID)
        consumerConfig.set("isolation.level", "read_committed")
        // --until-end must see past the transaction markers that end its own repartition writes
        // (and any transactional input): the end-of-partition events carry the fetch position.
        if c.untilEnd { consumerConfig.set("enable.partition.eof", "true") }
        consumerConfig.setDefault("auto.offset.reset", "earliest")
        consumerConfig.setDefault("fetch.wait.max.ms", "10")
        Self.setPrefetchDefaults(&consumerConfig)
        let me = UnsafeSendable(self)
        let hooks = KafkaRebalanceHooks(
            onAssigned: { partitions in me.value.assigned(partitions) },
            onRevoked: { partitions, lost in me.value.revoked(partitions, lost: lost) })
        consumer = try KafkaConsumer(configuration: consumerConfig, hooks: hooks, logger: logger)
        var closed = false
        defer {
            if !closed {
                // Leaving on an error: the revoke hook must not commit what the failure interrupted.
                failing = true
                consumer.close()
            }
        }
        try consumer.subscribe([c.inputTopic, c.repartitionTopic])
        logger.info("processing", metadata: [
            "input": "\(c.inputTopic)", "partitions": "\(partitionCount)", "guarantee": "\(c.guarantee.rawValue)",
            "group": "\(c.applicationID)", "kafka": "\(c.kafka.redactedDescription)",
        ])

        cycleStart = ContinuousClock.now
        var lastReport = ContinuousClock.now
        var reportedRecords = 0
        while !stopRequested.load(ordering: .acquiring) {
            let pollStart = ContinuousClock.now
            var waited: ContinuousClock.Instant? = nil
            var polled = 0
            do {
                defer { publishCycleStats() }
                // While a commit is in flight, come back soon to finish it.
                polled = try consumer.pollBorrowing(maxMessages: 2_000, timeout: .milliseconds(inFlight == nil ? 50 : 5)) { m in
                    if waited == nil { waited = ContinuousClock.now }
                    try handle(m)
                }
            } catch let error as KafkaError {
                // Beginning the transaction failed: the transaction cannot commit. The rest of the batch
                // is dropped; the rewind re-reads it.
                if error.transactionAction == .fatal || producer.fatalError != nil {
                    throw ProcessorError("fatal Kafka error, stopping: \(producer.fatalError ?? error)")
                }
                logger.warning("producing failed; aborting and rewinding to the last commit", metadata: ["error": "\(error)"])
                try abortAndRewind()
            }
            emitter.send()
            // Time waiting for the first record of the poll (handling is not waiting).
            let pollTime = Self.seconds((waited ?? ContinuousClock.now) - pollStart)
            if firstRecordAt != nil { statsBox.withLock { $0.pollSeconds += pollTime } }
            if let error = hookError { throw error }
            try finishCommit(wait: false)
            let now = ContinuousClock.now
            var committed = false
            if now - cycleStart >= c.commitInterval || pendingRecords >= Self.maxRecordsPerTransaction {
                // One commit in flight at a time; a full cycle waits for it rather than hold more.
                if pendingRecords >= Self.maxRecordsPerTransaction { try finishCommit(wait: true) }
                if inFlight == nil {
                    try startCommit()
                    committed = true
                }
            }
            if now - lastReport >= .seconds(10) {
                let s = statistics
                let rate = Double(s.records - reportedRecords) / StreamProcessor.seconds(now - lastReport)
                logger.info("progress", metadata: ["records": "\(s.records)", "rate": "\(Int(rate))/s", "outputs": "\(s.outputs)",
                                                   "deadLetters": "\(s.deadLetters)", "commits": "\(s.transactionsCommitted)"])
                reportedRecords = s.records
                lastReport = now
            }
            if c.untilEnd, committed || polled == 0 {
                if pendingRecords == 0 { try finishCommit(wait: true) }
                if try reachedEnd() {
                    try commitCycle()
                    logger.info("reached the end offsets seen at start")
                    break
                }
            }
        }
        try commitCycle()
        // Leaving the group runs the revoke hook: it closes the stores.
        closed = true
        consumer.close()
        if let error = hookError { throw error }
        let s = statistics
        let elapsed = Self.seconds(ContinuousClock.now - started)
        let processing = max(s.processingSeconds, 1e-6)
        logger.notice("stopped", metadata: [
            "records": "\(s.records)", "outputs": "\(s.outputs)", "deadLetters": "\(s.deadLetters)",
            "repartitioned": "\(s.repartitioned)", "commits": "\(s.transactionsCommitted)", "aborts": "\(s.transactionsAborted)",
            "seconds": "\(String(format: "%.2f", elapsed))", "processingSeconds": "\(String(format: "%.2f", s.processingSeconds))",
            "pollSeconds": "\(String(format: "%.2f", s.pollSeconds))", "commitSeconds": "\(String(format: "%.2f", s.commitSeconds))",
            "changelogSeconds": "\(String(format: "%.2f", s.changelogSeconds))", "kafkaCommitSeconds": "\(String(format: "%.2f", s.kafkaCommitSeconds))",
            "storeCommitSeconds": "\(String(format: "%.2f", s.storeCommitSeconds))",
            "rate": "\(Int(Double(s.records) / processing))/s",
            "restored": "\(s.restoredRecords)", "restoreSeconds": "\(String(format: "%.2f", s.restoreSeconds))",
            "restoreRate": "\(s.restoreSeconds > 0 ? Int(Double(s.restoredRecords) / s.restoreSeconds) : 0)/s",
        ])
    }

    /// How much a consumer fetches ahead. In librdkafka 2.0.2 both limits count the whole
    /// consumer queue (every partition's fetch queue forwards to it), and a consumer that
    /// reaches either stops fetching for a full second before it looks again. With the default
    /// 100,000 messages, `process` drained the queue in half a second and then waited the other
    /// half: a third of a benchmark run. So the count limit is off and the byte limit holds well
    /// over a second of input at the speed `process` reads, so the pause never empties it.
    static func setPrefetchDefaults(_ config: inout KafkaConfiguration) {
        config.setDefault("queued.min.messages", "10000000")
        config.setDefault("queued.max.messages.kbytes", "131072")
    }

    /// The input must exist; the internal topics must have as many partitions as the input.
    /// Missing internal topics are created through the admin API where the broker has one.
    private func checkTopics() throws {
        let c = configuration
        let admin = try KafkaAdmin(configuration: c.kafka, logger: logger)
        defer { admin.close() }
        let topics = [c.inputTopic, c.outputTopic, c.deadLetterTopic, c.changelogTopic, c.repartitionTopic]
        var counts = try admin.partitionCounts(topics, timeout: .seconds(30))
        guard let inputCount = counts[c.inputTopic] else {
            throw ProcessorError("input topic \(c.inputTopic) does not exist")
        }
        partitionCount = inputCount
        let missing = [c.changelogTopic, c.repartitionTopic].filter { counts[$0] == nil }
        if !missing.isEmpty {
            var specs = [KafkaTopicSpecification(name: c.repartitionTopic, partitions: inputCount)]
            specs.append(KafkaTopicSpecification(name: c.changelogTopic, partitions: inputCount, config: ["cleanup.policy": "compact"]))
            do {
                try admin.createTopics(specs.filter { missing.contains($0.name) })
                logger.info("created internal topics", metadata: ["topics": "\(missing.joined(separator: ","))"])
            } catch let error as KafkaAdminUnavailable {
                throw ProcessorError("internal topic \(missing.joined(separator: " and ")) missing and the cluster cannot create topics (\(error.underlying.message)): create it with \(inputCount) partitions")
            }
            counts = try admin.partitionCounts(topics, timeout: .seconds(30))
        }
        for topic in [c.changelogTopic, c.repartitionTopic] {
            guard let n = counts[topic] else { throw ProcessorError("internal topic \(topic) does not exist") }
            if n != inputCount {
                throw ProcessorError("internal topic \(topic) has \(n) partitions but input topic \(c.inputTopic) has \(inputCount): they must match (recreate \(topic) with \(inputCount) partitions, or use another --application-id)")
            }
        }
        for topic in [c.outputTopic, c.deadLetterTopic] where counts[topic] == nil {
            throw ProcessorError("topic \(topic) does not exist")
        }
    }

    // MARK: - Records

    /// Handles one record, borrowed from the consumer: the hot path decodes in place
    /// (`decodeView`), copies ids and numbers straight into one reused output buffer, and
    /// builds no String unless an id holds escapes.
    private func handle(_ m: borrowing KafkaRecordView) throws {
        // A rebalance hook failed during this poll: the run stops right after it.
        guard hookError == nil, let task = tasks[m.partition] else { return }
        if firstRecordAt == nil { firstRecordAt = ContinuousClock.now }
        let c = configuration
        let topic = m.topic
        let offset = m.offset
        let fromInput = topic == c.inputTopic
        let from: SourceTopic = fromInput ? .input : .repartition
        if let next = task.next[from], offset < next { return }
        if task.committed[from] == nil { task.committed[from] = offset }
        source.removeAll()
        if !fromInput, let h = m.header("polyglot-source") {
            source.append(h)
        } else {
            if fromInput { source.append(inputTopicBytes) } else { source.append(Array(topic.utf8)) }
            source.append(UInt8(ascii: "/"))
            source.appendInteger(Int64(m.partition))
            source.append(UInt8(ascii: "/"))
            source.appendInteger(offset)
        }
        try beginIfNeeded()
        do {
            guard let value = m.value else { throw Rejection(.invalidJSON, "empty record (null value)") }
            let view = try decoder.decodeView(value, kafkaTimestamp: m.timestamp, maxFutureSkew: c.parameters.maxFutureSkew)
            let record = value.baseAddress!.assumingMemoryBound(to: UInt8.self)
            // The card's id as its decoded bytes: in place when it holds no escapes.
            let escaped: Transaction? = view.idsAreRaw ? nil : decoder.transaction(from: view, in: value)
            try Self.withCardBytes(view: view, record: record, escaped: escaped) { card throws in
                if fromInput, !Self.sameBytes(m.key, card) {
                    // Re-keyed through the repartition topic first, as Kafka Streams' groupBy does.
                    let source = source
                    emitter.append(to: topics.repartition, key: UnsafeRawBufferPointer(card), value: value, timestamp: m.timestamp) { headers in
                        for h in m.headers where h.name != "polyglot-source" {
                            if let v = h.value { v.withUnsafeBytes { headers.add(h.name, $0) } } else { headers.add(h.name, nil) }
                        }
                        headers.add("polyglot-source", source.bytes)
                    }
                    cycleStats.repartitioned += 1
                } else {
                    let verdict = task.detector.process(card: CardBytes(card), eventTime: view.timestamp, store: &task.storeRef)
                    out.removeAll()
                    if let escaped {
                        encoder.append(escaped, verdict, to: out)
                    } else {
                        encoder.append(view: view, record: record, verdict, to: out)
                    }
                    let source = source, fingerprint = fingerprintBytes, version = versionBytes
                    emitter.append(to: topics.output, key: UnsafeRawBufferPointer(card), value: out.bytes) { headers in
                        headers.add("polyglot-source", source.bytes)
                        fingerprint.withUnsafeBytes { headers.add("polyglot-fingerprint", $0) }
                        version.withUnsafeBytes { headers.add("polyglot-version", $0) }
                    }
                    cycleStats.outputs += 1
                }
            }
        } catch let rejection as Rejection {
            let source = source, fingerprint = fingerprintBytes
            // A null value is dead-lettered as an empty one.
            emitter.append(to: topics.deadLetter, key: m.key, value: m.value ?? UnsafeRawBufferPointer(start: nil, count: 0)) { headers in
                Array(rejection.code.rawValue.utf8).withUnsafeBytes { headers.add("polyglot-error", $0) }
                Array(rejection.message.utf8).withUnsafeBytes { headers.add("polyglot-error-message", $0) }
                headers.add("polyglot-source", source.bytes)
                fingerprint.withUnsafeBytes { headers.add("polyglot-fingerprint", $0) }
            }
            cycleStats.deadLetters += 1
        }
        task.next[from] = offset + 1
        task.changed = true
        pendingRecords += 1
        cycleStats.records += 1
    }

    private func topicName(_ source: SourceTopic) -> String {
        source == .input ? configuration.inputTopic : configuration.repartitionTopic
    }

    /// Calls `body` with the card id's decoded bytes: in the record when the ids hold no
    /// escapes, else from the decoded transaction.
    @inline(__always)
    private static func withCardBytes(view: TransactionView, record: UnsafePointer<UInt8>, escaped: Transaction?,
                                      _ body: (UnsafeBufferPointer<UInt8>) throws -> Void) throws {
        if let escaped {
            var id = escaped.cardId
            try id.withUTF8 { try body($0) }
        } else {
            try body(UnsafeBufferPointer(start: record + view.cardId.start, count: view.cardId.length))
        }
    }

    @inline(__always)
    private static func sameBytes(_ key: UnsafeRawBufferPointer?, _ card: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let key, key.count == card.count else { return false }
        guard card.count > 0 else { return true }
        return memcmp(key.baseAddress!, card.baseAddress!, card.count) == 0
    }

    /// Adds the records handled since the last call to the shared statistics (one lock per poll).
    private func publishCycleStats() {
        let s = cycleStats
        guard s.records > 0 else { return }
        cycleStats = ProcessorStatistics()
        statsBox.withLock {
            $0.records += s.records
            $0.outputs += s.outputs
            $0.deadLetters += s.deadLetters
            $0.repartitioned += s.repartitioned
        }
    }

    private func beginIfNeeded() throws {
        guard configuration.guarantee == .exactlyOnce, !inTransaction, inFlight == nil else { return }
        try producer.beginTransaction()
        inTransaction = true
        failedDeliveriesAtCycleStart = producer.deliveryCounts.failed
    }

    // MARK: - Commit

    /// Ends the cycle and waits for its commit: at revocation, shutdown and `--until-end`.
    /// A commit already in flight is finished first.
    private func commitCycle(leaving: Set<Int32> = []) throws {
        try finishCommit(wait: true, leaving: leaving)
        try startCommit(leaving: leaving)
        try finishCommit(wait: true, leaving: leaving)
    }

    /// A cycle whose Kafka transaction is committing on a helper thread (exactly-once), or done
    /// committing (at-least-once): ``finishCommit(wait:leaving:)`` commits its stores.
    private struct CommitInFlight {
        var tasks: [PartitionTask]
        var changelogRecords: Int
        var started: ContinuousClock.Instant
        var kafkaStarted: ContinuousClock.Instant
        let outcome: CommitOutcome
    }

    /// Set by the helper thread when the Kafka commit returned.
    private final class CommitOutcome: Sendable {
        let result = Mutex<Result<Void, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
    }

    private var inFlight: CommitInFlight?
    /// When the open cycle's transaction could begin: the previous commit's end. The commit
    /// interval runs from there, so each transaction gets the whole interval to fill, however
    /// long the commit before it took.
    private var cycleStart = ContinuousClock.now
    /// Produces the records handled, on its own thread; holds them back while a commit is in
    /// flight, until the next transaction begins.
    private var emitter: KafkaEmitter!

    /// Starts ending the cycle: changelog records and consumed offsets go into the transaction,
    /// the stores seal their changes, and the Kafka commit starts on a helper thread. Records
    /// handled until it returns belong to the next cycle (the emitter holds their output).
    /// At-least-once, the flush and offset commit happen here and the stores commit at once.
    private func startCommit(leaving: Set<Int32> = []) throws {
        precondition(inFlight == nil, "a commit is in flight")
        let changed = tasks.values.filter(\.changed).sorted { $0.partition < $1.partition }
        guard !changed.isEmpty else { return }
        let commitStart = ContinuousClock.now
        defer { addCommitTime(since: commitStart) }
        let c = configuration
        do {
            // Every output of the cycle is in the producer before its changelog and offsets.
            try emitter.drain()
            try beginIfNeeded()
            var changelogCount = 0
            for task in changed { try task.store.pendingChanges(into: &task.changelog) }
            // Each task's first record, then the rest: every changelog partition joins the
            // transaction in one burst. librdkafka 2.0.2 adds partitions one request at a time,
            // a timer of under a millisecond apart, and its main thread spins on the clock while
            // it waits (fixed in 2.4.0): joining 32 partitions one by one cost ~20% of the CPU.
            for pass in 0..<2 { for task in changed {
                let batch = task.changelog
                let count = batch.count
                let positions: [UInt8] = Array(String(task.next[.input] ?? KafkaOffset.invalid).utf8)
                let repartition: [UInt8]? = task.next[.repartition].map { Array(String($0).utf8) }
                // The positions ride on the task's last record of the commit: a restore keeps the
                // last it sees, and compaction never removes a partition's last record.
                func lastHeaders() -> KafkaRecordHeaders {
                    var headers = KafkaRecordHeaders(capacity: 2)
                    positions.withUnsafeBytes { headers.add(Self.sourceOffsetHeader, $0) }
                    if let repartition { repartition.withUnsafeBytes { headers.add(Self.repartitionOffsetHeader, $0) } }
                    return headers
                }
                if count == 0 {
                    guard pass == 0 else { continue }
                    // No state changed (late, rejected or re-keyed records only), but the positions
                    // moved: rewrite the stream time, unchanged, to carry them.
                    let record = ChangelogRecord(.streamTime(task.store.streamTime))
                    try record.key.withUnsafeBytes { key in
                        if let v = record.value {
                            try v.withUnsafeBytes { value in
                                try producer.produce(to: topics.changelog, partition: task.partition, key: key, value: value,
                                                     headers: lastHeaders(), blockIfQueueFull: true, trackOffset: true)
                            }
                        } else {
                            try producer.produce(to: topics.changelog, partition: task.partition, key: key, value: nil,
                                                 headers: lastHeaders(), blockIfQueueFull: true, trackOffset: true)
                        }
                    }
                    changelogCount += 1
                } else {
                    for i in pass == 0 ? 0..<1 : 1..<count {
                        let last = i == count - 1
                        try batch.withRecord(at: i) { key, value in
                            try producer.produce(to: topics.changelog, partition: task.partition, key: key, value: value,
                                                 headers: last ? lastHeaders() : KafkaRecordHeaders(),
                                                 blockIfQueueFull: true, trackOffset: last)
                        }
                    }
                    changelogCount += pass == 0 ? 1 : count - 1
                }
            } }
            let offsets = changed.flatMap { task in
                SourceTopic.allCases.compactMap { source -> KafkaTopicPartitionOffset? in
                    guard let next = task.next[source], next != task.committed[source] else { return nil }
                    return KafkaTopicPartitionOffset(topicName(source), task.partition, offset: next)
                }
            }
            let kafkaStart = ContinuousClock.now
            statsBox.withLock { $0.changelogSeconds += Self.seconds(kafkaStart - commitStart) }
            switch c.guarantee {
            case .exactlyOnce:
                try producer.sendOffsetsToTransaction(offsets, consumer: consumer, timeout: .seconds(30))
            case .atLeastOnce:
                try producer.flush(timeout: .seconds(60))
                let failed = producer.deliveryCounts.failed
                if failed != failedDeliveriesAtCycleStart {
                    failedDeliveriesAtCycleStart = failed
                    throw KafkaError(code: KafkaError.Code.transport, name: "DELIVERY_FAILED",
                                     message: "\(producer.deliveryCounts.failures.last.map { "\($0)" } ?? "a record was not delivered")",
                                     txnRequiresAbort: true)
                }
                try consumer.commit(offsets)
            }
            for task in changed {
                try task.store.seal()
                task.sealed = task.next
                task.changed = false
            }
            inTransaction = false
            pendingRecords = 0
            let outcome = CommitOutcome()
            inFlight = CommitInFlight(tasks: changed, changelogRecords: changelogCount, started: commitStart, kafkaStarted: kafkaStart,
                                      outcome: outcome)
            emitter.isHolding = c.guarantee == .exactlyOnce
            if c.guarantee == .exactlyOnce {
                let me = UnsafeSendable(self)
                let thread = Thread {
                    let result = Result { try me.value.commitTransactionRetrying() }
                    outcome.result.withLock { $0 = result }
                    outcome.done.signal()
                }
                thread.stackSize = 1 << 20
                thread.start()
            } else {
                outcome.result.withLock { $0 = .success(()) }
                outcome.done.signal()
            }
        } catch {
            try recoverFromCommitFailure(error, leaving: leaving)
        }
        if c.guarantee == .atLeastOnce { try finishCommit(wait: true, leaving: leaving) }
    }

    /// Finishes the commit in flight, if any (returning at once when `wait` is false and it is
    /// still running): the stores commit what they sealed, the next transaction begins and
    /// receives the records held meanwhile. A failed commit rolls everything back and rewinds.
    private func finishCommit(wait: Bool, leaving: Set<Int32> = []) throws {
        guard let commit = inFlight else { return }
        if wait {
            commit.outcome.done.wait()
        } else if commit.outcome.done.wait(timeout: .now()) == .timedOut {
            return
        }
        inFlight = nil
        defer { addCommitTime(since: .now) }
        let c = configuration
        do {
            try commit.outcome.result.withLock { $0 }!.get()
            let storeStart = ContinuousClock.now
            for task in commit.tasks {
                let changelogNext = producer.deliveredOffset(KafkaTopicPartition(c.changelogTopic, task.partition)).map { $0 + 1 }
                    ?? task.store.checkpoint?.changelogOffset ?? 0
                let checkpoint = StoreCheckpoint(sourceOffset: task.sealed[.input] ?? KafkaOffset.invalid,
                                                 changelogOffset: changelogNext)
                do {
                    try task.store.commit(checkpoint: checkpoint)
                } catch {
                    // Kafka holds the truth: the store is now behind its changelog, which the next
                    // restore repairs. Continuing on it would compute from stale state: stop.
                    throw ProcessorError("partition \(task.partition): SQLite commit failed after the Kafka commit (\(error)); restart restores the store from the changelog")
                }
                task.committed = task.sealed
            }
            let storeEnd = ContinuousClock.now
            let processing = firstRecordAt.map { Self.seconds(storeEnd - $0) } ?? 0
            statsBox.withLock {
                $0.kafkaCommitSeconds += Self.seconds(storeStart - commit.kafkaStarted)
                $0.storeCommitSeconds += Self.seconds(storeEnd - storeStart)
                $0.transactionsCommitted += 1
                $0.changelogRecords += commit.changelogRecords
                $0.processingSeconds = processing
            }
            // What was handled meanwhile goes into the next transaction, which begins first.
            if emitter.hasUnsent { try beginIfNeeded() }
            emitter.release()
            cycleStart = .now
        } catch let error as ProcessorError {
            throw error
        } catch {
            try recoverFromCommitFailure(error, leaving: leaving)
        }
    }

    private func addCommitTime(since start: ContinuousClock.Instant) {
        let t = Self.seconds(ContinuousClock.now - start)
        statsBox.withLock { $0.commitSeconds += t }
    }

    /// An abortable failure of a commit rolls everything back and rewinds; a fatal one throws.
    private func recoverFromCommitFailure(_ error: any Error, leaving: Set<Int32>) throws {
        switch error {
        case let error as KafkaError:
            if error.transactionAction == .fatal || producer.fatalError != nil {
                throw ProcessorError("fatal Kafka error, stopping: \(producer.fatalError ?? error)")
            }
            logger.warning("transaction failed; aborting and rewinding to the last commit", metadata: ["error": "\(error)"])
            try abortAndRewind(skippingSeekOf: leaving)
        case let error as SQLiteError:
            logger.warning("store read failed; aborting and rewinding to the last commit", metadata: ["error": "\(error)"])
            try abortAndRewind(skippingSeekOf: leaving)
        default:
            throw error
        }
    }

    private func commitTransactionRetrying() throws {
        var attempt = 0
        while true {
            let failure: KafkaError
            do {
                try producer.commitTransaction(timeout: .seconds(30))
                return
            } catch {
                failure = error
            }
            guard failure.transactionAction == .retry, attempt < 5 else { throw failure }
            attempt += 1
            logger.info("transaction commit will be retried", metadata: ["error": "\(failure)", "attempt": "\(attempt)"])
        }
    }

    /// Aborts the Kafka transaction, rolls every store back and seeks to the committed positions.
    private func abortAndRewind(skippingSeekOf leaving: Set<Int32> = []) throws {
        // A commit in flight may have succeeded: its stores must commit before the rest rolls back
        // (a failed one rewinds by itself).
        try finishCommit(wait: true, leaving: leaving)
        emitter.discard()
        try? emitter.drain()
        if configuration.guarantee == .exactlyOnce, inTransaction {
            do {
                try producer.abortTransaction(timeout: .seconds(30))
            } catch {
                throw ProcessorError("cannot abort the transaction, stopping: \(error)")
            }
        }
        inTransaction = false
        pendingRecords = 0
        var seeks: [KafkaTopicPartitionOffset] = []
        for task in tasks.values {
            task.store.rollback()
            task.detector = Detector(parameters: configuration.parameters)
            task.changed = false
            for source in SourceTopic.allCases where !leaving.contains(task.partition) {
                guard let offset = task.committed[source], task.next[source] != offset else { continue }
                seeks.append(KafkaTopicPartitionOffset(topicName(source), task.partition, offset: offset))
            }
            task.next = task.committed
        }
        try consumer.seek(seeks, timeout: .seconds(30))
        statsBox.withLock { $0.transactionsAborted += 1 }
    }

    // MARK: - Until end

    private func reachedEnd() throws -> Bool {
        let c = configuration
        guard !tasks.isEmpty, pendingRecords == 0, !inTransaction, inFlight == nil else { return false }
        let ordered = tasks.values.sorted { $0.partition < $1.partition }
        // Input first: local positions only, no request.
        let positions = try consumer.position(ordered.map { KafkaTopicPartition(c.inputTopic, $0.partition) })
        for (task, position) in zip(ordered, positions) {
            let end = endOffsets[task.partition] ?? 0
            if let eof = consumer.endOfPartition(position.topicPartition), eof >= end { continue }
            let reached = max(position.offset, task.next[.input] ?? KafkaOffset.invalid)
            // A range nothing was read from counts as done when it starts at or past the end.
            if reached < end, (task.committed[.input] ?? KafkaOffset.invalid) < end { return false }
        }
        // Then whatever this run sent through the repartition topic must be processed too.
        let repartition = try consumer.position(ordered.map { KafkaTopicPartition(c.repartitionTopic, $0.partition) })
        for (task, position) in zip(ordered, repartition) {
            let high = try consumer.queryWatermarks(position.topicPartition, timeout: .seconds(10)).high
            if let eof = consumer.endOfPartition(position.topicPartition), eof >= high { continue }
            let reached = max(position.offset, task.next[.repartition] ?? KafkaOffset.invalid, task.committed[.repartition] ?? KafkaOffset.invalid)
            if reached < high, high > 0 {
                // Empty so far and starting at the high watermark: nothing to do.
                if reached < 0, let low = try? consumer.queryWatermarks(position.topicPartition, timeout: .seconds(10)).low, low == high { continue }
                return false
            }
        }
        return true
    }

    // MARK: - Rebalance hooks (on the processing thread, inside poll)

    private func assigned(_ partitions: [KafkaTopicPartition]) -> [KafkaTopicPartition: Int64] {
        guard hookError == nil else { return [:] }
        let c = configuration
        var starts: [KafkaTopicPartition: Int64] = [:]
        do {
            let committed = try consumer.committed(partitions, timeout: .seconds(30))
            let committedBy = Dictionary(committed.map { ($0.topicPartition, $0.offset) }, uniquingKeysWith: { a, _ in a })
            for p in Set(partitions.map(\.partition)).sorted() where tasks[p] == nil {
                let (task, positions) = try openTask(p)
                tasks[p] = task
                for topic in [c.inputTopic, c.repartitionTopic] {
                    let tp = KafkaTopicPartition(topic, p)
                    let fromGroup = committedBy[tp].flatMap { $0 >= 0 ? $0 : nil }
                    let fromState = positions[topic].flatMap { $0 >= 0 ? $0 : nil }
                    // The later of the two: the changelog says where the state is; offsets
                    // committed past it covered records that changed no state.
                    if let start = [fromGroup, fromState].compactMap({ $0 }).max() {
                        starts[tp] = start
                        task.next[topic == c.inputTopic ? .input : .repartition] = start
                        task.committed[topic == c.inputTopic ? .input : .repartition] = start
                    }
                }
                logger.info("task started", metadata: ["partition": "\(p)", "input": "\(task.next[.input].map(String.init) ?? "committed/earliest")",
                                                       "repartition": "\(task.next[.repartition].map(String.init) ?? "committed/earliest")"])
            }
        } catch {
            hookError = error
        }
        return starts
    }

    private func revoked(_ partitions: [KafkaTopicPartition], lost: Bool) {
        let leaving = Set(partitions.map(\.partition))
        if failing {
            // Never abort while a commit runs on its helper thread: let it end first.
            if let commit = inFlight {
                commit.outcome.done.wait()
                inFlight = nil
            }
            emitter.discard()
        try? emitter.drain()
            if configuration.guarantee == .exactlyOnce, inTransaction { try? producer.abortTransaction(timeout: .seconds(10)) }
            inTransaction = false
        } else if lost {
            // Another member owns them already: whatever is open cannot commit.
            do { try abortAndRewind(skippingSeekOf: leaving) } catch { hookError = hookError ?? error }
        } else {
            do { try commitCycle(leaving: leaving) } catch { hookError = hookError ?? error }
        }
        for p in Set(partitions.map(\.partition)) {
            guard let task = tasks.removeValue(forKey: p) else { continue }
            task.store.rollback()
            do { try task.store.close() } catch { logger.warning("closing store \(p): \(error)") }
            logger.info("task stopped", metadata: ["partition": "\(p)"])
        }
    }

    // MARK: - Restore

    /// Opens partition `p`'s store (rebuilding a corrupt one) and replays its changelog from the
    /// checkpoint to the high watermark. Returns the source positions the state covers.
    private func openTask(_ p: Int32) throws -> (PartitionTask, [String: Int64]) {
        let c = configuration
        let directory = URL(fileURLWithPath: c.stateDirectory)
            .appendingPathComponent(c.applicationID).appendingPathComponent("\(c.inputTopic)-\(p)").path
        var opened: SQLiteWindowStore? = nil
        var openError: SQLiteError? = nil
        do {
            opened = try SQLiteWindowStore(directory: directory, parameters: c.parameters, options: c.storeOptions)
        } catch {
            openError = error
        }
        if let openError {
            guard openError.requiresRebuild else { throw openError }
            logger.warning("store unusable, rebuilding from the changelog", metadata: ["partition": "\(p)", "error": "\(openError)"])
            try SQLiteWindowStore.destroy(directory: directory)
            opened = try SQLiteWindowStore(directory: directory, parameters: c.parameters, options: c.storeOptions)
        }
        var store = opened!
        let tp = KafkaTopicPartition(c.changelogTopic, p)
        let marks = try restorer.queryWatermarks(tp, timeout: .seconds(30))
        // From the last record already applied: its headers give the exact source positions
        // (re-applying it changes nothing).
        var start = store.checkpoint.map { max($0.changelogOffset - 1, marks.low) } ?? marks.low
        if start > marks.high {
            // The store is ahead of its changelog (the topic was recreated): it cannot be trusted.
            logger.warning("store is ahead of its changelog; rebuilding", metadata: ["partition": "\(p)", "checkpoint": "\(start)", "high": "\(marks.high)"])
            try store.close()
            try SQLiteWindowStore.destroy(directory: directory)
            store = try SQLiteWindowStore(directory: directory, parameters: c.parameters, options: c.storeOptions)
            start = marks.low
        }
        if start < marks.low {
            logger.warning("changelog starts after the store's checkpoint; restoring what remains", metadata: ["partition": "\(p)"])
            start = marks.low
        }
        var positions: [String: Int64] = [:]
        if let checkpoint = store.checkpoint, checkpoint.sourceOffset >= 0 { positions[c.inputTopic] = checkpoint.sourceOffset }
        if start < marks.high {
            let restored = try restore(store, changelog: tp, from: start, to: marks.high, positions: &positions)
            statsBox.withLock {
                $0.restoredRecords += restored.records
                $0.restoreSeconds += restored.seconds
            }
        }
        let task = PartitionTask(partition: p, store: store, parameters: c.parameters)
        return (task, positions)
    }

    private func restore(_ store: SQLiteWindowStore, changelog tp: KafkaTopicPartition, from start: Int64, to high: Int64,
                         positions: inout [String: Int64]) throws -> (records: Int, seconds: Double) {
        let c = configuration
        logger.info("restoring", metadata: ["partition": "\(tp.partition)", "from": "\(start)", "to": "\(high)"])
        let began = ContinuousClock.now
        try restorer.assign([KafkaTopicPartitionOffset(tp, offset: start)])
        defer { try? restorer.unassign() }
        var applied = 0
        var next = start
        var lastLog = ContinuousClock.now
        var sinceCommit = 0
        while next < high {
            if stopRequested.load(ordering: .acquiring) { throw ProcessorError("stopped during restore") }
            _ = try restorer.pollBorrowing(maxMessages: 10_000, timeout: .milliseconds(200)) { m in
                do {
                    try store.apply(key: m.key ?? UnsafeRawBufferPointer(start: nil, count: 0), value: m.value)
                } catch {
                    throw ProcessorError("changelog \(tp) offset \(m.offset): \(error)")
                }
                if let h = m.header(Self.sourceOffsetHeader), let o = Self.parseOffset(h) { positions[c.inputTopic] = o }
                if let h = m.header(Self.repartitionOffsetHeader), let o = Self.parseOffset(h) { positions[c.repartitionTopic] = o }
                next = m.offset + 1
                applied += 1
                sinceCommit += 1
            }
            // Transaction markers advance the position without a record.
            if let position = try restorer.position([tp]).first?.offset, position > next { next = position }
            if sinceCommit >= 200_000 {
                try store.commitRestore(checkpoint: StoreCheckpoint(sourceOffset: positions[c.inputTopic] ?? KafkaOffset.invalid, changelogOffset: next))
                sinceCommit = 0
            }
            if ContinuousClock.now - lastLog >= .seconds(5) {
                logger.info("restoring", metadata: ["partition": "\(tp.partition)", "at": "\(next)", "to": "\(high)"])
                lastLog = ContinuousClock.now
            }
        }
        try store.commitRestore(checkpoint: StoreCheckpoint(sourceOffset: positions[c.inputTopic] ?? KafkaOffset.invalid, changelogOffset: next))
        let elapsed = Self.seconds(ContinuousClock.now - began)
        logger.info("restored", metadata: ["partition": "\(tp.partition)", "records": "\(applied)",
                                           "seconds": "\(String(format: "%.3f", elapsed))", "rate": "\(Int(Double(applied) / max(elapsed, 1e-6)))/s"])
        return (applied, elapsed)
    }

    /// A non-negative decimal offset from header bytes.
    static func parseOffset(_ bytes: UnsafeRawBufferPointer) -> Int64? {
        guard !bytes.isEmpty, bytes.count <= 19 else { return nil }
        var v: Int64 = 0
        for b in bytes {
            guard b >= 48, b <= 57 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(b - 48))
            guard !o1, !o2 else { return nil }
            v = a
        }
        return v
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

extension PartitionTask {
    /// The store as the detector's `inout` argument (a class: the reference is what changes hands).
    var storeRef: SQLiteWindowStore {
        get { store }
        set { precondition(newValue === store) }
    }
}
