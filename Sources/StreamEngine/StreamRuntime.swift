import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

/// The run loop every role runs on: one consumer-group member whose tasks (one per partition
/// group, ``TaskManager``) are restored from their changelogs (``ChangelogRestorer``), handle
/// records (the role's ``StreamTask``), send what they produce (``RecordCollector``) and commit
/// in one transaction per interval (``TransactionCoordinator``).
///
/// One stream thread of a ``StreamThreadGroup``, which runs it on a dedicated thread: the
/// consumer poll, the rebalance hooks, the tasks, the stores and the transaction calls all
/// happen there, so none of them touches the Swift cooperative pool and no state needs a lock.
/// Helpers take blocking work off it: the collector's emitter thread produces the records tasks
/// send, and each commit runs on the coordinator's commit thread while this one handles the
/// next cycle. ``requestStop()`` may be called from any thread.
///
/// Per commit interval, exactly-once: one Kafka transaction holds what the tasks sent, their
/// stores' changelog records (the last of a task's carrying the source positions it covers) and
/// the consumed offsets. The stores seal the cycle's changes when its commit starts and commit
/// them, with their checkpoints, once Kafka has; records handled meanwhile are held until the
/// next transaction begins. An abort rolls the stores back (both cycles) and rewinds the
/// consumer to the last committed positions, so the same records are handled again.
public final class StreamRuntime<Role: StreamRole>: @unchecked Sendable {
    // @unchecked: everything but `stopRequested` and `statsBox` (both synchronized) is touched
    // on the run-loop thread only; the hooks run inside its polls.

    public let configuration: RuntimeConfiguration
    public let role: Role
    let logger: Logger
    let stopRequested = Atomic<Bool>(false)
    let statsBox = Mutex(RuntimeStatistics())
    let observer: (any RuntimeObserver)?
    /// The group consumer's broker connections, from its error and statistics callbacks.
    let brokerState = KafkaBrokerState()

    var producer: KafkaProducer!
    var consumer: KafkaConsumer!
    var collector: RecordCollector!
    @usableFromInline var coordinator: TransactionCoordinator!
    var restorer: ChangelogRestorer<Role>!
    var changelog: KafkaProducerTopic!
    @usableFromInline let tasks: TaskManager<Role>
    @usableFromInline var pendingRecords = 0
    /// Records handled since the last publish, per source (as `role.sources`): one array
    /// element bumped per record keeps the per-source counts off any lock until the poll is done.
    @usableFromInline var cycleRecords: [Int]
    /// End offsets of the sources that are not internal, per source and partition (`--until-end`).
    var endOffsets: [[Int32: Int64]] = []
    var partitionCount = 0
    /// An error raised inside a rebalance hook (which cannot throw), rethrown after the poll.
    @usableFromInline var hookError: (any Error)?
    @usableFromInline var firstRecordAt: ContinuousClock.Instant?
    /// When the open cycle got its first record (or punctuation change): its commit starts one
    /// interval later, so no record waits longer than the interval (plus a commit in flight)
    /// for its commit to start. nil while the cycle holds nothing.
    @usableFromInline var cycleOpenedAt: ContinuousClock.Instant?
    /// The Kafka timestamps of the open cycle's records, for ``RuntimeStatistics/recordLatency``.
    @usableFromInline var cycleTimestamps: [Int64] = []
    var spareTimestamps: [Int64] = []
    /// What the commit pipeline does next (the decisions; the I/O is the runtime's).
    var lifecycle = CommitLifecycle()
    /// The cycle whose Kafka commit is in flight, and the one whose result was just collected
    /// (its stores commit next, if it succeeded).
    var inFlight: CommitInFlight?
    var finished: CommitInFlight?
    /// How often a cycle's seal was attempted (`--until-end` looks for its end after one).
    var sealsAttempted = 0
    /// When consumer lag and store sizes were last sampled.
    var lagSampledAt: ContinuousClock.Instant?
    var storesSampledAt: ContinuousClock.Instant?
    var sampledStores = 0
    let lagSampler = ConsumerLagSampler()
    /// The instance's other stream threads, when it has several (``StreamThreadGroup``), and
    /// this thread's place among them.
    var coordination: StreamThreadCoordination?
    var threadIndex = 0
    /// Whether the group has given this member an assignment yet, even an empty one.
    var hasBeenAssigned = false
    /// Whether `--until-end` found this thread at its end once.
    var reachedEndOnce = false
    /// Seeks librdkafka refused because the partition's fetcher was not running, by partition
    /// (the partitions stay paused until one succeeds).
    var seeksAwaitingFetcher: [KafkaTopicPartition: Int64] = [:]

    /// How the run loop hands each polled record to ``handle(_:)``. The default runs the generic
    /// body; ``specializeRecordHandling()`` replaces it with one compiled for the concrete role.
    public typealias RecordHandler = (StreamRuntime<Role>, borrowing KafkaRecordView) throws -> Void
    @usableFromInline var recordHandler: RecordHandler = { runtime, m in try runtime.handle(m) }

    /// The cycle whose Kafka commit is in flight.
    struct CommitInFlight {
        var slots: [TaskSlot<Role>]
        var changelogRecords: Int
        var started: ContinuousClock.Instant
        var kafkaStarted: ContinuousClock.Instant
        var timestamps: [Int64]
    }

    /// `observer` hears of each commit's latency (``RuntimeObserver``).
    public init(role: Role, configuration: RuntimeConfiguration, logger: Logger, observer: (any RuntimeObserver)? = nil) {
        self.role = role
        cycleRecords = Array(repeating: 0, count: role.sources.count)
        self.configuration = configuration
        self.logger = logger
        self.observer = observer
        tasks = TaskManager(role: role, stateRoot: configuration.stateDirectory)
    }

    /// Makes the run loop call a copy of the per-record path compiled for `Role`. Call it, before
    /// ``run()``, from code where `Role` is a concrete type (the module that defines the role):
    /// `@inlinable`, so the closure it installs is compiled there and ``handle(_:)`` is
    /// specialized and inlined into it. It won a quarter of the run-loop thread's CPU in the
    /// poll and per-record path of `process` (300,000 records of `scripts/bench-process.sh`'s
    /// input, `perf record -e cpu-clock -g` on `polyglot process --until-end`, three runs each:
    /// 1,528 samples at 5 kHz against 2,037 before, the build before the split into targets
    /// 1,512).
    @inlinable
    public func specializeRecordHandling() {
        recordHandler = { runtime, m in try runtime.handle(m) }
    }

    /// Asks ``run()`` to finish: it commits (or aborts) the open transaction, leaves the group
    /// and returns. Any thread; start-up, the group join and restores stop promptly too.
    public func requestStop() { stopRequested.store(true, ordering: .releasing) }

    public var isStopping: Bool { stopRequested.load(ordering: .acquiring) }

    public var statistics: RuntimeStatistics {
        var s = statsBox.withLock { $0 }
        s.broker = brokerState.reachability
        return s
    }

    // MARK: - Run

    /// Blocking: one thread's whole run (``StreamThreadGroup/run(threadName:)`` calls it on each
    /// thread). Returns false when stopped before start-up finished.
    func runThread() throws -> Bool {
        defer { statsBox.withLock { $0.phase = .stopped } }
        do {
            try runLoop()
        } catch is RuntimeStopped {
            return false
        }
        return true
    }

    /// The run's final log line, on `logger` (the instance's, not one thread's): the runtime's
    /// counters (of every thread) and the role's.
    func logStopped(statistics s: RuntimeStatistics, elapsed: Duration, on logger: Logger) {
        let elapsed = elapsed.inSeconds
        let processing = max(s.processingSeconds, 1e-6)
        var metadata = Logger.Metadata(uniqueKeysWithValues: role.summary.map { ($0.key.snakeCased, Int($0.value).map { .number($0) } ?? .string($0.value)) })
        metadata.merge([
            "records": .number(s.records), "commits": .number(s.transactionsCommitted), "aborts": .number(s.transactionsAborted),
            "retries": .number(s.transactionRetries),
            "elapsed_seconds": .number(elapsed), "processing_seconds": .number(s.processingSeconds),
            "poll_seconds": .number(s.pollSeconds), "commit_seconds": .number(s.commitSeconds),
            "changelog_seconds": .number(s.changelogSeconds), "kafka_commit_seconds": .number(s.kafkaCommitSeconds),
            "store_commit_seconds": .number(s.storeCommitSeconds),
            "average_rate_per_second": .number(Int(Double(s.records) / processing)),  // over the processing time of the whole run
            "restored_records": .number(s.restoredRecords), "restore_seconds": .number(s.restoreSeconds),
            "restore_rate_per_second": .number(s.restoreSeconds > 0 ? Int(Double(s.restoredRecords) / s.restoreSeconds) : 0),
        ]) { role, _ in role }
        if configuration.streamThreads > 1 { metadata["stream_threads"] = .number(configuration.streamThreads) }
        logger.notice("stopped", metadata: metadata)
    }

    func runLoop() throws {
        let c = configuration
        let sources = role.sources
        let partitionCounts = try InternalTopics(sources: sources, changelogTopic: role.changelogTopic, sinkTopics: role.sinkTopics)
            .check(kafka: c.kafka, connectTimeout: c.connectTimeout, isStopping: { isStopping }, logger: logger)
        partitionCount = partitionCounts[sources[0].name]!
        producer = try KafkaProducer(configuration: producerConfiguration(), logger: logger)
        defer { producer.close(flushTimeout: .seconds(5)) }
        if c.guarantee == .exactlyOnce { try initTransactions() }
        collector = RecordCollector(producer: producer)
        collector.partitionCounts = partitionCounts
        defer { collector.emitter.stop() }
        changelog = try collector.topic(role.changelogTopic)

        let restoreConsumer = try KafkaConsumer(configuration: restoreConsumerConfiguration(), logger: logger)
        defer { restoreConsumer.close() }
        restorer = ChangelogRestorer(consumer: restoreConsumer, topic: role.changelogTopic, sourceCount: sources.count,
                                     stallLimit: c.restoreStallLimit, logger: logger)

        if c.untilEnd { try readEndOffsets(with: restoreConsumer) }

        let me = UnsafeSendable(self)
        let hooks = KafkaRebalanceHooks(
            onAssigned: { partitions in me.value.assigned(partitions) },
            onRevoked: { partitions, lost in me.value.revoked(partitions, lost: lost) },
            pauseAssigned: true)
        consumer = try KafkaConsumer(configuration: groupConsumerConfiguration(), hooks: hooks, brokerState: brokerState, logger: logger)
        var closed = false
        defer {
            if !closed {
                // Leaving on an error: the revoke hook must not commit what the failure interrupted.
                _ = try? lifecycle.handle(.failing)
                consumer.close()
                closeAllStores()
            }
        }
        let client: any TransactionClient = c.guarantee == .exactlyOnce
            ? ExactlyOnceClient(producer: producer, consumer: consumer)
            : AtLeastOnceClient(producer: producer, consumer: consumer)
        coordinator = TransactionCoordinator(client: ObservedTransactionClient.attach(to: client, configuration: c, observer: observer) { tasks.abortedRecords = $0 })
        defer { coordinator.close() }
        // The instance's other stream threads join the group in the same rebalance.
        try coordination?.arriveAtStart()
        try consumer.subscribe(sources.map(\.name))
        statsBox.withLock { $0.phase = .running }
        logger.info("running", metadata: [
            "sources": "\(sources.map(\.name).joined(separator: ","))", "partitions": .number(partitionCount),
            "guarantee": "\(c.guarantee.rawValue)", "group": "\(c.groupID)", "kafka": "\(c.kafka.redactedDescription)",
        ])

        var lastReport = ContinuousClock.now
        var lastPunctuation = ContinuousClock.now
        var reportedRecords = 0
        while !isStopping {
            try startAssignedTasks()
            try retrySeeksAwaitingFetcher()
            // Past its end under --until-end a thread only handles what its peers still send it:
            // punctuating would send them work in turn (as the auditor's read progress does),
            // and the threads would never all be at their end at once.
            if let interval = role.punctuationInterval, !reachedEndOnce, ContinuousClock.now - lastPunctuation >= interval {
                lastPunctuation = .now
                do {
                    try punctuate()
                } catch let abort as TransactionAbortRequired {
                    logger.warning("transaction failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
                    try drive(.abortRequired)
                    continue
                }
            }
            let restoring = !restorer.isIdle
            if restoring {
                for slot in try restorer.step(budget: .milliseconds(200)) { try startRunning(slot) }
                publishRestoreProgress()
            }
            let pollStart = ContinuousClock.now
            var waited: ContinuousClock.Instant? = nil
            // While restoring, or while a commit is in flight, come back soon; and no later
            // than the open cycle's commit is due.
            var timeout: Duration = restoring ? .zero : .milliseconds(lifecycle.isCommitting ? 5 : 50)
            if let opened = cycleOpenedAt { timeout = max(.zero, min(timeout, opened + c.commitInterval - .now)) }
            let polled: Int
            do {
                defer { publishCycleStats() }
                polled = try consumer.pollBorrowing(maxMessages: 2_000, timeout: timeout) { m in
                    if waited == nil { waited = ContinuousClock.now }
                    try recordHandler(self, m)
                }
            } catch let abort as TransactionAbortRequired {
                logger.warning("transaction failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
                try drive(.abortRequired)
                continue
            }
            collector.emitter.send()
            let pollTime = ((waited ?? ContinuousClock.now) - pollStart).inSeconds
            if firstRecordAt != nil { statsBox.withLock { $0.pollSeconds += pollTime } }
            if let error = hookError { throw error }
            try drive(.checkCommit(wait: false))
            let now = ContinuousClock.now
            sampleLagAndStores(now: now)
            let sealsBefore = sealsAttempted
            if cycleOpenedAt.map({ now - $0 >= c.commitInterval }) ?? false || pendingRecords >= c.maxRecordsPerTransaction {
                try drive(.commitDue(full: pendingRecords >= c.maxRecordsPerTransaction))
            }
            let committed = sealsAttempted != sealsBefore
            if now - lastReport >= .seconds(10) {
                reportedRecords = logProgress(now: now, since: lastReport, recordsThen: reportedRecords)
                lastReport = now
            }
            if c.untilEnd, committed || polled == 0 {
                if pendingRecords == 0 { try drive(.checkCommit(wait: true)) }
                let atEnd = try reachedEnd()
                if atEnd { reachedEndOnce = true }
                if coordination.map({ $0.reportEnd(thread: threadIndex, atEnd: atEnd) }) ?? atEnd {
                    try commitCycle()
                    logger.info("reached the end offsets seen at start")
                    break
                }
            }
        }
        statsBox.withLock { $0.phase = .stopping }
        try commitCycle()
        // Leaving the group runs the revoke hook: it closes the stores.
        closed = true
        consumer.close()
        closeAllStores()
        if let error = hookError { throw error }
    }
}
