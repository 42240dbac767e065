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
