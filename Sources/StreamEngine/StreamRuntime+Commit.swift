import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// The commit pipeline, carrying out what the commit lifecycle (``CommitLifecycle``) decides:
// one cycle sealed and committed to Kafka while the next is handled, then its stores; aborts
// roll back and rewind.
extension StreamRuntime {
    // MARK: - Commit

    /// Feeds `event` to the commit lifecycle and performs the actions it returns, and those
    /// its reports lead to, until none is left.
    func drive(_ event: CommitLifecycle.Event) throws {
        var next: CommitLifecycle.Event? = event
        while let event = next {
            next = nil
            for action in try lifecycle.handle(event) {
                // Only the last action of a list reports back (the lifecycle's tests hold it to that).
                if next != nil { throw RuntimeError("internal error: the commit lifecycle asked for \(action) after an action that reports back") }
                next = try perform(action)
            }
        }
    }

    /// Ends the cycle and waits for its commit: at revocation, shutdown and `--until-end`.
    func commitCycle(leaving: Set<Int32> = []) throws {
        try drive(.endCycle(leaving: leaving))
    }

    /// Carries out one action of the commit lifecycle; returns its report, if it has one.
    func perform(_ action: CommitLifecycle.Action) throws -> CommitLifecycle.Event? {
        switch action {
        case .sealCycle:
            sealsAttempted &+= 1
            return try sealCycle()
        case .startKafkaCommit:
            collector.emitter.isHolding = coordinator.client.holdsRecordsDuringCommit
            coordinator.startCommit()
            return nil
        case .collectKafkaCommit(let wait):
            return try collectKafkaCommit(wait: wait)
        case .commitStores(let recordingStatistics):
            guard let commit = finished else { throw RuntimeError("internal error: no finished commit whose stores could commit") }
            finished = nil
            if recordingStatistics {
                let start = ContinuousClock.now
                defer { addCommitTime(since: start) }
                try commitStoresRecordingStatistics(of: commit)
            } else {
                try commitStores(of: commit)
            }
            return nil
        case .beginNextTransaction:
            let start = ContinuousClock.now
            defer { addCommitTime(since: start) }
            do {
                if collector.emitter.hasUnsent { try coordinator.beginIfNeeded() }
            } catch {
                return try abortRequired(by: error)
            }
            return .nextTransactionBegun
        case .releaseHeldRecords:
            collector.emitter.release()
            return nil
        case .discardHeldRecords:
            collector.emitter.discard()
            try? collector.emitter.drain()
            return nil
        case .abortTransaction:
            do { try coordinator.abort() } catch { throw Self.stopping(error) }
            return nil
        case .rollBackAndRewind(let leaving):
            try rollBackAndRewind(skippingSeekOf: leaving)
            return nil
        case .abandonKafkaCommit:
            _ = try? coordinator.finishCommit(wait: true)
            inFlight = nil
            return nil
        case .abortTransactionQuietly:
            _ = try? coordinator.abort()
            return nil
        }
    }

    /// Seals the cycle: the tasks' records are drained into the producer, their changelog
    /// records and consumed offsets go into the transaction, and the stores seal their
    /// changes. Records handled from the Kafka commit's start belong to the next cycle (the
    /// collector holds them).
    func sealCycle() throws -> CommitLifecycle.Event {
        let changed = tasks.running.filter(\.changed)
        guard !changed.isEmpty else {
            cycleOpenedAt = nil
            return .nothingToSeal
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
            statsBox.withLock { $0.changelogSeconds += (kafkaStart - commitStart).inSeconds }
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
            return .sealed(holdsRecordsDuringCommit: coordinator.client.holdsRecordsDuringCommit)
        } catch {
            return try abortRequired(by: error)
        }
    }

    /// The result of the commit in flight, if it has one (at once when `wait` is false); the
    /// commit is then kept in `finished` for its stores. A fatal error stops the run.
    func collectKafkaCommit(wait: Bool) throws -> CommitLifecycle.Event? {
        guard let commit = inFlight else { throw RuntimeError("internal error: no commit in flight to collect") }
        let result: Result<Void, TransactionAbortRequired>
        do {
            guard let r = try coordinator.finishCommit(wait: wait) else { return nil }
            result = r
        } catch {
            inFlight = nil
            throw Self.stopping(error)
        }
        inFlight = nil
        finished = commit
        switch result {
        case .success:
            return .kafkaCommitFinished(succeeded: true)
        case .failure(let abort):
            if lifecycle.state == .committing {
                logger.warning("transaction commit failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
            }
            return .kafkaCommitFinished(succeeded: false)
        }
    }

    /// Commits the stores of a cycle whose Kafka commit succeeded and counts the commit.
    func commitStoresRecordingStatistics(of commit: CommitInFlight) throws {
        let storeStart = ContinuousClock.now
        try commitStores(of: commit)
        let storeEnd = ContinuousClock.now
        let processing = firstRecordAt.map { (storeEnd - $0).inSeconds } ?? 0
        let counters = coordinator.counters
        statsBox.withLock {
            $0.kafkaCommitSeconds += (storeStart - commit.kafkaStarted).inSeconds
            $0.storeCommitSeconds += (storeEnd - storeStart).inSeconds
            $0.transactionsCommitted = counters.committed
            $0.transactionRetries = counters.retries
            $0.changelogRecords += commit.changelogRecords
            $0.processingSeconds = processing
            $0.firstRecordAt = firstRecordAt
            $0.lastCommitAt = storeEnd
            $0.consecutiveAborts = 0
        }
        observer?.commitEnded(CommitTiming(total: storeEnd - commit.started, transaction: storeStart - commit.kafkaStarted))
    }

    func addCommitTime(since start: ContinuousClock.Instant) {
        let t = (ContinuousClock.now - start).inSeconds
        statsBox.withLock { $0.commitSeconds += t }
    }

    /// The lifecycle's event for `error`: an abortable failure (a refused record, a failed
    /// transaction call, a store read) rolls everything back and rewinds; a fatal one stops the
    /// run (thrown).
    func abortRequired(by error: any Error) throws -> CommitLifecycle.Event {
        if let kafka = error as? KafkaError {
            // A refused changelog record: the coordinator says whether the transaction aborts.
            do { try coordinator.recordFailed(kafka) } catch { return try abortRequired(by: error) }
            return try abortRequired(by: TransactionAbortRequired(underlying: kafka, operation: "produce"))
        }
        switch error {
        case let abort as TransactionAbortRequired:
            logger.warning("transaction failed; aborting and rewinding to the last commit", metadata: ["error": "\(abort)"])
        case let error as SQLiteError:
            logger.warning("store read failed; aborting and rewinding to the last commit", metadata: ["error": "\(error)"])
        default:
            throw Self.stopping(error)
        }
        return .abortRequired
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

    /// Rolls every store back and seeks to the committed positions (after the abort).
    func rollBackAndRewind(skippingSeekOf leaving: Set<Int32>) throws {
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
        _ = try seek(seeks)
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
