/// Byte-level JSON writing for SEMANTICS.md §3: strings from their decoded value with only `"`,
/// `\` and U+0000–U+001F escaped (`\b \f \n \r \t`, else `\u00xx` lowercase), nothing else; no
/// spaces. Appends to a caller's buffer so a whole batch of records shares one allocation.
public enum JSONOutput {
    /// Appends `s` as a JSON string, quotes included.
    @inline(__always)
    public static func appendString(_ s: String, to out: inout [UInt8]) {
        var s = s
        s.withUTF8 { appendString(bytes: $0, to: &out) }
    }

    /// Appends UTF-8 `bytes` as a JSON string, quotes included.
    public static func appendString(bytes: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var runStart = 0
        var i = 0
        let n = bytes.count
        while i < n {
            let c = bytes[i]
            if c >= 0x20 && c != UInt8(ascii: "\"") && c != UInt8(ascii: "\\") {
                i += 1
                continue
            }
            if i > runStart { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<i])) }
            appendEscape(c, to: &out)
            i += 1
            runStart = i
        }
        if n > runStart { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<n])) }
        out.append(UInt8(ascii: "\""))
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private static func appendEscape(_ c: UInt8, to out: inout [UInt8]) {
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
            out.append(contentsOf: [UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hexDigits[Int(c >> 4)], hexDigits[Int(c & 0xF)]])
        }
    }

    /// Appends the decimal digits of `v`.
    @inline(__always)
    public static func appendInteger(_ v: Int64, to out: inout [UInt8]) {
        if v >= 0 && v < 10 {
            out.append(UInt8(truncatingIfNeeded: v) + 48)
            return
        }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 20) { buf in
            var m = v.magnitude
            var i = 20
            while m > 0 {
                i -= 1
                buf[i] = UInt8(truncatingIfNeeded: m % 10) + 48
                m /= 10
            }
            if v < 0 {
                i -= 1
                buf[i] = UInt8(ascii: "-")
            }
            out.append(contentsOf: UnsafeBufferPointer(rebasing: buf[i..<20]))
        }
    }

    @inline(__always)
    static func appendLiteral(_ s: StaticString, to out: inout [UInt8]) {
        out.append(contentsOf: UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount))
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
    public func append(_ transaction: Transaction, _ verdict: Verdict, to out: inout [UInt8]) {
        JSONOutput.appendLiteral("{\"transactionId\":", to: &out)
        JSONOutput.appendString(transaction.transactionId, to: &out)
        JSONOutput.appendLiteral(",\"cardId\":", to: &out)
        JSONOutput.appendString(transaction.cardId, to: &out)
        JSONOutput.appendLiteral(",\"amount\":", to: &out)
        var amount = transaction.amount.text
        amount.withUTF8 { out.append(contentsOf: $0) }
        if verdict.isLate {
            JSONOutput.appendLiteral(",\"isFlagged\":false,\"reason\":\"Late: window closed\"", to: &out)
        } else if verdict.isFlagged {
            JSONOutput.appendLiteral(",\"isFlagged\":true,\"reason\":\"Flagged: ", to: &out)
            JSONOutput.appendInteger(verdict.count, to: &out)
            JSONOutput.appendLiteral(" transactions in ", to: &out)
            out.append(contentsOf: windowPhrase)
            out.append(UInt8(ascii: "\""))
        } else {
            JSONOutput.appendLiteral(",\"isFlagged\":false,\"reason\":\"\"", to: &out)
        }
        JSONOutput.appendLiteral(",\"timestamp\":", to: &out)
        JSONOutput.appendInteger(transaction.timestamp, to: &out)
        JSONOutput.appendLiteral(",\"windowStart\":", to: &out)
        JSONOutput.appendInteger(verdict.windowStart, to: &out)
        JSONOutput.appendLiteral(",\"count\":", to: &out)
        JSONOutput.appendInteger(verdict.count, to: &out)
        out.append(UInt8(ascii: "}"))
    }

    /// The record's JSON as a new array.
    public func encode(_ transaction: Transaction, _ verdict: Verdict) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(160)
        append(transaction, verdict, to: &out)
        return out
    }
}

/// The `--dlq` line of `replay` (SEMANTICS.md §4): `{"line":L,"error":"CODE","message":"...","raw":"..."}`.
public enum DeadLetterLine {
    /// Appends one DLQ line (with its newline). `raw` is the line's bytes; invalid UTF-8 in it is
    /// replaced by U+FFFD so the DLQ file itself stays valid JSON.
    public static func append(line: Int, rejection: Rejection, raw: UnsafeRawBufferPointer, to out: inout [UInt8]) {
        JSONOutput.appendLiteral("{\"line\":", to: &out)
        JSONOutput.appendInteger(Int64(line), to: &out)
        JSONOutput.appendLiteral(",\"error\":", to: &out)
        JSONOutput.appendString(rejection.code.rawValue, to: &out)
        JSONOutput.appendLiteral(",\"message\":", to: &out)
        JSONOutput.appendString(rejection.message, to: &out)
        JSONOutput.appendLiteral(",\"raw\":", to: &out)
        JSONOutput.appendString(String(decoding: raw, as: UTF8.self), to: &out)
        JSONOutput.appendLiteral("}\n", to: &out)
    }
}
