import PolyglotSupport
import FraudModel

/// One thing the auditor reports (SEMANTICS.md §5).
public struct AuditFinding: Sendable, Hashable {
    public enum Kind: String, Sendable, CaseIterable {
        /// A valid input with no output (and no dead letter) by the end of the run or the settle time.
        case missing
        /// A further output for an input that already had one.
        case duplicate
        /// An output whose input the auditor never read, or a dead letter whose input it never read.
        case orphan
        /// An output that differs from the auditor's recomputation; `expected` and `actual` hold both.
        case mismatch
        /// A valid input whose amount is above the high-value threshold.
        case highValue
        /// An output with `isFlagged` true.
        case flagged
        /// An output whose producer's fingerprint differs from the auditor's.
        case drift
        /// An output that is not an output record (SEMANTICS.md §3): not JSON, or a member absent
        /// or of the wrong type.
        case unreadableOutput
        /// The processor's dead letters disagree with the auditor's reading of an input: another
        /// code, no dead letter for a rejected input, or a dead letter for a valid one.
        case deadLetterMismatch
        /// The processor's group has not committed past the oldest input of a partition for longer
        /// than the stall time: its outputs are not due yet, so nothing is missing (one per partition).
        case stalled
        /// A stalled partition's committed offset moved again.
        case resumed
        /// Retention deleted records of a partition before the auditor read them: they cannot be
        /// checked, and the records around the gap are neither missing nor orphans (one per
        /// partition and gap, at the first offset read after it, with the offsets deleted).
        case truncated
    }

    public var kind: Kind
    public var transactionId: String?
    public var cardId: String?
    /// The input record's position.
    public var input: AuditPosition?
    /// The output (or dead letter) record's position.
    public var output: AuditPosition?
    /// The auditor's output record, for `mismatch`.
    public var expected: String?
    /// The processor's output record, for `mismatch`.
    public var actual: String?
    /// The producer's fingerprint digest, for `drift`.
    public var outputFingerprint: String?
    /// The auditor's fingerprint digest, for `drift`.
    public var auditorFingerprint: String?
    /// The output's `polyglot-detector` header, for `drift` of detector parameters (SEMANTICS.md §2c).
    public var outputDetector: String?
    /// The auditor's own detector parameters in the same form, for `drift`.
    public var auditorDetector: String?
    /// The auditor's rejection code (nil: the input is valid), for `deadLetterMismatch`.
    public var expectedCode: String?
    /// The dead letter's code (nil: no dead letter), for `deadLetterMismatch` and dead-letter `orphan`s.
    public var actualCode: String?
    /// The input's amount text, for `highValue`.
    public var amount: String?
    /// The output's reason, for `flagged`.
    public var reason: String?
    /// A human explanation, for `unreadableOutput` and dead-letter findings.
    public var message: String?
    /// The processor's consumer group, for `stalled` and `resumed`.
    public var group: String?
    /// Inputs the processor had not committed past, for `stalled` and `resumed`.
    public var waitingInputs: Int64?
    /// Since when (epoch milliseconds) the oldest of them waited, for `stalled` and `resumed`.
    public var waitingSince: Int64?
    /// The first and last offsets deleted before the audit read them, for `truncated` (its
    /// position is the first offset read after them).
    public var firstDeleted: Int64?
    public var lastDeleted: Int64?

    public init(
        kind: Kind, transactionId: String? = nil, cardId: String? = nil, input: AuditPosition? = nil,
        output: AuditPosition? = nil, expected: String? = nil, actual: String? = nil,
        outputFingerprint: String? = nil, auditorFingerprint: String? = nil, expectedCode: String? = nil,
        actualCode: String? = nil, amount: String? = nil, reason: String? = nil, message: String? = nil,
        group: String? = nil, waitingInputs: Int64? = nil, waitingSince: Int64? = nil
    ) {
        self.group = group
        self.waitingInputs = waitingInputs
        self.waitingSince = waitingSince
        self.kind = kind
        self.transactionId = transactionId
        self.cardId = cardId
        self.input = input
        self.output = output
        self.expected = expected
        self.actual = actual
        self.outputFingerprint = outputFingerprint
        self.auditorFingerprint = auditorFingerprint
        self.expectedCode = expectedCode
        self.actualCode = actualCode
        self.amount = amount
        self.reason = reason
        self.message = message
    }

    /// Appends the finding as one JSON object: members in the order of this type's properties,
    /// absent ones left out, strings escaped as SEMANTICS.md §3 escapes them.
    public func appendJSON(to out: ByteBuffer) {
        out.append("{\"kind\":")
        JSONOutput.appendString(kind.rawValue, to: out)
        func string(_ name: StaticString, _ value: String?) {
            guard let value else { return }
            out.append(",\"")
            out.append(name)
            out.append("\":")
            JSONOutput.appendString(value, to: out)
        }
        func position(_ name: StaticString, _ value: AuditPosition?) {
            guard let value else { return }
            out.append(",\"")
            out.append(name)
            out.append("\":")
            value.appendJSON(to: out)
        }
        string("transactionId", transactionId)
        string("cardId", cardId)
        position("input", input)
        position("output", output)
        string("expected", expected)
        string("actual", actual)
        string("outputFingerprint", outputFingerprint)
        string("auditorFingerprint", auditorFingerprint)
        string("outputDetector", outputDetector)
        string("auditorDetector", auditorDetector)
        string("expectedCode", expectedCode)
        string("actualCode", actualCode)
        string("amount", amount)
        string("reason", reason)
        string("message", message)
        string("group", group)
        if let waitingInputs {
            out.append(",\"waitingInputs\":")
            out.appendInteger(waitingInputs)
        }
        if let waitingSince {
            out.append(",\"waitingSince\":")
            out.appendInteger(waitingSince)
        }
        if let firstDeleted, let lastDeleted {
            out.append(",\"firstDeleted\":")
            out.appendInteger(firstDeleted)
            out.append(",\"lastDeleted\":")
            out.appendInteger(lastDeleted)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// The finding as one JSON object (see ``appendJSON(to:)``).
    public var json: String {
        let out = ByteBuffer(capacity: 256)
        appendJSON(to: out)
        return String(decoding: out.bytes, as: UTF8.self)
    }

    /// One log line. `highValue` and `flagged` keep the wording of the auditor this one replaces,
    /// so alerts matching on it keep working.
    public var logLine: String {
        let id = transactionId ?? "?"
        switch kind {
        case .highValue:
            return "[AUDIT-INPUT] High-value transaction detected: \(id), Amount: \(amount ?? "?")"
        case .flagged:
            return "[AUDIT-OUTPUT] FRAUD FLAGGED: Transaction \(id) for card \(cardId ?? "?"). Reason: \(reason ?? "")"
        default:
            var line = "[AUDIT-\(kind.rawValue.uppercased())]"
            if kind != .stalled && kind != .resumed && kind != .truncated { line += " transaction \(id)" }
            if let cardId { line += " card \(cardId)" }
            if let input { line += " input \(input)" }
            if let output { line += " output \(output)" }
            if let expectedCode { line += " expected code \(expectedCode)" }
            if kind == .deadLetterMismatch || actualCode != nil { line += " dead letter \(actualCode ?? "none")" }
            if let group { line += " group \(group)" }
            if let waitingInputs { line += " waiting \(waitingInputs)" }
            if let waitingSince { line += " since \(waitingSince)" }
            if let outputFingerprint { line += " fingerprint \(outputFingerprint), auditor's \(auditorFingerprint ?? "none")" }
            if let outputDetector { line += " detector \(outputDetector), auditor's \(auditorDetector ?? "none")" }
            if let message { line += ": \(message)" }
            if let expected, let actual { line += "; expected \(expected), got \(actual)" }
            return line
        }
    }
}

/// The auditor's counts (the report's `counts` object, in this order).
///
/// `deadLetterMismatch` findings count as `mismatch` (the processor decided otherwise than the
/// auditor about a record), and dead letters without an input as `orphan`.
public struct AuditCounts: Sendable, Hashable {
    /// Input records read, rejected ones included.
    public var inputs = 0
    /// Output records read, unreadable ones included.
    public var outputs = 0
    /// Dead-letter records read.
    public var deadLetters = 0
    public var missing = 0
    public var duplicate = 0
    public var orphan = 0
    public var mismatch = 0
    public var highValue = 0
    public var flagged = 0
    public var drift = 0
    /// Outputs that are not output records.
    public var unreadable = 0
    /// Partitions reported stalled, and resumed (not discrepancies: the processor is late, not wrong).
    public var stalled = 0
    public var resumed = 0
    /// Partitions whose oldest records were deleted before the auditor read them (not a
    /// discrepancy: nothing says the processor was wrong, but those records went unchecked).
    public var truncated = 0

    public init() {}

    /// Whether any finding is of a kind that makes the audit fail: missing, duplicate, orphan,
    /// mismatch, drift or an unreadable output.
    public var hasDiscrepancies: Bool {
        missing + duplicate + orphan + mismatch + drift + unreadable > 0
    }

    /// The closing line of every audit mode: `audit: clean, 3 inputs, 3 outputs, 0 dead letters`
    /// or `audit: 2 discrepancies (missing 1, mismatch 1), 3 inputs, 2 outputs, 0 dead letters`.
    public var verdictLine: String {
        let read = "\(inputs) inputs, \(outputs) outputs, \(deadLetters) dead letters"
        let kinds = [("missing", missing), ("duplicate", duplicate), ("orphan", orphan), ("mismatch", mismatch),
                     ("drift", drift), ("unreadable", unreadable)].filter { $0.1 > 0 }
        let total = kinds.reduce(0) { $0 + $1.1 }
        let unchecked = truncated > 0 ? "; \(truncated) partition\(truncated == 1 ? "" : "s") truncated (records deleted before they were read, unchecked)" : ""
        guard total > 0 else { return "audit: clean, \(read)\(unchecked)" }
        return "audit: \(total) discrepanc\(total == 1 ? "y" : "ies") (\(kinds.map { "\($0.0) \($0.1)" }.joined(separator: ", "))), \(read)\(unchecked)"
    }

    /// Name and value of every count, in report order.
    public var entries: [(name: String, value: Int)] {
        [("inputs", inputs), ("outputs", outputs), ("deadLetters", deadLetters), ("missing", missing),
         ("duplicate", duplicate), ("orphan", orphan), ("mismatch", mismatch), ("highValue", highValue),
         ("flagged", flagged), ("drift", drift), ("unreadable", unreadable), ("stalled", stalled), ("resumed", resumed), ("truncated", truncated)]
    }

    mutating func count(_ kind: AuditFinding.Kind) {
        switch kind {
        case .missing: missing += 1
        case .duplicate: duplicate += 1
        case .orphan: orphan += 1
        case .mismatch, .deadLetterMismatch: mismatch += 1
        case .highValue: highValue += 1
        case .flagged: flagged += 1
        case .drift: drift += 1
        case .unreadableOutput: unreadable += 1
        case .stalled: stalled += 1
        case .resumed: resumed += 1
        case .truncated: truncated += 1
        }
    }
}

extension AuditCounts {
    mutating func add(_ other: AuditCounts) {
        inputs += other.inputs
        outputs += other.outputs
        deadLetters += other.deadLetters
        missing += other.missing
        duplicate += other.duplicate
        orphan += other.orphan
        mismatch += other.mismatch
        highValue += other.highValue
        flagged += other.flagged
        drift += other.drift
        unreadable += other.unreadable
        stalled += other.stalled
        resumed += other.resumed
        truncated += other.truncated
    }
}
