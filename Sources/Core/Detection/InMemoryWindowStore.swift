/// A ``WindowStore`` in memory: one partition's state for `replay` and the auditor.
///
/// One dictionary entry per card holds its maximum and its open windows, so a record costs one
/// hash lookup: the detector's three calls for the same card reuse the index of the first.
/// Closed windows are dropped as the card moves on; cards out of retention go at purge.
public struct InMemoryWindowStore: WindowStore, Sendable {
    
    struct CardState: Sendable {
        var max: Int64
        /// (window start, count), oldest first; short, because windows close as `max` moves.
        var windows: [WindowCount]
    }
    
    struct WindowCount: Sendable {
        var start: Int64
        var count: Int64
    }

    var cards: [String: CardState] = [:]
    var lastCard: String = ""
    var lastIndex: Dictionary<String, CardState>.Index?
    public private(set) var streamTime: Int64?
    let parameters: DetectorParameters

    /// `parameters` lets the store drop a card's closed windows as soon as they close.
    public init(parameters: DetectorParameters) {
        self.parameters = parameters
    }

    /// Number of cards with state (for tests and the summary).
    public var cardCount: Int { cards.count }
    /// Number of open windows across all cards.
    public var windowCount: Int { cards.values.reduce(0) { $0 + $1.windows.count } }
    
    mutating func index(of card: String) -> Dictionary<String, CardState>.Index? {
        if let lastIndex, lastCard == card { return lastIndex }
        let i = cards.index(forKey: card)
        lastCard = card
        lastIndex = i
        return i
    }
    
    public mutating func cardMax(_ card: String) -> Int64? {
        guard let i = index(of: card) else { return nil }
        return cards.values[i].max
    }
    
    public mutating func windowCount(_ card: String, windowStart: Int64) -> Int64 {
        guard let i = index(of: card) else { return 0 }
        for w in cards.values[i].windows where w.start == windowStart { return w.count }
        return 0
    }
    
    public mutating func putAccepted(_ card: String, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        self.streamTime = streamTime
        guard let i = index(of: card) else {
            cards[card] = CardState(max: cardMax, windows: [WindowCount(start: windowStart, count: count)])
            lastIndex = nil
            lastCard = ""
            return
        }
        let p = parameters
        cards.values[i].max = cardMax
        var found = false
        // Drop the windows this record closed while updating its own.
        cards.values[i].windows.removeAll { w in
            if w.start == windowStart {
                return false
            }
            return p.isClosed(windowStart: w.start, cardMax: cardMax, streamTime: nil)
        }
        for j in cards.values[i].windows.indices where cards.values[i].windows[j].start == windowStart {
            cards.values[i].windows[j].count = count
            found = true
        }
        if !found {
            cards.values[i].windows.append(WindowCount(start: windowStart, count: count))
        }
    }

    public mutating func purgeExpired(_ parameters: DetectorParameters) {
        guard let streamTime else { return }
        let p = parameters
        cards = cards.filter { !p.isCardExpired(cardMax: $0.value.max, streamTime: streamTime) }
        for i in cards.indices {
            let max = cards.values[i].max
            cards.values[i].windows.removeAll { p.isClosed(windowStart: $0.start, cardMax: max, streamTime: streamTime) }
        }
        lastIndex = nil
        lastCard = ""
    }
}
