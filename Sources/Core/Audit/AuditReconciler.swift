/// What the auditor checks against: the detector's parameters, the high-value threshold and its
/// own fingerprint.
public struct AuditConfiguration: Sendable {
    public var parameters: DetectorParameters
    /// `highValue` when an input's amount is above this, compared exactly as decimals.
    public var highValueThreshold: DecimalText
    /// The auditor's own environment fingerprint digest; nil skips the drift check.
    public var fingerprintDigest: String?
    /// Whether every rejected input must have a dead letter (false when the dead letters are
    /// not read, so rejected inputs are only counted).
    public var expectsDeadLetters: Bool

    public static let defaultHighValueThreshold = DecimalText(unchecked: "10000")

    public init(parameters: DetectorParameters = .default, highValueThreshold: DecimalText = Self.defaultHighValueThreshold,
                fingerprintDigest: String? = nil, expectsDeadLetters: Bool = true) {
        self.parameters = parameters
        self.highValueThreshold = highValueThreshold
        self.fingerprintDigest = fingerprintDigest
        self.expectsDeadLetters = expectsDeadLetters
    }
}

/// SEMANTICS.md §5 over a stream of inputs, outputs and dead letters, in whatever order they
/// arrive, independent of where they come from (files, topics).
///
/// Inputs are read with the processor's reader, and each lane's outputs (one output partition,
/// or a whole output file) are recomputed in lane order with a detector and window store of the
/// lane's own: a lane's outputs are in the order the processor handled them, and verdicts depend
/// on that order. An output whose input has not been read yet waits, and the outputs behind it
/// in its lane wait too, until the input arrives, ``endOfInputs()`` or ``finish()`` makes it an
/// orphan, or ``expire(olderThan:)`` gives up on it.
///
/// Memory holds what is pending: inputs without output, waiting outputs, rejected inputs
/// without dead letter, dead letters without input; and, to tell a duplicate from an orphan, one
/// hash per settled transaction id, until ``expire(olderThan:)`` drops it.
///
/// Not thread-safe: one reconciler per group of lanes, used from one thread. Clock values
/// (`readAt`, `receivedAt`) are the caller's, in any unit ``expire(olderThan:)`` is given.
public final class AuditReconciler {
    public let configuration: AuditConfiguration
    /// Counts so far.
    public private(set) var counts = AuditCounts()

    private var findings: [AuditFinding] = []
    private var decoder = TransactionDecoder()
    private var reader = EnrichedRecordReader()
    private let encoder: EnrichedRecordEncoder
    private let threshold: HighValueThreshold
    private let recomputed = ByteBuffer(capacity: 1_024)

    private struct PendingInput {
        var transaction: Transaction
        var position: AuditPosition
        var readAt: Int64
        /// A dead letter claimed this valid input (already reported): not missing without output.
        var deadLettered = false
        /// Further valid inputs with the same id, matched to outputs in arrival order.
        var later: [PendingInput] = []
    }

    /// Valid inputs without output, by transaction id.
    private var pending: [String: PendingInput] = [:]
    /// Hashes of the ids whose input had its output, and when those inputs were read (oldest first).
    private var settled: Set<Int> = []
    private var settledOrder: [(hash: Int, readAt: Int64)] = []
    private var settledHead = 0

    private struct RejectedInput {
        var code: RejectionCode
        var position: AuditPosition
        var readAt: Int64
        var contentHash: Int
    }

    /// Rejected inputs without dead letter, by position.
    private var rejected: [AuditPosition: RejectedInput] = [:]

    private struct UnmatchedDeadLetter {
        var code: String?
        var position: AuditPosition?
        var source: AuditPosition?
        var receivedAt: Int64
    }

    private enum DeadLetterKey: Hashable {
        case source(AuditPosition)
        case content(Int)
    }

    /// Dead letters whose input has not been read, by source (or, without one, by content).
    private var unmatchedDeadLetters: [DeadLetterKey: [UnmatchedDeadLetter]] = [:]
    private var sourcelessDeadLetters = 0

    private struct WaitingOutput {
        var transactionId: String
        var bytes: [UInt8]
        var position: AuditPosition
        var receivedAt: Int64
    }

    private final class Lane {
        var detector: Detector
        var store: InMemoryWindowStore
        var waiting: [WaitingOutput] = []
        var head = 0

        init(parameters: DetectorParameters) {
            detector = Detector(parameters: parameters)
            store = InMemoryWindowStore(parameters: parameters, initialCapacity: 1 << 12)
        }

        var isWaiting: Bool { head < waiting.count }
    }

    private var lanes: [Int32: Lane] = [:]
    /// Lanes whose first waiting output waits for this id's input.
    private var blocked: [String: [Int32]] = [:]
    private var inputsComplete = false

    public init(configuration: AuditConfiguration) {
        self.configuration = configuration
        encoder = EnrichedRecordEncoder(parameters: configuration.parameters)
        threshold = HighValueThreshold(configuration.highValueThreshold)
    }

    /// The findings since the last call, in the order they were found.
    public func takeFindings() -> [AuditFinding] {
        defer { findings.removeAll(keepingCapacity: true) }
        return findings
    }

    /// Whether some lane has outputs waiting for an input not read yet.
    public var hasWaitingOutputs: Bool { !blocked.isEmpty }

    /// Valid inputs read and not yet matched by an output.
    public var pendingInputCount: Int { pending.values.reduce(0) { $0 + 1 + $1.later.count } }

    // MARK: Records

    /// One input record. `kafkaTimestamp` (nil for a file) enables the future-skew rule;
    /// `readAt` is the caller's clock when it was read, for ``expire(olderThan:)``.
    public func input(_ bytes: UnsafeRawBufferPointer, position: AuditPosition, kafkaTimestamp: Int64? = nil, readAt: Int64 = 0) {
        counts.inputs += 1
        let transaction: Transaction
        do throws(Rejection) {
            let view = try decoder.decodeView(bytes, kafkaTimestamp: kafkaTimestamp, maxFutureSkew: configuration.parameters.maxFutureSkew)
            transaction = decoder.transaction(from: view, in: bytes)
            let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
            if threshold.isExceeded(by: base + view.amount.start, view.amount.length) {
                report(AuditFinding(kind: .highValue, transactionId: transaction.transactionId, cardId: transaction.cardId,
                                    input: position, amount: transaction.amount.text))
            }
        } catch {
            rejectedInput(error.code, bytes: bytes, position: position, readAt: readAt)
            return
        }
        var entry = PendingInput(transaction: transaction, position: position, readAt: readAt)
        if !unmatchedDeadLetters.isEmpty, let deadLetter = takeUnmatchedDeadLetter(position: position, bytes: bytes) {
            report(AuditFinding(kind: .deadLetterMismatch, transactionId: transaction.transactionId, cardId: transaction.cardId,
                                input: position, output: deadLetter.position, actualCode: deadLetter.code,
                                message: "the input is valid but was dead-lettered"))
            entry.deadLettered = true
        }
        let id = transaction.transactionId
        if pending[id] != nil {
            pending[id]!.later.append(entry)
        } else {
            pending[id] = entry
        }
        if let waitingLanes = blocked.removeValue(forKey: id) {
            for lane in waitingLanes { drain(lane, orphansBefore: nil) }
        }
    }

    /// One output record of lane `lane`, in the lane's order. `source` is its input's position
    /// (the `polyglot-source` header) and `fingerprint` its producer's digest, when known;
    /// `receivedAt` is the caller's clock, for ``expire(olderThan:)``.
    public func output(_ bytes: UnsafeRawBufferPointer, position: AuditPosition, lane laneID: Int32 = 0,
                       source: AuditPosition? = nil, fingerprint: String? = nil, receivedAt: Int64 = 0) {
        counts.outputs += 1
        let view: EnrichedRecordView
        do {
            view = try reader.read(bytes)
        } catch {
            report(AuditFinding(kind: .unreadableOutput, input: source, output: position,
                                actual: String(decoding: bytes, as: UTF8.self), message: error.message))
            return
        }
        let id = reader.string(view.transactionId, in: bytes)
        if view.isFlagged {
            report(AuditFinding(kind: .flagged, transactionId: id, cardId: reader.string(view.cardId, in: bytes),
                                input: source, output: position, reason: reader.string(view.reason, in: bytes)))
        }
        if let fingerprint, let own = configuration.fingerprintDigest, fingerprint != own {
            report(AuditFinding(kind: .drift, transactionId: id, input: source, output: position,
                                outputFingerprint: fingerprint, auditorFingerprint: own))
        }
        let lane = self.lane(laneID)
        if !lane.isWaiting, settle(id: id, bytes: bytes, position: position, lane: lane, orphan: inputsComplete) {
            return
        }
        if lane.waiting.count == lane.head {
            lane.waiting.removeAll(keepingCapacity: true)
            lane.head = 0
        }
        lane.waiting.append(WaitingOutput(transactionId: id, bytes: Array(bytes), position: position, receivedAt: receivedAt))
        if lane.waiting.count - lane.head == 1 { blocked[id, default: []].append(laneID) }
    }

    /// One dead letter: the rejected record's original bytes, its `polyglot-error` code and its
    /// input's position (`polyglot-source`, or the DLQ line's `line`). Without a source it is
    /// matched to a rejected input by content.
    public func deadLetter(_ originalBytes: UnsafeRawBufferPointer, code: String?, source: AuditPosition?,
                           position: AuditPosition? = nil, receivedAt: Int64 = 0) {
        counts.deadLetters += 1
        let found: RejectedInput?
        if let source {
            found = rejected.removeValue(forKey: source)
        } else {
            let hash = Self.contentHash(originalBytes)
            if let match = rejected.first(where: { $0.value.contentHash == hash }) {
                found = rejected.removeValue(forKey: match.key)
            } else {
                found = nil
            }
        }
        if let found {
            if code != found.code.rawValue {
                report(AuditFinding(kind: .deadLetterMismatch, input: found.position, output: position,
                                    expectedCode: found.code.rawValue, actualCode: code,
                                    message: code == nil ? "the dead letter has no error code" : "the dead letter's code differs"))
            }
            return
        }
        // A valid input already read that the processor dead-lettered?
        if let transaction = try? decoder.decode(Array(originalBytes)),
            let entry = pending[transaction.transactionId], !entry.deadLettered, source == nil || source == entry.position
        {
            pending[transaction.transactionId]!.deadLettered = true
            report(AuditFinding(kind: .deadLetterMismatch, transactionId: transaction.transactionId, cardId: transaction.cardId,
                                input: entry.position, output: position, actualCode: code,
                                message: "the input is valid but was dead-lettered"))
            return
        }
        let key: DeadLetterKey = source.map { .source($0) } ?? .content(Self.contentHash(originalBytes))
        if source == nil { sourcelessDeadLetters += 1 }
        unmatchedDeadLetters[key, default: []].append(
            UnmatchedDeadLetter(code: code, position: position, source: source, receivedAt: receivedAt))
    }

    // MARK: Ends

    /// No more inputs will arrive (a file or the input topics were read to their end): outputs
    /// waiting for an unknown input, now and later, are orphans.
    public func endOfInputs() {
        inputsComplete = true
        for id in lanes.keys.sorted() { drain(id, orphansBefore: .max) }
    }

    /// The end of a batch run: waiting outputs with no input are orphans, valid inputs with no
    /// output missing, rejected inputs with no dead letter and dead letters with no input
    /// reported. The reconciler then holds nothing; its counts stay.
    public func finish() {
        endOfInputs()
        expire(olderThan: .max)
        settled.removeAll()
        settledOrder.removeAll()
        settledHead = 0
    }

    /// Continuous mode: gives up on what has waited since before `cutoff` (the caller's clock,
    /// say now minus the settle time). Outputs waiting since then for an input are orphans,
    /// valid inputs read before then without output (or dead letter) are missing, rejected ones
    /// without dead letter and dead letters without input are reported; settled ids read before
    /// then are forgotten (a later output for one is an orphan, not a duplicate).
    public func expire(olderThan cutoff: Int64) {
        for id in lanes.keys.sorted() { drain(id, orphansBefore: cutoff) }

        var missing: [PendingInput] = []
        for (id, entry) in pending {
            var kept: [PendingInput] = []
            for input in [entry] + entry.later {
                if input.readAt < cutoff { missing.append(input) } else { kept.append(input) }
            }
            if kept.count == entry.later.count + 1 { continue }
            if var first = kept.first {
                first.later = Array(kept.dropFirst())
                pending[id] = first
            } else {
                pending[id] = nil
            }
        }
        for input in missing.sorted(by: { $0.position < $1.position }) where !input.deadLettered {
            report(AuditFinding(kind: .missing, transactionId: input.transaction.transactionId,
                                cardId: input.transaction.cardId, input: input.position))
        }

        let unanswered = rejected.values.filter { $0.readAt < cutoff }.sorted { $0.position < $1.position }
        for input in unanswered {
            rejected[input.position] = nil
            report(AuditFinding(kind: .deadLetterMismatch, input: input.position, expectedCode: input.code.rawValue,
                                message: "the rejected input has no dead letter"))
        }

        var orphans: [UnmatchedDeadLetter] = []
        for (key, letters) in unmatchedDeadLetters {
            let old = letters.filter { $0.receivedAt < cutoff }
            guard !old.isEmpty else { continue }
            orphans += old
            let young = letters.filter { $0.receivedAt >= cutoff }
            unmatchedDeadLetters[key] = young.isEmpty ? nil : young
            if case .content = key { sourcelessDeadLetters -= old.count }
        }
        for letter in orphans.sorted(by: { ($0.source ?? $0.position ?? .line(0)) < ($1.source ?? $1.position ?? .line(0)) }) {
            report(AuditFinding(kind: .orphan, input: letter.source, output: letter.position, actualCode: letter.code,
                                message: "a dead letter whose input was not read"))
        }

        while settledHead < settledOrder.count && settledOrder[settledHead].readAt < cutoff {
            settled.remove(settledOrder[settledHead].hash)
            settledHead += 1
        }
        if settledHead > 4_096 && settledHead * 2 > settledOrder.count {
            settledOrder.removeFirst(settledHead)
            settledHead = 0
        }
    }

    // MARK: Matching

    private func lane(_ id: Int32) -> Lane {
        if let lane = lanes[id] { return lane }
        let lane = Lane(parameters: configuration.parameters)
        lanes[id] = lane
        return lane
    }

    /// Handles a lane's waiting outputs in order while their inputs are known; an unknown one
    /// that arrived before `orphansBefore` (or after ``endOfInputs()``) is an orphan, any other
    /// stops the lane again. A waiting lane's first output is always in `blocked`.
    private func drain(_ laneID: Int32, orphansBefore cutoff: Int64?) {
        guard let lane = lanes[laneID], lane.isWaiting else { return }
        unblock(lane.waiting[lane.head].transactionId, laneID)
        while lane.isWaiting {
            let output = lane.waiting[lane.head]
            let orphan = inputsComplete || (cutoff.map { output.receivedAt < $0 } ?? false)
            let done = output.bytes.withUnsafeBytes {
                settle(id: output.transactionId, bytes: $0, position: output.position, lane: lane, orphan: orphan)
            }
            guard done else {
                blocked[output.transactionId, default: []].append(laneID)
                return
            }
            lane.waiting[lane.head].bytes = []
            lane.head += 1
        }
        lane.waiting.removeAll(keepingCapacity: true)
        lane.head = 0
    }

    private func unblock(_ id: String, _ laneID: Int32) {
        guard var lanes = blocked[id] else { return }
        if let i = lanes.firstIndex(of: laneID) { lanes.remove(at: i) }
        blocked[id] = lanes.isEmpty ? nil : lanes
    }


    /// Matches one output to its input and recomputes it; false when its input is unknown and it
    /// must wait (an `orphan` is reported instead when `orphan` is true).
    private func settle(id: String, bytes: UnsafeRawBufferPointer, position: AuditPosition, lane: Lane, orphan: Bool) -> Bool {
        if var entry = pending[id] {
            let transaction = entry.transaction
            let verdict = lane.detector.process(card: transaction.cardId, eventTime: transaction.timestamp, store: &lane.store)
            recomputed.removeAll()
            encoder.append(transaction, verdict, to: recomputed)
            if !Self.equal(recomputed.bytes, bytes) {
                report(AuditFinding(kind: .mismatch, transactionId: id, cardId: transaction.cardId, input: entry.position,
                                    output: position, expected: String(decoding: recomputed.bytes, as: UTF8.self),
                                    actual: String(decoding: bytes, as: UTF8.self)))
            }
            markSettled(id, readAt: entry.readAt)
            if entry.later.isEmpty {
                pending[id] = nil
            } else {
                var next = entry.later.removeFirst()
                next.later = entry.later
                entry.later = []
                pending[id] = next
            }
            return true
        }
        if settled.contains(id.hashValue) {
            report(AuditFinding(kind: .duplicate, transactionId: id, output: position))
            return true
        }
        if orphan {
            report(AuditFinding(kind: .orphan, transactionId: id, output: position, message: "no input has this transaction id"))
            return true
        }
        return false
    }

    private func markSettled(_ id: String, readAt: Int64) {
        let hash = id.hashValue
        if settled.insert(hash).inserted { settledOrder.append((hash, readAt)) }
    }

    private func rejectedInput(_ code: RejectionCode, bytes: UnsafeRawBufferPointer, position: AuditPosition, readAt: Int64) {
        if !unmatchedDeadLetters.isEmpty, let deadLetter = takeUnmatchedDeadLetter(position: position, bytes: bytes) {
            if deadLetter.code != code.rawValue {
                report(AuditFinding(kind: .deadLetterMismatch, input: position, output: deadLetter.position,
                                    expectedCode: code.rawValue, actualCode: deadLetter.code,
                                    message: deadLetter.code == nil ? "the dead letter has no error code" : "the dead letter's code differs"))
            }
            return
        }
        guard configuration.expectsDeadLetters else { return }
        rejected[position] = RejectedInput(code: code, position: position, readAt: readAt, contentHash: Self.contentHash(bytes))
    }

    private func takeUnmatchedDeadLetter(position: AuditPosition, bytes: UnsafeRawBufferPointer) -> UnmatchedDeadLetter? {
        if let letter = takeFirst(.source(position)) { return letter }
        guard sourcelessDeadLetters > 0, let letter = takeFirst(.content(Self.contentHash(bytes))) else { return nil }
        sourcelessDeadLetters -= 1
        return letter
    }

    private func takeFirst(_ key: DeadLetterKey) -> UnmatchedDeadLetter? {
        guard var letters = unmatchedDeadLetters[key], !letters.isEmpty else { return nil }
        let first = letters.removeFirst()
        unmatchedDeadLetters[key] = letters.isEmpty ? nil : letters
        return first
    }

    private func report(_ finding: AuditFinding) {
        counts.count(finding.kind)
        findings.append(finding)
    }

    private static func contentHash(_ bytes: UnsafeRawBufferPointer) -> Int {
        var hasher = Hasher()
        hasher.combine(bytes: bytes)
        return hasher.finalize()
    }

    private static func equal(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        guard a.count > 0 else { return true }
        return memcmpBytes(a.baseAddress!.assumingMemoryBound(to: UInt8.self), b.baseAddress!.assumingMemoryBound(to: UInt8.self), a.count)
    }
}

extension AuditPosition: Comparable {
    /// Lines before records; lines by number; records by topic, partition and offset.
    public static func < (a: AuditPosition, b: AuditPosition) -> Bool {
        switch (a, b) {
        case (.line(let x), .line(let y)): x < y
        case (.line, .record): true
        case (.record, .line): false
        case (.record(let t1, let p1, let o1), .record(let t2, let p2, let o2)): (t1, p1, o1) < (t2, p2, o2)
        }
    }
}
