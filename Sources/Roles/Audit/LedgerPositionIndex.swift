/// Offsets per input partition in the order they were read (which is offset order: a task reads
/// each input partition in order, directly or through the repartition topic), taken from the
/// front as the processor commits past them. Follows the store's cycles: a rollback forgets what
/// the rolled-back cycles appended and puts back what they took.
final class LedgerPositionIndex {
    private struct Partition {
        var entries: [(offset: Int64, id: String?)] = []
        var head = 0
        var sealed = (head: 0, count: 0)
        var committed = (head: 0, count: 0)
    }
    private var partitions: [Int32: Partition] = [:]

    func append(partition p: Int32, offset: Int64, id: String?) {
        partitions[p, default: Partition()].entries.append((offset, id))
    }

    func take(partition p: Int32, below offset: Int64) -> [(offset: Int64, id: String?)] {
        guard var part = partitions[p] else { return [] }
        let start = part.head
        while part.head < part.entries.count, part.entries[part.head].offset < offset { part.head += 1 }
        let taken = Array(part.entries[start..<part.head])
        partitions[p] = part
        return taken
    }

    /// The valid inputs from the front below `offset`, left in place.
    func peek(partition p: Int32, below offset: Int64) -> [(offset: Int64, id: String)] {
        guard let part = partitions[p] else { return [] }
        var found: [(offset: Int64, id: String)] = []
        var i = part.head
        while i < part.entries.count, part.entries[i].offset < offset {
            if let id = part.entries[i].id { found.append((part.entries[i].offset, id)) }
            i += 1
        }
        return found
    }

    func sortAll() {
        for p in partitions.keys { partitions[p]!.entries.sort { $0.offset < $1.offset } }
    }

    func removeAll() { partitions.removeAll() }

    func sealed() {
        for p in partitions.keys { partitions[p]!.sealed = (partitions[p]!.head, partitions[p]!.entries.count) }
    }

    func committed() {
        for p in partitions.keys {
            var part = partitions[p]!
            part.committed = part.sealed
            // Keep storage bounded: drop what every live cycle has passed.
            let passed = part.committed.head
            if passed > 4_096, passed * 2 > part.entries.count {
                part.entries.removeFirst(passed)
                part.head -= passed
                part.sealed = (part.sealed.head - passed, part.sealed.count - passed)
                part.committed = (0, part.committed.count - passed)
            }
            partitions[p] = part
        }
    }

    func rolledBack() {
        for p in partitions.keys {
            var part = partitions[p]!
            part.entries.removeLast(part.entries.count - part.committed.count)
            part.head = part.committed.head
            part.sealed = part.committed
            partitions[p] = part
        }
    }
}
