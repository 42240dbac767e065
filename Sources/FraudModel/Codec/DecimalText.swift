/// A JSON number kept as its exact source text (SEMANTICS.md §1: never binary floating point).
public struct DecimalText: Sendable, Hashable, CustomStringConvertible {
    /// The number's bytes as they appeared in the input, e.g. `12.30`, `1E3`, `-0`.
    public let text: String

    /// Wraps text the decoder already checked is a JSON number.
    public init(unchecked text: String) { self.text = text }

    /// Wraps `text` when it is a JSON number, else nil.
    public init?(_ text: String) {
        var copy = text
        let ok = copy.withUTF8 { DecimalShape($0.baseAddress!, $0.count) != nil }
        guard ok else { return nil }
        self.text = text
    }

    public var description: String { text }

    /// Exact comparison of the decimal values, whatever their notation (`1E4` equals `10000.00`).
    public static func compare(_ a: DecimalText, _ b: DecimalText) -> Int {
        var at = a.text, bt = b.text
        return at.withUTF8 { pa in
            bt.withUTF8 { pb in
                DecimalShape(pa.baseAddress!, pa.count)!.compare(to: DecimalShape(pb.baseAddress!, pb.count)!)
            }
        }
    }

    /// Whether this amount is greater than `other`, exactly.
    public func isGreater(than other: DecimalText) -> Bool { Self.compare(self, other) > 0 }
}

/// The decimal structure of a JSON number's text: sign, significant digits and exponent, so that
/// m × 10^e can be checked and compared without converting to binary floating point.
package struct DecimalShape {
    package var negative: Bool
    /// Significant digits of m, leading zeros dropped (trailing zeros kept); empty for zero.
    /// Left empty when parsed with `keepDigits: false` (the decoder's check needs only counts).
    var digits: [UInt8]
    /// How many digits m has, leading zeros dropped.
    package var significantDigits: Int
    /// e in m × 10^e; saturated far outside the valid range, so absurd exponents cannot overflow.
    package var exponent: Int

    package var isZero: Bool { significantDigits == 0 }

    /// Parses a JSON number (RFC 8259 grammar); nil when `p` is not one.
    package init?(_ p: UnsafePointer<UInt8>, _ n: Int, keepDigits: Bool = true) {
        var i = 0
        negative = false
        if i < n && p[i] == UInt8(ascii: "-") {
            negative = true
            i += 1
        }
        var digits: [UInt8] = []
        var count = 0
        var sawDigit = false
        let intStart = i
        while i < n && p[i] &- 48 < 10 {
            if count > 0 || p[i] != 48 {
                count += 1
                if keepDigits { digits.append(p[i] - 48) }
            }
            sawDigit = true
            i += 1
        }
        guard sawDigit else { return nil }
        if p[intStart] == 48 && i - intStart > 1 { return nil }
        var fractionDigits = 0
        if i < n && p[i] == UInt8(ascii: ".") {
            i += 1
            let fracStart = i
            while i < n && p[i] &- 48 < 10 {
                if count > 0 || p[i] != 48 {
                    count += 1
                    if keepDigits { digits.append(p[i] - 48) }
                }
                fractionDigits += 1
                i += 1
            }
            guard i > fracStart else { return nil }
        }
        var exp = 0
        if i < n && (p[i] == UInt8(ascii: "e") || p[i] == UInt8(ascii: "E")) {
            i += 1
            var expNegative = false
            if i < n && (p[i] == UInt8(ascii: "+") || p[i] == UInt8(ascii: "-")) {
                expNegative = p[i] == UInt8(ascii: "-")
                i += 1
            }
            let expStart = i
            while i < n && p[i] &- 48 < 10 {
                if exp < 1 << 40 { exp = exp * 10 + Int(p[i] - 48) }
                i += 1
            }
            guard i > expStart else { return nil }
            if expNegative { exp = -exp }
        }
        guard i == n else { return nil }
        self.digits = digits
        self.significantDigits = count
        self.exponent = exp - fractionDigits
    }

    /// -1, 0 or 1 as self is less than, equal to or greater than `other`.
    package func compare(to other: DecimalShape) -> Int {
        let zeroA = isZero, zeroB = other.isZero
        if zeroA && zeroB { return 0 }
        let signA = zeroA ? 0 : (negative ? -1 : 1)
        let signB = zeroB ? 0 : (other.negative ? -1 : 1)
        if signA != signB { return signA < signB ? -1 : 1 }
        let magnitude = Self.compareMagnitude(self, other)
        return signA < 0 ? -magnitude : magnitude
    }

    /// Compares |a| and |b|, both non-zero: first by the position of the leading digit
    /// (digits.count + exponent), then digit by digit.
    private static func compareMagnitude(_ a: DecimalShape, _ b: DecimalShape) -> Int {
        let da = a.trimmed, db = b.trimmed
        // m × 10^e with m of d digits has its leading digit at 10^(d + e - 1).
        let leadA = a.digits.count + a.exponent
        let leadB = b.digits.count + b.exponent
        if leadA != leadB { return leadA < leadB ? -1 : 1 }
        let n = max(da.count, db.count)
        for k in 0..<n {
            let x = k < da.count ? da[k] : 0
            let y = k < db.count ? db[k] : 0
            if x != y { return x < y ? -1 : 1 }
        }
        return 0
    }

    /// Digits with trailing zeros removed (the value is unchanged when the exponent absorbs them).
    private var trimmed: ArraySlice<UInt8> {
        var end = digits.count
        while end > 0 && digits[end - 1] == 0 { end -= 1 }
        return digits[0..<end]
    }
}
