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
    ///
    /// `@inlinable`, with what it touches `@usableFromInline`: the run loop calls it through
    /// ``recordHandler``, which ``specializeRecordHandling()`` makes where `Role` is concrete,
    /// so this body is compiled for the role there. Compiled here it ran generic, with a
    /// generic dictionary lookup, runtime metadata and witness calls on every record.
    @inlinable @inline(__always)
    func handle(_ m: borrowing KafkaRecordView) throws {
        // A rebalance hook failed during this poll: the run stops right after it.
        guard hookError == nil, let slot = tasks.slot(m.partition), let task = slot.task,
              let source = tasks.sourceIndex(m.topic), !tasks.wasAborted(source: source, partition: m.partition, offset: m.offset)
        else { return }
        if firstRecordAt == nil { firstRecordAt = ContinuousClock.now }
        let offset = m.offset
        if let next = slot.next[source] {
            if offset < next { return }
            if offset > next, role.reportsDeletedRecords {
                try noticeDeletedRecords(slot, task, source: source, expected: next, topic: m.topic, partition: m.partition, offset: offset)
            }
        }
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

    /// A record past the next offset expected (``StreamRole/reportsDeletedRecords``): transaction
    /// markers and aborted records leave such gaps, and so does a position below the log start,
    /// from which the consumer moved to the log start (`auto.offset.reset=earliest`). The log
    /// start of the fetch that brought the record tells them apart: when it is past the expected
    /// offset, the records from there to the log start (or to this record, when the log start
    /// moved past it since) were deleted before the task read them, and the task hears of them
    /// in the open cycle, before the record itself.
    @usableFromInline @inline(never)
    func noticeDeletedRecords(_ slot: TaskSlot<Role>, _ task: Role.Task, source: Int, expected: Int64,
                              topic: String, partition: Int32, offset: Int64) throws {
        let tp = KafkaTopicPartition(topic, partition)
        guard let low = consumer.cachedWatermarks(tp)?.low, low > expected else { return }
        let to = min(low, offset)
        logger.warning("records were deleted before they were read", metadata: [
            "topic": "\(topic)", "partition": .number(Int(partition)), "from": "\(expected)", "to": "\(to - 1)",
        ])
        try coordinator.beginIfNeeded()
        try task.recordsDeleted(source: source, from: expected, to: to)
        slot.next[source] = to
        slot.changed = true
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
