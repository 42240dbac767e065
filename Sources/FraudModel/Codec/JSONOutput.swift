import PolyglotSupport

/// Byte-level JSON writing for SEMANTICS.md §3: strings from their decoded value with only `"`,
/// `\` and U+0000–U+001F escaped (`\b \f \n \r \t`, else `\u00xx` lowercase), nothing else; no
/// spaces. Appends to a caller's buffer so a whole batch of records shares one allocation.
public enum JSONOutput {
    /// Appends `s` as a JSON string, quotes included.
    @inline(__always)
    public static func appendString(_ s: String, to out: ByteBuffer) {
        var s = s
        s.withUTF8 { appendString(bytes: $0, to: out) }
    }

    /// Appends UTF-8 `bytes` as a JSON string, quotes included.
    public static func appendString(bytes: UnsafeBufferPointer<UInt8>, to out: ByteBuffer) {
        out.append(UInt8(ascii: "\""))
        var runStart = 0
        var i = 0
        let n = bytes.count
        guard let base = bytes.baseAddress else {
            out.append(UInt8(ascii: "\""))
            return
        }
        while i < n {
            let c = base[i]
            if c >= 0x20 && c != UInt8(ascii: "\"") && c != UInt8(ascii: "\\") {
                i += 1
                continue
            }
            if i > runStart { out.append(base + runStart, count: i - runStart) }
            appendEscape(c, to: out)
            i += 1
            runStart = i
        }
        if n > runStart { out.append(base + runStart, count: n - runStart) }
        out.append(UInt8(ascii: "\""))
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private static func appendEscape(_ c: UInt8, to out: ByteBuffer) {
        out.append(UInt8(ascii: "\\"))
        switch c {
        case UInt8(ascii: "\""): out.append(UInt8(ascii: "\""))
        case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\"))
        case 0x08: out.append(UInt8(ascii: "b"))
        case 0x0C: out.append(UInt8(ascii: "f"))
        case 0x0A: out.append(UInt8(ascii: "n"))
        case 0x0D: out.append(UInt8(ascii: "r"))
        case 0x09: out.append(UInt8(ascii: "t"))
        default:
            out.append(UInt8(ascii: "u"))
            out.append(UInt8(ascii: "0"))
            out.append(UInt8(ascii: "0"))
            out.append(hexDigits[Int(c >> 4)])
            out.append(hexDigits[Int(c & 0xF)])
        }
    }

}

/// Writes the output record of SEMANTICS.md §3, byte for byte:
/// `{"transactionId":…,"cardId":…,"amount":…,"isFlagged":…,"reason":…,"timestamp":…,"windowStart":…,"count":…}`.
public struct EnrichedRecordEncoder: Sendable {
    public let parameters: DetectorParameters
    private let windowPhrase: [UInt8]

    public init(parameters: DetectorParameters) {
        self.parameters = parameters
        self.windowPhrase = Array(parameters.windowPhrase.utf8)
    }

    /// Appends the record's JSON (no newline) to `out`.
    public func append(_ transaction: Transaction, _ verdict: Verdict, to out: ByteBuffer) {
        out.append("{\"transactionId\":")
        JSONOutput.appendString(transaction.transactionId, to: out)
        out.append(",\"cardId\":")
        JSONOutput.appendString(transaction.cardId, to: out)
        out.append(",\"amount\":")
        var amount = transaction.amount.text
        amount.withUTF8 { out.append(UnsafeRawBufferPointer($0)) }
        appendVerdict(verdict, to: out)
        out.append(",\"timestamp\":")
        out.appendInteger(transaction.timestamp)
        appendWindow(verdict, to: out)
    }

    /// Appends the record's JSON (no newline) for a record checked by `decodeView` whose ids
    /// hold no escapes: ids, amount and timestamp are copied from `record`, the input bytes.
    /// Valid because an unescaped JSON string contains no `"`, `\` or control character, so
    /// its bytes are exactly what SEMANTICS.md §3 writes for its value.
    public func append(view: TransactionView, record: UnsafePointer<UInt8>, _ verdict: Verdict, to out: ByteBuffer) {
        out.reserve(160 + view.transactionId.length + view.cardId.length + view.amount.length)
        out.append("{\"transactionId\":\"")
        out.append(record + view.transactionId.start, count: view.transactionId.length)
        out.append("\",\"cardId\":\"")
        out.append(record + view.cardId.start, count: view.cardId.length)
        out.append("\",\"amount\":")
        out.append(record + view.amount.start, count: view.amount.length)
        appendVerdict(verdict, to: out)
        out.append(",\"timestamp\":")
        if view.timestampIsCanonical {
            out.append(record + view.timestampText.start, count: view.timestampText.length)
        } else {
            out.appendInteger(view.timestamp)
        }
        appendWindow(verdict, to: out)
    }

    private func appendVerdict(_ verdict: Verdict, to out: ByteBuffer) {
        if verdict.isLate {
            out.append(",\"isFlagged\":false,\"reason\":\"Late: window closed\"")
        } else if verdict.isFlagged {
            out.append(",\"isFlagged\":true,\"reason\":\"Flagged: ")
            out.appendInteger(verdict.count)
            out.append(" transactions in ")
            out.append(windowPhrase)
            out.append(UInt8(ascii: "\""))
        } else {
            out.append(",\"isFlagged\":false,\"reason\":\"\"")
        }
    }

    private func appendWindow(_ verdict: Verdict, to out: ByteBuffer) {
        out.append(",\"windowStart\":")
        out.appendInteger(verdict.windowStart)
        out.append(",\"count\":")
        out.appendInteger(verdict.count)
        out.append(UInt8(ascii: "}"))
    }

    /// The record's JSON as a new array.
    public func encode(_ transaction: Transaction, _ verdict: Verdict) -> [UInt8] {
        let out = ByteBuffer(capacity: 256)
        append(transaction, verdict, to: out)
        return out.array
    }
}

/// The `--dlq` line of `replay` (SEMANTICS.md §4): `{"line":L,"error":"CODE","message":"...","raw":"..."}`.
public enum DeadLetterLine {
    /// Appends one DLQ line (with its newline). `raw` is the line's bytes; invalid UTF-8 in it is
    /// replaced by U+FFFD so the DLQ file itself stays valid JSON.
    public static func append(line: Int, rejection: Rejection, raw: UnsafeRawBufferPointer, to out: ByteBuffer) {
        out.append("{\"line\":")
        out.appendInteger(Int64(line))
        out.append(",\"error\":")
        JSONOutput.appendString(rejection.code.rawValue, to: out)
        out.append(",\"message\":")
        JSONOutput.appendString(rejection.message, to: out)
        out.append(",\"raw\":")
        JSONOutput.appendString(String(decoding: raw, as: UTF8.self), to: out)
        out.append("}\n")
    }
}
