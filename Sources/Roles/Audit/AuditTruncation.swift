import FraudModel

/// Partitions whose records retention (or a delete) removed before the audit could read them:
/// each one's first offset read after the gap (a batch audit: the first offset still held).
/// Records below it that the audit did not read are gone, so it cannot check them, and must not
/// call the records around the gap missing or orphan.
public struct AuditTruncation: Sendable, Hashable {
    /// Which of the topics the auditor reads lost records.
    public enum Side: String, Sendable {
        case input, output, deadLetter = "dead-letter"
        /// The continuous auditor's own repartition topic (inputs forwarded between its tasks).
        case repartition
    }

    public var outputTopic: String
    public var deadLetterTopic: String
    /// Output partition → its first offset still held.
    public var outputs: [Int32: Int64] = [:]
    /// Input partition → its first offset still held.
    public var inputs: [Int32: Int64] = [:]
    /// Dead-letter partition → its first offset still held.
    public var deadLetters: [Int32: Int64] = [:]
    /// The continuous auditor's repartition partition → its first offset still held.
    public var repartition: [Int32: Int64] = [:]
    /// Whether the dead-letter topic has as many partitions as the input topic (the processor
    /// then writes each dead letter on its input's partition).
    public var deadLettersOnInputPartitions = true

    public init(outputTopic: String, deadLetterTopic: String) {
        self.outputTopic = outputTopic
        self.deadLetterTopic = deadLetterTopic
    }

    public var isEmpty: Bool { outputs.isEmpty && inputs.isEmpty && deadLetters.isEmpty && repartition.isEmpty }

    /// Notes that `side`'s partition lost its records below `first`; false when that was known.
    @discardableResult
    mutating func deleted(_ side: Side, partition: Int32, below first: Int64) -> Bool {
        func raise(_ map: inout [Int32: Int64]) -> Bool {
            guard first > (map[partition] ?? 0) else { return false }
            map[partition] = first
            return true
        }
        switch side {
        case .input: return raise(&inputs)
        case .output: return raise(&outputs)
        case .deadLetter: return raise(&deadLetters)
        case .repartition: return raise(&repartition)
        }
    }
}

extension AuditFinding {
    /// The one `truncated` finding of a partition: records `from` to `to - 1` of `topic` were
    /// deleted before the audit read them; `accounted` says what that explains.
    static func truncated(_ side: AuditTruncation.Side, topic: String, partition: Int32, from: Int64, to: Int64,
                          accounted: String) -> AuditFinding {
        let position = AuditPosition.record(topic: topic, partition: partition, offset: to)
        var finding = AuditFinding(kind: .truncated, input: side == .input ? position : nil, output: side == .input ? nil : position,
                                   message: "\(side.rawValue) offsets \(from) to \(to - 1) were deleted before the audit read them (\(accounted))")
        finding.firstDeleted = from
        finding.lastDeleted = to - 1
        return finding
    }
}

/// What a reconciler knows and counts of a truncation while it audits.
///
/// Outputs are deleted from the start of an output partition (a lane), so the outputs lost from
/// a lane are those of its inputs that come before the lane's first output still held, per input
/// partition (a lane's outputs follow each input partition's order). When the first output of an
/// input partition reaches a truncated lane, the inputs of that partition and lane still waiting
/// before its source are the ones whose outputs were deleted: they are applied to the lane's
/// windows in input order, so the verdicts after the gap are checked against the state the
/// processor had, and they are not missing.
final class TruncationState {
    private(set) var truncation: AuditTruncation
    let inputTopic: String
    /// The output partition of a card (the processor's partitioner over the output topic).
    let laneOfCard: (String) -> Int32
    /// Valid inputs of truncated lanes, per input partition in offset order.
    private(set) var waiting: [Int32: [(offset: Int64, lane: Int32, id: String)]] = [:]
    /// Per truncated lane, the input partitions whose deleted outputs are accounted for.
    fileprivate(set) var accounted: [Int32: Set<Int32>] = [:]
    /// Per truncated lane, inputs whose outputs were deleted.
    var inputsOfDeletedOutputs: [Int32: Int] = [:]
    /// Outputs and dead letters whose input was deleted.
    var outputsOfDeletedInputs = 0
    var deadLettersOfDeletedInputs = 0
    /// Rejected inputs whose dead letter was deleted.
    var rejectedOfDeletedDeadLetters = 0
    /// Per dead-letter partition, the input offset of its first dead letter still held.
    fileprivate var firstDeadLetterSource: [Int32: Int64] = [:]
    /// The continuous auditor's, after a gap in its repartition partition: per input partition,
    /// the position of the first record its task forwarded that was read after the gap (an
    /// input's, or its read progress). Inputs of that partition forwarded below it were read
    /// before the gap or lost in it.
    fileprivate var forwardedAfterGap: [Int32: Int64] = [:]
    /// The continuous auditor's: the valid inputs of an input partition below an offset still
    /// waiting in its stored ledger (which outlives the cycles and restarts this state does not),
    /// in offset order. Nil (a batch audit): inputs are kept in ``waiting`` as they are read.
    let waitingInLedger: ((Int32, Int64) -> [(offset: Int64, id: String)])?
    /// The continuous auditor's: keeps what this state knows in the task's store, in the open
    /// cycle, whenever it changes (nil: a batch audit keeps nothing).
    var persist: ((KnownGaps) -> Void)?
    fileprivate var persisted: KnownGaps?

    init(_ truncation: AuditTruncation, inputTopic: String, laneOfCard: @escaping (String) -> Int32,
         waitingInLedger: ((Int32, Int64) -> [(offset: Int64, id: String)])? = nil) {
        self.truncation = truncation
        self.inputTopic = inputTopic
        self.laneOfCard = laneOfCard
        self.waitingInLedger = waitingInLedger
    }

    /// A further gap (the continuous auditor): a lane that lost more outputs is accounted for
    /// again from its next output of each input partition, and a dead-letter partition from its
    /// next dead letter.
    func update(_ newer: AuditTruncation) {
        for (lane, first) in newer.outputs where truncation.outputs[lane] != first { accounted[lane] = nil }
        for (partition, first) in newer.deadLetters where truncation.deadLetters[partition] != first { firstDeadLetterSource[partition] = nil }
        if newer.repartition != truncation.repartition { forwardedAfterGap = [:] }
        truncation = newer
    }

    var outputs: [Int32: Int64] { truncation.outputs }

    /// Whether the deleted outputs of `partition`'s inputs in `lane` are accounted for already.
    func isAccounted(lane: Int32, partition: Int32) -> Bool { accounted[lane]?.contains(partition) ?? false }

    /// Keeps a valid input of a truncated lane until that lane's first output of its partition.
    func indexInput(_ transaction: Transaction, position: AuditPosition) {
        guard waitingInLedger == nil, !truncation.outputs.isEmpty, case .record(let topic, let partition, let offset) = position, topic == inputTopic else { return }
        let lane = laneOfCard(transaction.cardId)
        guard truncation.outputs[lane] != nil, !isAccounted(lane: lane, partition: partition) else { return }
        waiting[partition, default: []].append((offset, lane, transaction.transactionId))
    }

    /// Takes the inputs of `partition` for `lane` below `offset`, and marks the pair accounted.
    func takeWaiting(partition: Int32, lane: Int32, below offset: Int64) -> [(offset: Int64, id: String)] {
        if accounted[lane, default: []].insert(partition).inserted { save() }
        if let waitingInLedger { return waitingInLedger(partition, offset) }
        guard var entries = waiting[partition] else { return [] }
        var taken: [(offset: Int64, id: String)] = []
        entries.removeAll { entry in
            guard entry.lane == lane else { return false }
            if entry.offset < offset { taken.append((entry.offset, entry.id)) }
            return true
        }
        waiting[partition] = entries.isEmpty ? nil : entries
        return taken
    }

    /// Whether `source` names an input below its partition's first offset still held.
    func inputWasDeleted(_ source: AuditPosition?) -> Bool {
        guard !truncation.inputs.isEmpty, case .record(let topic, let partition, let offset)? = source, topic == inputTopic,
              let first = truncation.inputs[partition] else { return false }
        return offset < first
    }

    /// Notes a record forwarded from input partition `partition` (an input at `offset`, or read
    /// progress up to it) read from the repartition topic: the first one after a gap there bounds
    /// the inputs of that partition the gap may have taken.
    func noteForwarded(from partition: Int32, at offset: Int64) {
        guard !truncation.repartition.isEmpty, forwardedAfterGap[partition] == nil else { return }
        forwardedAfterGap[partition] = offset
        save()
    }

    /// Notes a forwarded input read from the repartition topic at input `position`.
    func noteForwarded(_ position: AuditPosition) {
        guard !truncation.repartition.isEmpty, case .record(let topic, let partition, let offset) = position, topic == inputTopic else { return }
        noteForwarded(from: partition, at: offset)
    }

    /// Whether `source` names an input forwarded to this task that a gap in its repartition
    /// partition may have taken (the caller knows its transaction id is not in the ledger).
    func forwardedInputWasLost(_ source: AuditPosition?) -> Bool {
        guard !truncation.repartition.isEmpty, case .record(let topic, let partition, let offset)? = source, topic == inputTopic else {
            return false
        }
        return offset < (forwardedAfterGap[partition] ?? 0)
    }

    /// Counts a valid input left without output as one whose output was deleted, and says so,
    /// when its lane is truncated and no output of its partition reached the lane after the gap
    /// (the inputs before the first one that did were taken already).
    func countIfOutputDeleted(of input: LedgerInput) -> Bool {
        guard case .record(let topic, let partition, _) = input.position, topic == inputTopic else { return false }
        let lane = laneOfCard(input.transaction.cardId)
        guard truncation.outputs[lane] != nil, !isAccounted(lane: lane, partition: partition) else { return false }
        inputsOfDeletedOutputs[lane, default: 0] += 1
        return true
    }

    /// Notes a dead letter; true when its input was deleted (nothing to match it with).
    func noteDeadLetter(source: AuditPosition?, position: AuditPosition?) -> Bool {
        if case .record(_, let partition, _)? = position, firstDeadLetterSource[partition] == nil,
           case .record(let topic, _, let offset)? = source, topic == inputTopic {
            firstDeadLetterSource[partition] = offset
            save()
        }
        guard inputWasDeleted(source) else { return false }
        deadLettersOfDeletedInputs += 1
        return true
    }

    /// Counts a rejected input left without dead letter as one whose dead letter was deleted,
    /// and says so, when its dead-letter partition lost its start before that dead letter.
    func countIfDeadLetterDeleted(of position: AuditPosition) -> Bool {
        guard !truncation.deadLetters.isEmpty, case .record(let topic, let partition, let offset) = position, topic == inputTopic else {
            return false
        }
        let deleted: Bool
        if truncation.deadLettersOnInputPartitions {
            guard truncation.deadLetters[partition] != nil else { return false }
            deleted = firstDeadLetterSource[partition].map { offset < $0 } ?? true
        } else {
            // Dead letters of one input partition may sit on any dead-letter partition.
            deleted = true
        }
        if deleted { rejectedOfDeletedDeadLetters += 1 }
        return deleted
    }
}

extension TruncationState {
    /// What this state knows, as the task's store keeps it.
    var known: KnownGaps {
        KnownGaps(inputs: truncation.inputs, outputs: truncation.outputs, deadLetters: truncation.deadLetters,
                  repartition: truncation.repartition, accounted: accounted, firstDeadLetterSource: firstDeadLetterSource,
                  forwardedAfterGap: forwardedAfterGap)
    }

    /// Takes back what the task's store kept: which lanes' deleted outputs are accounted for, and
    /// where each truncated dead-letter partition's dead letters resumed. The gaps themselves
    /// come from the task (``update(_:)``).
    func restore(_ gaps: KnownGaps) {
        accounted = gaps.accounted
        firstDeadLetterSource = gaps.firstDeadLetterSource
        forwardedAfterGap = gaps.forwardedAfterGap
        persisted = gaps
    }

    /// Keeps what this state knows in the task's store when it changed since it was last kept.
    func save() {
        guard let persist else { return }
        let now = known
        guard now != persisted else { return }
        persist(now)
        persisted = now
    }
}

extension AuditReconciler {
    /// A batch audit: partitions of `truncation` lost their oldest records before the audit
    /// began. `laneOfCard` is the output partition the processor writes a card's outputs to.
    func setTruncation(_ truncation: AuditTruncation, inputTopic: String, laneOfCard: @escaping (String) -> Int32) {
        self.truncation = truncation.isEmpty ? nil : TruncationState(truncation, inputTopic: inputTopic, laneOfCard: laneOfCard)
    }

    /// The continuous auditor's task of `lane` (its output partition) knows of the partitions in
    /// `truncation`, found while it ran: what it reads after each gap is judged with the same
    /// rules as a batch audit's, and the inputs whose outputs were deleted are taken from its
    /// stored ledger.
    func updateTruncation(_ truncation: AuditTruncation, inputTopic: String, lane: Int32) {
        guard !truncation.isEmpty else { return }
        if let state = self.truncation {
            state.update(truncation)
            state.save()
            return
        }
        let waiting: (Int32, Int64) -> [(offset: Int64, id: String)] = { [ledger] partition, offset in
            (ledger as? StoredAuditLedger)?.waitingInputs(partition: partition, below: offset) ?? []
        }
        let state = TruncationState(truncation, inputTopic: inputTopic, laneOfCard: { _ in lane }, waitingInLedger: waiting)
        if let stored = ledger as? StoredAuditLedger {
            // What the task accounted for before a restart or a rolled-back cycle holds as of its store.
            state.restore(stored.knownGaps)
            state.persist = { [unowned stored] in stored.setKnownGaps($0) }
        }
        self.truncation = state
        state.save()
    }

    /// Before `lane`'s first output from an input partition after the gap: the inputs of that
    /// partition and lane still waiting before its source had their outputs deleted.
    func accountDeletedOutputs(of lane: Lane, before source: AuditPosition?, _ truncation: TruncationState) {
        guard case .record(let topic, let partition, let offset)? = source, topic == truncation.inputTopic,
              !truncation.isAccounted(lane: lane.id, partition: partition) else { return }
        for (inputOffset, id) in truncation.takeWaiting(partition: partition, lane: lane.id, below: offset) {
            let position = AuditPosition.record(topic: topic, partition: partition, offset: inputOffset)
            var known = ledger.transaction(id)
            guard let i = known.inputs.firstIndex(where: { $0.position == position }), !known.inputs[i].deadLettered else { continue }
            let input = known.inputs.remove(at: i)
            known.settledAt = max(known.settledAt, input.readAt)
            ledger.setTransaction(known, for: id)
            _ = lane.detector.process(card: input.transaction.cardId, eventTime: input.transaction.timestamp)
            truncation.inputsOfDeletedOutputs[lane.id, default: 0] += 1
        }
    }

    /// One `truncated` finding per partition that lost records, with what it accounts for.
    func reportTruncation() {
        guard let t = truncation else { return }
        for (partition, first) in t.truncation.inputs.sorted(by: { $0.key < $1.key }) {
            report(.truncated(.input, topic: t.inputTopic, partition: partition, from: 0, to: first, accounted:
                "\(t.outputsOfDeletedInputs) outputs and \(t.deadLettersOfDeletedInputs) dead letters of deleted inputs in all partitions are not orphans"))
        }
        for (partition, first) in t.truncation.outputs.sorted(by: { $0.key < $1.key }) {
            report(.truncated(.output, topic: t.truncation.outputTopic, partition: partition, from: 0, to: first, accounted:
                "\(t.inputsOfDeletedOutputs[partition] ?? 0) inputs whose outputs were among them are not missing"))
        }
        for (partition, first) in t.truncation.deadLetters.sorted(by: { $0.key < $1.key }) {
            report(.truncated(.deadLetter, topic: t.truncation.deadLetterTopic, partition: partition, from: 0, to: first, accounted:
                "\(t.rejectedOfDeletedDeadLetters) rejected inputs in all partitions whose dead letters were among them"))
        }
        truncation = nil
    }
}
