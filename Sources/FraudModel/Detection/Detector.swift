/// The verdict for one valid record (SEMANTICS.md §2).
public struct Verdict: Sendable, Hashable {
    /// Start of the record's window.
    public var windowStart: Int64
    /// The window's count after this record; 0 for a late record.
    public var count: Int64
    public var isFlagged: Bool
    public var isLate: Bool

    public init(windowStart: Int64, count: Int64, isFlagged: Bool, isLate: Bool) {
        self.windowStart = windowStart
        self.count = count
        self.isFlagged = isFlagged
        self.isLate = isLate
    }
}

/// SEMANTICS.md §2 (tumbling windows) in one place: `replay`, `process` and the auditor all call
/// this type, so a verdict cannot differ between roles; ``SlidingDetector`` is §2b's. Pure apart from the store it is handed; deterministic.
///
/// `process` is `@inlinable`: the SQLite stores it is handed live in another module, and only a
/// copy specialized for the store calls it directly rather than through its protocol witnesses.
public struct Detector: Sendable {
    public let parameters: DetectorParameters
    @usableFromInline var purges: PurgeSchedule

    public init(parameters: DetectorParameters) {
        self.parameters = parameters
        purges = PurgeSchedule(parameters)
    }

    /// Decides one valid record and records its effect in `store`.
    @inlinable
    public mutating func process<Store: WindowStore>(
        card: Store.CardKey, eventTime t: Int64, store: inout Store
    ) -> Verdict {
        let p = parameters
        let s = p.windowStart(of: t)
        let cardMax = store.cardMax(card)
        let streamTime = store.streamTime
        if p.isClosed(windowStart: s, cardMax: cardMax, streamTime: streamTime) {
            return Verdict(windowStart: s, count: 0, isFlagged: false, isLate: true)
        }
        // Saturating: a count can only come near the limit from a damaged store, and a
        // verdict must never wrap (or trap) on one.
        let (next, overflow) = store.windowCount(card, windowStart: s).addingReportingOverflow(1)
        let k = overflow ? Int64.max : next
        let newStreamTime = max(streamTime ?? t, t)
        store.putAccepted(card, windowStart: s, count: k, cardMax: max(cardMax ?? t, t), streamTime: newStreamTime)
        if purges.isDue(at: newStreamTime) { store.purgeExpired(p) }
        return Verdict(windowStart: s, count: k, isFlagged: k > p.threshold, isLate: false)
    }

    /// Decides one valid record by the card's String id, for stores keyed by the id's bytes.
    @inlinable
    public mutating func process<Store: WindowStore>(
        card: String, eventTime t: Int64, store: inout Store
    ) -> Verdict where Store.CardKey == CardBytes {
        var card = card
        return card.withUTF8 { process(card: CardBytes($0), eventTime: t, store: &store) }
    }

    /// The `reason` member of an output record (SEMANTICS.md §2).
    public func reason(for verdict: Verdict) -> String {
        if verdict.isLate { return "Late: window closed" }
        if verdict.isFlagged { return "Flagged: \(verdict.count) transactions in \(parameters.windowPhrase)" }
        return ""
    }
}
