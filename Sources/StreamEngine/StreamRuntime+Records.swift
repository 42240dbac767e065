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
