import FraudModel

/// One valid input waiting for its output.
struct LedgerInput: Sendable, Hashable {
    var transaction: Transaction
    var position: AuditPosition
    /// The auditor's clock when it read the input (continuous mode: epoch milliseconds).
    var readAt: Int64
    /// A dead letter claimed this valid input (already reported): not missing without output.
    var deadLettered: Bool
}

/// What the auditor knows of one transaction id: its valid inputs still without output, in
/// arrival order (further inputs with the same id match later outputs), and when the last input
/// that got its output was read (-1: none), which tells a duplicate output from an orphan until
/// it expires.
struct LedgerTransaction: Sendable, Hashable {
    var inputs: [LedgerInput] = []
    var settledAt: Int64 = -1

    var isEmpty: Bool { inputs.isEmpty && settledAt < 0 }

    /// The earliest clock value the entry can expire by.
    var rank: Int64 {
        min(inputs.first?.readAt ?? .max, settledAt >= 0 ? settledAt : .max)
    }
}

/// A dead letter whose input has not been read.
struct LedgerDeadLetter: Sendable, Hashable {
    var code: String?
    var position: AuditPosition?
    var receivedAt: Int64
}

/// What waits at one input position: a rejected input for its dead letter, or dead letters for
/// their input.
enum LedgerPairing: Sendable, Hashable {
    case rejected(code: RejectionCode, readAt: Int64)
    case deadLetters([LedgerDeadLetter])

    var rank: Int64 {
        switch self {
        case .rejected(_, let readAt): readAt
        case .deadLetters(let letters): letters.map(\.receivedAt).min() ?? .max
        }
    }
}

/// A key of the ledger.
enum LedgerKey: Hashable {
    case transaction(String)
    case pairing(AuditPosition)
}

/// Where an ``AuditReconciler`` keeps what must survive until matched: pending inputs and
/// settled ids by transaction id, rejected inputs and early dead letters by input position.
/// In memory for a batch audit; in the auditor task's checkpointed store for the continuous
/// one, so a restart neither forgets a pending input nor reports one twice.
protocol AuditLedger: AnyObject {
    /// The entry of `id` (empty when none).
    func transaction(_ id: String) -> LedgerTransaction
    func setTransaction(_ value: LedgerTransaction, for id: String)
    func pairing(at position: AuditPosition) -> LedgerPairing?
    func setPairing(_ value: LedgerPairing?, at position: AuditPosition)
    /// The keys whose entry may rank before `cutoff` (the caller checks each); settled ids a
    /// ledger cannot list it forgets itself.
    func expiring(before cutoff: Int64) -> [LedgerKey]
    /// False when no position holds dead letters (a lookup per input can be skipped).
    var mayHoldDeadLetters: Bool { get }

    // The per-record operations, each done in place rather than read and written back.
    /// Adds a valid input to `id`'s waiting inputs.
    func appendInput(_ input: LedgerInput, for id: String)
    /// Whether `id` has an input waiting or was settled.
    func isKnown(_ id: String) -> Bool
    /// What an output of `id` finds, in one lookup: the first waiting input, which it takes and
    /// marks `id` settled as of its read time, or that `id` was settled already, or nothing.
    func matchOutput(_ id: String) -> OutputMatch
}

/// What an output finds in the ledger under its transaction id.
enum OutputMatch {
    /// The input it answers, now settled.
    case input(LedgerInput)
    /// No input waits, but one was settled: the output is a duplicate.
    case settled
    /// The id is unknown.
    case unknown
}

/// The ledger of a batch audit. Settled ids are kept as hashes, as a batch audit of a large
/// topic settles millions of them and only asks whether one was.
final class MemoryAuditLedger: AuditLedger {
    /// An id with its hash computed once: every record looks its id up twice (read, then write),
    /// in two tables, and hashing the String each time was a tenth of `audit --once`'s profile.
    struct HashedID: Hashable {
        let id: String
        let hash: Int
        static func == (a: HashedID, b: HashedID) -> Bool { a.hash == b.hash && a.id == b.id }
        func hash(into hasher: inout Hasher) { hasher.combine(hash) }
    }

    /// Waiting inputs of one id: nearly always one, kept without an array.
    struct PendingInputs {
        var first: LedgerInput
        var later: [LedgerInput] = []
        var all: [LedgerInput] { [first] + later }
    }

    private var pending: [HashedID: PendingInputs] = [:]
    /// Valid inputs waiting for their output.
    private(set) var pendingInputCount = 0
    /// The last id hashed: ``setTransaction(_:for:)`` follows ``transaction(_:)`` for the same id.
    private var lastHashed = HashedID(id: "", hash: "".hashValue)

    private func hashed(_ id: String) -> HashedID {
        if id == lastHashed.id { return lastHashed }
        lastHashed = HashedID(id: id, hash: id.hashValue)
        return lastHashed
    }
    private var settled: [Int: Int64] = [:]
    private var settledOrder: [(hash: Int, at: Int64)] = []
    private var settledHead = 0
    private var pairings: [AuditPosition: LedgerPairing] = [:]

    init() {}

    func transaction(_ id: String) -> LedgerTransaction {
        let key = hashed(id)
        let inputs = pending[key]?.all ?? []
        if settled.isEmpty { return LedgerTransaction(inputs: inputs) }
        return LedgerTransaction(inputs: inputs, settledAt: settled[key.hash] ?? -1)
    }

    func setTransaction(_ value: LedgerTransaction, for id: String) {
        let key = hashed(id)
        pendingInputCount += value.inputs.count - (pending[key].map { 1 + $0.later.count } ?? 0)
        pending[key] = value.inputs.first.map { PendingInputs(first: $0, later: Array(value.inputs.dropFirst())) }
        let hash = key.hash
        if value.settledAt >= 0 {
            if settled.updateValue(value.settledAt, forKey: hash) != value.settledAt { settledOrder.append((hash, value.settledAt)) }
        } else if !settled.isEmpty {
            settled[hash] = nil
        }
    }

    func pairing(at position: AuditPosition) -> LedgerPairing? { pairings[position] }

    func appendInput(_ input: LedgerInput, for id: String) {
        let key = hashed(id)
        pendingInputCount += 1
        if pending[key] != nil {
            pending[key]!.later.append(input)
        } else {
            pending[key] = PendingInputs(first: input)
        }
    }

    func isKnown(_ id: String) -> Bool {
        let key = hashed(id)
        return pending[key] != nil || (!settled.isEmpty && settled[key.hash] != nil)
    }

    private func settleFirstInput(of id: String) -> LedgerInput? {
        let key = hashed(id)
        guard var waiting = pending.removeValue(forKey: key) else { return nil }
        pendingInputCount -= 1
        let first = waiting.first
        if !waiting.later.isEmpty {
            waiting.first = waiting.later.removeFirst()
            pending[key] = waiting
        }
        let at = max(settled[key.hash] ?? -1, first.readAt)
        if settled.updateValue(at, forKey: key.hash) != at { settledOrder.append((key.hash, at)) }
        return first
    }

    func matchOutput(_ id: String) -> OutputMatch {
        if let input = settleFirstInput(of: id) { return .input(input) }
        return !settled.isEmpty && settled[lastHashed.hash] != nil ? .settled : .unknown
    }

    func setPairing(_ value: LedgerPairing?, at position: AuditPosition) {
        if case .deadLetters? = pairings[position] { deadLetterPositions -= 1 }
        if case .deadLetters? = value { deadLetterPositions += 1 }
        pairings[position] = value
    }

    private var deadLetterPositions = 0
    var mayHoldDeadLetters: Bool { deadLetterPositions > 0 }

    func expiring(before cutoff: Int64) -> [LedgerKey] {
        while settledHead < settledOrder.count && settledOrder[settledHead].at < cutoff {
            let (hash, at) = settledOrder[settledHead]
            if settled[hash] == at { settled[hash] = nil }
            settledHead += 1
        }
        if settledHead > 4_096 && settledHead * 2 > settledOrder.count {
            settledOrder.removeFirst(settledHead)
            settledHead = 0
        }
        var keys: [LedgerKey] = []
        for (key, inputs) in pending where inputs.all.contains(where: { $0.readAt < cutoff }) { keys.append(.transaction(key.id)) }
        for (position, pairing) in pairings where pairing.rank < cutoff { keys.append(.pairing(position)) }
        return keys
    }

    /// Forgets everything (the end of a batch audit).
    func removeAll() {
        pending.removeAll()
        pendingInputCount = 0
        settled.removeAll()
        settledOrder.removeAll()
        settledHead = 0
        pairings.removeAll()
        deadLetterPositions = 0
    }
}
