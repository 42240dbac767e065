import Foundation
import FraudModel
import StateStore
import StreamEngine

/// One entry of the auditor's ledger as its store keeps it: the changelog record's value and the
/// SQLite row's.
///
/// Key: version `02`, tag `'a'` (0x61), then `'i'` and the transaction id, or `'p'` and an input
/// position (`topic/partition/offset`, or `line N`). Value: a kind byte, then, big-endian:
///
/// | kind | fields |
/// |---|---|
/// | 1 transaction | settledAt (8), input count (4), per input: position, readAt (8), dead-lettered (1), transaction id, card id, amount (each a 2-byte length and UTF-8), event time (8) |
/// | 2 rejected input | code (its index in ``RejectionCode/allCases``, 1), readAt (8) |
/// | 3 early dead letters | count (4), per letter: code (1-byte presence, then a string), position (1-byte presence, then a position), receivedAt (8) |
/// | 4 known gaps (key `'g'` alone) | see ``KnownGaps`` |
///
/// A position is `0` and a line number (8), or `1`, a topic (string), partition (4), offset (8).
/// The record is read back as input at a restore, so the decoder checks every length and value.
enum LedgerEntry: StoreValue {
    case absent
    case transaction(LedgerTransaction)
    case pairing(LedgerPairing)
    case gaps(KnownGaps)

    static var changelogTag: UInt8 { UInt8(ascii: "a") }
    /// A one-byte namespace, then a transaction id of up to 1024 bytes.
    static var maxKeyByteCount: Int { ChangelogRecord.maxIdByteCount + 1 }
    static let transactionNamespace = UInt8(ascii: "i")
    static let pairingNamespace = UInt8(ascii: "p")

    var exists: Bool {
        if case .absent = self { return false }
        return true
    }

    var rank: Int64 {
        switch self {
        case .absent: .max
        case .transaction(let t): t.rank
        case .pairing(let p): p.rank
        case .gaps: .max
        }
    }

    func encode(into bytes: inout [UInt8]) {
        switch self {
        case .absent:
            preconditionFailure("an absent ledger entry has no bytes")
        case .transaction(let t):
            bytes.append(1)
            Self.append(t.settledAt, &bytes)
            Self.append(UInt32(t.inputs.count), &bytes)
            for input in t.inputs {
                Self.append(input.position, &bytes)
                Self.append(input.readAt, &bytes)
                bytes.append(input.deadLettered ? 1 : 0)
                Self.append(input.transaction.transactionId, &bytes)
                Self.append(input.transaction.cardId, &bytes)
                Self.append(input.transaction.amount.text, &bytes)
                Self.append(input.transaction.timestamp, &bytes)
            }
        case .pairing(.rejected(let code, let readAt)):
            bytes.append(2)
            bytes.append(UInt8(RejectionCode.allCases.firstIndex(of: code)!))
            Self.append(readAt, &bytes)
        case .pairing(.deadLetters(let letters)):
            bytes.append(3)
            Self.append(UInt32(letters.count), &bytes)
            for letter in letters {
                if let code = letter.code {
                    bytes.append(1)
                    Self.append(code, &bytes)
                } else {
                    bytes.append(0)
                }
                if let position = letter.position {
                    bytes.append(1)
                    Self.append(position, &bytes)
                } else {
                    bytes.append(0)
                }
                Self.append(letter.receivedAt, &bytes)
            }
        case .gaps(let gaps):
            gaps.encode(into: &bytes)
        }
    }

    static func decode(_ value: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> LedgerEntry {
        var r = LedgerReader(bytes: value)
        let entry: LedgerEntry
        switch try r.byte() {
        case 1:
            var t = LedgerTransaction()
            t.settledAt = try r.int64()
            guard t.settledAt >= -1 else { throw ChangelogDecodingError("ledger settle time \(t.settledAt) is negative") }
            let count = try r.uint32()
            guard count >= 1 || t.settledAt >= 0 else { throw ChangelogDecodingError("ledger transaction entry holds nothing") }
            for _ in 0..<count {
                let position = try r.position()
                let readAt = try r.time("read time")
                let flag = try r.byte()
                guard flag <= 1 else { throw ChangelogDecodingError("ledger flag \(flag) is not 0 or 1") }
                let id = try r.id("transaction id"), card = try r.id("card id")
                let amountText = try r.string()
                guard let amount = DecimalText(amountText) else { throw ChangelogDecodingError("ledger amount '\(amountText)' is not a number") }
                let timestamp = try r.time("event time")
                t.inputs.append(LedgerInput(transaction: Transaction(transactionId: id, cardId: card, amount: amount, timestamp: timestamp),
                                            position: position, readAt: readAt, deadLettered: flag == 1))
            }
            entry = .transaction(t)
        case 2:
            let index = Int(try r.byte())
            guard index < RejectionCode.allCases.count else { throw ChangelogDecodingError("ledger rejection code \(index) is unknown") }
            entry = .pairing(.rejected(code: RejectionCode.allCases[index], readAt: try r.time("read time")))
        case 3:
            let count = try r.uint32()
            guard count >= 1 else { throw ChangelogDecodingError("ledger dead-letter entry holds none") }
            var letters: [LedgerDeadLetter] = []
            for _ in 0..<count {
                let code = try r.byte() == 1 ? try r.string() : nil
                let position = try r.byte() == 1 ? try r.position() : nil
                letters.append(LedgerDeadLetter(code: code, position: position, receivedAt: try r.time("receive time")))
            }
            entry = .pairing(.deadLetters(letters))
        case KnownGaps.kind:
            entry = .gaps(try KnownGaps.decode(&r))
        case let kind:
            throw ChangelogDecodingError("unknown ledger entry kind \(kind)")
        }
        guard r.isAtEnd else { throw ChangelogDecodingError("ledger entry has \(value.count - r.offset) bytes after its end") }
        return entry
    }

    // MARK: Encoding

    static func append(_ v: Int64, _ bytes: inout [UInt8]) { ChangelogRecord.appendBigEndian(v, to: &bytes) }

    static func append(_ v: UInt32, _ bytes: inout [UInt8]) {
        withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) }
    }

    static func append(_ s: String, _ bytes: inout [UInt8]) {
        let utf8 = Array(s.utf8)
        precondition(utf8.count <= Int(UInt16.max), "ledger string too long")
        withUnsafeBytes(of: UInt16(utf8.count).bigEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: utf8)
    }

    static func append(_ p: AuditPosition, _ bytes: inout [UInt8]) {
        switch p {
        case .line(let n):
            bytes.append(0)
            append(Int64(n), &bytes)
        case .record(let topic, let partition, let offset):
            bytes.append(1)
            append(topic, &bytes)
            append(UInt32(bitPattern: partition), &bytes)
            append(offset, &bytes)
        }
    }

    /// The key of `id` in `namespace`.
    static func key(_ namespace: UInt8, _ id: String) -> [UInt8] {
        [namespace] + Array(id.utf8)
    }

    static func key(_ position: AuditPosition) -> [UInt8] {
        key(pairingNamespace, position.description)
    }

    /// The ledger key a store key holds (nil: not a ledger key this build writes).
    static func ledgerKey(_ key: UnsafeBufferPointer<UInt8>) -> LedgerKey? {
        guard let first = key.first else { return nil }
        let rest = String(decoding: UnsafeBufferPointer(rebasing: key.dropFirst()), as: UTF8.self)
        switch first {
        case transactionNamespace: return .transaction(rest)
        case pairingNamespace:
            if rest.hasPrefix("line "), let n = Int(rest.dropFirst(5)) { return .pairing(.line(n)) }
            return AuditPosition(source: rest).map { .pairing($0) }
        default: return nil
        }
    }
}

/// Reads a ledger value, every read bounds-checked.
struct LedgerReader {
    let bytes: UnsafeRawBufferPointer
    var offset = 0

    var isAtEnd: Bool { offset == bytes.count }

    mutating func take(_ n: Int) throws(ChangelogDecodingError) -> UnsafeRawBufferPointer {
        guard n >= 0, bytes.count - offset >= n else {
            throw ChangelogDecodingError("ledger entry ends after \(bytes.count) bytes, inside a field")
        }
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
    }

    mutating func byte() throws(ChangelogDecodingError) -> UInt8 { try take(1)[0] }

    mutating func int64() throws(ChangelogDecodingError) -> Int64 {
        ChangelogRecord.readBigEndian(try take(8), at: 0)
    }

    mutating func uint32() throws(ChangelogDecodingError) -> UInt32 {
        UInt32(bigEndian: try take(4).loadUnaligned(as: UInt32.self))
    }

    /// A clock or event time: never negative.
    mutating func time(_ name: String) throws(ChangelogDecodingError) -> Int64 {
        let t = try int64()
        guard t >= 0 else { throw ChangelogDecodingError("ledger \(name) \(t) is negative") }
        return t
    }

    mutating func string() throws(ChangelogDecodingError) -> String {
        let n = Int(UInt16(bigEndian: try take(2).loadUnaligned(as: UInt16.self)))
        let raw = try take(n)
        guard ChangelogRecord.isValidUTF8(raw) else { throw ChangelogDecodingError("ledger string is not valid UTF-8") }
        return String(decoding: raw, as: UTF8.self)
    }

    /// An id as the input has them: 1 to 1024 bytes.
    mutating func id(_ name: String) throws(ChangelogDecodingError) -> String {
        let s = try string()
        guard !s.isEmpty, s.utf8.count <= ChangelogRecord.maxIdByteCount else {
            throw ChangelogDecodingError("ledger \(name) has \(s.utf8.count) bytes, expected 1 to \(ChangelogRecord.maxIdByteCount)")
        }
        return s
    }

    mutating func position() throws(ChangelogDecodingError) -> AuditPosition {
        switch try byte() {
        case 0:
            let n = try int64()
            guard n >= 1, n <= Int64(Int.max) else { throw ChangelogDecodingError("ledger line number \(n) is not positive") }
            return .line(Int(n))
        case 1:
            let topic = try string()
            guard !topic.isEmpty else { throw ChangelogDecodingError("ledger position has an empty topic") }
            let partition = Int32(bitPattern: try uint32())
            let offset = try int64()
            guard partition >= 0, offset >= 0 else { throw ChangelogDecodingError("ledger position \(topic)/\(partition)/\(offset) is negative") }
            return .record(topic: topic, partition: partition, offset: offset)
        case let kind:
            throw ChangelogDecodingError("unknown ledger position kind \(kind)")
        }
    }
}

/// The continuous auditor's ledger: a ``CheckpointedStore`` of ``LedgerEntry``, so its entries
/// commit with the Kafka transaction that carries the findings they led to.
///
/// Expiry needs the entries that rank before a cutoff once a second or so; a scan of SQLite's
/// rank column would read every entry each time. An in-memory queue of (key, rank), appended
/// whenever an entry's rank changes and checked against the entry when it comes due, does it in
/// time proportional to what expires. It is rebuilt from the store when the task starts, and a
/// rollback puts back what the rolled-back cycles took from it.
final class StoredAuditLedger: AuditLedger {
    let store: CheckpointedStore<LedgerEntry>
    private var queue: [(key: [UInt8], rank: Int64)] = []
    private var head = 0
    /// `head` as of the sealed cycle and as of the last commit.
    private var sealedHead = 0
    private var committedHead = 0
    private var scratch: [UInt8] = []
    /// Waiting inputs and rejected inputs by input partition and offset, for
    /// ``AuditReconciler/decideMissing(below:inputTopic:)``.
    private let positions = LedgerPositionIndex()

    init(store: CheckpointedStore<LedgerEntry>) {
        self.store = store
    }

    /// Rebuilds the expiry queue and the position index from the committed entries (the task's start).
    func loadQueue() {
        lastAppended = nil
        queue.removeAll()
        positions.removeAll()
        deadLetterEntries = 0
        store.forEachEntry(rankAtMost: .max) { e in
            queue.append((Array(store.key(e).buffer), store[e].rank))
            switch store[e] {
            case .pairing(.deadLetters):
                deadLetterEntries! += 1
            case .transaction(let t):
                for input in t.inputs {
                    if case .record(_, let p, let o) = input.position { positions.append(partition: p, offset: o, id: input.transaction.transactionId) }
                }
            case .pairing(.rejected):
                if case .pairing(.record(_, let p, let o))? = Array(store.key(e).buffer).withUnsafeBufferPointer({ LedgerEntry.ledgerKey($0) }) {
                    positions.append(partition: p, offset: o, id: nil)
                }
            default:
                break
            }
        }
        positions.sortAll()
        queue.sort { $0.rank < $1.rank }
        head = 0
        sealedHead = 0
        committedHead = 0
    }

    private func withKey<R>(_ key: [UInt8], _ body: (CardBytes) -> R) -> R {
        key.withUnsafeBufferPointer { body(CardBytes($0)) }
    }

    private func set(_ entry: LedgerEntry, key: [UInt8]) {
        withKey(key) { k in
            let e = store.entry(for: k)
            let old = store[e].exists ? store[e].rank : nil
            noteDeadLetters(replacing: store[e], with: entry)
            store.update(e) { $0 = entry }
            if entry.exists, entry.rank != old { queue.append((key, entry.rank)) }
        }
    }

    /// Calls `body` with the store key of transaction `id`, built in a reused buffer: every
    /// record looks its id up, and a key array per lookup was a tenth of the ledger's time.
    private func withTransactionKey<R>(_ id: String, _ body: (CardBytes) -> R) -> R {
        scratch.removeAll(keepingCapacity: true)
        scratch.append(LedgerEntry.transactionNamespace)
        scratch.append(contentsOf: id.utf8)
        return withKey(scratch, body)
    }

    /// Changes transaction entry `e` in place (its input array is not copied), keeping the
    /// expiry queue in step with its rank.
    private func updateTransaction(_ e: Int, _ change: (inout LedgerTransaction) -> Void) {
        let old = store[e].exists ? store[e].rank : nil
        store.update(e) { value in
            var t = LedgerTransaction()
            if case .transaction(let known) = value { t = known }
            value = .absent
            change(&t)
            value = t.isEmpty ? .absent : .transaction(t)
        }
        if store[e].exists, store[e].rank != old { queue.append((Array(store.key(e).buffer), store[e].rank)) }
    }

    func transaction(_ id: String) -> LedgerTransaction {
        withTransactionKey(id) { k in
            if case .transaction(let t) = store.value(for: k) { return t }
            return LedgerTransaction()
        }
    }

    func isKnown(_ id: String) -> Bool {
        withTransactionKey(id) { k in store.existingEntry(for: k) != nil }
    }

    func matchOutput(_ id: String) -> OutputMatch {
        if let last = lastAppended, last.id == id { return match(entry: last.entry) }
        return withTransactionKey(id) { k in
            guard let e = store.existingEntry(for: k) else { return .unknown }
            return match(entry: e)
        }
    }

    private func match(entry e: Int) -> OutputMatch {
        guard case .transaction(let known) = store[e] else { return .unknown }
        guard !known.inputs.isEmpty else { return .settled }
        var first: LedgerInput?
        updateTransaction(e) { t in
            let input = t.inputs.removeFirst()
            t.settledAt = max(t.settledAt, input.readAt)
            first = input
        }
        return .input(first!)
    }

    func setTransaction(_ value: LedgerTransaction, for id: String) {
        set(value.isEmpty ? .absent : .transaction(value), key: LedgerEntry.key(LedgerEntry.transactionNamespace, id))
    }

    func pairing(at position: AuditPosition) -> LedgerPairing? {
        withKey(LedgerEntry.key(position)) { k in
            if case .pairing(let p) = store.value(for: k) { return p }
            return nil
        }
    }

    func setPairing(_ value: LedgerPairing?, at position: AuditPosition) {
        if case .rejected? = value, case .record(_, let p, let o) = position { positions.append(partition: p, offset: o, id: nil) }
        set(value.map { .pairing($0) } ?? .absent, key: LedgerEntry.key(position))
    }

    func appendInput(_ input: LedgerInput, for id: String) {
        if case .record(_, let p, let o) = input.position { positions.append(partition: p, offset: o, id: id) }
        withTransactionKey(id) { k in
            let e = store.entry(for: k)
            updateTransaction(e) { $0.inputs.append(input) }
            lastAppended = (id, e)
        }
    }

    /// The entry of the last input appended, and its id: an output that comes right after its
    /// input (one that waited for it, most of all) settles it without building its key and
    /// looking it up. An entry's number holds until the store's cache is flushed or rolled
    /// back, which happens only at a commit or a rollback.
    private var lastAppended: (id: String, entry: Int)?

    /// The inputs of input partition `partition` below `offset` not taken before (the caller
    /// checks each is still waiting): an offset and its transaction id, or nil for a rejected input.
    func takeDue(partition: Int32, below offset: Int64) -> [(offset: Int64, id: String?)] {
        positions.take(partition: partition, below: offset)
    }

    /// The valid inputs of input partition `partition` below `offset` not taken by
    /// ``takeDue(partition:below:)`` (the caller checks each is still waiting), in offset order.
    func waitingInputs(partition: Int32, below offset: Int64) -> [(offset: Int64, id: String)] {
        positions.peek(partition: partition, below: offset)
    }

    /// Entries holding early dead letters, or nil when unknown (after a rollback, until the
    /// next load): while it is 0, an input needs no lookup of its position.
    private var deadLetterEntries: Int? = 0

    var mayHoldDeadLetters: Bool { deadLetterEntries != 0 }

    private func noteDeadLetters(replacing old: LedgerEntry, with new: LedgerEntry) {
        guard let count = deadLetterEntries else { return }
        var change = 0
        if case .pairing(.deadLetters) = old { change -= 1 }
        if case .pairing(.deadLetters) = new { change += 1 }
        deadLetterEntries = count + change
    }

    func expiring(before cutoff: Int64) -> [LedgerKey] {
        var keys: [LedgerKey] = []
        var seen: Set<[UInt8]> = []
        while head < queue.count, queue[head].rank < cutoff {
            let key = queue[head].key
            head += 1
            guard seen.insert(key).inserted else { continue }
            let due = withKey(key) { k in
                let value = store.value(for: k)
                return value.exists && value.rank < cutoff
            }
            if due, let ledgerKey = key.withUnsafeBufferPointer({ LedgerEntry.ledgerKey($0) }) { keys.append(ledgerKey) }
        }
        return keys
    }

    func sealed() {
        sealedHead = head
        positions.sealed()
    }

    func committed() {
        lastAppended = nil
        positions.committed()
        committedHead = sealedHead
        // Keep the queue's storage bounded: drop what every live cycle has passed.
        if committedHead > 65_536, committedHead * 2 > queue.count {
            queue.removeFirst(committedHead)
            head -= committedHead
            sealedHead -= committedHead
            committedHead = 0
        }
    }

    func rolledBack() {
        lastAppended = nil
        head = committedHead
        sealedHead = committedHead
        positions.rolledBack()
        deadLetterEntries = nil
    }
}

/// The continuous auditor task's store: the window store its lane recomputes verdicts in and
/// its ledger, two SQLite files in the task's directory sharing one changelog partition (their
/// changelog records have different tags) and one checkpoint.
public final class AuditStore: TaskStore {
    public let windows: SQLiteDetectorStore
    let ledgerStore: CheckpointedStore<LedgerEntry>
    let ledger: StoredAuditLedger
    private var ledgerBatch = ChangelogBatch()

    static let ledgerFileName = "ledger.sqlite"

    init(directory: String, parameters: DetectorParameters, options: SQLiteWindowStore.Options) throws(SQLiteError) {
        windows = try SQLiteDetectorStore(directory: directory, parameters: parameters, options: options)
        do {
            ledgerStore = try CheckpointedStore(directory: directory, fileName: Self.ledgerFileName, options: options)
        } catch {
            try? windows.close()
            throw error
        }
        ledger = StoredAuditLedger(store: ledgerStore)
    }

    static func destroy(directory: String) throws(SQLiteError) {
        try SQLiteDetectorStore.destroy(directory: directory)
        try StoreDatabase.destroy(path: StoreDatabase.path(directory: directory, fileName: ledgerFileName))
    }

    /// The older of the two files' checkpoints: a crash between their SQLite commits leaves one
    /// behind, and restoring both from its offset is safe (applying a record twice is).
    public var checkpoint: StoreCheckpoint? {
        guard let a = windows.checkpoint, let b = ledgerStore.checkpoint else { return nil }
        return a.changelogOffset <= b.changelogOffset ? a : b
    }

    public var streamTime: Int64? { windows.streamTime }

    public func pendingChanges(into batch: inout ChangelogBatch) throws(SQLiteError) {
        try windows.pendingChanges(into: &batch)
        try ledgerStore.pendingChanges(into: &ledgerBatch)
        batch.append(contentsOf: ledgerBatch)
    }

    public func seal() throws(SQLiteError) {
        try windows.seal()
        try ledgerStore.seal()
        ledger.sealed()
    }

    public func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        try windows.commit(checkpoint: checkpoint)
        try ledgerStore.commit(checkpoint: checkpoint)
        ledger.committed()
    }

    public func rollback() {
        windows.rollback()
        ledgerStore.rollback()
        ledger.rolledBack()
    }

    public func apply(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws {
        if key.count >= 2, key[1] == LedgerEntry.changelogTag {
            try ledgerStore.apply(key: key, value: value)
        } else {
            try windows.apply(key: key, value: value)
        }
    }

    public func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        try windows.commitRestore(checkpoint: checkpoint)
        try ledgerStore.commitRestore(checkpoint: checkpoint)
    }

    public func close() throws(SQLiteError) {
        var failure: SQLiteError?
        do { try windows.close() } catch { failure = error }
        do { try ledgerStore.close() } catch { failure = failure ?? error }
        if let failure { throw failure }
    }
}
