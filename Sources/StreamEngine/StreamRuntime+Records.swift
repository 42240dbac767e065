import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// Handling records: dispatch to tasks, punctuation, the positions a commit leaves.
extension StreamRuntime {
    // MARK: - Records

    /// Dispatches one record to its task, keeping the task's positions.
    @inline(__always)
    func handle(_ m: borrowing KafkaRecordView) throws {
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
        cycleRecords[source] += 1
    }

    /// Partitions whose position was out of range (``StreamRole/reportsDeletedRecords``): when
    /// the log now starts past the position, the records between were deleted before the task
    /// read them. The task hears of them in the open cycle, its position moves to the log start
    /// (committed with what the task made of it), and the partition fetches again from there.
    /// Past the end (the topic was recreated, say), the partition starts again at the log start,
    /// as `auto.offset.reset=earliest` would, with a warning.
    func handleDeletedRecords() throws {
        let resets = consumer.takeOffsetResets()
        guard !resets.isEmpty else { return }
        var seeks: [KafkaTopicPartitionOffset] = []
        for (tp, failedAt) in resets.sorted(by: { ($0.key.topic, $0.key.partition) < ($1.key.topic, $1.key.partition) }) {
            // A task not running yet seeks its partitions itself when it starts.
            guard let slot = tasks.slot(tp.partition), let task = slot.task, let source = tasks.sourceIndex(tp.topic) else { continue }
            let from = failedAt >= 0 ? failedAt : (slot.next[source] ?? 0)
            let logStart = try consumer.queryWatermarks(tp, timeout: .seconds(30)).low
            if logStart > from {
                logger.warning("records were deleted before they were read", metadata: [
                    "topic": "\(tp.topic)", "partition": .number(Int(tp.partition)), "from": "\(from)", "to": "\(logStart - 1)",
                ])
                try coordinator.beginIfNeeded()
                try task.recordsDeleted(source: source, from: from, to: logStart)
                if cycleOpenedAt == nil { cycleOpenedAt = .now }
                slot.next[source] = logStart
                if slot.committed[source] == nil { slot.committed[source] = from }
                slot.changed = true
            } else {
                logger.warning("position out of range; reading again from the log start", metadata: [
                    "topic": "\(tp.topic)", "partition": .number(Int(tp.partition)), "position": "\(from)", "log_start": "\(logStart)",
                ])
                slot.next[source] = logStart
            }
            seeks.append(KafkaTopicPartitionOffset(tp, offset: logStart))
        }
        try consumer.seek(seeks, timeout: .seconds(30))
    }

    /// Runs every running task's wall-clock work inside the open cycle.
    func punctuate() throws {
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
    func commitPositions(_ slot: TaskSlot<Role>) -> SourcePositions {
        var positions = slot.next
        guard let task = slot.task else { return positions }
        for i in role.sources.indices {
            if let held = task.heldBack(source: i), let next = positions[i], held < next { positions[i] = held }
        }
        return positions
    }
}
