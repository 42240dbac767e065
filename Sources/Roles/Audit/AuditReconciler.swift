import PolyglotSupport
import FraudModel

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
/// What must wait for its match (inputs without output, rejected inputs without dead letter,
/// dead letters without input, and the ids already settled, to tell a duplicate from an orphan
/// until ``expire(olderThan:)`` drops them) lives in an ``AuditLedger``: in memory for a batch
/// audit, in a checkpointed store for the continuous auditor, whose lanes' window stores are its
/// tasks' stores too. Waiting outputs stay in memory: the continuous auditor does not commit
/// past them (``firstWaitingOutput(lane:)``), so a restart reads them again.
///
/// Not thread-safe: one reconciler per group of lanes, used from one thread. Clock values
/// (`readAt`, `receivedAt`) are the caller's, in any unit ``expire(olderThan:)`` is given.
public final class AuditReconciler<Windows: PartitionDetector> {
    public let configuration: AuditConfiguration
    /// Counts so far.
    public internal(set) var counts = AuditCounts()

    private var findings: [AuditFinding] = []
    private var decoder = TransactionDecoder()
    private var reader = EnrichedRecordReader()
    private let encoder: EnrichedRecordEncoder
    private let threshold: HighValueThreshold
    /// The auditor's own `polyglot-detector` header (SEMANTICS.md §2c).
    private let detectorHeader: String
    private let recomputed = ByteBuffer(capacity: 1_024)
    let ledger: any AuditLedger
    private let makeWindows: (Int32) -> Windows

    /// Rejected inputs by content, for dead letters without a source (in memory only: entries
    /// whose input has since been answered are dropped when met).
    var rejectedByContent: [Int: [AuditPosition]] = [:]
    /// Dead letters without a source whose input has not been read, by content (in memory only).
    var sourcelessDeadLetters: [Int: [LedgerDeadLetter]] = [:]

    /// An output's members as read when its turn first came: a lane whose first output then
    /// waits for its input keeps them (``Lane/firstRead``), so its next turn does not read it
    /// again. Only a lane's first output has had its turn, so the waiting outputs do not carry it.
    struct ReadOutput {
        var view: EnrichedRecordView
        var id: String
    }

    struct WaitingOutput {
        var bytes: [UInt8]
        var position: AuditPosition
        var source: AuditPosition?
        var fingerprint: String?
        var detector: String?
        var receivedAt: Int64
    }

    final class Lane {
        let id: Int32
        let detector: Windows
        var waiting: [WaitingOutput] = []
        var head = 0
        /// The first waiting output as read when it had its turn: its id is the transaction
        /// whose input the lane waits for.
        var firstRead: ReadOutput?

        init(id: Int32, detector: Windows) {
            self.id = id
            self.detector = detector
        }

        var isWaiting: Bool { head < waiting.count }
    }

    var lanes: [Int32: Lane] = [:]
    /// A batch audit's partitions whose oldest records retention deleted (``setTruncation(_:inputTopic:laneOfCard:)``).
    var truncation: TruncationState?
    /// Lanes whose first waiting output waits for this id's input.
    private var blocked: [String: [Int32]] = [:]
    private var inputsComplete = false
    /// Continuous mode: whether the auditor has read the input partition past a position (an
    /// output's source, and when the output was received): an output whose input is unknown is
    /// an orphan once this says so. Set, missing inputs come only from
    /// ``decideMissing(below:inputTopic:)``, and ``expire(olderThan:)`` only forgets.
    var sourceIsRead: ((AuditPosition?, Int64) -> Bool)?

    /// A reconciler over `ledger`, whose lane `n` recomputes verdicts in `windows(n)`.
    init(configuration: AuditConfiguration, ledger: any AuditLedger, windows: @escaping (Int32) -> Windows) {
        self.configuration = configuration
        self.ledger = ledger
        makeWindows = windows
        encoder = EnrichedRecordEncoder(parameters: configuration.parameters)
        detectorHeader = configuration.parameters.header
        threshold = HighValueThreshold(configuration.highValueThreshold)
    }

    /// The findings since the last call, in the order they were found.
    public func takeFindings() -> [AuditFinding] {
        // Asked after every record: an empty answer must not allocate (emptying a shared
        // array while keeping its capacity copies the storage).
        guard !findings.isEmpty else { return [] }
        defer { findings.removeAll(keepingCapacity: true) }
        return findings
    }

    /// Whether some lane has outputs waiting for an input not read yet.
    public var hasWaitingOutputs: Bool { !blocked.isEmpty }

    /// Valid inputs read and not yet matched by an output (a batch audit's, whose ledger is in memory).
    var pendingInputCount: Int? { (ledger as? MemoryAuditLedger)?.pendingInputCount }
    /// Outputs read and waiting in their lanes for an input not read yet.
    private(set) var waitingOutputCount = 0

    /// The first output of `lane` still waiting for its input.
    public func firstWaitingOutput(lane: Int32) -> AuditPosition? {
        guard let lane = lanes[lane], lane.isWaiting else { return nil }
        return lane.waiting[lane.head].position
    }

    /// Counts since the last call (for a caller that publishes them per commit).
    func takeCounts() -> AuditCounts {
        defer { counts = AuditCounts() }
        return counts
    }

    // MARK: Records

    /// One input record. `kafkaTimestamp` (nil for a file) enables the future-skew rule;
    /// `readAt` is the caller's clock when it was read, for ``expire(olderThan:)``.
    public func input(_ bytes: UnsafeRawBufferPointer, position: AuditPosition, kafkaTimestamp: Int64? = nil, readAt: Int64 = 0) {
        let view: TransactionView
        do throws(Rejection) {
            view = try decoder.decodeView(bytes, kafkaTimestamp: kafkaTimestamp, maxFutureSkew: configuration.parameters.maxFutureSkew)
        } catch {
            counts.inputs += 1
            rejectedInput(error.code, bytes: bytes, position: position, readAt: readAt)
            return
        }
        input(bytes, view: view, position: position, readAt: readAt)
    }

    /// One valid input its caller has already read (with the processor's reader, as
    /// ``input(_:position:kafkaTimestamp:readAt:)`` would): `view` locates its members in `bytes`.
    func input(_ bytes: UnsafeRawBufferPointer, view: TransactionView, position: AuditPosition, readAt: Int64) {
        counts.inputs += 1
        let transaction = decoder.transaction(from: view, in: bytes)
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        if threshold.isExceeded(by: base + view.amount.start, view.amount.length) {
            report(AuditFinding(kind: .highValue, transactionId: transaction.transactionId, cardId: transaction.cardId,
                                input: position, amount: transaction.amount.text))
        }
        var entry = LedgerInput(transaction: transaction, position: position, readAt: readAt, deadLettered: false)
        if let deadLetter = takeUnmatchedDeadLetter(position: position, bytes: bytes) {
            report(AuditFinding(kind: .deadLetterMismatch, transactionId: transaction.transactionId, cardId: transaction.cardId,
                                input: position, output: deadLetter.position, actualCode: deadLetter.code,
                                message: "the input is valid but was dead-lettered"))
            entry.deadLettered = true
        }
        let id = transaction.transactionId
        ledger.appendInput(entry, for: id)
        truncation?.indexInput(transaction, position: position)
        if let waitingLanes = blocked.removeValue(forKey: id) {
            for lane in waitingLanes { drain(lane, orphansBefore: nil) }
        }
    }

    /// One output record of lane `lane`, in the lane's order. `source` is its input's position
    /// (the `polyglot-source` header), `fingerprint` its producer's digest and `detector` its
    /// `polyglot-detector` header, when known;
    /// `receivedAt` is the caller's clock, for ``expire(olderThan:)``. It is counted and checked
    /// when its input is known (or it is given up on as an orphan); until then it waits, and so
    /// does every output behind it in its lane, unreadable ones included, so that what the
    /// continuous auditor has not committed past has not been reported either.
    public func output(_ bytes: UnsafeRawBufferPointer, position: AuditPosition, lane laneID: Int32 = 0,
                       source: AuditPosition? = nil, fingerprint: String? = nil, detector: String? = nil, receivedAt: Int64 = 0) {
        let lane = self.lane(laneID)
        if !lane.isWaiting {
            let orphan = inputsComplete || (sourceIsRead?(source, receivedAt) ?? false)
            switch handle(bytes, read: nil, position: position, source: source, fingerprint: fingerprint, detector: detector,
                          lane: lane, orphan: orphan) {
            case .done: return
            case .waiting(let output):
                blocked[output.id, default: []].append(laneID)
                lane.firstRead = output
            }
        }
        if lane.waiting.count == lane.head {
            lane.waiting.removeAll(keepingCapacity: true)
            lane.head = 0
        }
        waitingOutputCount += 1
        lane.waiting.append(WaitingOutput(bytes: Array(bytes), position: position, source: source, fingerprint: fingerprint,
                                          detector: detector, receivedAt: receivedAt))
    }

    private enum OutputOutcome {
        case done
        /// Its input is unknown: it waits for the input of its transaction id.
        case waiting(ReadOutput)
    }

    /// Counts and checks one output whose turn in its lane has come, unless its input is unknown
    /// and it is not yet an `orphan`.
    private func handle(_ bytes: UnsafeRawBufferPointer, read: ReadOutput?, position: AuditPosition, source: AuditPosition?,
                        fingerprint: String?, detector: String?, lane: Lane, orphan: Bool) -> OutputOutcome {
        let view: EnrichedRecordView, id: String
        if let read {
            (view, id) = (read.view, read.id)
        } else {
            do {
                view = try reader.read(bytes)
            } catch {
                counts.outputs += 1
                report(AuditFinding(kind: .unreadableOutput, input: source, output: position,
                                    actual: String(decoding: bytes, as: UTF8.self), message: error.message))
                return .done
            }
            id = reader.string(view.transactionId, in: bytes)
        }
        // An output whose input retention deleted before the audit read it (from the input
        // topic, or from the repartition topic it was forwarded through) waits for nothing.
        let inputDeleted = truncation.map { $0.inputWasDeleted(source) || $0.forwardedInputWasLost(source) } ?? false
        // One ledger lookup finds and settles the input, except in a lane that lost outputs,
        // whose inputs before this output's source are settled first.
        let laneLostOutputs = truncation.map { $0.outputs[lane.id] != nil } ?? false
        var match = OutputMatch.unknown
        if laneLostOutputs {
            guard orphan || inputDeleted || ledger.isKnown(id) else { return .waiting(ReadOutput(view: view, id: id)) }
        } else {
            match = ledger.matchOutput(id)
            if case .unknown = match, !orphan, !inputDeleted { return .waiting(ReadOutput(view: view, id: id)) }
        }
        counts.outputs += 1
        if view.isFlagged {
            report(AuditFinding(kind: .flagged, transactionId: id, cardId: reader.string(view.cardId, in: bytes),
                                input: source, output: position, reason: reader.string(view.reason, in: bytes)))
        }
        // One drift finding per output, whichever of its producer's environment and detector
        // parameters differ (SEMANTICS.md §2c, §5). Verdicts of other parameters are expected to
        // differ from the auditor's: drift, never a mismatch.
        let fingerprintDrifts = fingerprint != nil && configuration.fingerprintDigest != nil && fingerprint != configuration.fingerprintDigest
        let detectorDrifts = detector != nil && detector != detectorHeader
        if fingerprintDrifts || detectorDrifts {
            var finding = AuditFinding(kind: .drift, transactionId: id, input: source, output: position)
            if fingerprintDrifts { (finding.outputFingerprint, finding.auditorFingerprint) = (fingerprint, configuration.fingerprintDigest) }
            if detectorDrifts { (finding.outputDetector, finding.auditorDetector) = (detector, detectorHeader) }
            report(finding)
        }
        if laneLostOutputs, let truncation {
            accountDeletedOutputs(of: lane, before: source, truncation)
            match = ledger.matchOutput(id)
        }
        switch match {
        case .input(let entry):
            let transaction = entry.transaction
            let verdict = lane.detector.process(card: transaction.cardId, eventTime: transaction.timestamp)
            recomputed.removeAll()
            encoder.append(transaction, verdict, to: recomputed)
            if !detectorDrifts, !Self.equal(recomputed.bytes, bytes) {
                report(AuditFinding(kind: .mismatch, transactionId: id, cardId: transaction.cardId, input: entry.position,
                                    output: position, expected: String(decoding: recomputed.bytes, as: UTF8.self),
                                    actual: String(decoding: bytes, as: UTF8.self)))
            }
        case .settled:
            report(AuditFinding(kind: .duplicate, transactionId: id, output: position))
        case .unknown where inputDeleted:
            // Unverifiable without its input, but its effect on the card's windows is known:
            // the verdicts after it are checked against the state it left.
            if let timestamp = view.timestamp {
                _ = lane.detector.process(card: reader.string(view.cardId, in: bytes), eventTime: timestamp)
            }
            truncation?.outputsOfDeletedInputs += 1
        case .unknown:
            report(AuditFinding(kind: .orphan, transactionId: id, output: position, message: "no input has this transaction id"))
        }
        return .done
    }

    /// One dead letter: the rejected record's original bytes, its `polyglot-error` code and its
    /// input's position (`polyglot-source`, or the DLQ line's `line`). Without a source it is
    /// matched to a rejected input by content.
    /// `inputRead` (continuous mode): the auditor has read past `source` already, so a dead letter
    /// that matches nothing there is an orphan at once.
    public func deadLetter(_ originalBytes: UnsafeRawBufferPointer, code: String?, source: AuditPosition?,
                           position: AuditPosition? = nil, receivedAt: Int64 = 0, inputRead: Bool = false) {
        counts.deadLetters += 1
        if let truncation, truncation.noteDeadLetter(source: source, position: position) { return }
        let hash = Self.contentHash(originalBytes)
        var found: (code: RejectionCode, position: AuditPosition)?
        if let source {
            if case .rejected(let expected, _)? = ledger.pairing(at: source) {
                ledger.setPairing(nil, at: source)
                found = (expected, source)
                forgetRejectedContent(hash, at: source)
            }
        } else {
            while found == nil, let candidate = rejectedByContent[hash]?.first {
                forgetRejectedContent(hash, at: candidate)
                if case .rejected(let expected, _)? = ledger.pairing(at: candidate) {
                    ledger.setPairing(nil, at: candidate)
                    found = (expected, candidate)
                }
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
        if let transaction = try? decoder.decode(Array(originalBytes)) {
            var known = ledger.transaction(transaction.transactionId)
            if let i = known.inputs.firstIndex(where: { !$0.deadLettered && (source == nil || source == $0.position) }) {
                known.inputs[i].deadLettered = true
                ledger.setTransaction(known, for: transaction.transactionId)
                report(AuditFinding(kind: .deadLetterMismatch, transactionId: transaction.transactionId, cardId: transaction.cardId,
                                    input: known.inputs[i].position, output: position, actualCode: code,
                                    message: "the input is valid but was dead-lettered"))
                return
            }
        }
        if inputRead {
            report(AuditFinding(kind: .orphan, input: source, output: position, actualCode: code,
                                message: "a dead letter whose input was not read"))
            return
        }
        let letter = LedgerDeadLetter(code: code, position: position, receivedAt: receivedAt)
        if let source {
            var letters: [LedgerDeadLetter] = []
            if case .deadLetters(let earlier)? = ledger.pairing(at: source) { letters = earlier }
            letters.append(letter)
            ledger.setPairing(.deadLetters(letters), at: source)
        } else {
            sourcelessDeadLetters[hash, default: []].append(letter)
        }
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
        reportTruncation()
        (ledger as? MemoryAuditLedger)?.removeAll()
    }

    /// Continuous mode: drains every lane whose first waiting output's input is now known to be
    /// absent (``sourceIsRead``). Returns whether anything changed.
    @discardableResult
    func drainOrphans() -> Bool {
        var changed = false
        for id in lanes.keys.sorted() where drain(id, orphansBefore: nil) { changed = true }
        return changed
    }

    // MARK: Matching

    private func lane(_ id: Int32) -> Lane {
        if let lane = lanes[id] { return lane }
        let lane = Lane(id: id, detector: makeWindows(id))
        lanes[id] = lane
        return lane
    }

    /// Handles a lane's waiting outputs in order while their inputs are known; an unknown one
    /// that arrived before `orphansBefore` (or after ``endOfInputs()``) is an orphan, any other
    /// stops the lane again. A waiting lane's first output is always in `blocked`.
    @discardableResult
    func drain(_ laneID: Int32, orphansBefore cutoff: Int64?) -> Bool {
        guard let lane = lanes[laneID], lane.isWaiting else { return false }
        var firstRead = lane.firstRead
        lane.firstRead = nil
        if let id = firstRead?.id { unblock(id, laneID) }
        let head = lane.head
        while lane.isWaiting {
            let output = lane.waiting[lane.head]
            let orphan = inputsComplete || (cutoff.map { output.receivedAt < $0 } ?? false)
                || (sourceIsRead?(output.source, output.receivedAt) ?? false)
            let outcome = output.bytes.withUnsafeBytes {
                handle($0, read: firstRead, position: output.position, source: output.source, fingerprint: output.fingerprint,
                       detector: output.detector, lane: lane, orphan: orphan)
            }
            firstRead = nil
            if case .waiting(let read) = outcome {
                blocked[read.id, default: []].append(laneID)
                lane.firstRead = read
                return lane.head != head
            }
            lane.waiting[lane.head].bytes = []
            lane.head += 1
            waitingOutputCount -= 1
        }
        lane.waiting.removeAll(keepingCapacity: true)
        lane.head = 0
        return true
    }

    private func unblock(_ id: String, _ laneID: Int32) {
        guard var lanes = blocked[id] else { return }
        if let i = lanes.firstIndex(of: laneID) { lanes.remove(at: i) }
        blocked[id] = lanes.isEmpty ? nil : lanes
    }

    private func rejectedInput(_ code: RejectionCode, bytes: UnsafeRawBufferPointer, position: AuditPosition, readAt: Int64) {
        if let deadLetter = takeUnmatchedDeadLetter(position: position, bytes: bytes) {
            if deadLetter.code != code.rawValue {
                report(AuditFinding(kind: .deadLetterMismatch, input: position, output: deadLetter.position,
                                    expectedCode: code.rawValue, actualCode: deadLetter.code,
                                    message: deadLetter.code == nil ? "the dead letter has no error code" : "the dead letter's code differs"))
            }
            return
        }
        guard configuration.expectsDeadLetters else { return }
        ledger.setPairing(.rejected(code: code, readAt: readAt), at: position)
        rejectedByContent[Self.contentHash(bytes), default: []].append(position)
    }

    private func forgetRejectedContent(_ hash: Int, at position: AuditPosition) {
        guard var positions = rejectedByContent[hash], let i = positions.firstIndex(of: position) else { return }
        positions.remove(at: i)
        rejectedByContent[hash] = positions.isEmpty ? nil : positions
    }

    private func takeUnmatchedDeadLetter(position: AuditPosition, bytes: UnsafeRawBufferPointer) -> LedgerDeadLetter? {
        if ledger.mayHoldDeadLetters, case .deadLetters(var letters)? = ledger.pairing(at: position), !letters.isEmpty {
            let first = letters.removeFirst()
            ledger.setPairing(letters.isEmpty ? nil : .deadLetters(letters), at: position)
            return first
        }
        guard !sourcelessDeadLetters.isEmpty else { return nil }
        let hash = Self.contentHash(bytes)
        guard var letters = sourcelessDeadLetters[hash], !letters.isEmpty else { return nil }
        let first = letters.removeFirst()
        sourcelessDeadLetters[hash] = letters.isEmpty ? nil : letters
        return first
    }

    func report(_ finding: AuditFinding) {
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

extension AuditReconciler where Windows == InMemoryDetector {
    /// A reconciler for a batch audit: its ledger and its lanes' window state in memory.
    public convenience init(configuration: AuditConfiguration) {
        let parameters = configuration.parameters
        self.init(configuration: configuration, ledger: MemoryAuditLedger(),
                  windows: { _ in InMemoryDetector(parameters: parameters, initialCapacity: 1 << 12) })
    }
}

/// The reconciler of a batch audit (`audit --files`, `audit --once`): everything in memory.
public typealias BatchAuditReconciler = AuditReconciler<InMemoryDetector>
