import FraudModel
import StateStore

/// What a continuous auditor task has learned of records deleted before it read them, kept in
/// its ledger store under a key of its own, so that it commits with the findings it led to and
/// comes back with the store after a restart, a rebalance or a rolled-back cycle: without it, a
/// restarted task would call the inputs whose outputs were deleted `missing` once the processor
/// commits past them, and the outputs of deleted inputs orphans.
///
/// Value (ledger entry kind 4), big-endian: input, output, dead-letter and repartition gaps
/// (each a count (4), then per partition: partition (4), first offset still held (8)); accounted
/// lanes (count (4), per lane: lane (4), count (4), input partitions (4 each)); first dead-letter
/// sources and first records forwarded after a repartition gap (each a count (4), then per
/// partition: partition (4), input offset (8)).
struct KnownGaps: Equatable, Sendable {
    /// Input partition → its first offset still held.
    var inputs: [Int32: Int64] = [:]
    /// Output partition (lane) → its first offset still held.
    var outputs: [Int32: Int64] = [:]
    /// Dead-letter partition → its first offset still held.
    var deadLetters: [Int32: Int64] = [:]
    /// The auditor's repartition partition → its first offset still held.
    var repartition: [Int32: Int64] = [:]
    /// Per truncated lane, the input partitions whose deleted outputs are accounted for.
    var accounted: [Int32: Set<Int32>] = [:]
    /// Per dead-letter partition, the input offset of its first dead letter read after its gap.
    var firstDeadLetterSource: [Int32: Int64] = [:]
    /// After a repartition gap, per input partition: the offset of the first record forwarded
    /// from it read after the gap (inputs forwarded below it were read before or lost).
    var forwardedAfterGap: [Int32: Int64] = [:]

    static let kind: UInt8 = 4
    /// The one key of a task's store that holds them.
    static let key: [UInt8] = [UInt8(ascii: "g")]

    var isEmpty: Bool { self == KnownGaps() }

    /// The partitions that lost records, as the task tracks them.
    func truncation(outputTopic: String, deadLetterTopic: String) -> AuditTruncation {
        var t = AuditTruncation(outputTopic: outputTopic, deadLetterTopic: deadLetterTopic)
        t.inputs = inputs
        t.outputs = outputs
        t.deadLetters = deadLetters
        t.repartition = repartition
        return t
    }

    func encode(into bytes: inout [UInt8]) {
        bytes.append(Self.kind)
        for map in [inputs, outputs, deadLetters, repartition] { Self.append(map, &bytes) }
        LedgerEntry.append(UInt32(accounted.count), &bytes)
        for (lane, partitions) in accounted.sorted(by: { $0.key < $1.key }) {
            LedgerEntry.append(UInt32(bitPattern: lane), &bytes)
            LedgerEntry.append(UInt32(partitions.count), &bytes)
            for p in partitions.sorted() { LedgerEntry.append(UInt32(bitPattern: p), &bytes) }
        }
        Self.append(firstDeadLetterSource, &bytes)
        Self.append(forwardedAfterGap, &bytes)
    }

    /// Reads the fields after the kind byte, checking each.
    static func decode(_ r: inout LedgerReader) throws(ChangelogDecodingError) -> KnownGaps {
        var gaps = KnownGaps()
        gaps.inputs = try offsets(&r, "input gap")
        gaps.outputs = try offsets(&r, "output gap")
        gaps.deadLetters = try offsets(&r, "dead-letter gap")
        gaps.repartition = try offsets(&r, "repartition gap")
        let lanes = try r.uint32()
        for _ in 0..<lanes {
            let lane = try partition(&r)
            var partitions = Set<Int32>()
            for _ in 0..<(try r.uint32()) { partitions.insert(try partition(&r)) }
            gaps.accounted[lane] = partitions
        }
        gaps.firstDeadLetterSource = try offsets(&r, "first dead-letter source")
        gaps.forwardedAfterGap = try offsets(&r, "first forwarded input")
        return gaps
    }

    private static func append(_ map: [Int32: Int64], _ bytes: inout [UInt8]) {
        LedgerEntry.append(UInt32(map.count), &bytes)
        for (p, offset) in map.sorted(by: { $0.key < $1.key }) {
            LedgerEntry.append(UInt32(bitPattern: p), &bytes)
            LedgerEntry.append(offset, &bytes)
        }
    }

    private static func partition(_ r: inout LedgerReader) throws(ChangelogDecodingError) -> Int32 {
        let p = Int32(bitPattern: try r.uint32())
        guard p >= 0 else { throw ChangelogDecodingError("known-gap partition \(p) is negative") }
        return p
    }

    private static func offsets(_ r: inout LedgerReader, _ name: String) throws(ChangelogDecodingError) -> [Int32: Int64] {
        var map: [Int32: Int64] = [:]
        for _ in 0..<(try r.uint32()) {
            let p = try partition(&r)
            let offset = try r.int64()
            guard offset >= 0 else { throw ChangelogDecodingError("\(name) offset \(offset) is negative") }
            map[p] = offset
        }
        return map
    }
}

extension StoredAuditLedger {
    /// What the task knew of gaps as of its store (empty: none).
    var knownGaps: KnownGaps {
        KnownGaps.key.withUnsafeBufferPointer { k in
            if case .gaps(let gaps) = store.value(for: CardBytes(k)) { return gaps }
            return KnownGaps()
        }
    }

    /// Keeps `gaps` in the open cycle. It never expires: it is a handful of numbers per partition.
    func setKnownGaps(_ gaps: KnownGaps) {
        KnownGaps.key.withUnsafeBufferPointer { k in
            let e = store.entry(for: CardBytes(k))
            store.update(e) { $0 = gaps.isEmpty ? .absent : .gaps(gaps) }
        }
    }
}
