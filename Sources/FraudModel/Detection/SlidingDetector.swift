/// The state a ``SlidingDetector`` reads and writes for one input partition (SEMANTICS.md §2b):
/// per card, its largest accepted event time and its accepted times.
///
/// Implemented by ``InMemorySlidingStore`` (replay, auditor) and ``SQLiteSlidingStore``
/// (process, continuous auditor). Like ``WindowStore``, each store names how it identifies a card.
public protocol SlidingWindowStore {
    associatedtype CardKey

    /// The largest event time accepted so far in the partition; nil before the first.
    var streamTime: Int64? { get }
    /// The largest event time accepted for `card`, nil when none (or purged).
    mutating func cardMax(_ card: CardKey) -> Int64?
    /// Records an accepted record of `card` at `eventTime` and returns how many of the card's
    /// earlier accepted records have a time `u` with `from <= u <= eventTime`. `cardMax` and
    /// `streamTime` are the card's and the partition's new maxima; the store may drop the times
    /// they make useless (SEMANTICS.md §2b's purge rule).
    mutating func accept(_ card: CardKey, eventTime: Int64, from: Int64, cardMax: Int64, streamTime: Int64) -> Int64
    /// Deletes times and cards that `parameters` say can no longer change a verdict. Never
    /// changes a verdict, so a store may do it lazily or partially.
    mutating func purgeExpired(_ parameters: DetectorParameters)
}

/// SEMANTICS.md §2b in one place: every role decides sliding-window verdicts with this type.
/// Pure apart from the store it is handed; deterministic.
///
/// `process` is `@inlinable`: the SQLite stores it is handed live in another module, and only a
/// copy specialized for the store calls it directly rather than through its protocol witnesses.
public struct SlidingDetector: Sendable {
    public let parameters: DetectorParameters
    @usableFromInline var purges: PurgeSchedule

    public init(parameters: DetectorParameters) {
        self.parameters = parameters
        purges = PurgeSchedule(parameters)
    }

    /// Decides one valid record and records its effect in `store`.
    @inlinable
    public mutating func process<Store: SlidingWindowStore>(
        card: Store.CardKey, eventTime t: Int64, store: inout Store
    ) -> Verdict {
        let p = parameters
        // t >= 0 and W >= 1, so neither this nor the start wraps.
        let from = t - (p.window - 1)
        let s = max(0, from)
        let cardMax = store.cardMax(card)
        let streamTime = store.streamTime
        if p.isLate(slidingEventTime: t, cardMax: cardMax, streamTime: streamTime) {
            return Verdict(windowStart: s, count: 0, isFlagged: false, isLate: true)
        }
        let newStreamTime = max(streamTime ?? t, t)
        let earlier = store.accept(card, eventTime: t, from: from, cardMax: max(cardMax ?? t, t), streamTime: newStreamTime)
        // Saturating, as in the tumbling detector: a verdict never wraps.
        let (next, overflow) = earlier.addingReportingOverflow(1)
        let k = overflow ? Int64.max : next
        if purges.isDue(at: newStreamTime) { store.purgeExpired(p) }
        return Verdict(windowStart: s, count: k, isFlagged: k > p.threshold, isLate: false)
    }

    /// Decides one valid record by the card's String id, for stores keyed by the id's bytes.
    @inlinable
    public mutating func process<Store: SlidingWindowStore>(
        card: String, eventTime t: Int64, store: inout Store
    ) -> Verdict where Store.CardKey == CardBytes {
        var card = card
        return card.withUTF8 { process(card: CardBytes($0), eventTime: t, store: &store) }
    }
}

/// When a detector purges its store: once stream time has moved a window or a quarter of the
/// retention (whichever is longer) since the last purge. State then outlives its deletion point
/// by at most that much, and a purge (a pass over every card) stays rare.
@usableFromInline struct PurgeSchedule: Sendable {
    @usableFromInline var nextPurgeAt: Int64?
    @usableFromInline let interval: Int64

    @usableFromInline init(_ parameters: DetectorParameters) {
        interval = max(parameters.window, parameters.retention / 4)
    }

    /// Whether to purge now that stream time is `streamTime`; schedules the next one when so.
    @inlinable @inline(__always)
    mutating func isDue(at streamTime: Int64) -> Bool {
        guard let due = nextPurgeAt else {
            nextPurgeAt = Self.saturatingAdd(streamTime, interval)
            return false
        }
        guard streamTime >= due else { return false }
        nextPurgeAt = Self.saturatingAdd(streamTime, interval)
        return true
    }

    @inlinable static func saturatingAdd(_ a: Int64, _ b: Int64) -> Int64 {
        let (r, o) = a.addingReportingOverflow(b)
        return o ? .max : r
    }
}

extension DetectorParameters {
    /// SEMANTICS.md §2b rule 2: whether a record at `t` is late for a card whose largest accepted
    /// time is `cardMax`, at `streamTime`. In Int128: `t + W + G` can pass Int64's limit.
    @inlinable @inline(__always)
    public func isLate(slidingEventTime t: Int64, cardMax: Int64?, streamTime: Int64?) -> Bool {
        let end = Int128(t) + Int128(window) + Int128(grace)
        if let cardMax, end <= Int128(cardMax) { return true }
        if let streamTime, end <= Int128(streamTime) - Int128(retention) { return true }
        return false
    }

    /// The largest accepted time that can no longer count (SEMANTICS.md §2b's purge rule: `u`
    /// goes once `u + 2W + G <= cardMax` or `u + 2W + G <= streamTime - R`); nil when none can go
    /// yet (times are never negative).
    @inline(__always)
    package func slidingDropBound(cardMax: Int64, streamTime: Int64?) -> Int64? {
        let span = 2 * Int128(window) + Int128(grace)
        var bound = Int128(cardMax) - span
        if let streamTime { bound = max(bound, Int128(streamTime) - Int128(retention) - span) }
        return bound < 0 ? nil : Int64(bound)
    }

    /// Whether a card's state may be forgotten at `streamTime` under sliding windows
    /// (SEMANTICS.md §2b: once `cardMax + W + G <= streamTime - R`).
    @inline(__always)
    public func isCardExpired(slidingCardMax cardMax: Int64, streamTime: Int64) -> Bool {
        Int128(cardMax) + Int128(window) + Int128(grace) <= Int128(streamTime) - Int128(retention)
    }
}
