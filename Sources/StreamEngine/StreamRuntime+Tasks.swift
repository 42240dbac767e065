import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// Opening, restoring, running and closing tasks.
extension StreamRuntime {
    // MARK: - Tasks

    /// Opens the stores of newly assigned tasks and starts their restores (or runs them when
    /// their store is current).
    func startAssignedTasks() throws {
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
    func startRunning(_ slot: TaskSlot<Role>) throws {
        let sources = role.sources
        let tps = sources.map { KafkaTopicPartition($0.name, slot.partition) }
        let committed = try consumer.committed(tps, timeout: .seconds(30))
        let committedBy = Dictionary(committed.map { ($0.topicPartition, $0.offset) }, uniquingKeysWith: { a, _ in a })
        var seeks: [KafkaTopicPartitionOffset] = []
        for (i, tp) in tps.enumerated() {
            let fromGroup = committedBy[tp].flatMap { $0 >= 0 ? $0 : nil }
            let fromState = i < slot.restoredPositions.count && slot.restoredPositions[i] >= 0 ? slot.restoredPositions[i] : nil
            // A role that hears of deleted records starts where nothing was read yet at 0, so a
            // log start past it is a gap to report, not a silent jump.
            let fromNothing: Int64? = role.reportsDeletedRecords ? 0 : nil
            if let start = [fromGroup, fromState, fromNothing].compactMap({ $0 }).max() {
                slot.next[i] = start
                slot.committed[i] = start
                seeks.append(KafkaTopicPartitionOffset(tp, offset: start))
            }
        }
        let task = try role.makeTask(partition: slot.partition, partitionCount: partitionCount, store: slot.store!, collector: collector)
        slot.phase = .running(task)
        let waiting = try seek(seeks)
        try consumer.resume(tps.filter { !waiting.contains($0) })
        statsBox.withLock { $0.tasks = tasks.running.count }
        logger.info("task started", metadata: [
            "partition": .number(Int(slot.partition)),
            "positions": "\(sources.indices.map { slot.next[$0].map(String.init) ?? "earliest" }.joined(separator: ","))",
        ])
    }

    func closeAllStores() {
        for slot in tasks.remove(Set(tasks.all.map(\.partition))) { close(slot) }
    }

    func close(_ slot: TaskSlot<Role>) {
        restorer?.cancel(slot.partition)
        guard let store = slot.store else { return }
        store.rollback()
        do { try store.close() } catch { logger.warning("closing store failed", metadata: ["partition": .number(Int(slot.partition)), "error": "\(error)"]) }
        slot.store = nil
        logger.info("task stopped", metadata: ["partition": .number(Int(slot.partition))])
    }

    /// Seeks; a partition whose fetcher librdkafka has not started yet (an assignment still
    /// fetching the group's committed offsets) or has stopped (a rebalance taking it away)
    /// refuses, so it stays paused and its seek waits in ``seeksAwaitingFetcher``: retried at
    /// every turn of the loop until its fetcher takes it, then resumed; dropped if the partition
    /// is revoked. Returns the partitions that wait.
    func seek(_ seeks: [KafkaTopicPartitionOffset]) throws -> Set<KafkaTopicPartition> {
        let refused = Set(try consumer.seek(seeks, timeout: .seconds(30)))
        guard !refused.isEmpty else { return [] }
        try consumer.pause(Array(refused))
        for s in seeks where refused.contains(s.topicPartition) { seeksAwaitingFetcher[s.topicPartition] = s.offset }
        logger.info("seek waits for the partitions' fetchers", metadata: [
            "partitions": "\(refused.sorted { ($0.topic, $0.partition) < ($1.topic, $1.partition) }.map { "\($0.topic)/\($0.partition)" }.joined(separator: ","))",
        ])
        return refused
    }

    /// Retries the seeks that waited for their partitions' fetchers, and resumes those done.
    func retrySeeksAwaitingFetcher() throws {
        guard !seeksAwaitingFetcher.isEmpty else { return }
        let seeks = seeksAwaitingFetcher.map { KafkaTopicPartitionOffset($0.key, offset: $0.value) }
        let refused = Set(try consumer.seek(seeks, timeout: .seconds(30)))
        let done = seeks.map(\.topicPartition).filter { !refused.contains($0) }
        for tp in done { seeksAwaitingFetcher[tp] = nil }
        try consumer.resume(done)
    }
}
