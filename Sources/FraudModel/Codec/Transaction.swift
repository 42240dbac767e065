/// One valid input record (SEMANTICS.md §1), as decoded by ``TransactionDecoder``.
public struct Transaction: Sendable, Hashable {
    /// Decoded value, 1 to 1024 UTF-8 bytes.
    public var transactionId: String
    /// Decoded value, 1 to 1024 UTF-8 bytes.
    public var cardId: String
    /// The amount's JSON number text, byte for byte; never converted to binary floating point.
    public var amount: DecimalText
    /// Event time in epoch milliseconds, 0 ... Int64.max.
    public var timestamp: Int64

    public init(transactionId: String, cardId: String, amount: DecimalText, timestamp: Int64) {
        self.transactionId = transactionId
        self.cardId = cardId
        self.amount = amount
        self.timestamp = timestamp
    }
}

/// Why a record was rejected (SEMANTICS.md §1), in the order the checks apply.
public enum RejectionCode: String, Sendable, CaseIterable, Codable, Comparable {
    case tooLarge = "too_large"
    case invalidUTF8 = "invalid_utf8"
    case invalidJSON = "invalid_json"
    case notObject = "not_object"
    case duplicateField = "duplicate_field"
    case missingField = "missing_field"
    case wrongType = "wrong_type"
    case invalidValue = "invalid_value"

    /// Position in SEMANTICS.md's table: the first matching code wins.
    public var precedence: Int { Self.allCases.firstIndex(of: self)! }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.precedence < rhs.precedence }
}

/// A rejected record: the code and a one-line human explanation.
public struct Rejection: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: RejectionCode
    public var message: String
    public init(_ code: RejectionCode, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "\(code.rawValue): \(message)" }
}

/// Where a checked record's members are in its bytes (see ``TransactionDecoder/decodeView(_:kafkaTimestamp:maxFutureSkew:)``).
/// Offsets are relative to the start of the record.
public struct TransactionView: Sendable, Hashable {
    /// A string's contents (without quotes) or a number's text.
    public struct Span: Sendable, Hashable {
        public var start: Int
        public var length: Int
        /// For strings: whether the raw bytes hold escapes (so differ from the decoded value).
        public var hasEscapes: Bool

        package init(_ ref: JSONScanner.ValueRef) {
            start = ref.start
            length = ref.length
            hasEscapes = ref.hasEscapes
        }
    }

    public var transactionId: Span
    public var cardId: Span
    public var amount: Span
    public var timestamp: Int64
    /// The timestamp's text.
    public var timestampText: Span
    /// Whether the timestamp's text is its canonical digits (not `-0`), so it can be copied.
    public var timestampIsCanonical: Bool

    /// Whether both ids are their raw bytes, so they can be hashed and copied without decoding.
    public var idsAreRaw: Bool { !transactionId.hasEscapes && !cardId.hasEscapes }
}
