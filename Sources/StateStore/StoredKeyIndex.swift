import FraudModel

/// The keys a store's SQLite table holds, in memory: 64-bit hashes, each with the number of
/// keys that share it, so that a key whose hash is absent is a key SQLite does not hold.
///
/// Once a ``CheckpointedStore``'s cache has outgrown its capacity and forgotten keys, a key met
/// for the first time cannot be told from a forgotten one without a SQLite read, and nearly
/// every key the audit ledger meets is new (a transaction id): `polyglot dev store-bench
/// --records 500000 --cards 500000`, where every card is new, spent most of its time in those
/// reads. With the index, such a miss costs a hash lookup.
///
/// Exact or nothing: a key is removed only when its row is known to be deleted, and a write
/// whose effect on the table is unknown (a restore over rows it did not read) drops the index,
/// which is then rebuilt from the table when needed again. Counting per hash keeps it exact
/// when two keys share a hash.
struct StoredKeyIndex {
    private var counts: [UInt64: UInt32] = [:]

    /// Keys indexed.
    private(set) var count = 0

    /// Indexes every key of the `entries` table.
    init(connection: SQLiteConnection) throws(SQLiteError) {
        let scan = try connection.statement("SELECT key FROM entries")
        defer { scan.reset() }
        while try scan.step() {
            scan.withBlob(0) { key in inserted(key) }
        }
    }

    /// Whether SQLite may hold `key` (false: it certainly does not).
    func mayHold(_ key: CardBytes) -> Bool {
        counts[Self.hash(UnsafeRawBufferPointer(key.buffer))] != nil
    }

    /// A row for `key` was written where none was.
    mutating func inserted(_ key: CardBytes) {
        inserted(UnsafeRawBufferPointer(key.buffer))
    }

    /// `key`'s row was deleted. False when the key was not indexed: the index no longer
    /// matches the table and must be dropped.
    mutating func deleted(_ key: CardBytes) -> Bool {
        let h = Self.hash(UnsafeRawBufferPointer(key.buffer))
        guard let n = counts[h] else { return false }
        counts[h] = n > 1 ? n - 1 : nil
        count -= 1
        return true
    }

    private mutating func inserted(_ key: UnsafeRawBufferPointer) {
        counts[Self.hash(key), default: 0] += 1
        count += 1
    }

    private static func hash(_ key: UnsafeRawBufferPointer) -> UInt64 {
        var hasher = Hasher()
        hasher.combine(bytes: key)
        return UInt64(bitPattern: Int64(hasher.finalize()))
    }
}
