import FraudModel

// Giving up on what waits: by the settle time (a batch audit's end, and settled ids in the
// continuous auditor) and by the processor's committed positions (the continuous auditor's
// missing inputs).
extension AuditReconciler {
    /// Continuous mode: gives up on what has waited since before `cutoff` (the caller's clock,
    /// say now minus the settle time). Outputs waiting since then for an input are orphans,
    /// valid inputs read before then without output (or dead letter) are missing, rejected ones
    /// without dead letter and dead letters without input are reported; settled ids read before
    /// then are forgotten (a later output for one is an orphan, not a duplicate). Returns
    /// whether anything changed.
    @discardableResult
    public func expire(olderThan cutoff: Int64) -> Bool {
        let positional = sourceIsRead != nil
        var changed = false
        for id in lanes.keys.sorted() where drain(id, orphansBefore: positional ? nil : cutoff) { changed = true }

        var missing: [LedgerInput] = []
        var unanswered: [(position: AuditPosition, code: RejectionCode)] = []
        var orphans: [(source: AuditPosition?, letter: LedgerDeadLetter)] = []
        for key in ledger.expiring(before: cutoff) {
            switch key {
            case .transaction(let id):
                var known = ledger.transaction(id)
                let before = known
                if !positional {
                    missing += known.inputs.filter { $0.readAt < cutoff }
                    known.inputs.removeAll { $0.readAt < cutoff }
                }
                if known.settledAt >= 0, known.settledAt < cutoff { known.settledAt = -1 }
                if known != before {
                    ledger.setTransaction(known, for: id)
                    changed = true
                }
            case .pairing(let position):
                switch ledger.pairing(at: position) {
                case .rejected(let code, let readAt)? where readAt < cutoff && !positional:
                    ledger.setPairing(nil, at: position)
                    unanswered.append((position, code))
                    changed = true
                case .deadLetters(let letters)? where !positional:
                    let old = letters.filter { $0.receivedAt < cutoff }
                    guard !old.isEmpty else { continue }
                    orphans += old.map { (position, $0) }
                    let young = letters.filter { $0.receivedAt >= cutoff }
                    ledger.setPairing(young.isEmpty ? nil : .deadLetters(young), at: position)
                    changed = true
                default:
                    continue
                }
            }
        }
        reportMissing(missing, unanswered)
        for (hash, letters) in sourcelessDeadLetters {
            let old = letters.filter { $0.receivedAt < cutoff }
            guard !old.isEmpty else { continue }
            orphans += old.map { (nil, $0) }
            let young = letters.filter { $0.receivedAt >= cutoff }
            sourcelessDeadLetters[hash] = young.isEmpty ? nil : young
        }
        if cutoff == .max { rejectedByContent.removeAll() }
        for (source, letter) in orphans.sorted(by: { ($0.source ?? $0.letter.position ?? .line(0)) < ($1.source ?? $1.letter.position ?? .line(0)) }) {
            report(AuditFinding(kind: .orphan, input: source, output: letter.position, actualCode: letter.code,
                                message: "a dead letter whose input was not read"))
        }
        return changed || !missing.isEmpty || !orphans.isEmpty
    }

    private func reportMissing(_ missing: [LedgerInput], _ unanswered: [(position: AuditPosition, code: RejectionCode)]) {
        var missing = missing, unanswered = unanswered
        if let truncation {
            missing.removeAll { !$0.deadLettered && truncation.countIfOutputDeleted(of: $0) }
            unanswered.removeAll { truncation.countIfDeadLetterDeleted(of: $0.position) }
        }
        for input in missing.sorted(by: { $0.position < $1.position }) where !input.deadLettered {
            report(AuditFinding(kind: .missing, transactionId: input.transaction.transactionId,
                                cardId: input.transaction.cardId, input: input.position))
        }
        for input in unanswered.sorted(by: { $0.position < $1.position }) {
            report(AuditFinding(kind: .deadLetterMismatch, input: input.position, expectedCode: input.code.rawValue,
                                message: "the rejected input has no dead letter"))
        }
    }

    /// Continuous mode: the processor has committed past `due[p]` on input partition p (and its
    /// outputs and dead letters up to there are reconciled), so a valid input of `inputTopic`
    /// partition p below it still without output or dead letter is missing, and a rejected one
    /// without dead letter is reported. Returns whether anything changed.
    @discardableResult
    func decideMissing(below due: [Int64], inputTopic: String) -> Bool {
        guard let ledger = ledger as? StoredAuditLedger else { return false }
        var missing: [LedgerInput] = []
        var unanswered: [(position: AuditPosition, code: RejectionCode)] = []
        for (p, bound) in due.enumerated() where bound > 0 {
            for (offset, id) in ledger.takeDue(partition: Int32(p), below: bound) {
                let position = AuditPosition.record(topic: inputTopic, partition: Int32(p), offset: offset)
                if let id {
                    var known = ledger.transaction(id)
                    guard let i = known.inputs.firstIndex(where: { $0.position == position }) else { continue }
                    missing.append(known.inputs.remove(at: i))
                    ledger.setTransaction(known, for: id)
                } else if case .rejected(let code, _)? = ledger.pairing(at: position) {
                    ledger.setPairing(nil, at: position)
                    unanswered.append((position, code))
                }
            }
        }
        reportMissing(missing, unanswered)
        return !missing.isEmpty || !unanswered.isEmpty
    }
}
