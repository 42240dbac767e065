/// Parses the durations flags and settings take: `250ms`, `30s`, `5m`, `1h`, compound forms
/// such as `1m30s` or `1h15m` (units from largest to smallest, each at most once); a bare integer
/// is milliseconds.
public enum Durations {
    /// Units in the order a compound duration must use them.
    private static let units: [(suffix: String, factor: Int64)] = [("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)]

    /// Milliseconds in `text`, or a ``ConfigurationError`` naming `setting`.
    public static func milliseconds(_ text: String, setting: String) throws(ConfigurationError) -> Int64 {
        let trimmed = text.trimmingWhitespace()
        if trimmed.hasPrefix("-") {
            throw ConfigurationError("\(setting): '\(text)' is negative; a duration is 0 or more (e.g. 0s, 250ms, 1m30s)")
        }
        let bytes = Array(trimmed.utf8)
        if !bytes.isEmpty, bytes.allSatisfy(isDigit) {
            guard let value = Int64(trimmed) else { throw ConfigurationError("\(setting): '\(text)' is too large") }
            return value
        }
        var total: Int64 = 0
        var index = 0
        var nextUnit = 0  // units before this one were used already, or are out of order
        while index < bytes.count {
            let digitsStart = index
            while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            let unitStart = index
            while index < bytes.count, !isDigit(bytes[index]) { index += 1 }
            let digits = String(decoding: bytes[digitsStart..<unitStart], as: UTF8.self)
            let suffix = String(decoding: bytes[unitStart..<index], as: UTF8.self)
            guard !digits.isEmpty,
                  let unit = units[nextUnit...].firstIndex(where: { $0.suffix == suffix })
            else { throw notADuration(text, setting) }
            guard let value = Int64(digits) else { throw ConfigurationError("\(setting): '\(text)' is too large") }
            let (part, overflow) = value.multipliedReportingOverflow(by: units[unit].factor)
            let (sum, sumOverflow) = total.addingReportingOverflow(part)
            guard !overflow, !sumOverflow else { throw ConfigurationError("\(setting): '\(text)' is too large") }
            total = sum
            nextUnit = unit + 1
        }
        guard !bytes.isEmpty else { throw notADuration(text, setting) }
        return total
    }

    private static func isDigit(_ byte: UInt8) -> Bool { byte >= 48 && byte <= 57 }

    private static func notADuration(_ text: String, _ setting: String) -> ConfigurationError {
        ConfigurationError("\(setting): '\(text)' is not a duration (use e.g. 250ms, 30s, 5m, 1h, 1m30s, or milliseconds)")
    }
}

extension String {
    package func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

extension Duration {
    /// The duration in seconds, fractions included: for rates, log fields and summaries.
    package var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}
