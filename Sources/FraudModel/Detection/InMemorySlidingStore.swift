/// A ``SlidingWindowStore`` in memory: one partition's sliding-window state for `replay` and the
/// auditor, in a ``CardTable`` like ``InMemoryWindowStore``'s. A card's entry holds its maximum
/// and its ``AcceptedTimes``.
///
/// Not thread-safe: one store per partition, used from one thread.
public final class InMemorySlidingStore: SlidingWindowStore {
    public typealias CardKey = CardBytes

    struct Card {
        var max: Int64
        var times = AcceptedTimes()
    }

    private let table: CardTable<Card>
    public private(set) var streamTime: Int64?
    let parameters: DetectorParameters

    /// `parameters` lets the store drop a card's useless times as soon as it accepts a record.
    public init(parameters: DetectorParameters, initialCapacity: Int = 1_024) {
        self.parameters = parameters
        table = CardTable(initialCapacity: initialCapacity)
    }

    /// Number of cards with state.
    public var cardCount: Int { table.count }

    /// Number of accepted times kept across all cards.
    public var timeCount: Int {
        var n = 0
        for e in 0..<table.count { n += table[e].times.count }
        return n
    }

    /// The accepted times kept for `card`, ascending (tests and tools).
    public func times(_ card: String) -> [Int64] {
        var card = card
        let e = card.withUTF8 { table.find(CardBytes($0)) }
        guard e >= 0 else { return [] }
        var times: [Int64] = []
        table[e].times.forEach { times.append($0) }
        return times
    }

    // MARK: SlidingWindowStore

    public func cardMax(_ card: CardBytes) -> Int64? {
        let e = table.find(card)
        return e < 0 ? nil : table[e].max
    }

    public func accept(_ card: CardBytes, eventTime t: Int64, from: Int64, cardMax: Int64, streamTime: Int64) -> Int64 {
        self.streamTime = streamTime
        var e = table.find(card)  // the detector just asked: the table's last lookup
        if e < 0 { e = table.insert(card, Card(max: cardMax)) }
        let entry = table.payload(e)
        let earlier = entry.pointee.times.count(from: from, through: t)
        entry.pointee.max = cardMax
        if let bound = parameters.slidingDropBound(cardMax: cardMax, streamTime: streamTime) {
            entry.pointee.times.drop(through: bound)
        }
        entry.pointee.times.insert(t)
        return Int64(earlier)
    }

    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let streamTime else { return }
        table.retain { _, _, card in
            if parameters.isCardExpired(slidingCardMax: card.max, streamTime: streamTime) { return false }
            if let bound = parameters.slidingDropBound(cardMax: card.max, streamTime: streamTime) {
                card.times.drop(through: bound)
            }
            return true
        }
    }

    /// See ``CardTable/planLookups(_:card:)``: hints for ``prefetch(ahead:)``.
    public func planLookups(_ count: Int, card: (Int) -> CardBytes?) { table.planLookups(count, card: card) }

    /// See ``CardTable/prefetch(ahead:)``.
    @inline(__always)
    public func prefetch(ahead i: Int) { table.prefetch(ahead: i) }
}
