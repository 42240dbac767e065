internal import CSQLite
import Foundation
import FraudModel

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
///
/// **Across modules.** The per-record members (``entry(for:)``, the subscript, ``update(_:_:)``,
/// ``value(for:)``) are `public @inlinable`, so a role's module specializes them for its value
/// type. As `package` members they were called unspecialized from the audit ledger's module,
/// through generic metadata on every call: 9.9 % of the continuous auditor's samples under
/// `perf record` were in `value(for:)` alone.
public final class CheckpointedStore<Value: StoreValue> {
    /// What SQLite holds for a cached key.
    @usableFromInline
    enum Row: UInt8 {
        case unknown, present, absent
        /// The read failed: the entry is a guess, dropped at the rollback that must follow.
        case failed
    }

    /// A cached key.
    @usableFromInline
    struct Entry {
        /// With the open cycle's changes.
        @usableFromInline var value: Value
        /// Its record in the undo log when the open cycle changed it, else -1.
        @usableFromInline var undo: Int32 = -1
        @usableFromInline var row: Row
        /// In ``unflushed``: committed, not yet written to SQLite.
        @usableFromInline var unflushed = false

        @usableFromInline
        init(value: Value, row: Row) {
            self.value = value
            self.row = row
        }
    }

    /// A key's value before the open cycle first changed it.
    @usableFromInline
    struct Undo {
        @usableFromInline var entry: Int32
        @usableFromInline var value: Value

        @usableFromInline
        init(entry: Int32, value: Value) {
            self.entry = entry
            self.value = value
        }
    }

    /// The database file.
    let path: String
    let options: StoreOptions
    /// The checkpoint stored in SQLite with the state it describes: read at open (nil for a new
    /// store), advanced by each flush. Restore resumes from its `changelogOffset`.
    package internal(set) var checkpoint: StoreCheckpoint?
    /// The checkpoint of the last ``commit(checkpoint:)``, flushed or not.
    var committedCheckpoint: StoreCheckpoint? { unflushedCheckpoint ?? checkpoint }
    /// Whether opening created the database (no state yet: restore from the changelog's start).
    let wasCreated: Bool
    /// The first SQLite error met by a read since the last commit or rollback (see the type's notes).
    var readFailure: SQLiteError?
    /// What this store has written to SQLite since it was opened.
    var statistics = StoreStatistics()

    let connection: SQLiteConnection
    @usableFromInline let cache = CardTable<Entry>()
    @usableFromInline var undoLog: [Undo] = []
    /// The sealed cycle's undo log (see ``seal()``).
    var sealedUndo: [Undo] = []
    /// Whether a cycle is sealed, waiting for ``commit(checkpoint:)``.
    var isSealed = false
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
    @usableFromInline var cacheHoldsEveryCard = false
    /// Reused by ``flush()``: the row value being written.
    var rowValue: [UInt8] = []
    /// The keys SQLite holds, once misses that find nothing are frequent; nil until then, and
    /// after a write whose effect on the table is not known.
    var storedKeys: StoredKeyIndex?
    /// Reads that found no row since ``storedKeys`` was last dropped.
    var absentReads = 0

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
    @inlinable @inline(__always)
    public func entry(for key: CardBytes) -> Int {
        let e = cache.find(key)
        if e >= 0 { return e }
        if cacheHoldsEveryCard { return cache.insert(key, Entry(value: .absent, row: .absent)) }
        return load(key)
    }

    /// Entry `e`'s value, with the open cycle's changes, read in place: a copy would retain and
    /// release the value's storage on every read of the hot path.
    @inlinable @inline(__always)
    public subscript(e: Int) -> Value {
        unsafeAddress { UnsafePointer(valueAddress(e)) }
    }

    @inlinable @inline(__always)
    func valueAddress(_ e: Int) -> UnsafeMutablePointer<Value> {
        (UnsafeMutableRawPointer(cache.payload(e)) + valueOffset).assumingMemoryBound(to: Value.self)
    }

    /// Where an entry's value lies in it.
    @usableFromInline let valueOffset = MemoryLayout<Entry>.offset(of: \Entry.value)!

    /// Entry `e`'s key bytes, valid until the cache next changes shape.
    @inlinable @inline(__always)
    public func key(_ e: Int) -> CardBytes {
        cache.key(e)
    }

    /// Changes entry `e`'s value in the open cycle (saving its committed value first).
    @inlinable @inline(__always)
    public func update(_ e: Int, _ change: (inout Value) -> Void) {
        willChange(e)
        change(&valueAddress(e).pointee)
    }

    /// The value of `key` (``StoreValue/absent`` when none). Unlike ``entry(for:)``, a key
    /// known to be absent gets no cache entry: the audit ledger asks about a position or an id
    /// that holds nothing for almost every record it reads.
    @inlinable
    public func value(for key: CardBytes) -> Value {
        let e = cache.find(key)
        if e >= 0 { return self[e] }
        if cacheHoldsEveryCard { return .absent }
        return self[load(key)]
    }

    /// The cache entry of `key` when it holds a value, else nil; like ``value(for:)``, a key
    /// known to be absent gets no cache entry. A caller that reads a value and may then change
    /// it finds it once rather than twice.
    @inlinable
    public func existingEntry(for key: CardBytes) -> Int? {
        var e = cache.find(key)
        if e < 0 {
            if cacheHoldsEveryCard { return nil }
            e = load(key)
        }
        return self[e].exists ? e : nil
    }

    /// Sets the value of `key` in the open cycle (``StoreValue/absent`` deletes it).
    @inlinable
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

    /// Reads `key`'s row from SQLite into the cache (``entry(for:)`` answers a miss in a cache
    /// that holds every key without it).
    @usableFromInline
    func load(_ key: CardBytes) -> Int {
        if storedKeys == nil, absentReads >= options.absentReadsBeforeKeyIndex {
            // On failure the reads go on as before, and the index is tried again later.
            storedKeys = try? StoredKeyIndex(connection: connection)
            absentReads = 0
        }
        if let storedKeys, !storedKeys.mayHold(key) { return cache.insert(key, Entry(value: .absent, row: .absent)) }
        statistics.keysRead += 1
        let statement = selectEntry
        // SQLite reads a SQLITE_STATIC binding only while stepping, and every use binds afresh.
        statement.bindBlobNoCopy(UnsafeRawBufferPointer(key.buffer), at: 1)
        defer { statement.reset() }
        do throws(SQLiteError) {
            guard try statement.step() else {
                statistics.absentKeysRead += 1
                absentReads += 1
                return cache.insert(key, Entry(value: .absent, row: .absent))
            }
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
    @inlinable @inline(__always)
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
}
