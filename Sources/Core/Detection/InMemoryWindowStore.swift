import CPolyglotShims

#if canImport(Glibc)
import Glibc
#endif

/// A ``WindowStore`` in memory: one partition's state for `replay` and the auditor.
///
/// Hand-written rather than `[String: CardState]`: on `replay` of 1,000,000 records over
/// 100,000 cards the dictionary (hashing, resizing, rebuilding it at every purge) was the
/// largest single cost. Here an open-addressing index of 4-byte entries points into densely
/// packed 64-byte card entries, so the whole state of 100,000 cards is about 7 MB and a lookup
/// is two cache lines; a purge is one linear rebuild.
///
/// A card's open windows: with grace 0 only the window of its latest record can still change,
/// so one window is kept inline; further ones (grace longer than a window) go to a side table.
///
/// Not thread-safe: one store per partition, used from one thread.
public final class InMemoryWindowStore: WindowStore {
    /// One cache line per card.
    struct Entry {
        var hash: UInt64
        /// The key's first 16 bytes, zero-padded: most card ids fit, so comparing a key rarely
        /// reads the key arena.
        var prefix: (UInt64, UInt64)
        var max: Int64
        /// The first open window (when `hasWindow`).
        var windowStart: Int64 = 0
        var windowCount: Int64 = 0
        var keyOffset: UInt32
        var keyLength: UInt16
        var hasWindow = false
        /// Further open windows are in `extraWindows`.
        var hasExtra = false
        /// Pads the entry to one 64-byte cache line.
        var padding: UInt64 = 0
    }

    private var index: UnsafeMutablePointer<UInt32>
    /// Slots in `index`, a power of two at least twice the entries.
    private var indexCapacity: Int
    private var entries: UnsafeMutablePointer<Entry>
    private var entriesCapacity: Int
    private var entryCount = 0
    private var keys: UnsafeMutablePointer<UInt8>
    private var keysCapacity: Int
    private var keysUsed = 0
    /// Open windows beyond the first, by card key bytes.
    private var extraWindows: [[UInt8]: [(start: Int64, count: Int64)]] = [:]
    private let seed: UInt64
    /// The entry the last lookup found: the detector asks about the same card several times.
    private var lastCard = ""
    private var lastEntry = -1

    public private(set) var streamTime: Int64?
    let parameters: DetectorParameters

    /// `parameters` lets the store drop a card's closed windows as soon as they close.
    public init(parameters: DetectorParameters, initialCapacity: Int = 1_024) {
        self.parameters = parameters
        var c = 16
        while c < initialCapacity * 2 { c <<= 1 }
        indexCapacity = c
        index = Self.allocate(UInt32.self, c)
        index.initialize(repeating: 0, count: c)
        entriesCapacity = c / 2
        entries = Self.allocate(Entry.self, entriesCapacity)
        keysCapacity = 16 * entriesCapacity
        keys = .allocate(capacity: keysCapacity)
        // A per-process seed: slot order never reaches a verdict, and a seed an input cannot
        // predict keeps crafted card ids from piling into one probe chain.
        seed = UInt64.random(in: 1 ... .max)
    }

    deinit {
        index.deallocate()
        entries.deallocate()
        keys.deallocate()
    }

    private static func allocate<T>(_ type: T.Type, _ n: Int) -> UnsafeMutablePointer<T> {
        let bytes = n * MemoryLayout<T>.stride
        let hugePage = 2 << 20
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: bytes >= hugePage ? hugePage : 64)
        // Lookups land at random: huge pages spare most of their TLB misses.
        if bytes >= hugePage { _ = madvise(raw, bytes, MADV_HUGEPAGE) }
        return raw.bindMemory(to: T.self, capacity: n)
    }

    /// Number of cards with state.
    public var cardCount: Int { entryCount }

    /// Number of open windows across all cards.
    public var openWindowCount: Int {
        var n = 0
        for e in 0..<entryCount where entries[e].hasWindow { n += 1 }
        return n + extraWindows.values.reduce(0) { $0 + $1.count }
    }

    // MARK: WindowStore

    public func cardMax(_ card: String) -> Int64? {
        let e = find(card)
        return e < 0 ? nil : entries[e].max
    }

    public func windowCount(_ card: String, windowStart: Int64) -> Int64 {
        let e = find(card)
        guard e >= 0 else { return 0 }
        let entry = entries[e]
        if entry.hasWindow && entry.windowStart == windowStart { return entry.windowCount }
        if entry.hasExtra, let extra = extraWindows[key(of: entry)] {
            for w in extra where w.start == windowStart { return w.count }
        }
        return 0
    }

    public func putAccepted(_ card: String, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        self.streamTime = streamTime
        var e = find(card)
        if e < 0 { e = insert(card) }
        let p = parameters
        let entry = entries + e
        entry.pointee.max = cardMax
        if !entry.pointee.hasExtra
            && (!entry.pointee.hasWindow || entry.pointee.windowStart == windowStart
                || p.isClosed(windowStart: entry.pointee.windowStart, cardMax: cardMax, streamTime: nil))
        {
            // The usual case: this record's window replaces or updates the only open one.
            entry.pointee.windowStart = windowStart
            entry.pointee.windowCount = count
            entry.pointee.hasWindow = true
            return
        }
        // Several open windows: keep those this record did not close, set its own.
        let cardKey = key(of: entry.pointee)
        var open: [(start: Int64, count: Int64)] = []
        if entry.pointee.hasWindow { open.append((entry.pointee.windowStart, entry.pointee.windowCount)) }
        open += extraWindows[cardKey] ?? []
        open.removeAll { $0.start == windowStart || p.isClosed(windowStart: $0.start, cardMax: cardMax, streamTime: nil) }
        open.append((windowStart, count))
        entry.pointee.windowStart = open[0].start
        entry.pointee.windowCount = open[0].count
        entry.pointee.hasWindow = true
        let rest = Array(open.dropFirst())
        extraWindows[cardKey] = rest.isEmpty ? nil : rest
        entry.pointee.hasExtra = !rest.isEmpty
    }

    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let streamTime else { return }
        rebuild(indexCapacity: indexCapacity) { entry, key in
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

    /// Starts loading the index slots and entries of the cards about to be looked up, so that
    /// their cache misses overlap instead of being taken one record at a time (on replay of
    /// 1,000,000 records over 100,000 cards, lookups went from the largest cost to a small one).
    /// A hint only: nothing depends on it.
    public func prefetch(_ cards: [String]) {
        let mask = indexCapacity - 1
        prefetchSlots.removeAll(keepingCapacity: true)
        for card in cards {
            var card = card
            let h = card.withUTF8 { hash($0.baseAddress ?? UnsafePointer(keys), $0.count) }
            let slot = Int(truncatingIfNeeded: h >> 7) & mask
            polyglot_prefetch(index + slot)
            prefetchSlots.append(slot)
        }
        // The index is small and now mostly cached: start the entries' loads too.
        for slot in prefetchSlots {
            let e = index[slot]
            if e != 0 { polyglot_prefetch(entries + Int(e) - 1) }
        }
    }

    private var prefetchSlots: [Int] = []

    // MARK: Table

    private func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
        var h = seed ^ (UInt64(n) &* 0x9E37_79B9_7F4A_7C15)
        var i = 0
        let raw = UnsafeRawPointer(p)
        while i + 8 <= n {
            h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xBF58_476D_1CE4_E5B9
            h ^= h >> 29
            i += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while i < n {
            tail |= UInt64(p[i]) << shift
            shift += 8
            i += 1
        }
        h = (h ^ tail) &* 0x94D0_49BB_1331_11EB
        h ^= h >> 32
        h = h &* 0xBF58_476D_1CE4_E5B9
        h ^= h >> 29
        return h
    }

    private static func prefix(_ p: UnsafePointer<UInt8>, _ n: Int) -> (UInt64, UInt64) {
        var words: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &words) { $0.copyMemory(from: UnsafeRawBufferPointer(start: p, count: min(n, 16))) }
        return words
    }

    private func key(of entry: Entry) -> [UInt8] {
        Array(UnsafeBufferPointer(start: keys + Int(entry.keyOffset), count: Int(entry.keyLength)))
    }

    /// The entry holding `card`, or -1.
    private func find(_ card: String) -> Int {
        if lastEntry >= 0 && lastCard == card { return lastEntry }
        var card = card
        let e = card.withUTF8 { bytes -> Int in
            let base = bytes.baseAddress ?? UnsafePointer(keys)
            let n = bytes.count
            let h = hash(base, n)
            let prefix = Self.prefix(base, n)
            let mask = indexCapacity - 1
            var i = Int(truncatingIfNeeded: h >> 7) & mask
            while true {
                let slot = index[i]
                if slot == 0 { return -1 }
                let e = Int(slot) - 1
                let entry = entries + e
                if entry.pointee.hash == h && Int(entry.pointee.keyLength) == n && entry.pointee.prefix == prefix
                    && (n <= 16 || memcmpBytes(keys + Int(entry.pointee.keyOffset), base, n))
                {
                    return e
                }
                i = (i + 1) & mask
            }
        }
        if e >= 0 {
            lastCard = card
            lastEntry = e
        }
        return e
    }

    private func insert(_ card: String) -> Int {
        if (entryCount + 1) * 2 > indexCapacity { rebuild(indexCapacity: indexCapacity * 2) { _, _ in true } }
        if entryCount == entriesCapacity { growEntries(to: entriesCapacity * 2) }
        var card = card
        let e = card.withUTF8 { bytes -> Int in
            let n = bytes.count
            // Card ids are at most 1024 bytes (SEMANTICS.md §1), and an arena over 4 GiB would
            // mean millions of cards of maximal length in one partition.
            precondition(n <= Int(UInt16.max) && keysUsed + n <= Int(UInt32.max), "card id or key arena too large")
            if keysUsed + n > keysCapacity { growKeys(to: keysUsed + n) }
            if let base = bytes.baseAddress { (keys + keysUsed).update(from: base, count: n) }
            let h = hash(keys + keysUsed, n)
            let e = entryCount
            (entries + e).initialize(to: Entry(
                hash: h, prefix: Self.prefix(keys + keysUsed, n), max: 0,
                keyOffset: UInt32(keysUsed), keyLength: UInt16(n)))
            index[emptySlot(for: h)] = UInt32(e + 1)
            keysUsed += n
            entryCount += 1
            return e
        }
        lastCard = card
        lastEntry = e
        return e
    }

    private func emptySlot(for h: UInt64) -> Int {
        let mask = indexCapacity - 1
        var i = Int(truncatingIfNeeded: h >> 7) & mask
        while index[i] != 0 { i = (i + 1) & mask }
        return i
    }

    private func growEntries(to capacity: Int) {
        let grown = Self.allocate(Entry.self, capacity)
        grown.moveInitialize(from: entries, count: entryCount)
        entries.deallocate()
        entries = grown
        entriesCapacity = capacity
    }

    private func growKeys(to needed: Int) {
        var capacity = keysCapacity * 2
        while capacity < needed { capacity *= 2 }
        let grown = UnsafeMutablePointer<UInt8>.allocate(capacity: capacity)
        grown.update(from: keys, count: keysUsed)
        keys.deallocate()
        keys = grown
        keysCapacity = capacity
    }

    /// Re-creates the index with `newCapacity` slots, keeping the entries `keep` accepts (it may
    /// edit them) packed in their order, and compacting the key bytes.
    private func rebuild(indexCapacity newCapacity: Int, keep: (inout Entry, () -> [UInt8]) -> Bool) {
        let oldKeys = keys
        index.deallocate()
        indexCapacity = newCapacity
        index = Self.allocate(UInt32.self, newCapacity)
        index.initialize(repeating: 0, count: newCapacity)
        keysCapacity = max(keysCapacity, 64)
        keys = .allocate(capacity: keysCapacity)
        keysUsed = 0
        var kept = 0
        for e in 0..<entryCount {
            var entry = entries[e]
            let keyStart = oldKeys + Int(entry.keyOffset)
            let length = Int(entry.keyLength)
            guard keep(&entry, { Array(UnsafeBufferPointer(start: keyStart, count: length)) }) else { continue }
            (keys + keysUsed).update(from: keyStart, count: length)
            entry.keyOffset = UInt32(keysUsed)
            keysUsed += length
            entries[kept] = entry
            index[emptySlot(for: entry.hash)] = UInt32(kept + 1)
            kept += 1
        }
        entryCount = kept
        oldKeys.deallocate()
        lastEntry = -1
        lastCard = ""
    }
}
