import FraudModel

/// An output record's members the auditor needs, as ranges of its bytes.
struct EnrichedRecordView {
    var transactionId: TransactionView.Span
    var cardId: TransactionView.Span
    var reason: TransactionView.Span
    var isFlagged: Bool
    /// The input's event time as the output repeats it; nil when it is not a plain integer.
    var timestamp: Int64?
}

/// Reads output records (SEMANTICS.md §3) with the input reader's scanner: the same strict JSON
/// rules, a fast path for the exact layout the encoder writes, the general parser otherwise.
struct EnrichedRecordReader {
    struct Unreadable: Error {
        var message: String
    }

    private var decoder = TransactionDecoder()
    private var scratch: [UInt8] = []

    /// The record's members, or why it is not an output record.
    mutating func read(_ bytes: UnsafeRawBufferPointer) throws(Unreadable) -> EnrichedRecordView {
        let count = bytes.count
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), count > 0 else {
            throw Unreadable(message: "empty record")
        }
        if let bad = UTF8Validation.firstInvalidByte(base, count) {
            throw Unreadable(message: "invalid UTF-8 at byte \(bad)")
        }
        var fast = JSONScanner(base: base, end: count, names: [], nameBytes: [])
        let m: JSONScanner.Members
        if fast.matchCanonicalEnrichedRecord() {
            m = fast.members
        } else {
            do {
                m = try decoder.parseGeneral(base, count)
            } catch {
                throw Unreadable(message: error.message)
            }
        }
        func member(_ value: JSONScanner.ValueRef?, _ name: String, _ kind: JSONScanner.Kind) throws(Unreadable) -> JSONScanner.ValueRef {
            guard let value else { throw Unreadable(message: "missing member \"\(name)\"") }
            guard value.kind.rawValue == kind.rawValue else { throw Unreadable(message: "\(name) must be a \(kind.name), got \(value.kind.name)") }
            return value
        }
        let transactionId = try member(m.transactionId, "transactionId", .string)
        let cardId = try member(m.cardId, "cardId", .string)
        _ = try member(m.amount, "amount", .number)
        let isFlagged = try member(m.isFlagged, "isFlagged", .bool)
        let reason = try member(m.reason, "reason", .string)
        let timestamp = try member(m.timestamp, "timestamp", .number)
        _ = try member(m.windowStart, "windowStart", .number)
        _ = try member(m.count, "count", .number)
        return EnrichedRecordView(
            transactionId: TransactionView.Span(transactionId), cardId: TransactionView.Span(cardId),
            reason: TransactionView.Span(reason), isFlagged: isFlagged.length == 4,
            timestamp: Self.integer(TransactionView.Span(timestamp), base))
    }

    /// A number member's value when it is an integer of at most 18 digits.
    static func integer(_ span: TransactionView.Span, _ base: UnsafePointer<UInt8>) -> Int64? {
        var p = base + span.start, n = span.length
        let negative = n > 0 && p[0] == UInt8(ascii: "-")
        if negative { p += 1; n -= 1 }
        guard n > 0, n <= 18 else { return nil }
        var v: Int64 = 0
        for i in 0..<n {
            guard p[i] >= 48, p[i] <= 57 else { return nil }
            v = v * 10 + Int64(p[i] - 48)
        }
        return negative ? -v : v
    }

    /// A string member's decoded value.
    mutating func string(_ span: TransactionView.Span, in bytes: UnsafeRawBufferPointer) -> String {
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        if span.hasEscapes {
            scratch.removeAll(keepingCapacity: true)
            JSONScanner.unescape(base + span.start, span.length, into: &scratch)
            return String(decoding: scratch, as: UTF8.self)
        }
        return String(decoding: UnsafeBufferPointer(start: base + span.start, count: span.length), as: UTF8.self)
    }
}

/// `amount > threshold`, exactly as decimals (SEMANTICS.md §5), on the amount's bytes.
struct HighValueThreshold {
    let text: DecimalText
    private let shape: DecimalShape

    init(_ text: DecimalText) {
        self.text = text
        var copy = text.text
        shape = copy.withUTF8 { DecimalShape($0.baseAddress!, $0.count)! }
    }

    /// Whether the number `p[0..<n]` is above the threshold. Most amounts differ from it in sign
    /// or in the position of their leading digit, which needs no digit array.
    func isExceeded(by p: UnsafePointer<UInt8>, _ n: Int) -> Bool {
        guard let quick = DecimalShape(p, n, keepDigits: false) else { return false }
        let sign = quick.isZero ? 0 : (quick.negative ? -1 : 1)
        let thresholdSign = shape.isZero ? 0 : (shape.negative ? -1 : 1)
        if sign != thresholdSign { return sign > thresholdSign }
        if sign == 0 { return false }
        let lead = quick.significantDigits + quick.exponent
        let thresholdLead = shape.significantDigits + shape.exponent
        if lead != thresholdLead { return (lead > thresholdLead) == (sign > 0) }
        return DecimalShape(p, n)!.compare(to: shape) > 0
    }
}
