/// Parses the durations flags and settings take: `250ms`, `30s`, `5m`, `1h`; a bare integer is
/// milliseconds.
public enum Durations {
    /// Milliseconds in `text`, or a ``ConfigurationError`` naming `setting`.
    public static func milliseconds(_ text: String, setting: String) throws(ConfigurationError) -> Int64 {
        let trimmed = text.trimmingWhitespace()
        let units: [(suffix: String, factor: Int64)] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)]
        var number = Substring(trimmed)
        var factor: Int64 = 1
        for unit in units where trimmed.hasSuffix(unit.suffix) {
            number = trimmed.dropLast(unit.suffix.count)
            factor = unit.factor
            break
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int64(number) else {
            throw ConfigurationError("\(setting): '\(text)' is not a duration (use e.g. 250ms, 30s, 5m, 1h, or milliseconds)")
        }
        let (ms, overflow) = value.multipliedReportingOverflow(by: factor)
        guard !overflow else { throw ConfigurationError("\(setting): '\(text)' is too large") }
        return ms
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}
