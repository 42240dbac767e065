internal import CPolyglotShims

#if canImport(Glibc)
import Glibc
#endif
import PolyglotSupport

/// A hash table from card id bytes to a `Payload`, shared by the window stores.
///
/// Hand-written rather than `[String: Payload]`: on `replay` of 1,000,000 records over 100,000
/// cards the dictionary (hashing, resizing, rebuilding it at every purge) was the largest single
/// cost, and in `process` the SQLite store's `[String: …]` caches were most of the per-record
/// time. Here an open-addressing index of 4-byte slots points into densely packed entries, so a
/// lookup is two cache lines and hashes the id's bytes in place, without building a `String`.
///
/// Entries keep their position while they are only added (growing re-indexes, it never moves
/// one), so a caller may hold an entry's number until it calls ``retain(_:)`` or ``removeAll()``.
///
/// Not thread-safe: one table per partition, used from one thread.
///
/// The lookups are `@inlinable` (their storage `@usableFromInline`): the SQLite store's cache in
/// another module uses the table per record, and only an inlined copy is specialized for its
/// payload instead of going through generic metadata. They are `public`, not `package`: the
/// compiler specialized none of the `@inlinable package` lookups in the store's module, and
/// `process` spent a fifth of its run-loop time on generic metadata
/// (`perf record` of `scripts/bench-process.sh`'s workload: 4,239 run-loop samples against 2,174
/// with the lookups public).
public final class CardTable<Payload> {
    @usableFromInline struct Entry {
        @usableFromInline var hash: UInt64
        /// The key's first 16 bytes, zero-padded: most card ids fit, so comparing a key rarely
        /// reads the key arena.
        @usableFromInline var prefix: (UInt64, UInt64)
        @usableFromInline var keyOffset: UInt32
        @usableFromInline var keyLength: UInt16
        @usableFromInline var payload: Payload

        @usableFromInline init(hash: UInt64, prefix: (UInt64, UInt64), keyOffset: UInt32, keyLength: UInt16, payload: Payload) {
            self.hash = hash
            self.prefix = prefix
            self.keyOffset = keyOffset
            self.keyLength = keyLength
            self.payload = payload
        }
    }

    @usableFromInline var index: UnsafeMutablePointer<UInt32>
    /// Slots in `index`, a power of two at least twice the entries.
    @usableFromInline var indexCapacity: Int
    @usableFromInline var entries: UnsafeMutablePointer<Entry>
    @usableFromInline var entriesCapacity: Int
    /// Number of entries.
    @usableFromInline var used = 0
    @inlinable public var count: Int { used }
    /// Every key's bytes, back to back.
    @usableFromInline var keys: ByteBuffer
    @usableFromInline let seed: UInt64
    /// The entry the last lookup found: the detector asks about the same card several times.
    @usableFromInline var lastFound = -1
    private var plannedSlots: [Int] = []
    private var plannedCapacity = 0
    @usableFromInline let payloadOffset = MemoryLayout<Entry>.offset(of: \Entry.payload)!

    public init(initialCapacity: Int = 1_024) {
        var c = 16
        while c < initialCapacity * 2 { c <<= 1 }
        indexCapacity = c
        index = Self.allocate(UInt32.self, c)
        index.initialize(repeating: 0, count: c)
        entriesCapacity = c / 2
        entries = Self.allocate(Entry.self, entriesCapacity)
        keys = ByteBuffer(capacity: 16 * entriesCapacity)
        // A per-process seed: slot order never reaches a verdict, and a seed an input cannot
        // predict keeps crafted card ids from piling into one probe chain.
        seed = UInt64.random(in: 1 ... .max)
    }

    deinit {
        entries.deinitialize(count: used)
        index.deallocate()
        entries.deallocate()
    }

    private static func allocate<T>(_ type: T.Type, _ n: Int) -> UnsafeMutablePointer<T> {
        let bytes = n * MemoryLayout<T>.stride
        let hugePage = 2 << 20
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: bytes >= hugePage ? hugePage : 64)
        // Lookups land at random: huge pages spare most of their TLB misses.
        if bytes >= hugePage { _ = madvise(raw, bytes, MADV_HUGEPAGE) }
        return raw.bindMemory(to: T.self, capacity: n)
    }

    /// Entry `e`'s payload, in place.
    @inlinable @inline(__always)
    public subscript(e: Int) -> Payload {
        unsafeAddress { UnsafePointer(payload(e)) }
        unsafeMutableAddress { payload(e) }
    }

    /// Entry `e`'s payload in place, valid until the table next changes shape.
    @inlinable @inline(__always)
    public func payload(_ e: Int) -> UnsafeMutablePointer<Payload> {
        (UnsafeMutableRawPointer(entries + e) + payloadOffset).assumingMemoryBound(to: Payload.self)
    }

    /// Entry `e`'s card id bytes, valid until the table next changes shape.
    @inlinable @inline(__always)
    public func key(_ e: Int) -> CardBytes {
        CardBytes(base: keys.baseAddress + Int(entries[e].keyOffset), count: Int(entries[e].keyLength))
    }

    /// The entry holding `card`, or -1.
    @inlinable @inline(__always)
    public func find(_ card: CardBytes) -> Int {
        let prefix = Self.prefix(card.base, card.count)
        if lastFound >= 0 && matches(lastFound, card, prefix) { return lastFound }
        let h = hash(card.base, card.count)
        let mask = indexCapacity - 1
        var i = Int(truncatingIfNeeded: h >> 7) & mask
        while true {
            let slot = index[i]
            if slot == 0 { return -1 }
            let e = Int(slot) - 1
            if entries[e].hash == h && matches(e, card, prefix) {
                lastFound = e
                return e
            }
            i = (i + 1) & mask
        }
    }

    /// Adds `card` (which must not be in the table) and returns its entry.
    @inlinable
    public func insert(_ card: CardBytes, _ payload: Payload) -> Int {
        if (count + 1) * 2 > indexCapacity { reindex(capacity: indexCapacity * 2) }
        if count == entriesCapacity { growEntries(to: entriesCapacity * 2) }
        let n = card.count
        // Card ids are at most 1024 bytes (SEMANTICS.md §1), and an arena over 4 GiB would
        // mean millions of cards of maximal length in one partition.
        let offset = keys.count
        precondition(n <= Int(UInt16.max) && offset + n <= Int(UInt32.max), "card id or key arena too large")
        keys.append(UnsafeRawPointer(card.base), count: n)
        let key = keys.baseAddress + offset
        let h = hash(key, n)
        let e = count
        (entries + e).initialize(to: Entry(
            hash: h, prefix: Self.prefix(key, n), keyOffset: UInt32(offset), keyLength: UInt16(n), payload: payload))
        index[emptySlot(for: h)] = UInt32(e + 1)
        used += 1
        lastFound = e
        return e
    }

    /// Keeps the entries `keep` accepts (it may edit their payloads; it gets each entry's old
    /// number and key), packed in their order. Returns, per old entry number, the new one (-1:
    /// dropped). Compacts the key bytes.
    @inlinable @discardableResult
    public func retain(_ keep: (Int, CardBytes, inout Payload) -> Bool) -> [Int32] {
        var moved = [Int32](repeating: -1, count: count)
        let oldKeys = keys
        index.initialize(repeating: 0, count: indexCapacity)
        keys = ByteBuffer(capacity: max(oldKeys.count, 64))
        var kept = 0
        for e in 0..<count {
            let entry = entries + e
            let keyStart = oldKeys.baseAddress + Int(entry.pointee.keyOffset)
            let length = Int(entry.pointee.keyLength)
            guard keep(e, CardBytes(base: keyStart, count: length), &entry.pointee.payload) else {
                entry.deinitialize(count: 1)
                continue
            }
            entry.pointee.keyOffset = UInt32(keys.count)
            keys.append(UnsafeRawPointer(keyStart), count: length)
            if kept != e { (entries + kept).moveInitialize(from: entry, count: 1) }
            index[emptySlot(for: entries[kept].hash)] = UInt32(kept + 1)
            moved[e] = Int32(kept)
            kept += 1
        }
        used = kept
        lastFound = -1
        return moved
    }

    /// Drops every entry.
    @inlinable
    public func removeAll() {
        entries.deinitialize(count: used)
        used = 0
        keys.removeAll()
        index.initialize(repeating: 0, count: indexCapacity)
        lastFound = -1
    }

    // MARK: Prefetch

    /// Plans the lookups of a batch of cards so that ``prefetch(ahead:)`` can start loading
    /// their index slots and entries some records before each is needed: at ~200 ns a
    /// dependent miss on the machines we measured, lookups were the largest cost of replay;
    /// overlapped a few dozen records ahead, they mostly hit the cache.
    /// Hints only: nothing depends on them.
    func planLookups(_ n: Int, card: (Int) -> CardBytes?) {
        let mask = indexCapacity - 1
        plannedSlots.removeAll(keepingCapacity: true)
        for i in 0..<n {
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
    func prefetch(ahead i: Int) {
        guard plannedCapacity == indexCapacity else { return }
        let far = i + 24, near = i + 12
        if far < plannedSlots.count, plannedSlots[far] >= 0 { polyglot_prefetch(index + plannedSlots[far]) }
        if near < plannedSlots.count, plannedSlots[near] >= 0 {
            let e = index[plannedSlots[near]]
            if e != 0 { polyglot_prefetch(entries + Int(e) - 1) }
        }
    }

    // MARK: Internals

    @inlinable @inline(__always)
    func hash(_ p: UnsafePointer<UInt8>, _ n: Int) -> UInt64 {
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

    @inlinable @inline(__always)
    static func prefix(_ p: UnsafePointer<UInt8>, _ n: Int) -> (UInt64, UInt64) {
        var words: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &words) { $0.copyMemory(from: UnsafeRawBufferPointer(start: p, count: min(n, 16))) }
        return words
    }

    /// Whether entry `e` holds the key `card`.
    @inlinable @inline(__always)
    func matches(_ e: Int, _ card: CardBytes, _ prefix: (UInt64, UInt64)) -> Bool {
        let entry = entries + e
        return Int(entry.pointee.keyLength) == card.count && entry.pointee.prefix == prefix
            && (card.count <= 16 || memcmp(keys.baseAddress + Int(entry.pointee.keyOffset), card.base, card.count) == 0)
    }

    @inlinable
    func emptySlot(for h: UInt64) -> Int {
        let mask = indexCapacity - 1
        var i = Int(truncatingIfNeeded: h >> 7) & mask
        while index[i] != 0 { i = (i + 1) & mask }
        return i
    }

    /// A larger index over the same entries, which keep their numbers.
    @usableFromInline func reindex(capacity: Int) {
        index.deallocate()
        indexCapacity = capacity
        index = Self.allocate(UInt32.self, capacity)
        index.initialize(repeating: 0, count: capacity)
        for e in 0..<count { index[emptySlot(for: entries[e].hash)] = UInt32(e + 1) }
    }

    @usableFromInline func growEntries(to capacity: Int) {
        let grown = Self.allocate(Entry.self, capacity)
        grown.moveInitialize(from: entries, count: count)
        entries.deallocate()
        entries = grown
        entriesCapacity = capacity
    }
}
