import Foundation
import KafkaClient
import StateStore

/// A task's offset per source topic (``unknown``: none yet), indexed as the role's sources.
public struct SourcePositions: Equatable, Sendable {
    public static let unknown = Int64.min
    @usableFromInline var offsets: [Int64]

    init(count: Int) { offsets = Array(repeating: Self.unknown, count: count) }

    @inlinable @inline(__always)
    subscript(source: Int) -> Int64? {
        get { let o = offsets[source]; return o == Self.unknown ? nil : o }
        set { offsets[source] = newValue ?? Self.unknown }
    }

    /// As the changelog and the store checkpoint keep them (-1: none known).
    var checkpointForm: [Int64] { offsets.map { $0 == Self.unknown ? -1 : $0 } }
}

/// One partition group's task: the role's task (once restored), its store and its positions.
@usableFromInline
final class TaskSlot<Role: StreamRole> {
    @usableFromInline enum Phase {
        /// Assigned; the store is not open yet (the run loop opens it).
        case assigned
        /// Its store is replaying the changelog; input stays paused.
        case restoring
        /// Handling records.
        case running(Role.Task)
    }

    let partition: Int32
    let directory: String
    @usableFromInline var phase: Phase = .assigned
    var store: Role.Task.Store?
    /// Next offset to handle, per source.
    @usableFromInline var next: SourcePositions
    /// Next offset as of the last commit: where an abort rewinds to.
    @usableFromInline var committed: SourcePositions
    /// Next offset as of the sealed cycle whose commit is in flight.
    var sealed: SourcePositions
    /// Where the restored state says input resumes (from the changelog's position headers or
    /// the store's checkpoint).
    var restoredPositions: [Int64] = []
    /// Records handled since the last commit.
    @usableFromInline var changed = false
    /// Reused per commit: the store's changelog records.
    var changelog = ChangelogBatch()

    init(partition: Int32, directory: String, sources: Int) {
        self.partition = partition
        self.directory = directory
        next = SourcePositions(count: sources)
        committed = next
        sealed = next
    }

    @inlinable var task: Role.Task? {
        if case .running(let task) = phase { return task }
        return nil
    }
}

/// The tasks of one runtime: created when the group assigns a partition group, restored, run
/// and closed when it is revoked. Partition p of every source topic belongs to task p; an
/// assignment that splits a group is refused (it would give one key's state to two tasks).
@usableFromInline
final class TaskManager<Role: StreamRole> {
    let role: Role
    let stateRoot: String
    /// The role's source topic names, looked up once per record.
    @usableFromInline let sourceNames: [String]
    @usableFromInline private(set) var slots: [Int32: TaskSlot<Role>] = [:]

    init(role: Role, stateRoot: String) {
        self.role = role
        self.stateRoot = stateRoot
        sourceNames = role.sources.map(\.name)
    }

    /// Whether some slot waits for its store to be opened.
    var hasUnopened: Bool {
        slots.values.contains { if case .assigned = $0.phase { return true } else { return false } }
    }

    var isEmpty: Bool { slots.isEmpty }
    var all: [TaskSlot<Role>] { slots.values.sorted { $0.partition < $1.partition } }
    var running: [TaskSlot<Role>] { all.filter { $0.task != nil } }
    var allRunning: Bool { slots.values.allSatisfy { $0.task != nil } }

    @inlinable @inline(__always)
    func slot(_ partition: Int32) -> TaskSlot<Role>? { slots[partition] }

    /// The source index of `topic`, or nil.
    @inlinable @inline(__always)
    func sourceIndex(_ topic: String) -> Int? {
        sourceNames.firstIndex(of: topic)
    }

    /// Records this runtime's aborted transactions wrote, skipped when read back (kept only
    /// under an observer of transactions: see ``AbortedRecords``).
    @usableFromInline var abortedRecords: AbortedRecords?

    @inlinable @inline(__always)
    func wasAborted(source: Int, partition: Int32, offset: Int64) -> Bool {
        guard let abortedRecords else { return false }
        return abortedRecords.contains(KafkaTopicPartition(sourceNames[source], partition), offset)
    }

    /// Records the newly assigned partitions as task slots (opened later, in the run loop).
    /// Throws when the assignment gives this member some but not all topics of a partition.
    func assigned(_ partitions: [KafkaTopicPartition]) throws -> [TaskSlot<Role>] {
        let sources = sourceNames
        var byPartition: [Int32: Set<String>] = [:]
        for tp in partitions where sources.contains(tp.topic) { byPartition[tp.partition, default: []].insert(tp.topic) }
        var created: [TaskSlot<Role>] = []
        for (p, topics) in byPartition.sorted(by: { $0.key < $1.key }) {
            if slots[p] == nil, topics.count != sources.count {
                let missing = sources.filter { !topics.contains($0) }
                throw RuntimeError("the group assigned \(topics.sorted().map { "\($0)/\(p)" }.joined(separator: ", ")) without \(missing.map { "\($0)/\(p)" }.joined(separator: ", ")): partition \(p) of every source must go to one member (use partition.assignment.strategy=range)")
            }
            guard slots[p] == nil else { continue }
            let directory = URL(fileURLWithPath: stateRoot).appendingPathComponent("\(sources[0])-\(p)").path
            let slot = TaskSlot<Role>(partition: p, directory: directory, sources: sources.count)
            slots[p] = slot
            created.append(slot)
        }
        return created
    }

    /// Removes the slots of `partitions` and returns them (the caller closes their stores).
    func remove(_ partitions: Set<Int32>) -> [TaskSlot<Role>] {
        partitions.sorted().compactMap { slots.removeValue(forKey: $0) }
    }

    /// Opens a slot's store, rebuilding one the role says is unusable.
    func openStore(_ slot: TaskSlot<Role>, logger: (String, [String: String]) -> Void) throws -> Role.Task.Store {
        let failure: SQLiteError
        do {
            return try role.openStore(directory: slot.directory)
        } catch {
            failure = error
        }
        guard failure.requiresRebuild else { throw failure }
        logger("store unusable, rebuilding from the changelog", ["partition": "\(slot.partition)", "error": "\(failure)"])
        try role.destroyStore(directory: slot.directory)
        return try role.openStore(directory: slot.directory)
    }
}
