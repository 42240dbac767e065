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
    public typealias CardKey = CardBytes

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

    public func cardMax(_ card: CardBytes) -> Int64? {
        let e = find(card)
        return e < 0 ? nil : entries[e].max
    }

    public func windowCount(_ card: CardBytes, windowStart: Int64) -> Int64 {
        let e = find(card)
        guard e >= 0 else { return 0 }
        let entry = entries[e]
        if entry.hasWindow && entry.windowStart == windowStart { return entry.windowCount }
        if entry.hasExtra, let extra = extraWindows[key(of: entry)] {
            for w in extra where w.start == windowStart { return w.count }
        }
        return 0
    }

    public func putAccepted(_ card: CardBytes, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
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

    /// Plans the lookups of a batch of cards so that ``prefetch(ahead:)`` can start loading
    /// their index slots and entries some records before each is needed: at ~200 ns a
    /// dependent miss on the machines we measured, lookups were the largest cost of replay;
    /// overlapped a few dozen records ahead, they mostly hit the cache.
    /// Hints only: nothing depends on them.
    public func planLookups(_ count: Int, card: (Int) -> CardBytes?) {
        let mask = indexCapacity - 1
        plannedSlots.removeAll(keepingCapacity: true)
        for i in 0..<count {
            if let key = card(i) {
                plannedSlots.append(Int(truncatingIfNeeded: hash(key.base, key.count) >> 7) & mask)
            } else {
                plannedSlots.append(-1)
            }
        }
        plannedCapacity = indexCapacity
    }

    /// Starts the loads for the planned lookups after the `i`th: the index slot far ahead, the
    /// entry (whose slot should be cached by now) nearer.
    @inline(__always)
    public func prefetch(ahead i: Int) {
        guard plannedCapacity == indexCapacity else { return }
        let far = i + 24, near = i + 12
        if far < plannedSlots.count, plannedSlots[far] >= 0 { polyglot_prefetch(index + plannedSlots[far]) }
        if near < plannedSlots.count, plannedSlots[near] >= 0 {
            let e = index[plannedSlots[near]]
            if e != 0 { polyglot_prefetch(entries + Int(e) - 1) }
        }
    }

    private var plannedSlots: [Int] = []
    private var plannedCapacity = 0

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

    /// Whether entry `e` holds the key `card`.
    @inline(__always)
    private func matches(_ e: Int, _ card: CardBytes, _ prefix: (UInt64, UInt64)) -> Bool {
        let entry = entries + e
        return Int(entry.pointee.keyLength) == card.count && entry.pointee.prefix == prefix
            && (card.count <= 16 || memcmpBytes(keys + Int(entry.pointee.keyOffset), card.base, card.count))
    }

    /// The entry holding `card`, or -1.
    private func find(_ card: CardBytes) -> Int {
        let prefix = Self.prefix(card.base, card.count)
        if lastEntry >= 0 && matches(lastEntry, card, prefix) { return lastEntry }
        let h = hash(card.base, card.count)
        let mask = indexCapacity - 1
        var i = Int(truncatingIfNeeded: h >> 7) & mask
        while true {
            let slot = index[i]
            if slot == 0 { return -1 }
            let e = Int(slot) - 1
            if entries[e].hash == h && matches(e, card, prefix) {
                lastEntry = e
                return e
            }
            i = (i + 1) & mask
        }
    }

    private func insert(_ card: CardBytes) -> Int {
        if (entryCount + 1) * 2 > indexCapacity { rebuild(indexCapacity: indexCapacity * 2) { _, _ in true } }
        if entryCount == entriesCapacity { growEntries(to: entriesCapacity * 2) }
        let n = card.count
        // Card ids are at most 1024 bytes (SEMANTICS.md §1), and an arena over 4 GiB would
        // mean millions of cards of maximal length in one partition.
        precondition(n <= Int(UInt16.max) && keysUsed + n <= Int(UInt32.max), "card id or key arena too large")
        if keysUsed + n > keysCapacity { growKeys(to: keysUsed + n) }
        (keys + keysUsed).update(from: card.base, count: n)
        let h = hash(keys + keysUsed, n)
        let e = entryCount
        (entries + e).initialize(to: Entry(
            hash: h, prefix: Self.prefix(keys + keysUsed, n), max: 0,
            keyOffset: UInt32(keysUsed), keyLength: UInt16(n)))
        index[emptySlot(for: h)] = UInt32(e + 1)
        keysUsed += n
        entryCount += 1
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
    }
}
