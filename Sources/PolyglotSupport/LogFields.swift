import Logging

/// A number in a log line's fields: written as a JSON number by the JSON log handler and as is
/// by the text one. `Int` values (`.stringConvertible(42)`) are numbers too; this one
/// carries a fractional value with a fixed number of decimals.
public struct LogNumber: CustomStringConvertible, Sendable {
    public let description: String

    /// `value` rounded to `decimals` places (`12.35`); not finite: `0`.
    public init(_ value: Double, decimals: Int = 2) {
        guard value.isFinite else {
            description = "0"
            return
        }
        var scale = 1.0
        for _ in 0..<decimals { scale *= 10 }
        let scaled = Int64((abs(value) * scale).rounded())
        let whole = scaled / Int64(scale), fraction = scaled % Int64(scale)
        let digits = String(fraction)
        let sign = value < 0 && scaled != 0 ? "-" : ""
        description = decimals == 0 ? "\(sign)\(whole)" : "\(sign)\(whole)." + String(repeating: "0", count: decimals - digits.count) + digits
    }
}

extension Logger.MetadataValue {
    /// A whole number, written as a number in JSON lines.
    public static func number(_ value: Int) -> Logger.MetadataValue { .stringConvertible(value) }
    /// A fractional number with `decimals` places, written as a number in JSON lines.
    public static func number(_ value: Double, decimals: Int = 2) -> Logger.MetadataValue {
        .stringConvertible(LogNumber(value, decimals: decimals))
    }
}

extension String {
    /// `deadLetters` as `dead_letters`: the spelling of log fields.
    package var snakeCased: String {
        var out = ""
        for c in self {
            if c.isUppercase {
                if !out.isEmpty { out += "_" }
                out += c.lowercased()
            } else {
                out.append(c)
            }
        }
        return out
    }
}
