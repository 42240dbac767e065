internal import CSQLite
import Foundation
import FraudModel

/// Tuning of a ``CheckpointedStore``; the defaults suit 32 partitions per process.
public struct StoreOptions: Sendable, Hashable {
    /// How many keys to keep cached in memory; the cache is emptied at a flush that finds it
    /// larger.
    public var cacheCapacity: Int
    /// SQLite page cache per store, in KiB.
    public var pageCacheKiB: Int
    /// The check run at open to detect corruption.
    public var integrityCheck: IntegrityCheck
    /// A commit writes to SQLite once this long has passed since the last write (nil: only by
    /// ``flushKeys`` or an explicit flush).
    public var flushInterval: Duration?
    /// ... or once this many committed keys wait to be written (0: at every commit).
    public var flushKeys: Int
    /// After this many SQLite reads that found no row, the store indexes the keys SQLite holds
    /// in memory (``StoredKeyIndex``) and answers such misses without a read. A store whose
    /// misses are rare (cards met again) never pays for the index.
    public var absentReadsBeforeKeyIndex: Int

    public enum IntegrityCheck: Sendable, Hashable {
        /// No check (tests and benchmarks that open many stores).
        case none
        /// `PRAGMA quick_check`: page and b-tree structure, O(file size), no index cross-check.
        case quick
        /// `PRAGMA integrity_check`: the thorough check, also of record contents; slower.
        case full
    }

    public init(cacheCapacity: Int = 50_000, pageCacheKiB: Int = 8_192, integrityCheck: IntegrityCheck = .quick,
                flushInterval: Duration? = .seconds(5), flushKeys: Int = 50_000, absentReadsBeforeKeyIndex: Int = 1_000) {
        self.cacheCapacity = cacheCapacity
        self.pageCacheKiB = pageCacheKiB
        self.integrityCheck = integrityCheck
        self.flushInterval = flushInterval
        self.flushKeys = flushKeys
        self.absentReadsBeforeKeyIndex = absentReadsBeforeKeyIndex
    }
}

/// Counters of a store's writes to SQLite, for logs and metrics.
public struct StoreStatistics: Sendable, Hashable {
    public var flushes = 0
    public var keysFlushed = 0
    /// SQLite reads of one key (a cache miss), and those of them that found no row.
    public var keysRead = 0
    public var absentKeysRead = 0
    public var flushTime = Duration.zero
    public var recordsRestored = 0
}

/// The SQLite file every ``CheckpointedStore`` uses, whatever its value type.
package enum StoreDatabase {
    /// `PRAGMA user_version` of the schema this build writes. Version 1 (a window store's row per
    /// window) and 2 (a window store's row per card, its checkpoint with one source offset) came
    /// before any release; such a file is rebuilt from the changelog.
    static let schemaVersion: Int64 = 3

    /// A row per key: `value` holds the key's changelog value, and `rank` the value's
    /// ``StoreValue/rank``, so that a range scan (a window store's retention purge) finds its
    /// rows without decoding values, and without an index to update on every write.
    /// `positions` holds the checkpoint's source positions as ``ChangelogPositions`` encodes them.
    static let schema = """
        CREATE TABLE entries(key BLOB NOT NULL PRIMARY KEY, rank INTEGER NOT NULL, value BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE stream(id INTEGER PRIMARY KEY CHECK (id = 1), time INTEGER NOT NULL);
        CREATE TABLE checkpoint(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            positions BLOB NOT NULL, changelog_offset INTEGER NOT NULL);
        """

    package static func path(directory: String, fileName: String) -> String {
        directory.hasSuffix("/") ? directory + fileName : directory + "/" + fileName
    }

    /// Deletes the database, WAL, shared-memory and journal files at `path`; missing ones are fine.
    package static func destroy(path: String) throws(SQLiteError) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = path + suffix
            guard FileManager.default.fileExists(atPath: file) else { continue }
            do {
                try FileManager.default.removeItem(atPath: file)
            } catch {
                throw SQLiteError(code: .ioError, resultCode: 0, message: "cannot delete \(file): \(error)")
            }
        }
    }

    static func checkIntegrity(_ db: SQLiteConnection, _ check: StoreOptions.IntegrityCheck) throws(SQLiteError) {
        let sql: String
        switch check {
        case .none: return
        case .quick: sql = "PRAGMA quick_check"
        case .full: sql = "PRAGMA integrity_check"
        }
        let rows = try db.textColumn(sql)
        guard rows == ["ok"] else {
            let shown = rows.prefix(3).joined(separator: "; ")
            throw SQLiteError(code: .corrupt, resultCode: SQLITE_CORRUPT, message: "\(db.path) failed \(sql): \(shown)")
        }
    }

    /// Creates the schema in an empty database; returns whether it did.
    static func prepareSchema(_ db: SQLiteConnection) throws(SQLiteError) -> Bool {
        let version = try db.scalarInt64("PRAGMA user_version") ?? 0
        if version == schemaVersion { return false }
        guard version == 0 else {
            throw SQLiteError(code: .unsupportedSchema, resultCode: 0,
                              message: "\(db.path) has schema version \(version); this build reads version \(schemaVersion)")
        }
        let objects = try db.scalarInt64("SELECT count(*) FROM sqlite_schema") ?? 0
        guard objects == 0 else {
            throw SQLiteError(code: .unsupportedSchema, resultCode: 0,
                              message: "\(db.path) holds tables but no schema version: not a state store")
        }
        try db.execute("BEGIN IMMEDIATE; \(schema) PRAGMA user_version = \(schemaVersion); COMMIT")
        return true
    }

    static func holdsNoEntries(_ db: SQLiteConnection) throws(SQLiteError) -> Bool {
        try db.scalarInt64("SELECT NOT EXISTS (SELECT 1 FROM entries)") == 1
    }

    /// The first 16 bytes as two big-endian integers, zero-padded.
    @inline(__always)
    static func prefix16(_ bytes: UnsafeRawBufferPointer) -> (UInt64, UInt64) {
        if bytes.count >= 16 {
            return (UInt64(bigEndian: bytes.loadUnaligned(as: UInt64.self)),
                    UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)))
        }
        var a: UInt64 = 0
        var b: UInt64 = 0
        for i in 0..<16 {
            let byte = i < bytes.count ? UInt64(bytes[i]) : 0
            if i < 8 { a = a << 8 | byte } else { b = b << 8 | byte }
        }
        return (a, b)
    }

    /// Byte order of keys (memcmp, then length): SQLite's order of BLOB keys.
    static func precedes(_ a: CardBytes, _ b: CardBytes) -> Bool {
        let common = min(a.count, b.count)
        let c = common == 0 ? 0 : memcmp(a.base, b.base, common)
        return c != 0 ? c < 0 : a.count < b.count
    }
}
