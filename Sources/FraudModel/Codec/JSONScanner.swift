/// One pass over one JSON document (RFC 8259, strict): validates it, records duplicate member
/// names in any object, and keeps the top-level object's four members as byte ranges.
///
/// The bytes must already be valid UTF-8 (``UTF8Validation``), so strings need no further
/// decoding here; escaped lone surrogates are noted rather than thrown, because SEMANTICS.md
/// makes them `invalid_utf8` only once the whole document has parsed (within depth 128).
package struct JSONScanner {
    struct ParseError: Error {
        var message: String
    }

    package enum Kind: UInt8 {
        case string, number, object, array, bool, null

        package var name: String {
            switch self {
            case .string: "string"
            case .number: "number"
            case .object: "object"
            case .array: "array"
            case .bool: "boolean"
            case .null: "null"
            }
        }
    }

    /// A value's place in the record. For strings, the range excludes the quotes.
    package struct ValueRef: Equatable {
        package var kind: Kind
        var start: Int
        package var length: Int
        var hasEscapes: Bool = false
        /// For numbers: no fraction and no exponent.
        var isIntegerLiteral: Bool = false
    }

    struct TopLevel {
        var kind: Kind
        var isObject: Bool { kind == .object }
        var kindName: String { kind.name }
    }

    package struct Members {
        package var transactionId: ValueRef?
        package var cardId: ValueRef?
        package var amount: ValueRef?
        package var timestamp: ValueRef?
        // The further members of an output record (SEMANTICS.md §3), which the auditor reads.
        package var isFlagged: ValueRef?
        package var reason: ValueRef?
        package var windowStart: ValueRef?
        package var count: ValueRef?
    }

    package struct NameRef {
        /// Offset into the record, or into `nameBytes` when `decoded`.
        var start: Int
        var length: Int
        var decoded: Bool
    }

    /// Objects with more members than this check duplicates with a hash set instead of a scan,
    /// so a hostile object with 100,000 members stays linear.
    static let linearNameLimit = 16

    let base: UnsafePointer<UInt8>
    let end: Int
    var pos = 0
    private var names: [NameRef]
    private var nameBytes: [UInt8]
    private(set) var sawLoneSurrogate = false
    private(set) var duplicateName: String?
    package private(set) var members = Members()
    /// Bits of the known members seen in the record (see `knownMember`).
    private var seenMembers = 0

    package init(base: UnsafePointer<UInt8>, end: Int, names: [NameRef], nameBytes: [UInt8]) {
        self.base = base
        self.end = end
        // The caller empties these and drops its references, so appends never copy.
        self.names = names
        self.nameBytes = nameBytes
    }

    mutating func takeNames() -> [NameRef] {
        defer { names = [] }
        return names
    }

    mutating func takeNameBytes() -> [UInt8] {
        defer { nameBytes = [] }
        return nameBytes
    }

    mutating func parseDocument() throws(ParseError) -> TopLevel {
        skipWhitespace()
        guard pos < end else { throw ParseError(message: "no JSON value") }
        let value = try parseValue(depth: 1, isTopLevel: true)
        skipWhitespace()
        if pos < end {
            throw ParseError(message: "unexpected characters after the JSON value at byte \(pos)")
        }
        return TopLevel(kind: value.kind)
    }

    /// The members input and output records begin with, in their usual layout:
    /// `{"transactionId":"…","cardId":"…","amount":N` with no whitespace and no escapes.
    @inline(__always)
    private mutating func matchCanonicalPrefix() -> (transactionId: ValueRef, cardId: ValueRef, amount: ValueRef)? {
        pos = 0
        guard matchLiteral("{\"transactionId\":\"") else { return nil }
        let idStart = pos
        guard scanPlainString() else { return nil }
        let transactionId = ValueRef(kind: .string, start: idStart, length: pos - 1 - idStart)
        guard matchLiteral(",\"cardId\":\"") else { return nil }
        let cardStart = pos
        guard scanPlainString() else { return nil }
        let cardId = ValueRef(kind: .string, start: cardStart, length: pos - 1 - cardStart)
        guard matchLiteral(",\"amount\":"), pos < end, let amount = try? scanNumber() else { return nil }
        return (transactionId, cardId, amount)
    }

    /// Fast path for the common layout, `{"transactionId":"…","cardId":"…","amount":N,"timestamp":N}`
    /// with no whitespace and no escapes: matched directly, without the general parser's
    /// bookkeeping. Returns false at the first deviation, and the caller then parses the record
    /// with ``parseDocument()``, so a record's outcome never depends on which path took it: a
    /// match is a valid object with four distinct members, exactly what the general parser
    /// would report for it.
    mutating func matchCanonicalRecord() -> Bool {
        guard let (transactionId, cardId, amount) = matchCanonicalPrefix() else { return false }
        guard matchLiteral(",\"timestamp\":"), pos < end, let timestamp = try? scanNumber() else { return false }
        guard pos == end - 1, base[pos] == UInt8(ascii: "}") else { return false }
        pos = end
        members = Members(transactionId: transactionId, cardId: cardId, amount: amount, timestamp: timestamp)
        return true
    }

    /// Fast path for an output record exactly as SEMANTICS.md §3 writes it, ids and reason
    /// without escapes: the same contract as ``matchCanonicalRecord()`` (a match is what the
    /// general parser would report), for the auditor's reading of outputs.
    package mutating func matchCanonicalEnrichedRecord() -> Bool {
        guard let (transactionId, cardId, amount) = matchCanonicalPrefix() else { return false }
        guard matchLiteral(",\"isFlagged\":") else { return false }
        let flagStart = pos
        let isFlagged: ValueRef
        if matchLiteral("true") {
            isFlagged = ValueRef(kind: .bool, start: flagStart, length: 4)
        } else if matchLiteral("false") {
            isFlagged = ValueRef(kind: .bool, start: flagStart, length: 5)
        } else {
            return false
        }
        guard matchLiteral(",\"reason\":\"") else { return false }
        let reasonStart = pos
        guard scanPlainString() else { return false }
        let reason = ValueRef(kind: .string, start: reasonStart, length: pos - 1 - reasonStart)
        guard matchLiteral(",\"timestamp\":"), pos < end, let timestamp = try? scanNumber() else { return false }
        guard matchLiteral(",\"windowStart\":"), pos < end, let windowStart = try? scanNumber() else { return false }
        guard matchLiteral(",\"count\":"), pos < end, let count = try? scanNumber() else { return false }
        guard pos == end - 1, base[pos] == UInt8(ascii: "}") else { return false }
        pos = end
        members = Members(transactionId: transactionId, cardId: cardId, amount: amount, timestamp: timestamp,
                          isFlagged: isFlagged, reason: reason, windowStart: windowStart, count: count)
        return true
    }

    @inline(__always)
    private mutating func matchLiteral(_ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        guard end - pos >= n, memcmpBytes(base + pos, literal.utf8Start, n) else { return false }
        pos += n
        return true
    }

    /// Scans a string body up to and past its closing quote; false at an escape or a control
    /// character (the general parser handles those).
    private mutating func scanPlainString() -> Bool {
        skipPlainBytes()
        while pos < end {
            let c = base[pos]
            if c == UInt8(ascii: "\"") {
                pos += 1
                return true
            }
            if c == UInt8(ascii: "\\") || c < 0x20 { return false }
            pos += 1
        }
        return false
    }

    /// Advances eight bytes at a time to the next quote, backslash or control character (or
    /// to the last few bytes of the input, which the caller scans one by one).
    @inline(__always)
    private mutating func skipPlainBytes() {
        let raw = UnsafeRawPointer(base)
        while pos + 8 <= end {
            let hits = Self.specialBytes(raw.loadUnaligned(fromByteOffset: pos, as: UInt64.self))
            if hits != 0 {
                pos += hits.trailingZeroBitCount >> 3
                return
            }
            pos += 8
        }
    }

    /// High bit set in each byte of `w` that is a quote, a backslash or a control character
    /// (SWAR; the lowest flagged byte is exact, as borrows only run upward).
    @inline(__always)
    static func specialBytes(_ w: UInt64) -> UInt64 {
        let quote = w ^ 0x2222_2222_2222_2222, backslash = w ^ 0x5C5C_5C5C_5C5C_5C5C
        let special = ((quote &- 0x0101_0101_0101_0101) & ~quote)
            | ((backslash &- 0x0101_0101_0101_0101) & ~backslash)
            | ((w &- 0x2020_2020_2020_2020) & ~w)
        return special & 0x8080_8080_8080_8080
    }

    @inline(__always)
    mutating func skipWhitespace() {
        while pos < end {
            let c = base[pos]
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 {
                pos += 1
            } else {
                return
            }
        }
    }

    mutating func parseValue(depth: Int, isTopLevel: Bool = false) throws(ParseError) -> ValueRef {
        guard pos < end else { throw ParseError(message: "unexpected end of input") }
        let c = base[pos]
        switch c {
        case UInt8(ascii: "\""):
            let start = pos + 1
            let escaped = try scanString()
            return ValueRef(kind: .string, start: start, length: pos - 1 - start, hasEscapes: escaped)
        case UInt8(ascii: "{"):
            let start = pos
            try parseObject(depth: depth, isTopLevel: isTopLevel)
            return ValueRef(kind: .object, start: start, length: pos - start)
        case UInt8(ascii: "["):
            let start = pos
            try parseArray(depth: depth)
            return ValueRef(kind: .array, start: start, length: pos - start)
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return try scanNumber()
        case UInt8(ascii: "t"):
            try expectLiteral("true")
            return ValueRef(kind: .bool, start: pos - 4, length: 4)
        case UInt8(ascii: "f"):
            try expectLiteral("false")
            return ValueRef(kind: .bool, start: pos - 5, length: 5)
        case UInt8(ascii: "n"):
            try expectLiteral("null")
            return ValueRef(kind: .null, start: pos - 4, length: 4)
        default:
            throw ParseError(message: "unexpected character at byte \(pos)")
        }
    }

    private mutating func expectLiteral(_ literal: StaticString) throws(ParseError) {
        guard matchLiteral(literal) else { throw ParseError(message: "invalid literal at byte \(pos)") }
    }

    private mutating func parseObject(depth: Int, isTopLevel: Bool) throws(ParseError) {
        if depth > TransactionDecoder.maxDepth {
            throw ParseError(message: "nested deeper than \(TransactionDecoder.maxDepth) levels")
        }
        pos += 1
        let frameStart = names.count
        defer { names.removeSubrange(frameStart...) }
        var nameSet: Set<[UInt8]>?
        skipWhitespace()
        if pos < end && base[pos] == UInt8(ascii: "}") {
            pos += 1
            return
        }
        while true {
            skipWhitespace()
            guard pos < end, base[pos] == UInt8(ascii: "\"") else {
                throw ParseError(message: "expected a member name at byte \(pos)")
            }
            let nameStart = pos + 1
            let escaped = try scanString()
            let nameLength = pos - 1 - nameStart
            let name: NameRef
            if escaped {
                let start = nameBytes.count
                Self.unescape(base + nameStart, nameLength, into: &nameBytes)
                name = NameRef(start: start, length: nameBytes.count - start, decoded: true)
            } else {
                name = NameRef(start: nameStart, length: nameLength, decoded: false)
            }
            // In the record itself, the members SEMANTICS.md names (§1, §3) are tracked by a bit
            // each, and only other names are compared with each other: a typical record then
            // costs no name comparison at all.
            let known = isTopLevel ? knownMember(name) : -1
            if known >= 0 {
                if seenMembers & (1 << known) != 0 && duplicateName == nil {
                    duplicateName = "\"" + String(decoding: bytes(of: name), as: UTF8.self) + "\""
                }
                seenMembers |= 1 << known
            } else if duplicateName == nil {
                if nameSet == nil && names.count - frameStart >= Self.linearNameLimit {
                    var set = Set<[UInt8]>()
                    for i in frameStart..<names.count { set.insert(bytes(of: names[i])) }
                    nameSet = set
                }
                let isDuplicate: Bool
                if nameSet != nil {
                    isDuplicate = !nameSet!.insert(bytes(of: name)).inserted
                } else {
                    isDuplicate = contains(name, from: frameStart)
                }
                if isDuplicate {
                    duplicateName = "\"" + String(decoding: bytes(of: name), as: UTF8.self) + "\""
                }
            }
            if known < 0 { names.append(name) }
            skipWhitespace()
            guard pos < end, base[pos] == UInt8(ascii: ":") else {
                throw ParseError(message: "expected ':' at byte \(pos)")
            }
            pos += 1
            skipWhitespace()
            let value = try parseValue(depth: depth + 1)
            switch known {
            case 0: members.transactionId = value
            case 1: members.cardId = value
            case 2: members.amount = value
            case 3: members.timestamp = value
            case 4: members.isFlagged = value
            case 5: members.reason = value
            case 6: members.windowStart = value
            case 7: members.count = value
            default: break
            }
            skipWhitespace()
            guard pos < end else { throw ParseError(message: "unterminated object") }
            let c = base[pos]
            pos += 1
            if c == UInt8(ascii: ",") { continue }
            if c == UInt8(ascii: "}") { return }
            throw ParseError(message: "expected ',' or '}' at byte \(pos - 1)")
        }
    }

    private mutating func parseArray(depth: Int) throws(ParseError) {
        if depth > TransactionDecoder.maxDepth {
            throw ParseError(message: "nested deeper than \(TransactionDecoder.maxDepth) levels")
        }
        pos += 1
        skipWhitespace()
        if pos < end && base[pos] == UInt8(ascii: "]") {
            pos += 1
            return
        }
        while true {
            skipWhitespace()
            _ = try parseValue(depth: depth + 1)
            skipWhitespace()
            guard pos < end else { throw ParseError(message: "unterminated array") }
            let c = base[pos]
            pos += 1
            if c == UInt8(ascii: ",") { continue }
            if c == UInt8(ascii: "]") { return }
            throw ParseError(message: "expected ',' or ']' at byte \(pos - 1)")
        }
    }

    /// Which of the four members SEMANTICS.md §1 reads `name` is (0 to 3), or which further
    /// member of an output record (4 to 7), or -1. Names compare by decoded value.
    private func knownMember(_ name: NameRef) -> Int {
        if name.decoded {
            // Rare (an escaped member name): compare a copy.
            switch bytes(of: name) {
            case Array("transactionId".utf8): return 0
            case Array("cardId".utf8): return 1
            case Array("amount".utf8): return 2
            case Array("timestamp".utf8): return 3
            case Array("isFlagged".utf8): return 4
            case Array("reason".utf8): return 5
            case Array("windowStart".utf8): return 6
            case Array("count".utf8): return 7
            default: return -1
            }
        }
        let p = base + name.start
        switch name.length {
        case 13 where memcmpBytes(p, StaticString("transactionId").utf8Start, 13): return 0
        case 6 where memcmpBytes(p, StaticString("cardId").utf8Start, 6): return 1
        case 6 where memcmpBytes(p, StaticString("amount").utf8Start, 6): return 2
        case 9 where memcmpBytes(p, StaticString("timestamp").utf8Start, 9): return 3
        case 9 where memcmpBytes(p, StaticString("isFlagged").utf8Start, 9): return 4
        case 6 where memcmpBytes(p, StaticString("reason").utf8Start, 6): return 5
        case 11 where memcmpBytes(p, StaticString("windowStart").utf8Start, 11): return 6
        case 5 where memcmpBytes(p, StaticString("count").utf8Start, 5): return 7
        default: return -1
        }
    }

    private func bytes(of name: NameRef) -> [UInt8] {
        if name.decoded { return Array(nameBytes[name.start..<(name.start + name.length)]) }
        return Array(UnsafeBufferPointer(start: base + name.start, count: name.length))
    }

    private func contains(_ name: NameRef, from: Int) -> Bool {
        var i = from
        while i < names.count {
            let other = names[i]
            if other.length == name.length && equal(other, name) { return true }
            i += 1
        }
        return false
    }

    private func equal(_ a: NameRef, _ b: NameRef) -> Bool {
        if !a.decoded && !b.decoded { return memcmpBytes(base + a.start, base + b.start, a.length) }
        return bytes(of: a) == bytes(of: b)
    }

    /// Scans a string from its opening quote to just past its closing quote; returns whether it
    /// holds escapes.
    private mutating func scanString() throws(ParseError) -> Bool {
        pos += 1
        var escaped = false
        while pos < end {
            skipPlainBytes()
            guard pos < end else { break }
            let c = base[pos]
            if c == UInt8(ascii: "\"") {
                pos += 1
                return escaped
            }
            if c == UInt8(ascii: "\\") {
                escaped = true
                try scanEscape()
                continue
            }
            if c < 0x20 {
                throw ParseError(message: "unescaped control character in a string at byte \(pos)")
            }
            pos += 1
        }
        throw ParseError(message: "unterminated string")
    }

    private mutating func scanEscape() throws(ParseError) {
        guard pos + 1 < end else { throw ParseError(message: "unterminated escape") }
        let c = base[pos + 1]
        switch c {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
            UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
            pos += 2
        case UInt8(ascii: "u"):
            guard let unit = Self.hex4(base, pos + 2, end) else {
                throw ParseError(message: "invalid \\u escape at byte \(pos)")
            }
            pos += 6
            if unit >= 0xD800 && unit <= 0xDBFF {
                if pos + 1 < end, base[pos] == UInt8(ascii: "\\"), base[pos + 1] == UInt8(ascii: "u"),
                    let low = Self.hex4(base, pos + 2, end), low >= 0xDC00 && low <= 0xDFFF
                {
                    pos += 6
                } else {
                    sawLoneSurrogate = true
                }
            } else if unit >= 0xDC00 && unit <= 0xDFFF {
                sawLoneSurrogate = true
            }
        default:
            throw ParseError(message: "invalid escape at byte \(pos)")
        }
    }

    static func hex4(_ base: UnsafePointer<UInt8>, _ at: Int, _ end: Int) -> UInt32? {
        guard at + 4 <= end else { return nil }
        var v: UInt32 = 0
        for i in 0..<4 {
            let c = base[at + i]
            let d: UInt8
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = c - 48
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = c - 87
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = c - 55
            default: return nil
            }
            v = v << 4 | UInt32(d)
        }
        return v
    }

    private mutating func scanNumber() throws(ParseError) -> ValueRef {
        let start = pos
        if base[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < end else { throw ParseError(message: "incomplete number") }
        if base[pos] == UInt8(ascii: "0") {
            pos += 1
        } else if isDigit(base[pos]) {
            while pos < end && isDigit(base[pos]) { pos += 1 }
        } else {
            throw ParseError(message: "invalid number at byte \(start)")
        }
        var integer = true
        if pos < end && base[pos] == UInt8(ascii: ".") {
            integer = false
            pos += 1
            guard pos < end && isDigit(base[pos]) else { throw ParseError(message: "invalid fraction at byte \(start)") }
            while pos < end && isDigit(base[pos]) { pos += 1 }
        }
        if pos < end && (base[pos] == UInt8(ascii: "e") || base[pos] == UInt8(ascii: "E")) {
            integer = false
            pos += 1
            if pos < end && (base[pos] == UInt8(ascii: "+") || base[pos] == UInt8(ascii: "-")) { pos += 1 }
            guard pos < end && isDigit(base[pos]) else { throw ParseError(message: "invalid exponent at byte \(start)") }
            while pos < end && isDigit(base[pos]) { pos += 1 }
        }
        return ValueRef(kind: .number, start: start, length: pos - start, isIntegerLiteral: integer)
    }

    @inline(__always)
    private func isDigit(_ c: UInt8) -> Bool { c &- 48 < 10 }

    /// Appends the decoded bytes of a valid JSON string body (no quotes) to `out`. Lone
    /// surrogates (already reported) become U+FFFD.
    package static func unescape(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [UInt8]) {
        var i = 0
        while i < n {
            let c = p[i]
            if c != UInt8(ascii: "\\") {
                out.append(c)
                i += 1
                continue
            }
            let e = p[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = hex4(p, i, n) ?? 0xFFFD
                i += 4
                if scalar >= 0xD800 && scalar <= 0xDBFF {
                    if i + 1 < n, p[i] == UInt8(ascii: "\\"), p[i + 1] == UInt8(ascii: "u"),
                        let low = hex4(p, i + 2, n), low >= 0xDC00 && low <= 0xDFFF
                    {
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        i += 6
                    } else {
                        scalar = 0xFFFD
                    }
                } else if scalar >= 0xDC00 && scalar <= 0xDFFF {
                    scalar = 0xFFFD
                }
                appendUTF8(scalar, to: &out)
            default: out.append(e)
            }
        }
    }

    static func appendUTF8(_ v: UInt32, to out: inout [UInt8]) {
        switch v {
        case 0..<0x80:
            out.append(UInt8(v))
        case 0x80..<0x800:
            out.append(UInt8(0xC0 | (v >> 6)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        case 0x800..<0x10000:
            out.append(UInt8(0xE0 | (v >> 12)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        default:
            out.append(UInt8(0xF0 | (v >> 18)))
            out.append(UInt8(0x80 | ((v >> 12) & 0x3F)))
            out.append(UInt8(0x80 | ((v >> 6) & 0x3F)))
            out.append(UInt8(0x80 | (v & 0x3F)))
        }
    }
}
