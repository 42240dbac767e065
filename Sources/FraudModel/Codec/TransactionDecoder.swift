/// The strict input reader of SEMANTICS.md §1.
///
/// A hand-written byte-level JSON validator rather than Foundation's JSONSerialization, which
/// accepts duplicate names, rounds numbers through Double, allocates a tree per record, and
/// recurses without a bound. This one walks the bytes once and keeps the four members as
/// ranges (``decodeView(_:kafkaTimestamp:maxFutureSkew:)``); Strings are built only when a
/// caller asks for a ``Transaction``, and scratch buffers are kept between records. Nesting is bounded at 128, so a line of 100,000
/// brackets costs 129 stack frames at most.
///
/// Not thread-safe: one decoder per thread (it is a cheap value).
public struct TransactionDecoder: Sendable {
    /// Records (and JSONL lines) larger than this are `too_large`.
    public static let maxRecordBytes = 1 << 20
    /// Objects and arrays nested deeper than this are `invalid_json`.
    public static let maxDepth = 128
    /// Ids are 1 to 1024 UTF-8 bytes.
    public static let maxIdBytes = 1024

    /// Names of the members of every object open on the stack, flattened; each object remembers
    /// where its names start. Reused across records.
    private var names: [JSONScanner.NameRef] = []
    /// Decoded (unescaped) bytes of names that held escapes, so they compare by value.
    private var nameBytes: [UInt8] = []
    private var scratch: [UInt8] = []

    public init() {
        names.reserveCapacity(64)
    }

    /// Decodes one record. `kafkaTimestamp` is the record's Kafka timestamp, when it has one;
    /// replay passes nil and so skips the future-skew check.
    public mutating func decode(
        _ bytes: UnsafeRawBufferPointer,
        kafkaTimestamp: Int64? = nil,
        maxFutureSkew: Int64 = DetectorParameters.default.maxFutureSkew
    ) throws(Rejection) -> Transaction {
        let view = try decodeView(bytes, kafkaTimestamp: kafkaTimestamp, maxFutureSkew: maxFutureSkew)
        return transaction(from: view, in: bytes)
    }

    /// The decoded values of a record that ``decodeView(_:kafkaTimestamp:maxFutureSkew:)``
    /// checked; `bytes` must be that record. For the records whose ids hold escapes, without
    /// checking them a second time.
    public mutating func transaction(from view: TransactionView, in bytes: UnsafeRawBufferPointer) -> Transaction {
        let base = bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        return Transaction(
            transactionId: string(view.transactionId, base: base),
            cardId: string(view.cardId, base: base),
            amount: DecimalText(unchecked: String(decoding: UnsafeBufferPointer(start: base + view.amount.start, count: view.amount.length), as: UTF8.self)),
            timestamp: view.timestamp)
    }

    /// Checks one record completely (every rule of SEMANTICS.md §1) and returns where its
    /// members are, without building Strings: the hot path of replay copies ids without
    /// escapes straight from input to output.
    public mutating func decodeView(
        _ bytes: UnsafeRawBufferPointer,
        kafkaTimestamp: Int64? = nil,
        maxFutureSkew: Int64 = DetectorParameters.default.maxFutureSkew
    ) throws(Rejection) -> TransactionView {
        var members: JSONScanner.Members?
        return try decodeView(bytes, kafkaTimestamp: kafkaTimestamp, maxFutureSkew: maxFutureSkew, members: &members)
    }

    /// The card id of `record` as `process` partitions by it, its decoded bytes written to
    /// `key` (emptied first): from a valid record, or from one rejected only after its members
    /// were read (a member missing or of the wrong type, a value out of range) whose `cardId` is
    /// still a string of 1 to 1024 bytes. Costs no more than ``decodeView(_:kafkaTimestamp:maxFutureSkew:)``.
    public mutating func cardKey(of record: UnsafeRawBufferPointer, into key: inout [UInt8]) -> CardKeyReading {
        key.removeAll(keepingCapacity: true)
        var members: JSONScanner.Members?
        let cardId: JSONScanner.ValueRef
        let outcome: CardKeyReading
        do {
            _ = try decodeView(record, members: &members)
            // A valid record has read its members, its card id a checked string among them.
            cardId = members!.cardId!
            outcome = .valid
        } catch {
            guard let id = members?.cardId, id.kind == .string else { return .unreadable(error.code) }
            cardId = id
            outcome = .rejected(error.code)
        }
        let base = record.baseAddress!.assumingMemoryBound(to: UInt8.self)
        if cardId.hasEscapes {
            JSONScanner.unescape(base + cardId.start, cardId.length, into: &key)
        } else {
            key.append(contentsOf: UnsafeBufferPointer(start: base + cardId.start, count: cardId.length))
        }
        if case .rejected(let code) = outcome, key.isEmpty || key.count > Self.maxIdBytes {
            key.removeAll(keepingCapacity: true)
            return .unreadable(code)
        }
        return outcome
    }

    /// ``decodeView(_:kafkaTimestamp:maxFutureSkew:)``, leaving in `members` where the members
    /// are once they were read, even when the record is then rejected.
    mutating func decodeView(
        _ bytes: UnsafeRawBufferPointer,
        kafkaTimestamp: Int64? = nil,
        maxFutureSkew: Int64 = DetectorParameters.default.maxFutureSkew,
        members: inout JSONScanner.Members?
    ) throws(Rejection) -> TransactionView {
        let count = bytes.count
        if count > Self.maxRecordBytes {
            throw Rejection(.tooLarge, "record is \(count) bytes; the limit is \(Self.maxRecordBytes)")
        }
        guard let base = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), count > 0 else {
            throw Rejection(.invalidJSON, "empty record")
        }
        if let bad = UTF8Validation.firstInvalidByte(base, count) {
            throw Rejection(.invalidUTF8, "invalid UTF-8 at byte \(bad)")
        }
        var fast = JSONScanner(base: base, end: count, names: [], nameBytes: [])
        let m: JSONScanner.Members
        if fast.matchCanonicalRecord() {
            m = fast.members
        } else {
            m = try parseGeneral(base, count)
        }
        members = m
        guard let transactionId = m.transactionId, let cardId = m.cardId, let amount = m.amount,
            let timestamp = m.timestamp
        else {
            let missing = [("transactionId", m.transactionId), ("cardId", m.cardId), ("amount", m.amount), ("timestamp", m.timestamp)]
                .filter { $0.1 == nil }.map { "\"\($0.0)\"" }
            throw Rejection(.missingField, "missing member\(missing.count > 1 ? "s" : "") \(missing.joined(separator: ", "))")
        }
        if transactionId.kind != .string {
            throw Rejection(.wrongType, "transactionId must be a string, got \(transactionId.kind.name)")
        }
        if cardId.kind != .string {
            throw Rejection(.wrongType, "cardId must be a string, got \(cardId.kind.name)")
        }
        if amount.kind != .number {
            throw Rejection(.wrongType, "amount must be a number, got \(amount.kind.name)")
        }
        if timestamp.kind != .number {
            throw Rejection(.wrongType, "timestamp must be a number, got \(timestamp.kind.name)")
        }
        if !timestamp.isIntegerLiteral {
            throw Rejection(.wrongType, "timestamp must be an integer literal (no fraction, no exponent)")
        }
        try checkLength(transactionId, base: base, name: "transactionId")
        try checkLength(cardId, base: base, name: "cardId")
        try Self.checkAmount(amount, base: base)
        let t = try Self.timestampValue(timestamp, base: base)
        if let kafkaTimestamp, Int128(t) > Int128(kafkaTimestamp) + Int128(maxFutureSkew) {
            throw Rejection(
                .invalidValue,
                "timestamp \(t) is more than \(maxFutureSkew) ms ahead of the record's Kafka timestamp \(kafkaTimestamp)")
        }
        return TransactionView(
            transactionId: TransactionView.Span(transactionId), cardId: TransactionView.Span(cardId),
            amount: TransactionView.Span(amount), timestamp: t, timestampText: TransactionView.Span(timestamp),
            timestampIsCanonical: base[timestamp.start] != UInt8(ascii: "-"))
    }

    /// Convenience for tests and small callers.
    public mutating func decode(_ bytes: [UInt8], kafkaTimestamp: Int64? = nil) throws(Rejection) -> Transaction {
        do {
            return try bytes.withUnsafeBytes { raw throws(Rejection) in try decode(raw, kafkaTimestamp: kafkaTimestamp) }
        } catch let rejection as Rejection {
            throw rejection
        } catch {
            fatalError("unreachable: decode throws only Rejection")
        }
    }

    /// The general parser: any JSON, every rule in its order up to `duplicate_field`.
    package mutating func parseGeneral(_ base: UnsafePointer<UInt8>, _ count: Int) throws(Rejection) -> JSONScanner.Members {
        // Hand the scratch buffers to the scanner (leaving ours empty keeps them uniquely
        // referenced, so appending never copies), and take them back afterwards.
        names.removeAll(keepingCapacity: true)
        nameBytes.removeAll(keepingCapacity: true)
        var parser = JSONScanner(base: base, end: count, names: names, nameBytes: nameBytes)
        names = []
        nameBytes = []
        let top: JSONScanner.TopLevel
        do {
            top = try parser.parseDocument()
        } catch {
            names = parser.takeNames()
            nameBytes = parser.takeNameBytes()
            // SEMANTICS.md §1: a record that is not valid JSON (depth included) is invalid_json,
            // whatever escapes it holds; a lone surrogate counts only in a valid document.
            throw Rejection(.invalidJSON, error.message)
        }
        names = parser.takeNames()
        nameBytes = parser.takeNameBytes()
        if parser.sawLoneSurrogate {
            throw Rejection(.invalidUTF8, "a string holds an escaped lone surrogate")
        }
        guard top.isObject else {
            throw Rejection(.notObject, "the record is a JSON \(top.kindName), not an object")
        }
        if let duplicate = parser.duplicateName {
            throw Rejection(.duplicateField, "member \(duplicate) appears more than once")
        }
        return parser.members
    }

    /// SEMANTICS.md §1: ids are 1 to 1024 bytes, counted after unescaping.
    private mutating func checkLength(_ value: JSONScanner.ValueRef, base: UnsafePointer<UInt8>, name: String) throws(Rejection) {
        var byteCount = value.length
        if value.hasEscapes {
            scratch.removeAll(keepingCapacity: true)
            JSONScanner.unescape(base + value.start, value.length, into: &scratch)
            byteCount = scratch.count
        }
        if byteCount == 0 {
            throw Rejection(.invalidValue, "\(name) must not be empty")
        }
        if byteCount > Self.maxIdBytes {
            throw Rejection(.invalidValue, "\(name) is \(byteCount) bytes; the limit is \(Self.maxIdBytes)")
        }
    }

    /// The decoded value of a checked string member.
    private mutating func string(_ span: TransactionView.Span, base: UnsafePointer<UInt8>) -> String {
        if span.hasEscapes {
            scratch.removeAll(keepingCapacity: true)
            JSONScanner.unescape(base + span.start, span.length, into: &scratch)
            return String(decoding: scratch, as: UTF8.self)
        }
        return String(decoding: UnsafeBufferPointer(start: base + span.start, count: span.length), as: UTF8.self)
    }

    /// SEMANTICS.md §1: the amount is m × 10^e with m of at most 38 digits (leading zeros dropped,
    /// trailing zeros kept) and −128 ≤ e ≤ 127.
    static func checkAmount(_ value: JSONScanner.ValueRef, base: UnsafePointer<UInt8>) throws(Rejection) {
        guard let shape = DecimalShape(base + value.start, value.length, keepDigits: false) else {
            throw Rejection(.invalidValue, "amount is not a decimal number")
        }
        if shape.significantDigits > 38 {
            throw Rejection(.invalidValue, "amount has \(shape.significantDigits) significant digits; at most 38 are allowed")
        }
        if shape.exponent < -128 || shape.exponent > 127 {
            throw Rejection(.invalidValue, "amount's exponent is out of range (−128 to 127)")
        }
    }

    static func timestampValue(_ value: JSONScanner.ValueRef, base: UnsafePointer<UInt8>) throws(Rejection) -> Int64 {
        var p = base + value.start
        var n = value.length
        var negative = false
        if p[0] == UInt8(ascii: "-") {
            negative = true
            p += 1
            n -= 1
        }
        var v: UInt64 = 0
        if n <= 18 {
            // Cannot overflow: no checks needed.
            for i in 0..<n { v = v &* 10 &+ UInt64(p[i] &- 48) }
            if negative && v != 0 { throw Rejection(.invalidValue, "timestamp must not be negative") }
            return Int64(v)
        }
        for i in 0..<n {
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(UInt64(p[i] &- 48))
            if o1 || o2 || a > UInt64(Int64.max) {
                throw Rejection(.invalidValue, "timestamp is larger than 9223372036854775807")
            }
            v = a
        }
        if negative && v != 0 {
            throw Rejection(.invalidValue, "timestamp must not be negative")
        }
        return Int64(v)
    }

}

@inline(__always)
package func memcmpBytes(_ a: UnsafePointer<UInt8>, _ b: UnsafePointer<UInt8>, _ n: Int) -> Bool {
    var i = 0
    while i < n {
        if a[i] != b[i] { return false }
        i += 1
    }
    return true
}

/// What ``TransactionDecoder/cardKey(of:into:)`` could read of a record.
public enum CardKeyReading: Sendable, Hashable {
    /// A valid record; the key is its card id.
    case valid
    /// A rejected record (with this code) whose card id could still be read; the key is that.
    case rejected(RejectionCode)
    /// A rejected record (with this code) with no card id to read: not JSON, not an object, a
    /// member twice, or no usable `cardId`. The key is empty.
    case unreadable(RejectionCode)

    /// Whether there is a key.
    public var hasKey: Bool {
        if case .unreadable = self { return false }
        return true
    }
}
