import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// The commit pipeline: one cycle sealed and committed to Kafka while the next is handled,
// then its stores; aborts roll back and rewind.
extension StreamRuntime {
    // MARK: - Commit

    /// Ends the cycle and waits for its commit: at revocation, shutdown and `--until-end`.
    func commitCycle(leaving: Set<Int32> = []) throws {
        try finishCommit(wait: true, leaving: leaving)
        try startCommit(leaving: leaving)
        try finishCommit(wait: true, leaving: leaving)
    }

    /// Starts ending the cycle: the tasks' records are drained into the producer, their
    /// changelog records and consumed offsets go into the transaction, the stores seal their
    /// changes, and the Kafka commit starts on the commit thread. Records handled until it
    /// returns belong to the next cycle (the collector holds them).
    func startCommit(leaving: Set<Int32> = []) throws {
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
    func finishCommit(wait: Bool, leaving: Set<Int32> = []) throws {
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

    func addCommitTime(since start: ContinuousClock.Instant) {
        let t = Self.seconds(ContinuousClock.now - start)
        statsBox.withLock { $0.commitSeconds += t }
    }

    /// An abortable failure rolls everything back and rewinds; a fatal one stops the run.
    func recover(from error: any Error, leaving: Set<Int32>) throws {
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
        if let fatal = error as? TransactionFatalError { return RuntimeError(fatal.description) }
        return error
    }

    /// Commits the stores of a cycle whose Kafka commit succeeded, and buckets its records'
    /// latencies: their outputs are visible from now on.
    func commitStores(of commit: CommitInFlight) throws {
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
                throw RuntimeError("partition \(slot.partition): SQLite commit failed after the Kafka commit (\(error)); restart restores the store from the changelog")
            }
            slot.committed = slot.sealed
            slot.task?.committed()
        }
    }

    /// Aborts the transaction, rolls every store back and seeks to the committed positions.
    func abortAndRewind(skippingSeekOf leaving: Set<Int32> = []) throws {
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
}
