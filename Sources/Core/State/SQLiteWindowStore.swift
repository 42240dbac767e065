import CSQLite
import Foundation

/// Where a task's store stands relative to Kafka, committed in the same SQLite transaction as the
/// state it describes.
public struct StoreCheckpoint: Sendable, Hashable {
    /// The next offset to process of each source topic, in the role's source order (-1: none
    /// known); the store holds the effect of every record before them.
    public var positions: [Int64]
    /// The next changelog offset after everything this store has applied or produced.
    public var changelogOffset: Int64

    public init(positions: [Int64], changelogOffset: Int64) {
        self.positions = positions
        self.changelogOffset = changelogOffset
    }

    /// A checkpoint of a store with one source topic.
    public init(sourceOffset: Int64, changelogOffset: Int64) {
        self.init(positions: [sourceOffset], changelogOffset: changelogOffset)
    }

    /// The first source's position (-1: none known).
    public var sourceOffset: Int64 { positions.first ?? -1 }
}

/// One input partition's window state (SEMANTICS.md §2) in SQLite, for `polyglot process`.
///
/// **State by card.** A card's whole state (its maximum and open windows) is one SQLite row, one
/// changelog record and one cache entry: a record usually opens a window and closes the card's
/// previous one, which a row per window turned into three writes.
///
/// **Write-back cache.** Cards live in a ``CardTable`` (byte-keyed, so a lookup builds no
/// `String`): every card read or written has an entry holding its current state; a miss reads
/// SQLite by primary key. A change first saves the card's committed state in an undo log, so the
/// log is both the cycle's dirty set and its rollback. ``pendingChanges()`` turns each changed
/// card into one changelog record, ``commit(checkpoint:)`` makes the changes committed, and
/// ``flush()`` writes the cards changed since SQLite last saw them, with the checkpoint, in one
/// SQLite transaction. So the changelog sees one write per card per commit and SQLite at most
/// one per card per flush, never one per record.
///
/// **Cycle**, as the processor drives it:
/// 1. feed records through ``Detector/process(card:eventTime:store:)``;
/// 2. send ``pendingChanges()`` to the changelog inside the Kafka transaction;
/// 3. after Kafka commits, ``commit(checkpoint:)`` (it flushes to SQLite when due);
///    if Kafka aborts, ``rollback()``;
/// 4. on revocation or shutdown, after the last commit, ``close()`` (it flushes).
/// On assignment: open; if ``checkpoint`` is nil or behind the changelog's end, ``apply(_:)``
/// the changelog from ``checkpoint``'s `changelogOffset` (or the start) and
/// ``commitRestore(checkpoint:)``; then resume input at ``checkpoint``'s `sourceOffset`.
///
/// **Threading.** Every call may block on disk. Use a store from one thread at a time: the
/// task's dedicated thread, never the Swift cooperative pool. Not `Sendable`, on purpose.
///
/// **Read errors.** ``WindowStore`` reads cannot throw. If SQLite fails during a read, the read
/// answers as if the card were absent and the error is kept in ``readFailure``;
/// ``pendingChanges()`` and ``commit(checkpoint:)`` then throw it, so the Kafka transaction that
/// carries verdicts computed from the failed read is aborted, never committed, and
/// ``rollback()`` forgets what the failed read cached.
///
/// **Durability.** WAL with `synchronous=NORMAL`: a power loss may lose the last SQLite
/// transactions but never corrupts the file. That is enough because Kafka holds the truth: the
/// checkpoint row commits atomically with the state, so a lost transaction (or a crash before a
/// flush) leaves the store consistent but *behind*, which restore from the changelog repairs; a
/// full fsync per commit would buy nothing.
public final class SQLiteWindowStore: WindowStore {
    /// Tuning; the defaults suit 32 partitions per process.
    public struct Options: Sendable, Hashable {
        /// How many cards to keep cached in memory; the cache is emptied at a flush that finds
        /// it larger.
        public var cacheCapacity: Int
        /// SQLite page cache per store, in KiB.
        public var pageCacheKiB: Int
        /// The check run at open to detect corruption.
        public var integrityCheck: IntegrityCheck
        /// A commit writes to SQLite once this long has passed since the last write (nil: only
        /// by ``flushKeys`` or an explicit ``SQLiteWindowStore/flush()``).
        public var flushInterval: Duration?
        /// ... or once this many committed cards wait to be written (0: at every commit).
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

    /// The database file's name inside the task's directory.
    public static let fileName = "windows.sqlite"
    /// `PRAGMA user_version` of the schema this build writes. Version 1 (a row per window) came
    /// before any release; such a file is rebuilt from the changelog.
    public static let schemaVersion: Int64 = 2

    /// A row per card: `state` holds the card's changelog value (maximum, then its windows), and
    /// `max` repeats the maximum so that the retention purge finds expired cards with a scan,
    /// without an index to update on every write.
    static let schema = """
        CREATE TABLE cards(card BLOB NOT NULL PRIMARY KEY, max INTEGER NOT NULL, state BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE stream(id INTEGER PRIMARY KEY CHECK (id = 1), time INTEGER NOT NULL);
        CREATE TABLE checkpoint(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            source_offset INTEGER NOT NULL, changelog_offset INTEGER NOT NULL);
        """

    /// What SQLite holds for a cached card.
    enum Row: UInt8 {
        case unknown, present, absent
        /// The read failed: the entry is a guess, dropped at the rollback that must follow.
        case failed
    }

    /// A cached card.
    struct Entry {
        /// With the open cycle's changes.
        var state: CardWindows
        /// Its record in the undo log when the open cycle changed it, else -1.
        var undo: Int32 = -1
        var row: Row
        /// In ``unflushed``: committed, not yet written to SQLite.
        var unflushed = false
    }

    /// A card's state before the open cycle first changed it.
    struct Undo {
        var entry: Int32
        var state: CardWindows
    }

    public let directory: String
    public let parameters: DetectorParameters
    public let options: Options
    /// The checkpoint stored in SQLite with the state it describes: read at open (nil for a new
    /// store), advanced by each flush. Restore resumes from its `changelogOffset`.
    public private(set) var checkpoint: StoreCheckpoint?
    /// The checkpoint of the last ``commit(checkpoint:)``, flushed or not.
    public var committedCheckpoint: StoreCheckpoint? { unflushedCheckpoint ?? checkpoint }
    /// Whether opening created the database (no state yet: restore from the changelog's start).
    public let wasCreated: Bool
    /// The first SQLite error met by a read since the last commit or rollback (see the type's notes).
    public private(set) var readFailure: SQLiteError?

    let connection: SQLiteConnection
    let cache = CardTable<Entry>()
    var undoLog: [Undo] = []
    /// The sealed cycle's undo log (see ``seal()``).
    var sealedUndo: [Undo] = []
    /// Whether a cycle is sealed, waiting for ``commit(checkpoint:)``.
    public private(set) var isSealed = false
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
    /// Whether every card SQLite holds is in the cache: true from the open of an empty store
    /// until the cache first forgets a card. A miss then means a new card, with no read: a
    /// new task (or one restored into an empty store) would otherwise ask SQLite about every
    /// card it meets for the first time.
    var cacheHoldsEveryCard = false
    /// Reused by ``flush()``: the row value being written.
    var rowValue: [UInt8] = []

    let selectCard: SQLiteStatement
    let upsertCard: SQLiteStatement
    let deleteCard: SQLiteStatement
    let upsertStream: SQLiteStatement
    let deleteStream: SQLiteStatement
    let upsertCheckpoint: SQLiteStatement
    let cardsUpTo: SQLiteStatement
    let beginStatement: SQLiteStatement
    let commitStatement: SQLiteStatement
    let rollbackStatement: SQLiteStatement

    /// Opens the store in `directory` (created when missing), creating the database when absent.
    /// `parameters` must be the ones the task's ``Detector`` uses: an accepted record drops the
    /// windows it closes by them.
    ///
    /// Throws an ``SQLiteError`` whose ``SQLiteError/requiresRebuild`` is true when the file is
    /// corrupt, not a database, or of another schema: delete it with ``destroy(directory:)``
    /// and restore from the changelog's start. ``SQLiteError/isRetriable`` errors (BUSY) mean
    /// another connection still holds the store (it is opened in exclusive locking mode, so two
    /// processes cannot share a state directory by mistake).
    public init(directory: String, parameters: DetectorParameters, options: Options = Options()) throws(SQLiteError) {
        self.directory = directory
        self.parameters = parameters
        self.options = options
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw SQLiteError(code: .cantOpen, resultCode: 0, message: "cannot create state directory \(directory): \(error)")
        }
        let db = try SQLiteConnection(path: Self.path(directory: directory))
        do throws(SQLiteError) {
            // Exclusive locking: the store has one user, and WAL then needs no shared-memory file.
            try db.execute("PRAGMA locking_mode = EXCLUSIVE")
            try Self.checkIntegrity(db, options.integrityCheck)
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
            wasCreated = try Self.prepareSchema(db)
            cacheHoldsEveryCard = try Self.holdsNoCards(db)

            selectCard = try db.statement("SELECT state FROM cards WHERE card = ?1")
            upsertCard = try db.statement(
                "INSERT INTO cards(card, max, state) VALUES (?1, ?2, ?3) ON CONFLICT(card) DO UPDATE SET max = excluded.max, state = excluded.state")
            deleteCard = try db.statement("DELETE FROM cards WHERE card = ?1")
            upsertStream = try db.statement(
                "INSERT INTO stream(id, time) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET time = excluded.time")
            deleteStream = try db.statement("DELETE FROM stream")
            upsertCheckpoint = try db.statement("""
                INSERT INTO checkpoint(id, source_offset, changelog_offset) VALUES (1, ?1, ?2)
                ON CONFLICT(id) DO UPDATE SET source_offset = excluded.source_offset, changelog_offset = excluded.changelog_offset
                """)
            cardsUpTo = try db.statement("SELECT card, state FROM cards WHERE max <= ?1")
            beginStatement = try db.statement("BEGIN IMMEDIATE")
            commitStatement = try db.statement("COMMIT")
            rollbackStatement = try db.statement("ROLLBACK")

            committedStreamTime = try db.scalarInt64("SELECT time FROM stream WHERE id = 1")
            let read = try db.statement("SELECT source_offset, changelog_offset FROM checkpoint WHERE id = 1")
            if try read.step() {
                checkpoint = StoreCheckpoint(sourceOffset: read.int64(0), changelogOffset: read.int64(1))
            }
            read.reset()
            lastFlush = ContinuousClock.now
        } catch {
            try? db.close()
            throw error
        }
        connection = db
    }

    static func holdsNoCards(_ db: SQLiteConnection) throws(SQLiteError) -> Bool {
        try db.scalarInt64("SELECT NOT EXISTS (SELECT 1 FROM cards)") == 1
    }

    /// The database path for a task directory.
    public static func path(directory: String) -> String {
        directory.hasSuffix("/") ? directory + fileName : directory + "/" + fileName
    }

    /// Deletes the store's files in `directory` (database, WAL and shared-memory files), for a
    /// store that must be rebuilt. Close any store open on it first. Missing files are fine.
    public static func destroy(directory: String) throws(SQLiteError) {
        let base = path(directory: directory)
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let file = base + suffix
            guard FileManager.default.fileExists(atPath: file) else { continue }
            do {
                try FileManager.default.removeItem(atPath: file)
            } catch {
                throw SQLiteError(code: .ioError, resultCode: 0, message: "cannot delete \(file): \(error)")
            }
        }
    }

    static func checkIntegrity(_ db: SQLiteConnection, _ check: Options.IntegrityCheck) throws(SQLiteError) {
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
                              message: "\(db.path) holds tables but no schema version: not a window store")
        }
        try db.execute("BEGIN IMMEDIATE; \(schema) PRAGMA user_version = \(schemaVersion); COMMIT")
        return true
    }

    /// Discards uncommitted changes, writes committed ones (``flush()``) and closes the database.
    /// Call before ``destroy(directory:)`` or handing the partition to another owner; the
    /// processor commits first. If the flush fails the database is still closed (it is behind,
    /// which restore repairs) and the error is thrown.
    public func close() throws(SQLiteError) {
        if connection.inTransaction { try? rollbackStatement.run() }
        rollback()
        var flushError: SQLiteError?
        do { try flush() } catch { flushError = error }
        try connection.close()
        if let flushError { throw flushError }
    }

    // MARK: - WindowStore

    public var streamTime: Int64? { dirtyStreamTime ?? sealedStreamTime ?? committedStreamTime }

    /// Cards come as their id's bytes, borrowed (the processor's decoder hands them out without
    /// copying); the cache copies them once, when it first sees a card.
    public typealias CardKey = CardBytes

    public func cardMax(_ card: CardBytes) -> Int64? {
        let state = cache[entry(for: card)].state
        return state.exists ? state.max : nil
    }

    public func windowCount(_ card: CardBytes, windowStart: Int64) -> Int64 {
        let e = entry(for: card)
        return cache[e].state.exists ? cache[e].state.count(at: windowStart) : 0
    }

    public func putAccepted(_ card: CardBytes, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        let e = entry(for: card)  // the detector just asked: the table's last lookup
        willChange(e)
        cache[e].state.accept(windowStart: windowStart, count: count, max: cardMax, streamTime: streamTime, parameters: parameters)
        dirtyStreamTime = streamTime
    }

    /// ``cardMax(_:)-(CardBytes)`` by a `String` id (tests and tools).
    public func cardMax(_ card: String) -> Int64? {
        var card = card
        return card.withUTF8 { cardMax(CardBytes($0)) }
    }

    /// ``windowCount(_:windowStart:)-(CardBytes,_)`` by a `String` id (tests and tools).
    public func windowCount(_ card: String, windowStart: Int64) -> Int64 {
        var card = card
        return card.withUTF8 { windowCount(CardBytes($0), windowStart: windowStart) }
    }

    /// ``putAccepted(_:windowStart:count:cardMax:streamTime:)-(CardBytes,_,_,_,_)`` by a `String` id (tests and tools).
    public func putAccepted(_ card: String, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        var card = card
        card.withUTF8 { putAccepted(CardBytes($0), windowStart: windowStart, count: count, cardMax: cardMax, streamTime: streamTime) }
    }

    /// The cache entry of `card`, read from SQLite on a miss.
    @inline(__always)
    func entry(for card: CardBytes) -> Int {
        let e = cache.find(card)
        if e >= 0 { return e }
        return load(card)
    }

    func load(_ card: CardBytes) -> Int {
        if cacheHoldsEveryCard { return cache.insert(card, Entry(state: .absent, row: .absent)) }
        let statement = selectCard
        // SQLite reads a SQLITE_STATIC binding only while stepping, and every use binds afresh.
        statement.bindBlobNoCopy(UnsafeRawBufferPointer(card.buffer), at: 1)
        defer { statement.reset() }
        do throws(SQLiteError) {
            guard try statement.step() else { return cache.insert(card, Entry(state: .absent, row: .absent)) }
            let state = try statement.withBlob(0) { value in
                Result { () throws(SQLiteError) in try Self.decodeRow(value) }
            }.get()
            return cache.insert(card, Entry(state: state, row: .present))
        } catch {
            readFailure = readFailure ?? error
            return cache.insert(card, Entry(state: .absent, row: .failed))
        }
    }

    static func decodeRow(_ value: UnsafeRawBufferPointer) throws(SQLiteError) -> CardWindows {
        do {
            return try ChangelogRecord.parseCardValue(value)
        } catch {
            throw SQLiteError(code: .corrupt, resultCode: SQLITE_CORRUPT, message: "card row: \(error.message)")
        }
    }

    /// Saves entry `e`'s state in the undo log before the open cycle first changes it.
    @inline(__always)
    func willChange(_ e: Int) {
        guard cache[e].undo < 0 else { return }
        cache[e].undo = Int32(undoLog.count)
        undoLog.append(Undo(entry: Int32(e), state: cache[e].state))
    }

    /// The state of entry `e` as of the last commit (with no cycle sealed), or as of the sealed
    /// cycle.
    @inline(__always)
    func committedState(_ e: Int) -> CardWindows {
        let u = cache[e].undo
        return u < 0 ? cache[e].state : undoLog[Int(u)].state
    }

    /// Deletes the cards SEMANTICS.md §2 lets go: those whose latest window left retention.
    /// (Windows closed by their card's maximum or by retention already went when the card last
    /// accepted a record.) Cached cards are checked in memory; the others are found in SQLite by
    /// one scan of the stored maxima (SQLite is current for every card not in the cache, since
    /// unflushed cards are never evicted).
    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let now = streamTime else { return }
        let p = parameters
        // A card expires when windowStart(max) <= cutoff, that is when max < windowStart(cutoff) + W.
        let cutoff = Int128(now) - Int128(p.retention) - Int128(p.window) - Int128(p.grace)
        guard cutoff >= 0 else { return }
        let w = Int128(p.window)
        guard let bound = Self.clampToInt64(cutoff - cutoff % w + w - 1) else { return }
        forEachRow(cardsUpTo, bind: { $0.bind(bound, at: 1) }) { row in
            row.withBlob(0) { card in
                let bytes = CardBytes(card.bindMemory(to: UInt8.self))
                guard cache.find(bytes) < 0 else { return }
                do throws(SQLiteError) {
                    let state = try row.withBlob(1) { value in
                        Result { () throws(SQLiteError) in try Self.decodeRow(value) }
                    }.get()
                    _ = cache.insert(bytes, Entry(state: state, row: .present))
                } catch {
                    readFailure = readFailure ?? error
                }
            }
        }
        for e in 0..<cache.count where cache[e].state.exists && p.isCardExpired(cardMax: cache[e].state.max, streamTime: now) {
            willChange(e)
            cache[e].state = .absent
        }
    }

    static func clampToInt64(_ value: Int128) -> Int64? {
        if value < Int128(Int64.min) { return nil }
        if value > Int128(Int64.max) { return .max }
        return Int64(value)
    }

    // MARK: - Commit cycle

    /// Number of cards changed in the open cycle, plus one for a changed stream time (an upper
    /// bound: a card changed and changed back produces no record).
    public var pendingChangeCount: Int { undoLog.count + (dirtyStreamTime == nil ? 0 : 1) }

    /// One changelog record per card changed since the last commit or rollback (a tombstone for
    /// a deleted card), in the order the cycle first changed them, then the stream time if it
    /// moved. The same input gives the same records.
    /// Throws ``readFailure`` if a read failed: the cycle's verdicts cannot be trusted.
    public func pendingChanges() throws(SQLiteError) -> [ChangelogRecord] {
        var batch = ChangelogBatch()
        try pendingChanges(into: &batch)
        return batch.records
    }

    /// ``pendingChanges()`` into a reusable buffer (emptied first): the same records in the same
    /// order, without two allocations per record.
    public func pendingChanges(into batch: inout ChangelogBatch) throws(SQLiteError) {
        if let readFailure { throw readFailure }
        batch.removeAll()
        for u in undoLog {
            let e = Int(u.entry)
            let state = cache[e].state
            if state == u.state { continue }
            batch.appendCard(cache.key(e), state)
        }
        if let dirtyStreamTime, dirtyStreamTime != sealedStreamTime ?? committedStreamTime { batch.appendStreamTime(dirtyStreamTime) }
    }

    /// Closes the open cycle without committing it, so that the next one can start while the
    /// Kafka transaction carrying this one's ``pendingChanges()`` commits: the processor keeps
    /// handling records meanwhile. The next ``commit(checkpoint:)`` commits the sealed cycle
    /// only; ``rollback()`` rolls back both. Call after ``pendingChanges()`` succeeded, with no
    /// cycle sealed already.
    public func seal() throws(SQLiteError) {
        if let readFailure { throw readFailure }
        guard !isSealed else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "seal with a cycle sealed already: commit or roll back first")
        }
        for u in undoLog { cache[Int(u.entry)].undo = -1 }
        swap(&sealedUndo, &undoLog)
        undoLog.removeAll(keepingCapacity: true)
        sealedStreamTime = dirtyStreamTime
        dirtyStreamTime = nil
        isSealed = true
    }

    /// Makes the sealed cycle's changes (see ``seal()``), or with none sealed the open cycle's,
    /// committed: call it only after the Kafka transaction carrying their ``pendingChanges()``
    /// committed. Reads see them from now on and ``rollback()`` keeps them.
    ///
    /// They are written to SQLite, with `checkpoint`, by ``flush()``, which this call runs when
    /// ``Options/flushInterval`` has passed or ``Options/flushKeys`` cards wait. Writing at every
    /// Kafka commit would cost a SQLite transaction (and a WAL write of every page touched) per
    /// 100 ms per partition for little gain: until a flush, SQLite is merely behind, with a
    /// checkpoint saying by how much, and restore from the changelog repairs that after a crash.
    /// A thrown error concerns only that write (the commit itself took effect); the next commit
    /// retries it.
    public func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        guard !restoring else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "commit during a restore: call commitRestore(checkpoint:)")
        }
        if !isSealed {
            // No cycle sealed: commit the open one (sealing checks ``readFailure``).
            try seal()
        }
        // The sealed cycle read nothing that failed (sealing checks); a failure since then
        // belongs to the open cycle, which stays open.
        for u in sealedUndo {
            let e = Int(u.entry)
            if !cache[e].unflushed && committedState(e) != u.state {
                cache[e].unflushed = true
                unflushed.append(u.entry)
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

    /// Whether committed changes wait to be written and ``Options/flushInterval`` or
    /// ``Options/flushKeys`` says it is time: ``commit(checkpoint:)`` then flushes. A caller with
    /// idle time (waiting for a Kafka commit) may ``flush()`` earlier; uncommitted changes stay
    /// in memory either way, since a flush writes committed states only.
    public var flushIsDue: Bool {
        guard unflushedCheckpoint != nil else { return false }
        return unflushed.count >= options.flushKeys
            || options.flushInterval.map({ ContinuousClock.now - lastFlush >= $0 }) ?? false
    }

    /// Counters of the writes to SQLite, for logs and metrics.
    public struct Statistics: Sendable, Hashable {
        public var flushes = 0
        public var keysFlushed = 0
        public var flushTime = Duration.zero
        public var recordsRestored = 0
    }

    /// What this store has written to SQLite since it was opened.
    public private(set) var statistics = Statistics()

    /// Number of committed cards not yet written to SQLite.
    public var unflushedChangeCount: Int { unflushed.count + (unflushedStreamTime == nil ? 0 : 1) }

    /// Writes every committed change and the last commit's checkpoint to SQLite in one
    /// transaction (in key order, which is the table's order: the writes walk the b-tree once,
    /// left to right). On error nothing is written and the changes stay queued, so the call can
    /// be retried.
    public func flush() throws(SQLiteError) {
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
            let (a, b) = Self.prefix16(UnsafeRawBufferPointer(cache.key(Int(e)).buffer))
            order.append((a, b, e))
        }
        order.sort { x, y in
            if x.0 != y.0 { return x.0 < y.0 }
            if x.1 != y.1 { return x.1 < y.1 }
            return Self.precedes(cache.key(Int(x.2)), cache.key(Int(y.2)))
        }
        var written = 0
        if !connection.inTransaction { try beginStatement.run() }
        do throws(SQLiteError) {
            for (_, _, e) in order {
                let e = Int(e)
                let state = committedState(e)
                let card = UnsafeRawBufferPointer(cache.key(e).buffer)
                if state.exists {
                    rowValue.removeAll(keepingCapacity: true)
                    ChangelogBatch.appendValue(state, to: &rowValue)
                    upsertCard.bindBlobNoCopy(card, at: 1)
                    upsertCard.bind(state.max, at: 2)
                    let failure = rowValue.withUnsafeBytes { value in
                        upsertCard.bindBlobNoCopy(value, at: 3)
                        return upsertCard.runReturningError()
                    }
                    if let failure { throw failure }
                } else if cache[e].row != .absent {
                    deleteCard.bindBlobNoCopy(card, at: 1)
                    if let failure = deleteCard.runReturningError() { throw failure }
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
            upsertCheckpoint.bind(target.sourceOffset, at: 1)
            upsertCheckpoint.bind(target.changelogOffset, at: 2)
            try upsertCheckpoint.run()
            try commitStatement.run()
        } catch {
            try? rollbackStatement.run()
            throw error
        }
        for e in unflushed {
            let e = Int(e)
            cache[e].unflushed = false
            cache[e].row = committedState(e).exists ? .present : .absent
        }
        statistics.keysFlushed += written
        statistics.flushes += 1
        unflushed.removeAll(keepingCapacity: true)
        unflushedStreamTime = nil
        unflushedCheckpoint = nil
        checkpoint = target
        if cache.count > options.cacheCapacity {
            // Forget clean cards; the open cycle's (none at a commit) stay, renumbered.
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

    /// Byte order of keys (memcmp, then length).
    static func precedes(_ a: CardBytes, _ b: CardBytes) -> Bool {
        let common = min(a.count, b.count)
        let c = common == 0 ? 0 : memcmp(a.base, b.base, common)
        return c != 0 ? c < 0 : a.count < b.count
    }

    /// Discards uncommitted changes (the Kafka transaction aborted) and an unfinished restore:
    /// afterwards the store reads as of the last commit.
    public func rollback() {
        if connection.inTransaction { try? rollbackStatement.run() }
        for u in undoLog {
            let e = Int(u.entry)
            cache[e].state = u.state
            cache[e].undo = -1
        }
        undoLog.removeAll(keepingCapacity: true)
        // Then the sealed cycle, which holds the older states.
        for u in sealedUndo { cache[Int(u.entry)].state = u.state }
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

    var restoreStreamTime: Int64??

    /// Applies one record read from the changelog. Records go to the cache, one entry per card,
    /// and are written to SQLite by ``commitRestore(checkpoint:)``. Applying is idempotent, so
    /// replaying a range twice gives the same state. Throws ``ChangelogDecodingError`` for a
    /// malformed record (nothing of it is applied; the restore stays open) or ``SQLiteError``.
    /// Requires no uncommitted changes.
    public func apply(_ record: ChangelogRecord) throws {
        try record.key.withUnsafeBytes { key in
            if let value = record.value {
                try value.withUnsafeBytes { value in try apply(key: key, value: value) }
            } else {
                try apply(key: key, value: nil)
            }
        }
    }

    /// ``apply(_:)`` on borrowed key and value bytes (nil value: tombstone), copying nothing.
    public func apply(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws {
        if !restoring { try beginRestore() }
        switch try ChangelogRecord.parseKey(key) {
        case .card(let range):
            let state = try value.map { (v) throws(ChangelogDecodingError) in try ChangelogRecord.parseCardValue(v) } ?? .absent
            let card = CardBytes(UnsafeRawBufferPointer(rebasing: key[range]).bindMemory(to: UInt8.self))
            var e = cache.find(card)
            if e < 0 {
                e = cache.insert(card, Entry(state: state, row: restoreIntoEmpty ? .absent : .unknown))
            } else {
                cache[e].state = state
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
        // Deleting a card SQLite does not hold is a wasted b-tree search: skip them all when
        // restoring into an empty store, the usual case.
        restoreIntoEmpty = try Self.holdsNoCards(connection)
        restoring = true
    }

    /// Writes the records applied since the last call, in one SQLite transaction, together with
    /// `checkpoint` (its `changelogOffset` is the next changelog offset to read). May be called
    /// periodically during a long restore to bound memory; call it once more at the end.
    public func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) {
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
}

extension SQLiteWindowStore {
    /// Every committed row, sorted (tests and diagnostics; reads the whole store).
    struct CommittedState: Equatable, CustomStringConvertible {
        struct Card: Equatable { var card: String; var state: CardState }
        var cards: [Card] = []
        var streamTime: Int64?
        var windowCount: Int { cards.reduce(0) { $0 + $1.state.windows.count } }
        var description: String { "\(cards.count) cards, \(windowCount) windows, stream time \(streamTime.map(String.init) ?? "none")" }
    }

    /// Flushes first, so that SQLite holds everything committed.
    func committedState() throws -> CommittedState {
        try flush()
        var state = CommittedState()
        let cards = try connection.statement("SELECT card, state FROM cards ORDER BY card")
        while try cards.step() {
            let card = cards.withBlob(0) { String(decoding: $0, as: UTF8.self) }
            let windows = try cards.withBlob(1) { try ChangelogRecord.parseCardValue($0) }
            state.cards.append(.init(card: card, state: windows.state!))
        }
        cards.reset()
        state.streamTime = try connection.scalarInt64("SELECT time FROM stream WHERE id = 1")
        return state
    }
}
