import CSQLite
import Foundation

/// Where a task's store stands relative to Kafka, committed in the same SQLite transaction as the
/// state it describes.
public struct StoreCheckpoint: Sendable, Hashable {
    /// The next input offset to process (the store holds the effect of every record before it).
    public var sourceOffset: Int64
    /// The next changelog offset after everything this store has applied or produced.
    public var changelogOffset: Int64

    public init(sourceOffset: Int64, changelogOffset: Int64) {
        self.sourceOffset = sourceOffset
        self.changelogOffset = changelogOffset
    }
}

/// One input partition's window state (SEMANTICS.md §2) in SQLite, for `polyglot process`.
///
/// **Write-back cache.** Every key read or written has a slot in memory holding its value with
/// uncommitted changes, as of the last commit and in SQLite; reads that miss go to SQLite by
/// primary key. Writes only touch slots and mark them dirty. ``pendingChanges()`` turns the
/// dirty keys into one changelog record each, ``commit(checkpoint:)`` makes them committed, and
/// ``flush()`` writes what changed since SQLite last saw it, with the checkpoint, in one SQLite
/// transaction. So the changelog sees one write per key per commit and SQLite at most one per
/// key per flush (none for a window opened and closed in between), never one per record.
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
/// answers as if the row were absent and the error is kept in ``readFailure``;
/// ``pendingChanges()`` and ``commit(checkpoint:)`` then throw it, so the Kafka transaction that
/// carries verdicts computed from the failed read is aborted, never committed.
///
/// **Durability.** WAL with `synchronous=NORMAL`: a power loss may lose the last SQLite
/// transactions but never corrupts the file. That is enough because Kafka holds the truth: the
/// checkpoint row commits atomically with the state, so a lost transaction (or a crash before a
/// flush) leaves the store consistent but *behind*, which restore from the changelog repairs; a
/// full fsync per commit would buy nothing.
public final class SQLiteWindowStore: WindowStore {
    /// Tuning; the defaults suit 32 partitions per process.
    public struct Options: Sendable, Hashable {
        /// How many windows (and, separately, card maxima) to keep cached in memory; the cache is
        /// emptied at a flush that finds it larger.
        public var cacheCapacity: Int
        /// SQLite page cache per store, in KiB.
        public var pageCacheKiB: Int
        /// The check run at open to detect corruption.
        public var integrityCheck: IntegrityCheck
        /// A commit writes to SQLite once this long has passed since the last write (nil: only
        /// by ``flushKeys`` or an explicit ``SQLiteWindowStore/flush()``).
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
                    flushInterval: Duration? = .seconds(1), flushKeys: Int = 50_000) {
            self.cacheCapacity = cacheCapacity
            self.pageCacheKiB = pageCacheKiB
            self.integrityCheck = integrityCheck
            self.flushInterval = flushInterval
            self.flushKeys = flushKeys
        }
    }

    /// The database file's name inside the task's directory.
    public static let fileName = "windows.sqlite"
    /// `PRAGMA user_version` of the schema this build writes.
    public static let schemaVersion: Int64 = 1

    /// No secondary index, so every write is one b-tree seek. Windows are keyed by start first:
    /// new windows append at the end of the tree, the retention purge is a key-range scan, and
    /// the table's order is the changelog's key order. Cards need no index on their maximum: a
    /// card expires exactly when its latest window (which always exists, see ``purgeExpired(_:)``)
    /// leaves retention, so the purge finds expiring cards through their windows.
    static let schema = """
        CREATE TABLE windows(
            start INTEGER NOT NULL, card BLOB NOT NULL, count INTEGER NOT NULL,
            PRIMARY KEY(start, card)) WITHOUT ROWID;
        CREATE TABLE cards(card BLOB NOT NULL PRIMARY KEY, max INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE stream(id INTEGER PRIMARY KEY CHECK (id = 1), time INTEGER NOT NULL);
        CREATE TABLE checkpoint(
            id INTEGER PRIMARY KEY CHECK (id = 1),
            source_offset INTEGER NOT NULL, changelog_offset INTEGER NOT NULL);
        """

    /// A card id compared and hashed by its UTF-8 bytes. `String`'s own `==` and hash follow
    /// Unicode canonical equivalence, which would merge two different card ids (precomposed and
    /// decomposed "é") into one card; SQLite, the changelog and the in-memory store keep them apart.
    struct CardID: Hashable {
        var card: String

        @inline(__always)
        static func == (a: CardID, b: CardID) -> Bool { sameBytes(a.card, b.card) }

        @inline(__always)
        func hash(into hasher: inout Hasher) {
            var card = card
            card.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }

    struct WindowKey: Hashable {
        var card: String
        var start: Int64

        @inline(__always)
        static func == (a: WindowKey, b: WindowKey) -> Bool { a.start == b.start && sameBytes(a.card, b.card) }

        @inline(__always)
        func hash(into hasher: inout Hasher) {
            hasher.combine(start)
            var card = card
            card.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }

    @inline(__always)
    static func sameBytes(_ a: String, _ b: String) -> Bool {
        var a = a
        var b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in x.count == y.count && equalBytes(x.baseAddress, y.baseAddress, x.count) }
        }
    }

    /// Whether `n` bytes at `p` and `q` are equal (pointers may be nil only when `n` is 0).
    @inline(__always)
    static func equalBytes(_ p: UnsafePointer<UInt8>?, _ q: UnsafePointer<UInt8>?, _ n: Int) -> Bool {
        guard n > 0, let p, let q else { return true }
        // Card ids are short: two 8-byte loads beat a call to memcmp.
        if n <= 16 {
            if n >= 8 {
                return UnsafeRawPointer(p).loadUnaligned(as: UInt64.self) == UnsafeRawPointer(q).loadUnaligned(as: UInt64.self)
                    && UnsafeRawPointer(p + (n - 8)).loadUnaligned(as: UInt64.self)
                        == UnsafeRawPointer(q + (n - 8)).loadUnaligned(as: UInt64.self)
            }
            for i in 0..<n where p[i] != q[i] { return false }
            return true
        }
        return memcmp(p, q, n) == 0
    }

    @inline(__always)
    static func bytesPrecede(_ a: String, _ b: String) -> Bool {
        var a = a
        var b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in
                let common = min(x.count, y.count)
                let c = common == 0 ? 0 : memcmp(x.baseAddress!, y.baseAddress!, common)
                return c != 0 ? c < 0 : x.count < y.count
            }
        }
    }

    /// One key's state in the cache: its value with uncommitted changes (`current`), as of the
    /// last commit (`committed`) and in SQLite (`persisted`), the last two when known. nil values
    /// mean absent. A key whose committed value equals its persisted one needs no write: in a
    /// backfill most windows open and close between two flushes and never reach SQLite.
    struct Slot {
        var current: Int64?
        var committed: Int64?
        var persisted: Int64?
        /// Whether `committed` and `persisted` are known; false for a key written without being
        /// read first (a flush makes both known).
        var committedKnown: Bool
        var persistedKnown: Bool
        /// In the dirty list: changed since the last commit.
        var dirty: Bool
        /// In the unflushed list: committed, not yet written to SQLite.
        var unflushed: Bool

        static func clean(_ value: Int64?) -> Slot {
            Slot(current: value, committed: value, persisted: value, committedKnown: true, persistedKnown: true,
                 dirty: false, unflushed: false)
        }

        /// A key first seen being written: `knownAbsent` when it is known to exist neither
        /// committed nor in SQLite.
        static func written(_ value: Int64?, knownAbsent: Bool) -> Slot {
            Slot(current: value, committed: nil, persisted: nil, committedKnown: knownAbsent, persistedKnown: knownAbsent,
                 dirty: true, unflushed: false)
        }
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

    // The write-back cache: every key read or written, with its uncommitted and committed
    // values. Holds every dirty and every unflushed key, so it is trimmed only where it holds
    // none of either (after a flush).
    var windows: [WindowKey: Slot] = [:]
    var cards: [CardID: Slot] = [:]
    var dirtyWindowKeys: [WindowKey] = []
    var dirtyCardKeys: [CardID] = []
    var unflushedWindowKeys: [WindowKey] = []
    var unflushedCardKeys: [CardID] = []
    var committedStreamTime: Int64?
    var dirtyStreamTime: Int64?
    var unflushedStreamTime: Int64?
    /// The checkpoint of the last commit, when newer than the one in SQLite.
    var unflushedCheckpoint: StoreCheckpoint?
    var lastFlush: ContinuousClock.Instant
    /// The card the detector asked about last, and its current maximum: it asks about the same
    /// card up to three times per record. Valid until that card's entry changes otherwise.
    var lastCard = ""
    var lastCardMax: Int64?
    var lastCardValid = false
    /// ``pendingChanges()``'s answer, kept until the dirty set changes.
    var pendingCache: [ChangelogRecord]?
    var restoring = false
    // Changelog records applied since the restore began, one entry per key (nil: deleted).
    var restoreWindows: [WindowKey: Int64?] = [:]
    var restoreCards: [CardID: Int64?] = [:]
    var restoreStreamTime: Int64??
    var restoreIntoEmpty = false

    let selectWindow: SQLiteStatement
    let selectCard: SQLiteStatement
    let upsertWindow: SQLiteStatement
    let deleteWindow: SQLiteStatement
    let upsertCard: SQLiteStatement
    let deleteCard: SQLiteStatement
    let upsertStream: SQLiteStatement
    let deleteStream: SQLiteStatement
    let upsertCheckpoint: SQLiteStatement
    let windowsUpTo: SQLiteStatement
    let beginStatement: SQLiteStatement
    let commitStatement: SQLiteStatement
    let rollbackStatement: SQLiteStatement

    /// Opens the store in `directory` (created when missing), creating the database when absent.
    /// `parameters` must be the ones the task's ``Detector`` uses: the put path deletes the
    /// windows a card's new maximum closes by them.
    ///
    /// Throws an ``SQLiteError`` whose ``SQLiteError/requiresRebuild`` is true when the file is
    /// corrupt, not a database, or of an unknown schema: delete it with ``destroy(directory:)``
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

            // Window statements bind the card as ?1 and the start as ?2.
            selectWindow = try db.statement("SELECT count FROM windows WHERE start = ?2 AND card = ?1")
            selectCard = try db.statement("SELECT max FROM cards WHERE card = ?1")
            upsertWindow = try db.statement(
                "INSERT INTO windows(start, card, count) VALUES (?2, ?1, ?3) ON CONFLICT(start, card) DO UPDATE SET count = excluded.count")
            deleteWindow = try db.statement("DELETE FROM windows WHERE start = ?2 AND card = ?1")
            upsertCard = try db.statement(
                "INSERT INTO cards(card, max) VALUES (?1, ?2) ON CONFLICT(card) DO UPDATE SET max = excluded.max")
            deleteCard = try db.statement("DELETE FROM cards WHERE card = ?1")
            upsertStream = try db.statement(
                "INSERT INTO stream(id, time) VALUES (1, ?1) ON CONFLICT(id) DO UPDATE SET time = excluded.time")
            deleteStream = try db.statement("DELETE FROM stream")
            upsertCheckpoint = try db.statement("""
                INSERT INTO checkpoint(id, source_offset, changelog_offset) VALUES (1, ?1, ?2)
                ON CONFLICT(id) DO UPDATE SET source_offset = excluded.source_offset, changelog_offset = excluded.changelog_offset
                """)
            windowsUpTo = try db.statement("SELECT card, start FROM windows WHERE start <= ?1")
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
        restoring = false
        rollback()
        var flushError: SQLiteError?
        do { try flush() } catch { flushError = error }
        try connection.close()
        if let flushError { throw flushError }
    }

    // MARK: - WindowStore

    public var streamTime: Int64? { dirtyStreamTime ?? committedStreamTime }

    /// Cards come as their id's bytes, borrowed (the processor's decoder hands them out without
    /// copying). The store keeps ids as `String`s and makes one per record at most: the detector
    /// asks about the same card up to three times, and a repeat is matched against the last one.
    public typealias CardKey = CardBytes

    public func cardMax(_ card: CardBytes) -> Int64? {
        if lastCardValid && matchesLastCard(card) { return lastCardMax }
        return cardMax(name(of: card))
    }

    public func windowCount(_ card: CardBytes, windowStart: Int64) -> Int64 {
        windowCount(name(of: card), windowStart: windowStart)
    }

    public func putAccepted(_ card: CardBytes, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        putAccepted(name(of: card), windowStart: windowStart, count: count, cardMax: cardMax, streamTime: streamTime)
    }

    @inline(__always)
    func matchesLastCard(_ card: CardBytes) -> Bool {
        var last = lastCard
        return last.withUTF8 { $0.count == card.count && Self.equalBytes($0.baseAddress, card.base, card.count) }
    }

    /// The card's id as a `String`: the last card's when the bytes match, else a new one.
    @inline(__always)
    func name(of card: CardBytes) -> String {
        if matchesLastCard(card) { return lastCard }
        return String(decoding: UnsafeBufferPointer(start: card.base, count: card.count), as: UTF8.self)
    }

    /// ``cardMax(_:)-(CardBytes)`` by a `String` id.
    public func cardMax(_ card: String) -> Int64? {
        if lastCardValid && Self.sameBytes(lastCard, card) { return lastCardMax }
        let key = CardID(card: card)
        let value: Int64?
        if let slot = cards[key] {
            value = slot.current
        } else {
            value = loadCardMax(card)
            cards[key] = .clean(value)
        }
        lastCard = card
        lastCardMax = value
        lastCardValid = true
        return value
    }

    /// ``windowCount(_:windowStart:)-(CardBytes,_)`` by a `String` id.
    public func windowCount(_ card: String, windowStart: Int64) -> Int64 {
        // Every window of a card starts at or before the card's maximum (the window of a time is
        // never after it), so a later window, or a card without a maximum, has no count: no lookup.
        guard let max = cardMax(card), windowStart <= max else { return 0 }
        return windowValue(WindowKey(card: card, start: windowStart)) ?? 0
    }

    func windowValue(_ key: WindowKey) -> Int64? {
        if let slot = windows[key] { return slot.current }
        let value = loadWindow(key)
        windows[key] = .clean(value)
        return value
    }

    /// ``putAccepted(_:windowStart:count:cardMax:streamTime:)-(CardBytes,_,_,_,_)`` by a `String` id.
    public func putAccepted(_ card: String, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        let previous = self.cardMax(card)  // the detector just asked: answered from lastCard
        let cardKey = CardID(card: card)
        let windowKey = WindowKey(card: card, start: windowStart)
        if let i = cards.index(forKey: cardKey) {
            // A window after the card's committed maximum (or of a card with none) exists neither
            // committed nor in SQLite (whose maximum is never larger: a card's maximum only grows,
            // and a card re-created after expiring starts past every window it had), so deleted
            // again before a commit or a flush, it costs nothing.
            let slot = cards.values[i]
            let knownAbsent = slot.committedKnown && (slot.committed.map { windowStart > $0 } ?? true)
            setWindow(windowKey, count, knownAbsent: knownAbsent)  // leaves `cards`, so `i`, alone
            if !slot.dirty {
                cards.values[i].dirty = true
                dirtyCardKeys.append(cardKey)
            }
            cards.values[i].current = cardMax
        } else {
            setWindow(windowKey, count)
            setCard(cardKey, cardMax)
        }
        lastCard = card
        lastCardMax = cardMax
        lastCardValid = true
        dirtyStreamTime = streamTime
        if let previous, cardMax > previous {
            dropWindowsClosed(card, from: previous, to: cardMax, except: windowStart)
        }
    }

    @inline(__always)
    func setWindow(_ key: WindowKey, _ value: Int64?, knownAbsent: Bool = false) {
        pendingCache = nil
        if let i = windows.index(forKey: key) {
            if !windows.values[i].dirty {
                windows.values[i].dirty = true
                dirtyWindowKeys.append(key)
            }
            windows.values[i].current = value
        } else {
            windows[key] = .written(value, knownAbsent: knownAbsent)
            dirtyWindowKeys.append(key)
        }
    }

    @inline(__always)
    func setCard(_ key: CardID, _ value: Int64?) {
        pendingCache = nil
        if let i = cards.index(forKey: key) {
            if !cards.values[i].dirty {
                cards.values[i].dirty = true
                dirtyCardKeys.append(key)
            }
            cards.values[i].current = value
        } else {
            cards[key] = .written(value, knownAbsent: false)
            dirtyCardKeys.append(key)
        }
    }

    /// Deletes the windows of `card` that its maximum moving from `old` to `new` closes, as the
    /// in-memory store does. Window `s` closes once `s + W + G <= max`; the card's existing
    /// windows all start at or before `windowStart(old)`; starts are multiples of `W`. So the
    /// candidates are the few multiples of `W` in `(old - W - G, min(new - W - G, windowStart(old))]`,
    /// each one lookup (usually cached: the card's recent windows). Only when `G` is many windows
    /// long are they too many to look up; then retention purges them later.
    func dropWindowsClosed(_ card: String, from old: Int64, to new: Int64, except current: Int64) {
        let w = Int128(parameters.window)
        let lag = w + Int128(parameters.grace)
        let low = Int128(old) - lag  // exclusive
        let high = min(Int128(new) - lag, Int128(parameters.windowStart(of: old)))
        var start = (Self.floorDivide(low, w) + 1) * w
        guard start <= high, (high - start) / w < 64 else { return }
        while start <= high {
            let s = Int64(start)
            start += w
            if s == current { continue }
            let key = WindowKey(card: card, start: s)
            if windowValue(key) != nil { setWindow(key, nil) }
        }
    }

    static func floorDivide(_ a: Int128, _ b: Int128) -> Int128 {
        let q = a / b
        return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q
    }

    static func clampToInt64(_ value: Int128) -> Int64? {
        if value < Int128(Int64.min) { return nil }
        if value > Int128(Int64.max) { return .max }
        return Int64(value)
    }

    /// Deletes (as tombstones in the dirty set) what SEMANTICS.md §2 allows and the put path has
    /// not already deleted: windows out of retention and expired card maxima. Committed windows
    /// come from one key-range scan up to the retention cutoff after a ``flush()`` (rows already
    /// deleted are not in it, so the scan reads only what it deletes), changed ones from the
    /// dirty list. A card's latest window, the one holding its maximum, is never closed
    /// by the card itself and leaves retention exactly when the card expires
    /// (`windowStart(max) + W + G <= streamTime - R` is the window's retention rule for
    /// `s = windowStart(max)`), so checking the card of every window leaving retention finds
    /// every expiring card without an index on maxima.
    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let now = streamTime else { return }
        let p = parameters
        // Window `s` is out of retention when `s <= cutoff`; below Int64's range nothing is.
        let cutoff = Int128(now) - Int128(p.retention) - Int128(p.window) - Int128(p.grace)
        guard let windowCutoff = Self.clampToInt64(cutoff) else { return }
        // Committed changes go to SQLite first, so that one range scan sees every committed
        // window. Should that write fail, the scan sees what is there and the unflushed keys are
        // checked one by one below; the next commit retries the write and reports the error.
        let flushed = (try? flush()) != nil
        var closed: [WindowKey] = []
        forEachRow(windowsUpTo, bind: { $0.bind(windowCutoff, at: 1) }) { row in
            let key = WindowKey(card: Self.cardString(row, 0), start: row.int64(1))
            // Skip rows deleted already, in this cycle or in a commit not yet flushed.
            if let slot = windows[key], slot.current == nil { return }
            closed.append(key)
        }
        // Changed in this cycle (so not in the scan above). Windows closed by their card's
        // maximum went at put time, so only retention is left to check, and it needs no lookup.
        for keys in flushed ? [dirtyWindowKeys] : [dirtyWindowKeys, unflushedWindowKeys] {
            for key in keys where key.start <= windowCutoff {
                if let slot = windows[key], slot.current != nil { closed.append(key) }
            }
        }
        for key in closed {
            setWindow(key, nil)
            if let max = cardMax(key.card), p.isCardExpired(cardMax: max, streamTime: now) {
                setCard(CardID(card: key.card), nil)
                lastCardValid = false
            }
        }
    }

    // MARK: - Commit cycle

    /// Number of keys with uncommitted changes (an upper bound: a key changed and changed back
    /// produces no record).
    public var pendingChangeCount: Int { dirtyWindowKeys.count + dirtyCardKeys.count + (dirtyStreamTime == nil ? 0 : 1) }

    /// One changelog record per changed key since the last commit or rollback (a nil value for a
    /// deleted key), ordered by key bytes so that the same changes always give the same records.
    /// Throws ``readFailure`` if a read failed: the cycle's verdicts cannot be trusted.
    public func pendingChanges() throws(SQLiteError) -> [ChangelogRecord] {
        if let readFailure { throw readFailure }
        if let pendingCache { return pendingCache }
        var batch = ChangelogBatch()
        encodePendingChanges(into: &batch)
        let records = batch.records
        pendingCache = records
        return records
    }

    /// ``pendingChanges()`` into a reusable buffer (emptied first): the same records in the same
    /// order, without two allocations per record.
    public func pendingChanges(into batch: inout ChangelogBatch) throws(SQLiteError) {
        if let readFailure { throw readFailure }
        encodePendingChanges(into: &batch)
    }

    func encodePendingChanges(into batch: inout ChangelogBatch) {
        batch.removeAll()
        for key in dirtyCardKeys {
            guard let slot = cards[key], !(slot.committedKnown && slot.current == slot.committed) else { continue }
            batch.append(tag: ChangelogRecord.cardMaxTag, windowStart: nil, card: key.card, value: slot.current)
        }
        if let dirtyStreamTime {
            batch.append(tag: ChangelogRecord.streamTimeTag, windowStart: nil, card: "", value: dirtyStreamTime)
        }
        for key in dirtyWindowKeys {
            guard let slot = windows[key], !(slot.committedKnown && slot.current == slot.committed) else { continue }
            batch.append(tag: ChangelogRecord.windowTag, windowStart: key.start, card: key.card, value: slot.current)
        }
        batch.sortByKey()
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
    static func precedes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.withUnsafeBytes { a in
            b.withUnsafeBytes { b in
                let common = min(a.count, b.count)
                let c = common == 0 ? 0 : memcmp(a.baseAddress!, b.baseAddress!, common)
                return c != 0 ? c < 0 : a.count < b.count
            }
        }
    }

    /// Makes the uncommitted changes committed: call it only after the Kafka transaction carrying
    /// ``pendingChanges()`` committed. Reads see them from now on and ``rollback()`` keeps them.
    ///
    /// They are written to SQLite, with `checkpoint`, by ``flush()``, which this call runs when
    /// ``Options/flushInterval`` has passed or ``Options/flushKeys`` keys wait. Writing at every
    /// Kafka commit would cost a SQLite transaction (and a WAL write of every page touched) per
    /// 100 ms per partition for little gain: until a flush, SQLite is merely behind, with a
    /// checkpoint saying by how much, and restore from the changelog repairs that after a crash.
    /// A thrown error concerns only that write (the commit itself took effect); the next commit
    /// retries it.
    public func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        if let readFailure { throw readFailure }
        guard !restoring else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "commit during a restore: call commitRestore(checkpoint:)")
        }
        for key in dirtyWindowKeys {
            guard let i = windows.index(forKey: key) else { continue }
            let changed = Self.commitSlot(&windows.values[i])
            if changed { unflushedWindowKeys.append(key) }
        }
        for key in dirtyCardKeys {
            guard let i = cards.index(forKey: key) else { continue }
            let changed = Self.commitSlot(&cards.values[i])
            if changed { unflushedCardKeys.append(key) }
        }
        if let dirtyStreamTime {
            committedStreamTime = dirtyStreamTime
            unflushedStreamTime = dirtyStreamTime
        }
        unflushedCheckpoint = checkpoint
        clearDirtyLists()
        if flushIsDue { try flush() }
    }

    /// Whether committed changes wait to be written and ``Options/flushInterval`` or
    /// ``Options/flushKeys`` says it is time: ``commit(checkpoint:)`` then flushes. A caller with
    /// idle time (waiting for a Kafka commit) may ``flush()`` earlier; uncommitted changes stay
    /// in memory either way, since a flush writes committed values only.
    public var flushIsDue: Bool {
        guard unflushedCheckpoint != nil else { return false }
        return unflushedWindowKeys.count + unflushedCardKeys.count >= options.flushKeys
            || options.flushInterval.map({ ContinuousClock.now - lastFlush >= $0 }) ?? false
    }

    /// Commits one slot; true when it newly needs writing to SQLite.
    @inline(__always)
    static func commitSlot(_ slot: inout Slot) -> Bool {
        slot.dirty = false
        if slot.committedKnown && slot.current == slot.committed { return false }
        slot.committed = slot.current
        slot.committedKnown = true
        if slot.unflushed { return false }
        slot.unflushed = true
        return true
    }

    func clearDirtyLists() {
        pendingCache = nil
        dirtyWindowKeys.removeAll(keepingCapacity: true)
        dirtyCardKeys.removeAll(keepingCapacity: true)
        dirtyStreamTime = nil
        readFailure = nil
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

    /// Number of committed keys not yet written to SQLite.
    public var unflushedChangeCount: Int {
        unflushedWindowKeys.count + unflushedCardKeys.count + (unflushedStreamTime == nil ? 0 : 1)
    }

    /// Writes every committed change and the last commit's checkpoint to SQLite in one
    /// transaction (in key order, which is the tables' order). On error nothing is written and
    /// the changes stay queued, so the call can be retried.
    public func flush() throws(SQLiteError) {
        let started = ContinuousClock.now
        lastFlush = started
        guard let target = unflushedCheckpoint else { return }
        defer { statistics.flushTime += ContinuousClock.now - started }
        // Key order is the tables' order: writes then walk each b-tree once, left to right.
        let windowWrites = Self.windowsInKeyOrder(unflushedWindowKeys.lazy.compactMap { [windows] key in
            windows[key].flatMap { $0.persistedKnown && $0.persisted == $0.committed ? nil : (key, $0.committed) }
        })
        let cardWrites = Self.cardsInKeyOrder(unflushedCardKeys.lazy.compactMap { [cards] key in
            cards[key].flatMap { $0.persistedKnown && $0.persisted == $0.committed ? nil : (key, $0.committed) }
        })
        try persist(windows: windowWrites, cards: cardWrites, streamTime: unflushedStreamTime.map { .some($0) },
                    checkpoint: target)
        statistics.keysFlushed += windowWrites.count + cardWrites.count
        for key in unflushedWindowKeys { Self.markPersisted(key, in: &windows) }
        for key in unflushedCardKeys { Self.markPersisted(key, in: &cards) }
        statistics.flushes += 1
        unflushedWindowKeys.removeAll(keepingCapacity: true)
        unflushedCardKeys.removeAll(keepingCapacity: true)
        unflushedStreamTime = nil
        unflushedCheckpoint = nil
        checkpoint = target
        trimCache()
    }

    /// `writes` in key order.
    static func windowsInKeyOrder<S: Sequence<(WindowKey, Int64?)>>(_ writes: S) -> [(WindowKey, Int64?)] {
        var sorted: [(start: UInt64, prefix: UInt64, key: WindowKey, value: Int64?)] = []
        sorted.reserveCapacity(writes.underestimatedCount)
        for (key, value) in writes { sorted.append((UInt64(bitPattern: key.start), cardPrefix(key.card), key, value)) }
        sorted.sort { a, b in
            if a.start != b.start { return a.start < b.start }
            if a.prefix != b.prefix { return a.prefix < b.prefix }
            return bytesPrecede(a.key.card, b.key.card)
        }
        return sorted.map { ($0.key, $0.value) }
    }

    static func cardsInKeyOrder<S: Sequence<(CardID, Int64?)>>(_ writes: S) -> [(CardID, Int64?)] {
        var sorted: [(prefix: UInt64, key: CardID, value: Int64?)] = []
        sorted.reserveCapacity(writes.underestimatedCount)
        for (key, value) in writes { sorted.append((cardPrefix(key.card), key, value)) }
        sorted.sort { a, b in a.prefix != b.prefix ? a.prefix < b.prefix : bytesPrecede(a.key.card, b.key.card) }
        return sorted.map { ($0.key, $0.value) }
    }

    /// Writes rows (nil: delete), the stream time (`.some(nil)`: delete) and the checkpoint in
    /// one SQLite transaction; nothing on error.
    func persist(windows windowWrites: [(WindowKey, Int64?)], cards cardWrites: [(CardID, Int64?)],
                 streamTime: Int64??, checkpoint target: StoreCheckpoint) throws(SQLiteError) {
        if !connection.inTransaction { try beginStatement.run() }
        do throws(SQLiteError) {
            for (key, value) in windowWrites {
                let statement = value == nil ? deleteWindow : upsertWindow
                let failure = Self.withCardBytes(key.card) { bytes in
                    statement.bindBlobNoCopy(bytes, at: 1)
                    statement.bind(key.start, at: 2)
                    if let value { statement.bind(value, at: 3) }
                    return statement.runReturningError()
                }
                if let failure { throw failure }
            }
            for (key, value) in cardWrites {
                let statement = value == nil ? deleteCard : upsertCard
                let failure = Self.withCardBytes(key.card) { bytes in
                    statement.bindBlobNoCopy(bytes, at: 1)
                    if let value { statement.bind(value, at: 2) }
                    return statement.runReturningError()
                }
                if let failure { throw failure }
            }
            switch streamTime {
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
    }

    /// The card's first 8 bytes as a big-endian integer, zero-padded.
    static func cardPrefix(_ card: String) -> UInt64 {
        var card = card
        return card.withUTF8 { bytes in
            var v: UInt64 = 0
            for i in 0..<8 { v = v << 8 | (i < bytes.count ? UInt64(bytes[i]) : 0) }
            return v
        }
    }

    /// After a flush: SQLite now holds the committed value. Absent keys leave the cache (deleted
    /// windows are not asked about again) unless changed since.
    static func markPersisted<Key: Hashable>(_ key: Key, in map: inout [Key: Slot]) {
        guard let i = map.index(forKey: key) else { return }
        if map.values[i].committed == nil && !map.values[i].dirty {
            map.remove(at: i)
            return
        }
        map.values[i].persisted = map.values[i].committed
        map.values[i].persistedKnown = true
        map.values[i].unflushed = false
    }

    /// Forgets cached keys once there are too many, keeping the dirty ones (none at a commit).
    func trimCache() {
        if windows.count > options.cacheCapacity {
            if dirtyWindowKeys.isEmpty { windows.removeAll(keepingCapacity: true) } else { windows = windows.filter { $0.value.dirty } }
        }
        if cards.count > options.cacheCapacity {
            if dirtyCardKeys.isEmpty { cards.removeAll(keepingCapacity: true) } else { cards = cards.filter { $0.value.dirty } }
            lastCardValid = false
        }
    }

    /// Discards uncommitted changes (the Kafka transaction aborted) and an unfinished restore:
    /// afterwards the store reads as of the last commit.
    public func rollback() {
        if connection.inTransaction { try? rollbackStatement.run() }
        if restoring {
            restoring = false
            restoreWindows.removeAll(keepingCapacity: true)
            restoreCards.removeAll(keepingCapacity: true)
            restoreStreamTime = nil
        }
        for key in dirtyWindowKeys { Self.rollbackSlot(key, in: &windows) }
        for key in dirtyCardKeys { Self.rollbackSlot(key, in: &cards) }
        lastCardValid = false
        clearDirtyLists()
    }

    static func rollbackSlot<Key: Hashable>(_ key: Key, in map: inout [Key: Slot]) {
        guard let i = map.index(forKey: key) else { return }
        if map.values[i].committedKnown {
            map.values[i].current = map.values[i].committed
            map.values[i].dirty = false
        } else {
            // Written blind, never read: not unflushed either (a commit would have made it
            // known), so SQLite has its committed value; read it from there next time.
            map.remove(at: i)
        }
    }

    // MARK: - Restore

    /// Applies one record read from the changelog. Records are gathered in memory, one entry per
    /// key (a changelog replayed from its start mostly holds windows written and deleted again),
    /// and written to SQLite by ``commitRestore(checkpoint:)``. Applying is idempotent, so
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
        let parsed = try ChangelogRecord.parseKey(key)
        let number: Int64? = try value.map { (v) throws(ChangelogDecodingError) in try ChangelogRecord.parseValue(v) }
        switch parsed.kind {
        case .window:
            let card = String(decoding: UnsafeRawBufferPointer(rebasing: key[parsed.card]), as: UTF8.self)
            restoreWindows[WindowKey(card: card, start: parsed.windowStart)] = .some(number)
        case .cardMax:
            let card = String(decoding: UnsafeRawBufferPointer(rebasing: key[parsed.card]), as: UTF8.self)
            restoreCards[CardID(card: card)] = .some(number)
        case .streamTime:
            restoreStreamTime = .some(number)
        }
        statistics.recordsRestored += 1
    }

    func beginRestore() throws(SQLiteError) {
        guard pendingChangeCount == 0 else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "restore with uncommitted changes: commit or roll back first")
        }
        try flush()
        // Deleting a key SQLite does not hold is a wasted b-tree search: skip them all when
        // restoring into an empty store, the usual case.
        restoreIntoEmpty = try connection.scalarInt64(
            "SELECT NOT EXISTS (SELECT 1 FROM windows) AND NOT EXISTS (SELECT 1 FROM cards)") == 1
        restoring = true
        // The cache mirrors committed rows, which the restore is about to change.
        windows.removeAll(keepingCapacity: true)
        cards.removeAll(keepingCapacity: true)
        lastCardValid = false
    }

    /// Writes the records applied since the last call, in one SQLite transaction, together with
    /// `checkpoint` (its `changelogOffset` is the next changelog offset to read). May be called
    /// periodically during a long restore to bound memory; call it once more at the end.
    public func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        if !restoring { try beginRestore() }
        let skipDeletes = restoreIntoEmpty
        let windowWrites = Self.windowsInKeyOrder(restoreWindows.lazy.filter { !(skipDeletes && $0.value == nil) }.map { ($0.key, $0.value) })
        let cardWrites = Self.cardsInKeyOrder(restoreCards.lazy.filter { !(skipDeletes && $0.value == nil) }.map { ($0.key, $0.value) })
        do throws(SQLiteError) {
            try persist(windows: windowWrites, cards: cardWrites, streamTime: restoreStreamTime, checkpoint: checkpoint)
        } catch {
            // The applied records stay gathered: the call can be retried, or rollback() drops them.
            throw error
        }
        restoreWindows.removeAll(keepingCapacity: true)
        restoreCards.removeAll(keepingCapacity: true)
        restoreStreamTime = nil
        restoreIntoEmpty = false
        restoring = false
        self.checkpoint = checkpoint
        reloadCommittedStreamTime()
    }

    func reloadCommittedStreamTime() {
        do throws(SQLiteError) {
            committedStreamTime = try connection.scalarInt64("SELECT time FROM stream WHERE id = 1")
        } catch {
            readFailure = readFailure ?? error
        }
    }

    // MARK: - SQLite access

    /// Calls `body` with the card's UTF-8 bytes, valid for the duration of the call only.
    @inline(__always)
    static func withCardBytes<R, E: Error>(_ card: String, _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        var card = card
        let result: Result<R, E> = card.withUTF8 { bytes in
            Result { () throws(E) in try body(UnsafeRawBufferPointer(bytes)) }
        }
        return try result.get()
    }

    static func cardString(_ statement: SQLiteStatement, _ column: Int32) -> String {
        statement.withBlob(column) { String(decoding: $0, as: UTF8.self) }
    }

    func loadCardMax(_ card: String) -> Int64? {
        let statement = selectCard
        // SQLite reads a SQLITE_STATIC binding only while stepping, and every use binds afresh.
        let result: Result<Int64?, SQLiteError> = Self.withCardBytes(card) { bytes in
            statement.bindBlobNoCopy(bytes, at: 1)
            defer { statement.reset() }
            return Result { () throws(SQLiteError) in try statement.step() ? statement.int64(0) : nil }
        }
        return unwrapRead(result)
    }

    func loadWindow(_ key: WindowKey) -> Int64? {
        let statement = selectWindow
        let result: Result<Int64?, SQLiteError> = Self.withCardBytes(key.card) { bytes in
            statement.bindBlobNoCopy(bytes, at: 1)
            statement.bind(key.start, at: 2)
            defer { statement.reset() }
            return Result { () throws(SQLiteError) in try statement.step() ? statement.int64(0) : nil }
        }
        return unwrapRead(result)
    }

    func unwrapRead(_ result: Result<Int64?, SQLiteError>) -> Int64? {
        switch result {
        case .success(let value): return value
        case .failure(let error):
            readFailure = readFailure ?? error
            return nil
        }
    }

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
        struct Window: Equatable { var card: String; var start: Int64; var count: Int64 }
        struct Card: Equatable { var card: String; var max: Int64 }
        var windows: [Window] = []
        var cards: [Card] = []
        var streamTime: Int64?
        var description: String { "\(windows.count) windows, \(cards.count) cards, stream time \(streamTime.map(String.init) ?? "none")" }
    }

    /// Flushes first, so that SQLite holds everything committed.
    func committedState() throws(SQLiteError) -> CommittedState {
        try flush()
        var state = CommittedState()
        let windows = try connection.statement("SELECT card, start, count FROM windows ORDER BY card, start")
        while try windows.step() {
            state.windows.append(.init(card: Self.cardString(windows, 0), start: windows.int64(1), count: windows.int64(2)))
        }
        windows.reset()
        let cards = try connection.statement("SELECT card, max FROM cards ORDER BY card")
        while try cards.step() { state.cards.append(.init(card: Self.cardString(cards, 0), max: cards.int64(1))) }
        cards.reset()
        state.streamTime = try connection.scalarInt64("SELECT time FROM stream WHERE id = 1")
        return state
    }
}
