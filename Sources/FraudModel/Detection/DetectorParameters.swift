import PolyglotSupport

/// The parameters of SEMANTICS.md §2 and §2b, times in milliseconds.
///
/// Validated once, at construction, so the detector's hot path never re-checks them.
public struct DetectorParameters: Sendable, Hashable, Codable {
    /// Which windows count a card's records: tumbling (§2) or sliding (§2b).
    public let kind: WindowKind
    /// Window size `W` (> 0).
    public let window: Int64
    /// Flag when a window's count exceeds this (`N` ≥ 0).
    public let threshold: Int64
    /// Grace `G` (≥ 0): how long after its end a window still accepts records.
    public let grace: Int64
    /// Retention `R` (≥ 0): how far behind stream time a window is still kept.
    public let retention: Int64
    /// Maximum future skew `F` (≥ 0) of an event time over the record's Kafka timestamp.
    public let maxFutureSkew: Int64

    public static let `default` = try! DetectorParameters()

    /// Creates parameters, rejecting values SEMANTICS.md does not define.
    public init(
        kind: WindowKind = .tumbling,
        window: Int64 = 60_000,
        threshold: Int64 = 3,
        grace: Int64 = 0,
        retention: Int64 = 3_600_000,
        maxFutureSkew: Int64 = 3_600_000
    ) throws(ConfigurationError) {
        guard window > 0 else { throw ConfigurationError("window must be greater than 0 ms, got \(window)") }
        guard threshold >= 0 else { throw ConfigurationError("threshold must be 0 or more, got \(threshold)") }
        guard grace >= 0 else { throw ConfigurationError("grace must be 0 ms or more, got \(grace)") }
        guard retention >= 0 else { throw ConfigurationError("retention must be 0 ms or more, got \(retention)") }
        guard maxFutureSkew >= 0 else { throw ConfigurationError("max future skew must be 0 ms or more, got \(maxFutureSkew)") }
        self.kind = kind
        self.window = window
        self.threshold = threshold
        self.grace = grace
        self.retention = retention
        self.maxFutureSkew = maxFutureSkew
    }

    /// Start of the epoch-aligned window holding event time `t` (t ≥ 0).
    
    @inlinable public func windowStart(of t: Int64) -> Int64 { t - t % window }

    /// Whether window `s` is closed for a card whose largest accepted time is `cardMax`,
    /// or has fallen out of retention at `streamTime`. Exact integer arithmetic: `s + W + G`
    /// can exceed Int64 near the top of the timestamp range, so it is computed in Int128.
    
    @inlinable public func isClosed(windowStart s: Int64, cardMax: Int64?, streamTime: Int64?) -> Bool {
        let end = Int128(s) + Int128(window) + Int128(grace)
        if let cardMax, end <= Int128(cardMax) { return true }
        if let streamTime, end <= Int128(streamTime) - Int128(retention) { return true }
        return false
    }

    /// Whether a card's `cardMax` entry may be forgotten at `streamTime` (SEMANTICS.md §2, purge rule).
    
    public func isCardExpired(cardMax: Int64, streamTime: Int64) -> Bool {
        Int128(windowStart(of: cardMax)) + Int128(window) + Int128(grace)
            <= Int128(streamTime) - Int128(retention)
    }

    /// The `<window>` phrase of a flag reason: `1 minute`, `K minutes`, `1 second`, `K seconds` or `K ms`.
    public var windowPhrase: String {
        if window % 60_000 == 0 {
            let k = window / 60_000
            return k == 1 ? "1 minute" : "\(k) minutes"
        }
        if window % 1_000 == 0 {
            let k = window / 1_000
            return k == 1 ? "1 second" : "\(k) seconds"
        }
        return "\(window) ms"
    }
}
