/// A ``WindowStore`` in memory: one partition's state for `replay` and the auditor.
///
/// Cards live in a ``CardTable`` (a byte-keyed open-addressing table): each entry's payload is
/// 26 bytes, so an entry fills one 64-byte cache line and the whole state of 100,000 cards is
/// about 7 MB; a purge is one linear rebuild.
///
/// A card's open windows: with grace 0 only the window of its latest record can still change,
/// so one window is kept inline; further ones (grace longer than a window) go to a side table.
///
/// Not thread-safe: one store per partition, used from one thread.
public final class InMemoryWindowStore: WindowStore {
    public typealias CardKey = CardBytes

    struct Card {
        var max: Int64
        /// The first open window (when `hasWindow`).
        var windowStart: Int64 = 0
        var windowCount: Int64 = 0
        var hasWindow = false
        /// Further open windows are in `extraWindows`.
        var hasExtra = false
    }

    private let table: CardTable<Card>
    /// Open windows beyond the first, by card key bytes.
    private var extraWindows: [[UInt8]: [(start: Int64, count: Int64)]] = [:]

    public private(set) var streamTime: Int64?
    let parameters: DetectorParameters

    /// `parameters` lets the store drop a card's closed windows as soon as they close.
    public init(parameters: DetectorParameters, initialCapacity: Int = 1_024) {
        self.parameters = parameters
        table = CardTable(initialCapacity: initialCapacity)
    }

    /// Number of cards with state.
    public var cardCount: Int { table.count }

    /// Number of open windows across all cards.
    public var openWindowCount: Int {
        var n = 0
        for e in 0..<table.count where table[e].hasWindow { n += 1 }
        return n + extraWindows.values.reduce(0) { $0 + $1.count }
    }

    // MARK: WindowStore

    public func cardMax(_ card: CardBytes) -> Int64? {
        let e = table.find(card)
        return e < 0 ? nil : table[e].max
    }

    public func windowCount(_ card: CardBytes, windowStart: Int64) -> Int64 {
        let e = table.find(card)
        guard e >= 0 else { return 0 }
        let entry = table[e]
        if entry.hasWindow && entry.windowStart == windowStart { return entry.windowCount }
        if entry.hasExtra, let extra = extraWindows[Array(table.key(e).buffer)] {
            for w in extra where w.start == windowStart { return w.count }
        }
        return 0
    }

    public func putAccepted(_ card: CardBytes, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        self.streamTime = streamTime
        var e = table.find(card)
        if e < 0 { e = table.insert(card, Card(max: 0)) }
        let p = parameters
        table[e].max = cardMax
        let entry = table[e]
        if !entry.hasExtra
            && (!entry.hasWindow || entry.windowStart == windowStart
                || p.isClosed(windowStart: entry.windowStart, cardMax: cardMax, streamTime: nil))
        {
            // The usual case: this record's window replaces or updates the only open one.
            table[e].windowStart = windowStart
            table[e].windowCount = count
            table[e].hasWindow = true
            return
        }
        // Several open windows: keep those this record did not close, set its own.
        let cardKey = Array(table.key(e).buffer)
        var open: [(start: Int64, count: Int64)] = []
        if entry.hasWindow { open.append((entry.windowStart, entry.windowCount)) }
        open += extraWindows[cardKey] ?? []
        open.removeAll { $0.start == windowStart || p.isClosed(windowStart: $0.start, cardMax: cardMax, streamTime: nil) }
        open.append((windowStart, count))
        table[e].windowStart = open[0].start
        table[e].windowCount = open[0].count
        table[e].hasWindow = true
        let rest = Array(open.dropFirst())
        extraWindows[cardKey] = rest.isEmpty ? nil : rest
        table[e].hasExtra = !rest.isEmpty
    }

    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let streamTime else { return }
        table.retain { _, card, entry in
            let key = { Array(card.buffer) }
            if parameters.isCardExpired(cardMax: entry.max, streamTime: streamTime) {
                if entry.hasExtra { self.extraWindows[key()] = nil }
                return false
            }
            if entry.hasWindow && parameters.isClosed(windowStart: entry.windowStart, cardMax: entry.max, streamTime: streamTime) {
                entry.hasWindow = false
            }
            if entry.hasExtra {
                let name = key()
                let open = (self.extraWindows[name] ?? []).filter {
                    !parameters.isClosed(windowStart: $0.start, cardMax: entry.max, streamTime: streamTime)
                }
                if !entry.hasWindow, let first = open.first {
                    entry.windowStart = first.start
                    entry.windowCount = first.count
                    entry.hasWindow = true
                    let rest = Array(open.dropFirst())
                    self.extraWindows[name] = rest.isEmpty ? nil : rest
                    entry.hasExtra = !rest.isEmpty
                } else {
                    self.extraWindows[name] = open.isEmpty ? nil : open
                    entry.hasExtra = !open.isEmpty
                }
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
