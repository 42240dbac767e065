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

    public enum IntegrityCheck: Sendable, Hashable {
        /// No check (tests and benchmarks that open many stores).
        case none
        /// `PRAGMA quick_check`: page and b-tree structure, O(file size), no index cross-check.
        case quick
        /// `PRAGMA integrity_check`: the thorough check, also of record contents; slower.
        case full
    }

    public init(cacheCapacity: Int = 50_000, pageCacheKiB: Int = 8_192, integrityCheck: IntegrityCheck = .quick,
                flushInterval: Duration? = .seconds(5), flushKeys: Int = 50_000) {
        self.cacheCapacity = cacheCapacity
        self.pageCacheKiB = pageCacheKiB
        self.integrityCheck = integrityCheck
        self.flushInterval = flushInterval
        self.flushKeys = flushKeys
    }
}

/// Counters of a store's writes to SQLite, for logs and metrics.
public struct StoreStatistics: Sendable, Hashable {
    public var flushes = 0
    public var keysFlushed = 0
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

/// One task's keyed state in SQLite behind a write-back cache, committed with Kafka in cycles
/// and checkpointed with the source positions it covers: the machinery under a role's store
/// (``SQLiteWindowStore`` for `polyglot process`), whatever its ``StoreValue``.
///
/// **Write-back cache.** Keys live in a ``CardTable`` (byte-keyed, so a lookup builds no
/// `String`): every key read or written has an entry holding its current value; a miss reads
/// SQLite by primary key. A change first saves the key's committed value in an undo log, so the
/// log is both the cycle's dirty set and its rollback. ``pendingChanges(into:)`` turns each
/// changed key into one changelog record, ``commit(checkpoint:)`` makes the changes committed,
/// and ``flush()`` writes the keys changed since SQLite last saw them, with the checkpoint, in
/// one SQLite transaction. So the changelog sees one write per key per commit and SQLite at most
/// one per key per flush, never one per record.
///
/// **Cycle**, as a processor drives it:
/// 1. read and change entries (``entry(for:)``, ``update(_:_:)``, ``setStreamTime(_:)``);
/// 2. send ``pendingChanges(into:)`` to the changelog inside the Kafka transaction, and
///    ``seal()`` the cycle if the next one should run while Kafka commits;
/// 3. after Kafka commits, ``commit(checkpoint:)`` (it flushes to SQLite when due);
///    if Kafka aborts, ``rollback()`` (both cycles);
/// 4. on revocation or shutdown, after the last commit, ``close()`` (it flushes).
/// On assignment: open; if ``checkpoint`` is nil or behind the changelog's end,
/// ``apply(key:value:)`` the changelog from ``checkpoint``'s `changelogOffset` (or the start)
/// and ``commitRestore(checkpoint:)``; then resume each source at ``checkpoint``'s `positions`.
///
/// **Threading.** Every call may block on disk. Use a store from one thread at a time: the
/// task's dedicated thread, never the Swift cooperative pool. Not `Sendable`, on purpose.
///
/// **Read errors.** Reads cannot throw (the detector's ``WindowStore`` reads are not allowed
/// to). If SQLite fails during a read, the read answers as if the key were absent and the error
/// is kept in ``readFailure``; ``pendingChanges(into:)``, ``seal()`` and ``commit(checkpoint:)``
/// then throw it, so the Kafka transaction that carries results computed from the failed read
/// is aborted, never committed, and ``rollback()`` forgets what the failed read cached.
///
/// **Durability.** WAL with `synchronous=NORMAL`: a power loss may lose the last SQLite
/// transactions but never corrupts the file. That is enough because Kafka holds the truth: the
/// checkpoint row commits atomically with the state, so a lost transaction (or a crash before a
/// flush) leaves the store consistent but *behind*, which restore from the changelog repairs; a
/// full fsync per commit would buy nothing.
package final class CheckpointedStore<Value: StoreValue> {
    /// What SQLite holds for a cached key.
    enum Row: UInt8 {
        case unknown, present, absent
        /// The read failed: the entry is a guess, dropped at the rollback that must follow.
        case failed
    }

    /// A cached key.
    struct Entry {
        /// With the open cycle's changes.
        var value: Value
        /// Its record in the undo log when the open cycle changed it, else -1.
        var undo: Int32 = -1
        var row: Row
        /// In ``unflushed``: committed, not yet written to SQLite.
        var unflushed = false
    }

    /// A key's value before the open cycle first changed it.
    struct Undo {
        var entry: Int32
        var value: Value
    }

    /// The database file.
    let path: String
    let options: StoreOptions
    /// The checkpoint stored in SQLite with the state it describes: read at open (nil for a new
    /// store), advanced by each flush. Restore resumes from its `changelogOffset`.
    package private(set) var checkpoint: StoreCheckpoint?
    /// The checkpoint of the last ``commit(checkpoint:)``, flushed or not.
    var committedCheckpoint: StoreCheckpoint? { unflushedCheckpoint ?? checkpoint }
    /// Whether opening created the database (no state yet: restore from the changelog's start).
    let wasCreated: Bool
    /// The first SQLite error met by a read since the last commit or rollback (see the type's notes).
    private(set) var readFailure: SQLiteError?
    /// What this store has written to SQLite since it was opened.
    private(set) var statistics = StoreStatistics()

    let connection: SQLiteConnection
    let cache = CardTable<Entry>()
    var undoLog: [Undo] = []
    /// The sealed cycle's undo log (see ``seal()``).
    var sealedUndo: [Undo] = []
    /// Whether a cycle is sealed, waiting for ``commit(checkpoint:)``.
    private(set) var isSealed = false
    var sealedStreamTime: Int64?
    /// Entries committed but not yet written to SQLite.
    var unflushed: [Int32] = []
    var committedStreamTime: Int64?
    var dirtyStreamTime: Int64?
    var unflushedStreamTime: Int64??
    /// The checkpoint of the last commit, when newer than the one in SQLite.
    var unflushedCheckpoint: StoreCheckpoint?
    var lastFlush: ContinuousClock.Instant
    var restoring = false
    var restoreIntoEmpty = false
    var restoreStreamTime: Int64??
    /// Whether every key SQLite holds is in the cache: true from the open of an empty store
    /// until the cache first forgets a key. A miss then means a new key, with no read: a new
    /// task (or one restored into an empty store) would otherwise ask SQLite about every key it
    /// meets for the first time.
    var cacheHoldsEveryCard = false
    /// Reused by ``flush()``: the row value being written.
    var rowValue: [UInt8] = []

    let selectEntry: SQLiteStatement
    let upsertEntry: SQLiteStatement
    let deleteEntry: SQLiteStatement
    let upsertStream: SQLiteStatement
    let deleteStream: SQLiteStatement
    let upsertCheckpoint: SQLiteStatement
    let entriesRankedUpTo: SQLiteStatement
    let beginStatement: SQLiteStatement
    let commitStatement: SQLiteStatement
    let rollbackStatement: SQLiteStatement

    /// Opens the store in file `fileName` of `directory` (created when missing), creating the
    /// database when absent.
    ///
    /// Throws an ``SQLiteError`` whose ``SQLiteError/requiresRebuild`` is true when the file is
    /// corrupt, not a database, or of another schema: delete it with
    /// ``StoreDatabase/destroy(path:)`` and restore from the changelog's start.
    /// ``SQLiteError/isRetriable`` errors (BUSY) mean another connection still holds the store
    /// (it is opened in exclusive locking mode, so two processes cannot share a state directory
    /// by mistake).
    package init(directory: String, fileName: String, options: StoreOptions) throws(SQLiteError) {
        precondition(Value.changelogTag != ChangelogRecord.streamTimeTag, "a store value's tag is the stream time's")
        self.path = StoreDatabase.path(directory: directory, fileName: fileName)
        self.options = options
        do {
            try StateDirectory.makePrivateDirectory(directory)
        } catch {
            throw SQLiteError(code: .cantOpen, resultCode: 0, message: "cannot create state directory \(directory): \(error)")
        }
        let db = try SQLiteConnection(path: path)
        do throws(SQLiteError) {
            // Exclusive locking: the store has one user, and WAL then needs no shared-memory file.
            try db.execute("PRAGMA locking_mode = EXCLUSIVE")
            try StoreDatabase.checkIntegrity(db, options.integrityCheck)
            let mode = try db.textColumn("PRAGMA journal_mode = WAL")
            guard mode == ["wal"] else {
                throw SQLiteError(code: .other(0), resultCode: 0, message: "could not enable WAL (journal mode \(mode))")
            }
            // journal_size_limit: after a checkpoint, truncate the WAL beyond 16 MiB, so 32 stores
            // do not each keep their largest WAL forever.
            try db.execute("""
                PRAGMA synchronous = NORMAL; PRAGMA cache_size = -\(max(options.pageCacheKiB, 64));
                PRAGMA journal_size_limit = 16777216
                """)
            wasCreated = try StoreDatabase.prepareSchema(db)
            cacheHoldsEveryCard = try StoreDatabase.holdsNoEntries(db)

            selectEntry = try db.statement("SELECT value FROM entries WHERE key = ?1")
            upsertEntry = try db.statement(
                "INSERT INTO entries(key, rank, value) VALUES (?1, ?2, ?3) ON CONFLICT(key) DO UPDATE SET rank = excluded.rank, value = excluded.value")
            deleteEntry = try db.statement("DELETE FROM entries WHERE key = ?1")
            upsertStream = try db.statement(
                "INSERT INTO stream(id, time) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET time = excluded.time")
            deleteStream = try db.statement("DELETE FROM stream")
            upsertCheckpoint = try db.statement("""
                INSERT INTO checkpoint(id, positions, changelog_offset) VALUES (1, ?1, ?2)
                ON CONFLICT(id) DO UPDATE SET positions = excluded.positions, changelog_offset = excluded.changelog_offset
                """)
            entriesRankedUpTo = try db.statement("SELECT key, value FROM entries WHERE rank <= ?1")
            beginStatement = try db.statement("BEGIN IMMEDIATE")
            commitStatement = try db.statement("COMMIT")
            rollbackStatement = try db.statement("ROLLBACK")

            committedStreamTime = try db.scalarInt64("SELECT time FROM stream WHERE id = 1")
            let read = try db.statement("SELECT positions, changelog_offset FROM checkpoint WHERE id = 1")
            defer { read.reset() }
            if try read.step() {
                guard let positions = read.withBlob(0, { ChangelogPositions.decode($0) }) else {
                    throw SQLiteError(code: .corrupt, resultCode: SQLITE_CORRUPT, message: "\(db.path): checkpoint row holds malformed positions")
                }
                checkpoint = StoreCheckpoint(positions: positions, changelogOffset: read.int64(1))
            }
            lastFlush = ContinuousClock.now
        } catch {
            try? db.close()
            throw error
        }
        connection = db
    }

    /// Discards uncommitted changes, writes committed ones (``flush()``) and closes the database.
    /// Call before destroying the files or handing the partition to another owner; the processor
    /// commits first. If the flush fails the database is still closed (it is behind, which
    /// restore repairs) and the error is thrown.
    package func close() throws(SQLiteError) {
        if connection.inTransaction { try? rollbackStatement.run() }
        rollback()
        var flushError: SQLiteError?
        do { try flush() } catch { flushError = error }
        try connection.close()
        if let flushError { throw flushError }
    }

    // MARK: - Reads and changes

    /// The largest event time (or whatever the role's scalar clock is) as of the open cycle.
    var streamTime: Int64? { dirtyStreamTime ?? sealedStreamTime ?? committedStreamTime }

    /// Sets the stream time in the open cycle.
    @inline(__always)
    func setStreamTime(_ time: Int64) {
        dirtyStreamTime = time
    }

    /// The cache entry of `key`, read from SQLite on a miss (a failed read caches an absent
    /// value and sets ``readFailure``). Entry numbers stay valid until the next ``flush()``,
    /// ``rollback()`` or restore call.
    @inline(__always)
    package func entry(for key: CardBytes) -> Int {
        let e = cache.find(key)
        if e >= 0 { return e }
        return load(key)
    }

    /// Entry `e`'s value, with the open cycle's changes, read in place: a copy would retain and
    /// release the value's storage on every read of the hot path.
    @inline(__always)
    package subscript(e: Int) -> Value {
        unsafeAddress { UnsafePointer(valueAddress(e)) }
    }

    @inline(__always)
    private func valueAddress(_ e: Int) -> UnsafeMutablePointer<Value> {
        (UnsafeMutableRawPointer(cache.payload(e)) + valueOffset).assumingMemoryBound(to: Value.self)
    }

    /// Where an entry's value lies in it.
    private let valueOffset = MemoryLayout<Entry>.offset(of: \Entry.value)!

    /// Entry `e`'s key bytes, valid until the cache next changes shape.
    @inline(__always)
    package func key(_ e: Int) -> CardBytes {
        cache.key(e)
    }

    /// Changes entry `e`'s value in the open cycle (saving its committed value first).
    @inline(__always)
    package func update(_ e: Int, _ change: (inout Value) -> Void) {
        willChange(e)
        change(&valueAddress(e).pointee)
    }

    /// The value of `key` (``StoreValue/absent`` when none).
    package func value(for key: CardBytes) -> Value {
        self[entry(for: key)]
    }

    /// Sets the value of `key` in the open cycle (``StoreValue/absent`` deletes it).
    func setValue(_ value: Value, for key: CardBytes) {
        update(entry(for: key)) { $0 = value }
    }

    /// Calls `body` with every entry whose value exists and ranks at most `bound`: those cached,
    /// and the others, found by one scan of SQLite's rank column, read into the cache first
    /// (SQLite is current for every key not cached, since unflushed keys are never evicted).
    /// `body` may ``update(_:_:)`` the entry it is given.
    package func forEachEntry(rankAtMost bound: Int64, _ body: (Int) -> Void) {
        if !cacheHoldsEveryCard {
            forEachRow(entriesRankedUpTo, bind: { $0.bind(bound, at: 1) }) { row in
                row.withBlob(0) { key in
                    let bytes = CardBytes(key.bindMemory(to: UInt8.self))
                    guard cache.find(bytes) < 0 else { return }
                    do throws(SQLiteError) {
                        let value = try row.withBlob(1) { value in
                            Result { () throws(SQLiteError) in try Self.decodeRow(value) }
                        }.get()
                        _ = cache.insert(bytes, Entry(value: value, row: .present))
                    } catch {
                        readFailure = readFailure ?? error
                    }
                }
            }
        }
        for e in 0..<cache.count where self[e].exists && self[e].rank <= bound { body(e) }
    }

    func load(_ key: CardBytes) -> Int {
        if cacheHoldsEveryCard { return cache.insert(key, Entry(value: .absent, row: .absent)) }
        let statement = selectEntry
        // SQLite reads a SQLITE_STATIC binding only while stepping, and every use binds afresh.
        statement.bindBlobNoCopy(UnsafeRawBufferPointer(key.buffer), at: 1)
        defer { statement.reset() }
        do throws(SQLiteError) {
            guard try statement.step() else { return cache.insert(key, Entry(value: .absent, row: .absent)) }
            let value = try statement.withBlob(0) { value in
                Result { () throws(SQLiteError) in try Self.decodeRow(value) }
            }.get()
            return cache.insert(key, Entry(value: value, row: .present))
        } catch {
            readFailure = readFailure ?? error
            return cache.insert(key, Entry(value: .absent, row: .failed))
        }
    }

    static func decodeRow(_ value: UnsafeRawBufferPointer) throws(SQLiteError) -> Value {
        do {
            return try Value.decode(value)
        } catch {
            throw SQLiteError(code: .corrupt, resultCode: SQLITE_CORRUPT, message: "entry row: \(error.message)")
        }
    }

    /// Saves entry `e`'s value in the undo log before the open cycle first changes it.
    @inline(__always)
    func willChange(_ e: Int) {
        guard cache[e].undo < 0 else { return }
        cache[e].undo = Int32(undoLog.count)
        undoLog.append(Undo(entry: Int32(e), value: self[e]))
    }

    /// The value of entry `e` as of the last commit (with no cycle sealed), or as of the sealed
    /// cycle.
    @inline(__always)
    func committedValue(_ e: Int) -> Value {
        let u = cache[e].undo
        return u < 0 ? cache[e].value : undoLog[Int(u)].value
    }

    // MARK: - Commit cycle

    /// Number of keys changed in the open cycle, plus one for a changed stream time (an upper
    /// bound: a key changed and changed back produces no record).
    var pendingChangeCount: Int { undoLog.count + (dirtyStreamTime == nil ? 0 : 1) }

    /// One changelog record per key changed since the last commit or rollback (a tombstone for a
    /// deleted key), in the order the cycle first changed them, then the stream time if it
    /// moved, into a reusable buffer (emptied first). The same input gives the same records.
    /// Throws ``readFailure`` if a read failed: the cycle's results cannot be trusted.
    package func pendingChanges(into batch: inout ChangelogBatch) throws(SQLiteError) {
        if let readFailure { throw readFailure }
        batch.removeAll()
        // By index and in place, here and in the other walks of an undo log: copying each
        // record out would retain and release its value's storage.
        undoLog.withUnsafeBufferPointer { undo in
            for u in undo.indices {
                let e = Int(undo[u].entry)
                if self[e] == undo[u].value { continue }
                batch.append(cache.key(e), self[e])
            }
        }
        if let dirtyStreamTime, dirtyStreamTime != sealedStreamTime ?? committedStreamTime { batch.appendStreamTime(dirtyStreamTime) }
    }

    /// Closes the open cycle without committing it, so that the next one can start while the
    /// Kafka transaction carrying this one's ``pendingChanges(into:)`` commits. The next
    /// ``commit(checkpoint:)`` commits the sealed cycle only; ``rollback()`` rolls back both.
    /// Call after ``pendingChanges(into:)`` succeeded, with no cycle sealed already.
    package func seal() throws(SQLiteError) {
        if let readFailure { throw readFailure }
        guard !isSealed else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "seal with a cycle sealed already: commit or roll back first")
        }
        for u in undoLog.indices { cache[Int(undoLog[u].entry)].undo = -1 }
        swap(&sealedUndo, &undoLog)
        undoLog.removeAll(keepingCapacity: true)
        sealedStreamTime = dirtyStreamTime
        dirtyStreamTime = nil
        isSealed = true
    }

    /// Makes the sealed cycle's changes (see ``seal()``), or with none sealed the open cycle's,
    /// committed: call it only after the Kafka transaction carrying their records committed.
    /// Reads see them from now on and ``rollback()`` keeps them.
    ///
    /// They are written to SQLite, with `checkpoint`, by ``flush()``, which this call runs when
    /// ``StoreOptions/flushInterval`` has passed or ``StoreOptions/flushKeys`` keys wait. Writing
    /// at every Kafka commit would cost a SQLite transaction (and a WAL write of every page
    /// touched) per 100 ms per partition for little gain: until a flush, SQLite is merely
    /// behind, with a checkpoint saying by how much, and restore from the changelog repairs that
    /// after a crash. A thrown error concerns only that write (the commit itself took effect);
    /// the next commit retries it.
    package func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        guard !restoring else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "commit during a restore: call commitRestore(checkpoint:)")
        }
        precondition(checkpoint.positions.count <= ChangelogPositions.maxCount, "more source positions than a checkpoint row holds")
        if !isSealed {
            // No cycle sealed: commit the open one (sealing checks ``readFailure``).
            try seal()
        }
        // The sealed cycle read nothing that failed (sealing checks); a failure since then
        // belongs to the open cycle, which stays open.
        sealedUndo.withUnsafeBufferPointer { sealed in
            for u in sealed.indices {
                let e = Int(sealed[u].entry)
                guard !cache[e].unflushed else { continue }
                // Changed when its value as of this commit differs from the one before the cycle.
                let undo = Int(cache[e].undo)
                let changed = undo < 0 ? self[e] != sealed[u].value : undoLog[undo].value != sealed[u].value
                if changed {
                    cache[e].unflushed = true
                    unflushed.append(sealed[u].entry)
                }
            }
        }
        sealedUndo.removeAll(keepingCapacity: true)
        if let sealedStreamTime {
            committedStreamTime = sealedStreamTime
            unflushedStreamTime = .some(sealedStreamTime)
        }
        sealedStreamTime = nil
        isSealed = false
        unflushedCheckpoint = checkpoint
        if flushIsDue { try flush() }
    }

    /// Whether committed changes wait to be written and ``StoreOptions/flushInterval`` or
    /// ``StoreOptions/flushKeys`` says it is time: ``commit(checkpoint:)`` then flushes. A caller
    /// with idle time (waiting for a Kafka commit) may ``flush()`` earlier; uncommitted changes
    /// stay in memory either way, since a flush writes committed values only.
    var flushIsDue: Bool {
        guard unflushedCheckpoint != nil else { return false }
        return unflushed.count >= options.flushKeys
            || options.flushInterval.map({ ContinuousClock.now - lastFlush >= $0 }) ?? false
    }

    /// Number of committed keys not yet written to SQLite, plus one for the stream time.
    var unflushedChangeCount: Int { unflushed.count + (unflushedStreamTime == nil ? 0 : 1) }

    /// Writes every committed change and the last commit's checkpoint to SQLite in one
    /// transaction (in key order, which is the table's order: the writes walk the b-tree once,
    /// left to right). On error nothing is written and the changes stay queued, so the call can
    /// be retried.
    func flush() throws(SQLiteError) {
        guard !isSealed else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "flush with a sealed cycle: commit or roll back first")
        }
        let started = ContinuousClock.now
        lastFlush = started
        guard let target = unflushedCheckpoint else { return }
        defer { statistics.flushTime += ContinuousClock.now - started }
        var order: [(UInt64, UInt64, Int32)] = []
        order.reserveCapacity(unflushed.count)
        for e in unflushed {
            let (a, b) = StoreDatabase.prefix16(UnsafeRawBufferPointer(cache.key(Int(e)).buffer))
            order.append((a, b, e))
        }
        order.sort { x, y in
            if x.0 != y.0 { return x.0 < y.0 }
            if x.1 != y.1 { return x.1 < y.1 }
            return StoreDatabase.precedes(cache.key(Int(x.2)), cache.key(Int(y.2)))
        }
        var written = 0
        if !connection.inTransaction { try beginStatement.run() }
        do throws(SQLiteError) {
            for (_, _, e) in order {
                let e = Int(e)
                let value = committedValue(e)
                let key = UnsafeRawBufferPointer(cache.key(e).buffer)
                if value.exists {
                    rowValue.removeAll(keepingCapacity: true)
                    value.encode(into: &rowValue)
                    upsertEntry.bindBlobNoCopy(key, at: 1)
                    upsertEntry.bind(value.rank, at: 2)
                    let failure = rowValue.withUnsafeBytes { bytes in
                        upsertEntry.bindBlobNoCopy(bytes, at: 3)
                        return upsertEntry.runReturningError()
                    }
                    if let failure { throw failure }
                } else if cache[e].row != .absent {
                    deleteEntry.bindBlobNoCopy(key, at: 1)
                    if let failure = deleteEntry.runReturningError() { throw failure }
                } else {
                    continue
                }
                written += 1
            }
            switch unflushedStreamTime {
            case .some(.some(let time)):
                upsertStream.bind(time, at: 1)
                try upsertStream.run()
            case .some(.none):
                try deleteStream.run()
            case .none:
                break
            }
            let positions = ChangelogPositions.encode(target.positions)
            let failure = positions.withUnsafeBytes { bytes in
                upsertCheckpoint.bindBlobNoCopy(bytes, at: 1)
                upsertCheckpoint.bind(target.changelogOffset, at: 2)
                return upsertCheckpoint.runReturningError()
            }
            if let failure { throw failure }
            try commitStatement.run()
        } catch {
            try? rollbackStatement.run()
            throw error
        }
        for e in unflushed {
            let e = Int(e)
            cache[e].unflushed = false
            cache[e].row = committedValue(e).exists ? .present : .absent
        }
        statistics.keysFlushed += written
        statistics.flushes += 1
        unflushed.removeAll(keepingCapacity: true)
        unflushedStreamTime = nil
        unflushedCheckpoint = nil
        checkpoint = target
        if cache.count > options.cacheCapacity {
            // Forget clean keys; the open cycle's (none at a commit) stay, renumbered.
            if undoLog.isEmpty {
                cache.removeAll()
            } else {
                retainEntries { $0.undo >= 0 }
            }
            cacheHoldsEveryCard = false
        }
    }

    /// Keeps the cache entries `keep` accepts, renumbering the undo log and the unflushed list.
    func retainEntries(_ keep: (Entry) -> Bool) {
        let moved = cache.retain { _, _, entry in keep(entry) }
        for i in undoLog.indices { undoLog[i].entry = moved[Int(undoLog[i].entry)] }
        unflushed = unflushed.map { moved[Int($0)] }
        for i in sealedUndo.indices { sealedUndo[i].entry = moved[Int(sealedUndo[i].entry)] }
        precondition(!undoLog.contains { $0.entry < 0 } && !sealedUndo.contains { $0.entry < 0 } && !unflushed.contains { $0 < 0 },
                     "dropped a changed cache entry")
    }

    /// Discards uncommitted changes (the Kafka transaction aborted) and an unfinished restore:
    /// afterwards the store reads as of the last commit.
    package func rollback() {
        if connection.inTransaction { try? rollbackStatement.run() }
        for u in undoLog {
            let e = Int(u.entry)
            cache[e].value = u.value
            cache[e].undo = -1
        }
        undoLog.removeAll(keepingCapacity: true)
        // Then the sealed cycle, which holds the older values.
        for u in sealedUndo { cache[Int(u.entry)].value = u.value }
        sealedUndo.removeAll(keepingCapacity: true)
        isSealed = false
        sealedStreamTime = nil
        dirtyStreamTime = nil
        if restoring {
            // What the restore applied is unflushed (it began with a flush): forget it all.
            restoring = false
            restoreStreamTime = nil
            for e in unflushed { cache[Int(e)].unflushed = false }
            unflushed.removeAll(keepingCapacity: true)
            unflushedCheckpoint = nil
            unflushedStreamTime = nil
            cache.removeAll()
            cacheHoldsEveryCard = false
        } else if readFailure != nil {
            retainEntries { $0.row != .failed }
        }
        readFailure = nil
    }

    // MARK: - Restore

    /// Applies one record read from the changelog (borrowed key and value bytes, nil value:
    /// tombstone, copying nothing). Records go to the cache, one entry per key, and are written
    /// to SQLite by ``commitRestore(checkpoint:)``. Applying is idempotent, so replaying a range
    /// twice gives the same state. Throws ``ChangelogDecodingError`` for a malformed record
    /// (nothing of it is applied; the restore stays open) or ``SQLiteError``. Requires no
    /// uncommitted changes.
    package func apply(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws {
        if !restoring { try beginRestore() }
        switch try ChangelogRecord.parseKey(key, entryTag: Value.changelogTag, maxIdByteCount: Value.maxKeyByteCount) {
        case .entry(let range):
            let decoded = try value.map { (v) throws(ChangelogDecodingError) in try Value.decode(v) } ?? .absent
            let id = CardBytes(UnsafeRawBufferPointer(rebasing: key[range]).bindMemory(to: UInt8.self))
            var e = cache.find(id)
            if e < 0 {
                e = cache.insert(id, Entry(value: decoded, row: restoreIntoEmpty ? .absent : .unknown))
            } else {
                cache[e].value = decoded
            }
            if !cache[e].unflushed {
                cache[e].unflushed = true
                unflushed.append(Int32(e))
            }
        case .streamTime:
            restoreStreamTime = .some(try value.map { (v) throws(ChangelogDecodingError) in try ChangelogRecord.parseStreamTime(v) })
        }
        statistics.recordsRestored += 1
    }

    func beginRestore() throws(SQLiteError) {
        guard pendingChangeCount == 0, !isSealed else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "restore with uncommitted changes: commit or roll back first")
        }
        try flush()
        // Deleting a key SQLite does not hold is a wasted b-tree search: skip them all when
        // restoring into an empty store, the usual case.
        restoreIntoEmpty = try StoreDatabase.holdsNoEntries(connection)
        restoring = true
    }

    /// Writes the records applied since the last call, in one SQLite transaction, together with
    /// `checkpoint` (its `changelogOffset` is the next changelog offset to read). May be called
    /// periodically during a long restore to bound memory; call it once more at the end.
    package func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        precondition(checkpoint.positions.count <= ChangelogPositions.maxCount, "more source positions than a checkpoint row holds")
        if !restoring { try beginRestore() }
        unflushedCheckpoint = checkpoint
        if let restoreStreamTime { unflushedStreamTime = .some(restoreStreamTime) }
        do throws(SQLiteError) {
            try flush()
        } catch {
            // The applied records stay gathered: the call can be retried, or rollback() drops them.
            unflushedStreamTime = nil
            throw error
        }
        if let restoreStreamTime { committedStreamTime = restoreStreamTime }
        restoreStreamTime = nil
        restoreIntoEmpty = false
        restoring = false
    }

    // MARK: - SQLite access

    /// Steps `statement` over all its rows (after `bind`), recording a failure in
    /// ``readFailure``. The rows must be consumed inside `row`.
    func forEachRow(_ statement: SQLiteStatement, bind: (SQLiteStatement) -> Void, row: (SQLiteStatement) -> Void) {
        bind(statement)
        defer { statement.reset() }
        do throws(SQLiteError) {
            while try statement.step() { row(statement) }
        } catch {
            readFailure = readFailure ?? error
        }
    }

    /// One committed row: its key bytes, stored rank and decoded value.
    struct CommittedRow {
        var key: [UInt8]
        var rank: Int64
        var value: Value
    }

    /// Every committed row in key order, and the committed stream time (tests and diagnostics;
    /// flushes first, so that SQLite holds everything committed, then reads the whole store).
    func committedRows() throws -> (rows: [CommittedRow], streamTime: Int64?) {
        try flush()
        var rows: [CommittedRow] = []
        let select = try connection.statement("SELECT key, rank, value FROM entries ORDER BY key")
        defer { select.reset() }
        while try select.step() {
            let value = try select.withBlob(2) { try Value.decode($0) }
            rows.append(CommittedRow(key: select.withBlob(0) { Array($0) }, rank: select.int64(1), value: value))
        }
        return (rows, try connection.scalarInt64("SELECT time FROM stream WHERE id = 1"))
    }
}
