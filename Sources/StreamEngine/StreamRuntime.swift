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
/// Runs on one dedicated thread (``run()`` blocks): the consumer poll, the rebalance hooks,
/// the tasks, the stores and the transaction calls all happen there, so none of them touches
/// the Swift cooperative pool and no state needs a lock. Helpers take blocking work off it: the
/// collector's emitter thread produces the records tasks send, and each commit runs on a
/// short-lived thread while this one handles the next cycle. ``requestStop()`` may be called
/// from any thread.
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
    private let logger: Logger
    private let stopRequested = Atomic<Bool>(false)
    private let statsBox = Mutex(RuntimeStatistics())
    private let observer: (any RuntimeObserver)?
    /// The group consumer's broker connections, from its error and statistics callbacks.
    private let brokerState = KafkaBrokerState()

    private var producer: KafkaProducer!
    private var consumer: KafkaConsumer!
    private var collector: RecordCollector!
    private var coordinator: TransactionCoordinator!
    private var restorer: ChangelogRestorer<Role>!
    private var changelog: KafkaProducerTopic!
    private let tasks: TaskManager<Role>
    private var pendingRecords = 0
    private var cycleRecords = 0
    /// End offsets of the sources that are not internal, per source and partition (`--until-end`).
    private var endOffsets: [[Int32: Int64]] = []
    private var partitionCount = 0
    /// An error raised inside a rebalance hook (which cannot throw), rethrown after the poll.
    private var hookError: (any Error)?
    private var firstRecordAt: ContinuousClock.Instant?
    /// Set when ``run()`` is leaving because of an error: the revoke hook then commits nothing.
    private var failing = false
    /// When the open cycle got its first record (or punctuation change): its commit starts one
    /// interval later, so no record waits longer than the interval (plus a commit in flight)
    /// for its commit to start. nil while the cycle holds nothing.
    private var cycleOpenedAt: ContinuousClock.Instant?
    /// The Kafka timestamps of the open cycle's records, for ``RuntimeStatistics/recordLatency``.
    private var cycleTimestamps: [Int64] = []
    private var spareTimestamps: [Int64] = []
    private var inFlight: CommitInFlight?
    /// When consumer lag and store sizes were last sampled.
    private var lagSampledAt: ContinuousClock.Instant?
    private var storesSampledAt: ContinuousClock.Instant?
    private var sampledStores = 0
    private let lagSampler = ConsumerLagSampler()

    /// The cycle whose Kafka commit is in flight.
    private struct CommitInFlight {
        var slots: [TaskSlot<Role>]
        var changelogRecords: Int
        var started: ContinuousClock.Instant
        var kafkaStarted: ContinuousClock.Instant
        var timestamps: [Int64]
    }

    /// `observer` hears of each commit's latency (``RuntimeObserver``).
    public init(role: Role, configuration: RuntimeConfiguration, logger: Logger, observer: (any RuntimeObserver)? = nil) {
        self.role = role
        self.configuration = configuration
        self.logger = logger
        self.observer = observer
        tasks = TaskManager(role: role, stateRoot: configuration.stateDirectory)
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

    /// Runs on a dedicated thread (named `threadName`, at most 15 bytes) until stopped, bridged
    /// to async.
    public func runOnDedicatedThread(threadName: String) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                // Named from inside: on Linux a name set before start does not reach the OS thread.
                Thread.current.name = threadName
                continuation.resume(with: Result { try self.run() })
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    /// Runs on a dedicated thread until stopped or until the service group shuts down
    /// gracefully (SIGTERM, SIGINT), which stops the run the way ``requestStop()`` does. So
    /// does cancellation: the group cancels it when a service beside it fails (the HTTP
    /// endpoints cannot listen), and the run then commits what it holds and leaves the group.
    public func runUntilGracefulShutdown(threadName: String) async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await runOnDedicatedThread(threadName: threadName)
        } onCancelOrGracefulShutdown: {
            self.requestStop()
        }
    }

    /// Blocking: the whole run. Call on a dedicated thread.
    public func run() throws {
        let started = ContinuousClock.now
        defer { statsBox.withLock { $0.phase = .stopped } }
        do {
            try runLoop()
        } catch is RuntimeStopped {
            logger.notice("stopped before start-up finished")
            return
        }
        let s = statistics
        let elapsed = Self.seconds(ContinuousClock.now - started)
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
        logger.notice("stopped", metadata: metadata)
    }

    private func runLoop() throws {
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

        var restoreConfig = c.kafka
        restoreConfig.set("isolation.level", "read_committed")
        restoreConfig.set("group.id", "\(c.groupID)-restore-\(UUID().uuidString.lowercased())")
        restoreConfig.set("auto.offset.reset", "earliest")
        restoreConfig.setDefault("fetch.wait.max.ms", "10")
        restoreConfig.setDefault("max.partition.fetch.bytes", "4194304")
        restoreConfig.setConsumerPrefetchDefaults()
        let restoreConsumer = try KafkaConsumer(configuration: restoreConfig, logger: logger)
        defer { restoreConsumer.close() }
        restorer = ChangelogRestorer(consumer: restoreConsumer, topic: role.changelogTopic, sourceCount: sources.count,
                                     stallLimit: c.restoreStallLimit, logger: logger)

        if c.untilEnd {
            endOffsets = try sources.map { source in
                guard !source.isInternal else { return [:] }
                var ends: [Int32: Int64] = [:]
                for p in 0..<Int32(partitionCount) {
                    ends[p] = try restoreConsumer.queryWatermarks(KafkaTopicPartition(source.name, p), timeout: .seconds(30)).high
                }
                return ends
            }
            logger.info("processing up to the end offsets seen at start", metadata: [
                "end": "\(endOffsets[0].sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))",
            ])
        }

        var consumerConfig = c.kafka
        consumerConfig.set("group.id", c.groupID)
        consumerConfig.set("isolation.level", "read_committed")
        consumerConfig.set("partition.assignment.strategy", "range")
        // --until-end must see past the transaction markers that end its own repartition writes
        // (and any transactional input): the end-of-partition events carry the fetch position.
        if c.untilEnd { consumerConfig.set("enable.partition.eof", "true") }
        consumerConfig.setDefault("auto.offset.reset", "earliest")
        consumerConfig.setDefault("fetch.wait.max.ms", "10")
        consumerConfig.setConsumerPrefetchDefaults()
        let me = UnsafeSendable(self)
        let hooks = KafkaRebalanceHooks(
            onAssigned: { partitions in me.value.assigned(partitions) },
            onRevoked: { partitions, lost in me.value.revoked(partitions, lost: lost) },
            pauseAssigned: true)
        consumer = try KafkaConsumer(configuration: consumerConfig, hooks: hooks, brokerState: brokerState, logger: logger)
        var closed = false
        defer {
            if !closed {
                // Leaving on an error: the revoke hook must not commit what the failure interrupted.
                failing = true
                consumer.close()
                closeAllStores()
            }
        }
        let client: any TransactionClient = c.guarantee == .exactlyOnce
            ? ExactlyOnceClient(producer: producer, consumer: consumer)
            : AtLeastOnceClient(producer: producer, consumer: consumer)
        coordinator = TransactionCoordinator(client: ObservedTransactionClient.attach(to: client, configuration: c, observer: observer) { tasks.abortedRecords = $0 })
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
            if let interval = role.punctuationInterval, ContinuousClock.now - lastPunctuation >= interval {
                lastPunctuation = .now
                do {
                    try punctuate()
                } catch let abort as TransactionAbortRequired {
                    logger.warning("transaction failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
                    try abortAndRewind()
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
            var timeout: Duration = restoring ? .zero : .milliseconds(inFlight == nil ? 50 : 5)
            if let opened = cycleOpenedAt { timeout = max(.zero, min(timeout, opened + c.commitInterval - .now)) }
            let polled: Int
            do {
                defer { publishCycleStats() }
                polled = try consumer.pollBorrowing(maxMessages: 2_000, timeout: timeout) { m in
                    if waited == nil { waited = ContinuousClock.now }
                    try handle(m)
                }
            } catch let abort as TransactionAbortRequired {
                logger.warning("transaction failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
                try abortAndRewind()
                continue
            }
            collector.emitter.send()
            let pollTime = Self.seconds((waited ?? ContinuousClock.now) - pollStart)
            if firstRecordAt != nil { statsBox.withLock { $0.pollSeconds += pollTime } }
            if let error = hookError { throw error }
            try finishCommit(wait: false)
            let now = ContinuousClock.now
            sampleLagAndStores(now: now)
            var committed = false
            if cycleOpenedAt.map({ now - $0 >= c.commitInterval }) ?? false || pendingRecords >= c.maxRecordsPerTransaction {
                // One commit in flight at a time; a full cycle waits for it rather than hold more.
                if pendingRecords >= c.maxRecordsPerTransaction { try finishCommit(wait: true) }
                if inFlight == nil {
                    try startCommit()
                    committed = true
                }
            }
            if now - lastReport >= .seconds(10) {
                let s = statistics
                let rate = Double(s.records - reportedRecords) / Self.seconds(now - lastReport)
                // Idle, stuck in a group join and cut off from the broker must read differently.
                let health = RoleHealth.evaluate(s, now: now)
                var metadata: Logger.Metadata = [
                    "state": "\(health.state.rawValue)", "records": .number(s.records), "recent_rate_per_second": .number(Int(rate)),
                    "commits": .number(s.transactionsCommitted), "aborts": .number(s.transactionsAborted), "tasks": .number(s.tasks),
                    "assigned_partitions": .number(s.assignedPartitions), "restoring_tasks": .number(s.restoringTasks),
                    "lag_records": .number(Int(s.consumerLag.values.reduce(0, +))),
                ]
                if let reason = health.reason { metadata["reason"] = "\(reason)" }
                logger.info("progress", metadata: metadata)
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
        statsBox.withLock { $0.phase = .stopping }
        try commitCycle()
        // Leaving the group runs the revoke hook: it closes the stores.
        closed = true
        consumer.close()
        closeAllStores()
        if let error = hookError { throw error }
    }

    private func producerConfiguration() -> KafkaConfiguration {
        let c = configuration
        var config = c.kafka
        // A short linger under exactly-once too: whatever still lingers when a commit starts is
        // sent by the commit itself, on the critical path of every record's latency. With 5 ms
        // instead of 50 ms the Kafka commit took half as long (20 ms against 38 ms on average,
        // at 20,000 and 100,000 records/s through the dev broker, scripts/bench-latency.sh),
        // and the backlog throughput did not drop (scripts/bench-process.sh 300000, two
        // alternating pairs: 168,504 and 193,451 records/s against 145,999 and 138,589).
        config.setDefault("linger.ms", "5")
        config.setDefault("batch.num.messages", "10000")
        config.setDefault("queue.buffering.max.messages", "1000000")
        config.setDefault("queue.buffering.max.kbytes", "1048576")
        // Records the role sends by key land where Kafka Streams would put them.
        config.setDefault("partitioner", "murmur2_random")
        // A record just over the 1 MiB input limit must still fit in its dead letter.
        config.setDefault("message.max.bytes", "4194304")
        if c.guarantee == .exactlyOnce {
            config.set("transactional.id", c.transactionalID)
            config.setDefault("transaction.timeout.ms", "30000")
        }
        return config
    }

    /// `init_transactions` in one-second slices, so a stop request is seen while the
    /// coordinator is found and an older instance with the same id is fenced.
    private func initTransactions() throws {
        let deadline = ContinuousClock.now + max(configuration.connectTimeout, .seconds(60))
        while true {
            if isStopping { throw RuntimeStopped() }
            let failure: KafkaError
            do {
                try producer.initTransactions(timeout: .seconds(1))
                return
            } catch {
                failure = error
            }
            if failure.isRetriable, !failure.isFatal, ContinuousClock.now < deadline { continue }
            throw ProcessorError("cannot initialise the transactional producer \(configuration.transactionalID): \(failure)")
        }
    }

    // MARK: - Records

    /// Dispatches one record to its task, keeping the task's positions.
    @inline(__always)
    private func handle(_ m: borrowing KafkaRecordView) throws {
        // A rebalance hook failed during this poll: the run stops right after it.
        guard hookError == nil, let slot = tasks.slot(m.partition), let task = slot.task,
              let source = tasks.sourceIndex(m.topic), !tasks.wasAborted(source: source, partition: m.partition, offset: m.offset)
        else { return }
        if firstRecordAt == nil { firstRecordAt = ContinuousClock.now }
        let offset = m.offset
        if let next = slot.next[source], offset < next { return }
        if slot.committed[source] == nil { slot.committed[source] = offset }
        try coordinator.beginIfNeeded()
        try task.handle(m, source: source)
        if cycleOpenedAt == nil { cycleOpenedAt = .now }
        if let timestamp = m.timestamp { cycleTimestamps.append(timestamp) }
        slot.next[source] = offset + 1
        slot.changed = true
        pendingRecords += 1
        cycleRecords += 1
    }

    /// Runs every running task's wall-clock work inside the open cycle.
    private func punctuate() throws {
        let wallClock = Int64((Date().timeIntervalSince1970 * 1000).rounded(.down))
        for slot in tasks.running {
            guard let task = slot.task else { continue }
            try coordinator.beginIfNeeded()
            if try task.punctuate(wallClock: wallClock) {
                slot.changed = true
                if cycleOpenedAt == nil { cycleOpenedAt = .now }
            }
        }
    }

    /// Where a task's commit leaves each source: its next offset, or the first record it holds back.
    private func commitPositions(_ slot: TaskSlot<Role>) -> SourcePositions {
        var positions = slot.next
        guard let task = slot.task else { return positions }
        for i in role.sources.indices {
            if let held = task.heldBack(source: i), let next = positions[i], held < next { positions[i] = held }
        }
        return positions
    }

    private func publishCycleStats() {
        role.didHandleBatch()
        let n = cycleRecords
        cycleRecords = 0
        let now = ContinuousClock.now
        statsBox.withLock {
            $0.records += n
            $0.lastPollAt = now
        }
    }

    /// Consumer lag about once a second and store sizes every few seconds, of every assigned
    /// partition (``ConsumerLagSampler``).
    private func sampleLagAndStores(now: ContinuousClock.Instant) {
        if let last = lagSampledAt, now - last < .seconds(1) { return }
        lagSampledAt = now
        let all = tasks.all
        let lag = lagSampler.sample(consumer, sources: role.sources.map(\.name), running: all.filter { $0.task != nil }.map(\.partition),
                                    waiting: all.filter { $0.task == nil }.map(\.partition), now: now)
        var stores: [Int32: Int64]?
        let open = all.filter { $0.store != nil }
        // A store opened or closed since: sampled now, not up to ten seconds later.
        if storesSampledAt.map({ now - $0 >= .seconds(10) }) ?? true || open.count != sampledStores {
            storesSampledAt = now
            sampledStores = open.count
            stores = Dictionary(uniqueKeysWithValues: open.map { ($0.partition, StateDirectory.bytes(of: $0.directory)) })
        }
        statsBox.withLock {
            $0.consumerLag = lag
            if let stores { $0.storeBytes = stores }
        }
    }

    private func publishRestoreProgress() {
        let p = restorer.progress
        let restored = restorer.restoredRecords, seconds = restorer.restoreSeconds, partitions = restorer.partitions
        statsBox.withLock {
            $0.restoringTasks = p.restoring
            $0.restoreRemaining = p.remaining
            $0.restores = partitions
            $0.restoredRecords = restored
            $0.restoreSeconds = seconds
        }
    }

    // MARK: - Tasks

    /// Opens the stores of newly assigned tasks and starts their restores (or runs them when
    /// their store is current).
    private func startAssignedTasks() throws {
        guard tasks.hasUnopened else { return }
        for slot in tasks.all {
            guard case .assigned = slot.phase else { continue }
            var store = try tasks.openStore(slot) { message, metadata in
                logger.warning("\(message)", metadata: metadata.mapValues { .string($0) })
            }
            slot.store = store
            let opened = store
            let restoring = try restorer.begin(slot, store: &store) {
                try opened.close()
                try role.destroyStore(directory: slot.directory)
                return try role.openStore(directory: slot.directory)
            }
            slot.store = store
            if restoring {
                slot.phase = .restoring
            } else {
                try startRunning(slot)
            }
        }
        publishRestoreProgress()
    }

    /// A restored task starts: each source resumes at the later of the group's committed offset
    /// and the position its state covers (offsets committed past it covered records that changed
    /// no state).
    private func startRunning(_ slot: TaskSlot<Role>) throws {
        let sources = role.sources
        let tps = sources.map { KafkaTopicPartition($0.name, slot.partition) }
        let committed = try consumer.committed(tps, timeout: .seconds(30))
        let committedBy = Dictionary(committed.map { ($0.topicPartition, $0.offset) }, uniquingKeysWith: { a, _ in a })
        var seeks: [KafkaTopicPartitionOffset] = []
        for (i, tp) in tps.enumerated() {
            let fromGroup = committedBy[tp].flatMap { $0 >= 0 ? $0 : nil }
            let fromState = i < slot.restoredPositions.count && slot.restoredPositions[i] >= 0 ? slot.restoredPositions[i] : nil
            if let start = [fromGroup, fromState].compactMap({ $0 }).max() {
                slot.next[i] = start
                slot.committed[i] = start
                seeks.append(KafkaTopicPartitionOffset(tp, offset: start))
            }
        }
        let task = try role.makeTask(partition: slot.partition, partitionCount: partitionCount, store: slot.store!, collector: collector)
        slot.phase = .running(task)
        try consumer.seek(seeks, timeout: .seconds(30))
        try consumer.resume(tps)
        statsBox.withLock { $0.tasks = tasks.running.count }
        logger.info("task started", metadata: [
            "partition": .number(Int(slot.partition)),
            "positions": "\(sources.indices.map { slot.next[$0].map(String.init) ?? "earliest" }.joined(separator: ","))",
        ])
    }

    private func closeAllStores() {
        for slot in tasks.remove(Set(tasks.all.map(\.partition))) { close(slot) }
    }

    private func close(_ slot: TaskSlot<Role>) {
        restorer?.cancel(slot.partition)
        guard let store = slot.store else { return }
        store.rollback()
        do { try store.close() } catch { logger.warning("closing store failed", metadata: ["partition": .number(Int(slot.partition)), "error": "\(error)"]) }
        slot.store = nil
        logger.info("task stopped", metadata: ["partition": .number(Int(slot.partition))])
    }

    // MARK: - Commit

    /// Ends the cycle and waits for its commit: at revocation, shutdown and `--until-end`.
    private func commitCycle(leaving: Set<Int32> = []) throws {
        try finishCommit(wait: true, leaving: leaving)
        try startCommit(leaving: leaving)
        try finishCommit(wait: true, leaving: leaving)
    }

    /// Starts ending the cycle: the tasks' records are drained into the producer, their
    /// changelog records and consumed offsets go into the transaction, the stores seal their
    /// changes, and the Kafka commit starts on a helper thread. Records handled until it
    /// returns belong to the next cycle (the collector holds them).
    private func startCommit(leaving: Set<Int32> = []) throws {
        precondition(inFlight == nil, "a commit is in flight")
        let changed = tasks.running.filter(\.changed)
        guard !changed.isEmpty else {
            cycleOpenedAt = nil
            return
        }
        let commitStart = ContinuousClock.now
        defer { addCommitTime(since: commitStart) }
        do {
            // Every record of the cycle is in the producer before its changelog and offsets.
            do {
                try collector.emitter.drain()
            } catch {
                try coordinator.recordFailed(error)
            }
            try coordinator.beginIfNeeded()
            var changelogCount = 0
            for slot in changed { try slot.store!.pendingChanges(into: &slot.changelog) }
            let positions = changed.map(commitPositions)
            // Each task's first record, then the rest: every changelog partition joins the
            // transaction in one burst. librdkafka 2.0.2 adds partitions one request at a time,
            // a timer of under a millisecond apart, and its main thread spins on the clock while
            // it waits (fixed in 2.4.0): joining 32 partitions one by one cost ~20% of the CPU.
            for pass in 0..<2 {
                for (slot, positions) in zip(changed, positions) {
                    let batch = slot.changelog
                    guard pass == 0 || batch.count > 1 else { continue }
                    let store = slot.store!
                    try collector.writeChangelog(
                        batch, range: pass == 0 ? 0..<min(1, batch.count) : 1..<batch.count, to: changelog,
                        partition: slot.partition, positions: ChangelogPositions.encode(positions.checkpointForm),
                        carrier: { ChangelogRecord(.streamTime(store.streamTime)) })
                    changelogCount += pass == 0 ? 1 : batch.count - 1
                }
            }
            let sources = role.sources
            let offsets = zip(changed, positions).flatMap { slot, positions in
                sources.indices.compactMap { i -> KafkaTopicPartitionOffset? in
                    guard let next = positions[i], next != slot.committed[i] else { return nil }
                    return KafkaTopicPartitionOffset(sources[i].name, slot.partition, offset: next)
                }
            }
            let kafkaStart = ContinuousClock.now
            statsBox.withLock { $0.changelogSeconds += Self.seconds(kafkaStart - commitStart) }
            try coordinator.sendOffsets(offsets)
            for (slot, positions) in zip(changed, positions) {
                try slot.store!.seal()
                slot.task?.sealed()
                slot.sealed = positions
                slot.changed = false
            }
            pendingRecords = 0
            cycleOpenedAt = nil
            var timestamps = spareTimestamps
            timestamps.removeAll(keepingCapacity: true)
            swap(&timestamps, &cycleTimestamps)
            inFlight = CommitInFlight(slots: changed, changelogRecords: changelogCount, started: commitStart, kafkaStarted: kafkaStart,
                                      timestamps: timestamps)
            collector.emitter.isHolding = coordinator.client.holdsRecordsDuringCommit
            coordinator.startCommit()
        } catch {
            try recover(from: error, leaving: leaving)
        }
        if !coordinator.client.holdsRecordsDuringCommit { try finishCommit(wait: true, leaving: leaving) }
    }

    /// Finishes the commit in flight, if any (returning at once when `wait` is false and it is
    /// still running): the stores commit what they sealed, the next transaction begins and
    /// receives the records held meanwhile. A failed commit rolls everything back and rewinds.
    private func finishCommit(wait: Bool, leaving: Set<Int32> = []) throws {
        guard let commit = inFlight else { return }
        let result: Result<Void, TransactionAbortRequired>
        do {
            guard let r = try coordinator.finishCommit(wait: wait) else { return }
            result = r
        } catch {
            inFlight = nil
            throw Self.stopping(error)
        }
        inFlight = nil
        defer { addCommitTime(since: .now) }
        switch result {
        case .success:
            let storeStart = ContinuousClock.now
            try commitStores(of: commit)
            let storeEnd = ContinuousClock.now
            let processing = firstRecordAt.map { Self.seconds(storeEnd - $0) } ?? 0
            let counters = coordinator.counters
            statsBox.withLock {
                $0.kafkaCommitSeconds += Self.seconds(storeStart - commit.kafkaStarted)
                $0.storeCommitSeconds += Self.seconds(storeEnd - storeStart)
                $0.transactionsCommitted = counters.committed
                $0.transactionRetries = counters.retries
                $0.changelogRecords += commit.changelogRecords
                $0.processingSeconds = processing
                $0.lastCommitAt = storeEnd
                $0.consecutiveAborts = 0
            }
            observer?.commitEnded(CommitTiming(total: storeEnd - commit.started, transaction: storeStart - commit.kafkaStarted))
            // What was handled meanwhile goes into the next transaction, which begins first.
            do {
                if collector.emitter.hasUnsent { try coordinator.beginIfNeeded() }
            } catch {
                try recover(from: error, leaving: leaving)
                return
            }
            collector.emitter.release()
        case .failure(let abort):
            logger.warning("transaction commit failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
            try abortAndRewind(skippingSeekOf: leaving)
        }
    }

    private func addCommitTime(since start: ContinuousClock.Instant) {
        let t = Self.seconds(ContinuousClock.now - start)
        statsBox.withLock { $0.commitSeconds += t }
    }

    /// An abortable failure rolls everything back and rewinds; a fatal one stops the run.
    private func recover(from error: any Error, leaving: Set<Int32>) throws {
        if let kafka = error as? KafkaError {
            // A refused changelog record: the coordinator says whether the transaction aborts.
            do { try coordinator.recordFailed(kafka) } catch { return try recover(from: error, leaving: leaving) }
            return try recover(from: TransactionAbortRequired(underlying: kafka, operation: "produce"), leaving: leaving)
        }
        switch error {
        case let abort as TransactionAbortRequired:
            logger.warning("transaction failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
            try abortAndRewind(skippingSeekOf: leaving)
        case let error as SQLiteError:
            logger.warning("store read failed; aborting and rewinding to the last commit", metadata: ["error": "\(error)"])
            try abortAndRewind(skippingSeekOf: leaving)
        default:
            throw Self.stopping(error)
        }
    }

    /// The one-line reason a run stops with.
    static func stopping(_ error: any Error) -> any Error {
        if let fatal = error as? TransactionFatalError { return ProcessorError(fatal.description) }
        return error
    }

    /// Commits the stores of a cycle whose Kafka commit succeeded, and buckets its records'
    /// latencies: their outputs are visible from now on.
    private func commitStores(of commit: CommitInFlight) throws {
        var latency = RecordLatencyHistogram()
        latency.record(timestamps: commit.timestamps, committedAt: RecordLatencyHistogram.wallClockMillis())
        statsBox.withLock { $0.recordLatency.merge(latency) }
        spareTimestamps = commit.timestamps
        for slot in commit.slots {
            guard let store = slot.store else { continue }
            let changelogNext = producer.deliveredOffset(KafkaTopicPartition(role.changelogTopic, slot.partition)).map { $0 + 1 }
                ?? store.checkpoint?.changelogOffset ?? 0
            do {
                try store.commit(checkpoint: StoreCheckpoint(positions: slot.sealed.checkpointForm, changelogOffset: changelogNext))
            } catch {
                // Kafka holds the truth: the store is now behind its changelog, which the next
                // restore repairs. Continuing on it would compute from stale state: stop.
                throw ProcessorError("partition \(slot.partition): SQLite commit failed after the Kafka commit (\(error)); restart restores the store from the changelog")
            }
            slot.committed = slot.sealed
            slot.task?.committed()
        }
    }

    /// Aborts the transaction, rolls every store back and seeks to the committed positions.
    private func abortAndRewind(skippingSeekOf leaving: Set<Int32> = []) throws {
        // A commit in flight may have succeeded: its stores commit before the rest rolls back
        // (a failed one aborts below).
        if let commit = inFlight {
            inFlight = nil
            let result: Result<Void, TransactionAbortRequired>?
            do { result = try coordinator.finishCommit(wait: true) } catch { throw Self.stopping(error) }
            if case .success = result { try commitStores(of: commit) }
        }
        collector.emitter.discard()
        try? collector.emitter.drain()
        do { try coordinator.abort() } catch { throw Self.stopping(error) }
        pendingRecords = 0
        var seeks: [KafkaTopicPartitionOffset] = []
        let sources = role.sources
        for slot in tasks.running {
            slot.store!.rollback()
            slot.task!.rolledBack()
            slot.changed = false
            // Every position, moved or not: a failure inside a poll leaves polled records unhandled.
            for i in sources.indices where !leaving.contains(slot.partition) {
                guard let offset = slot.committed[i] else { continue }
                seeks.append(KafkaTopicPartitionOffset(sources[i].name, slot.partition, offset: offset))
            }
            slot.next = slot.committed
        }
        try consumer.seek(seeks, timeout: .seconds(30))
        let counters = coordinator.counters
        statsBox.withLock {
            $0.transactionsAborted = counters.aborted
            $0.transactionRetries = counters.retries
            $0.rewinds += 1
            $0.consecutiveAborts += 1
        }
        cycleOpenedAt = nil
        cycleTimestamps.removeAll(keepingCapacity: true)
    }

    // MARK: - Until end

    private func reachedEnd() throws -> Bool {
        guard !tasks.isEmpty, tasks.allRunning, pendingRecords == 0, coordinator.state == .idle, inFlight == nil else { return false }
        let running = tasks.running
        for (i, source) in role.sources.enumerated() {
            let tps = running.map { KafkaTopicPartition(source.name, $0.partition) }
            let positions = try consumer.position(tps)
            for (slot, position) in zip(running, positions) {
                if source.isInternal {
                    // Whatever this run sent there must be processed too.
                    let marks = try consumer.queryWatermarks(position.topicPartition, timeout: .seconds(10))
                    if let eof = consumer.endOfPartition(position.topicPartition), eof >= marks.high { continue }
                    let reached = max(position.offset, slot.next[i] ?? KafkaOffset.invalid, slot.committed[i] ?? KafkaOffset.invalid)
                    if reached < marks.high, marks.high > 0 {
                        // Empty so far and starting at the high watermark: nothing to do.
                        if reached < 0, marks.low == marks.high { continue }
                        return false
                    }
                } else {
                    let end = endOffsets[i][slot.partition] ?? 0
                    if let eof = consumer.endOfPartition(position.topicPartition), eof >= end { continue }
                    let reached = max(position.offset, slot.next[i] ?? KafkaOffset.invalid)
                    // A range nothing was read from counts as done when it starts at or past the end.
                    if reached < end, (slot.committed[i] ?? KafkaOffset.invalid) < end { return false }
                }
            }
        }
        return true
    }

    // MARK: - Rebalance hooks (on the run-loop thread, inside poll)

    private func assigned(_ partitions: [KafkaTopicPartition]) -> [KafkaTopicPartition: Int64] {
        guard hookError == nil else { return [:] }
        do {
            _ = try tasks.assigned(partitions)
        } catch {
            hookError = error
        }
        let assigned = tasks.all.count
        statsBox.withLock { $0.assignedPartitions = assigned }
        // Every assigned partition starts paused; a task resumes its own once restored.
        return [:]
    }

    private func revoked(_ partitions: [KafkaTopicPartition], lost: Bool) {
        let leaving = Set(partitions.map(\.partition))
        if failing {
            // Never abort while a commit runs on its helper thread: let it end first.
            if inFlight != nil {
                _ = try? coordinator.finishCommit(wait: true)
                inFlight = nil
            }
            collector.emitter.discard()
            try? collector.emitter.drain()
            _ = try? coordinator.abort()
        } else if lost {
            // Another member owns them already: whatever is open cannot commit.
            do { try abortAndRewind(skippingSeekOf: leaving) } catch { hookError = hookError ?? error }
        } else {
            do { try commitCycle(leaving: leaving) } catch { hookError = hookError ?? error }
        }
        for slot in tasks.remove(leaving) { close(slot) }
        let running = tasks.running.count, assigned = tasks.all.count
        statsBox.withLock {
            $0.tasks = running
            $0.assignedPartitions = assigned
            $0.consumerLag = $0.consumerLag.filter { !leaving.contains($0.key.partition) }
            $0.restores = $0.restores.filter { !leaving.contains($0.changelog.partition) }
            $0.storeBytes = $0.storeBytes.filter { !leaving.contains($0.key) }
        }
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}
