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
/// **Write-back cache.** The detector's reads hit an in-memory map of uncommitted changes (the
/// dirty set), then a bounded cache of committed rows, then SQLite; its writes only touch the
/// dirty set. ``pendingChanges()`` turns the dirty set into one changelog record per key, and
/// ``commit(checkpoint:)`` writes it to SQLite in one transaction together with the checkpoint,
/// so both the store and the changelog see one write per key per commit, not one per record.
///
/// **Cycle**, as the processor drives it:
/// 1. feed records through ``Detector/process(card:eventTime:store:)``;
/// 2. send ``pendingChanges()`` to the changelog inside the Kafka transaction;
/// 3. after Kafka commits, ``commit(checkpoint:)``; if Kafka aborts, ``rollback()``.
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
/// checkpoint row commits atomically with the state, so a lost transaction leaves the store
/// consistent but *behind*, which restore from the changelog repairs; a full fsync per commit
/// would buy nothing.
public final class SQLiteWindowStore: WindowStore {
    /// Tuning; the defaults suit 32 partitions per process.
    public struct Options: Sendable, Hashable {
        /// How many committed windows (and, separately, card maxima) to keep cached in memory.
        public var cacheCapacity: Int
        /// SQLite page cache per store, in KiB.
        public var pageCacheKiB: Int
        /// The check run at open to detect corruption.
        public var integrityCheck: IntegrityCheck

        public enum IntegrityCheck: Sendable, Hashable {
            /// No check (tests and benchmarks that open many stores).
            case none
            /// `PRAGMA quick_check`: page and b-tree structure, O(file size), no index cross-check.
            case quick
            /// `PRAGMA integrity_check`: also verifies that indexes match their tables.
            case full
        }

        public init(cacheCapacity: Int = 50_000, pageCacheKiB: Int = 8_192, integrityCheck: IntegrityCheck = .quick) {
            self.cacheCapacity = cacheCapacity
            self.pageCacheKiB = pageCacheKiB
            self.integrityCheck = integrityCheck
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

    struct WindowKey: Hashable {
        var card: String
        var start: Int64
    }

    public let directory: String
    public let parameters: DetectorParameters
    public let options: Options
    /// The checkpoint of the last commit (read at open; nil for a new or never-committed store).
    public private(set) var checkpoint: StoreCheckpoint?
    /// Whether opening created the database (no state yet: restore from the changelog's start).
    public let wasCreated: Bool
    /// The first SQLite error met by a read since the last commit or rollback (see the type's notes).
    public private(set) var readFailure: SQLiteError?

    let connection: SQLiteConnection

    // Committed state cache: mirrors SQLite. A nil value means "known absent".
    var cleanWindows: [WindowKey: Int64?] = [:]
    var cleanCards: [String: Int64?] = [:]
    var committedStreamTime: Int64?
    // Uncommitted changes. A nil value is a deletion (tombstone).
    var dirtyWindows: [WindowKey: Int64?] = [:]
    var dirtyCards: [String: Int64?] = [:]
    var dirtyStreamTime: Int64?
    /// ``pendingChanges()``'s answer, kept until the dirty set changes, so that ``commit(checkpoint:)``
    /// writes exactly the records that went to the changelog without encoding and sorting twice.
    var pendingCache: [ChangelogRecord]?
    var restoring = false

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
            try db.execute("PRAGMA synchronous = NORMAL; PRAGMA cache_size = -\(max(options.pageCacheKiB, 64))")
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

    /// Discards uncommitted changes and closes the database. Call before ``destroy(directory:)``
    /// or handing the partition to another owner; the processor commits first.
    public func close() throws(SQLiteError) {
        if connection.inTransaction { try? rollbackStatement.run() }
        clearDirty()
        try connection.close()
    }

    // MARK: - WindowStore

    public var streamTime: Int64? { dirtyStreamTime ?? committedStreamTime }

    public func cardMax(_ card: String) -> Int64? {
        if let value = dirtyCards[card] { return value }
        if let value = cleanCards[card] { return value }
        let value = loadCardMax(card)
        cleanCards[card] = .some(value)
        return value
    }

    public func windowCount(_ card: String, windowStart: Int64) -> Int64 {
        // Every window of a card starts at or before the card's maximum (the window of a time is
        // never after it), so a later window, or a card without a maximum, has no count: no lookup.
        guard let max = cardMax(card), windowStart <= max else { return 0 }
        let key = WindowKey(card: card, start: windowStart)
        if let value = dirtyWindows[key] { return value ?? 0 }
        if let value = cleanWindows[key] { return value ?? 0 }
        let value = loadWindow(key)
        cleanWindows[key] = .some(value)
        return value ?? 0
    }

    public func putAccepted(_ card: String, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        pendingCache = nil
        dirtyWindows[WindowKey(card: card, start: windowStart)] = .some(count)
        let previousDirty = dirtyCards.updateValue(.some(cardMax), forKey: card)
        let previous: Int64?
        if let previousDirty {
            previous = previousDirty
        } else if let clean = cleanCards[card] {
            previous = clean
        } else {
            previous = loadCardMax(card)
            cleanCards[card] = .some(previous)
        }
        if let previous, cardMax > previous {
            dropWindowsClosed(card, from: previous, to: cardMax, except: windowStart)
        }
        dirtyStreamTime = streamTime
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
            if windowCount(card, windowStart: s) != 0 { tombstoneWindow(WindowKey(card: card, start: s)) }
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
    /// come from one key-range scan up to the retention cutoff (rows already deleted are not in
    /// it, so the scan reads only what it deletes plus this cycle's pending deletions), pending
    /// ones from the dirty set. A card's latest window, the one holding its maximum, is never
    /// closed by the card itself and leaves retention exactly when the card expires
    /// (`windowStart(max) + W + G <= streamTime - R` is the window's retention rule for
    /// `s = windowStart(max)`), so checking the card of every window leaving retention finds
    /// every expiring card without an index on maxima.
    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let now = streamTime else { return }
        let p = parameters
        let cutoff = Int128(now) - Int128(p.retention) - Int128(p.window) - Int128(p.grace)
        var cardsToCheck: Set<String> = []

        if let windowCutoff = Self.clampToInt64(cutoff) {
            forEachRow(windowsUpTo, bind: { $0.bind(windowCutoff, at: 1) }) { row in
                let key = WindowKey(card: Self.cardString(row, 0), start: row.int64(1))
                if case .some(.none) = dirtyWindows[key] { return }
                tombstoneWindow(key, inSQLite: true)
                cardsToCheck.insert(key.card)
            }
        }
        var closedWindows: [WindowKey] = []
        for (key, value) in dirtyWindows where value != nil {
            if p.isClosed(windowStart: key.start, cardMax: cardMax(key.card), streamTime: now) { closedWindows.append(key) }
        }
        for key in closedWindows {
            tombstoneWindow(key)
            cardsToCheck.insert(key.card)
        }
        for card in cardsToCheck {
            if let max = cardMax(card), p.isCardExpired(cardMax: max, streamTime: now) { tombstoneCard(card) }
        }
    }

    /// `inSQLite`: the row was just read from SQLite, so it needs a tombstone.
    func tombstoneWindow(_ key: WindowKey, inSQLite: Bool = false) {
        pendingCache = nil
        // A window after its card's committed maximum (or of a card without one) was never
        // committed: forget it rather than write a row and a tombstone for nothing.
        if !inSQLite, let committed = cleanCards[key.card], committed.map({ key.start > $0 }) ?? true {
            dirtyWindows[key] = nil
        } else {
            dirtyWindows[key] = .some(nil)
        }
    }

    func tombstoneCard(_ card: String) {
        pendingCache = nil
        if case .some(.none) = cleanCards[card] {
            dirtyCards[card] = nil
        } else {
            dirtyCards[card] = .some(nil)
        }
    }

    // MARK: - Commit cycle

    /// Number of keys with uncommitted changes.
    public var pendingChangeCount: Int { dirtyWindows.count + dirtyCards.count + (dirtyStreamTime == nil ? 0 : 1) }

    /// One changelog record per changed key since the last commit or rollback (a nil value for a
    /// deleted key), ordered by key bytes so that the same changes always give the same records.
    /// Throws ``readFailure`` if a read failed: the cycle's verdicts cannot be trusted.
    public func pendingChanges() throws(SQLiteError) -> [ChangelogRecord] {
        if let readFailure { throw readFailure }
        return sortedPendingChanges()
    }

    func sortedPendingChanges() -> [ChangelogRecord] {
        if let pendingCache { return pendingCache }
        var records: [ChangelogRecord] = []
        records.reserveCapacity(pendingChangeCount)
        for (key, value) in dirtyWindows {
            records.append(ChangelogRecord(.window(card: key.card, windowStart: key.start, count: value)))
        }
        for (card, value) in dirtyCards {
            records.append(ChangelogRecord(.cardMax(card: card, max: value)))
        }
        if let dirtyStreamTime {
            records.append(ChangelogRecord(.streamTime(dirtyStreamTime)))
        }
        records.sort { Self.precedes($0.key, $1.key) }
        pendingCache = records
        return records
    }

    /// Byte order of keys (memcmp, then length), never `String` order, which is Unicode-aware.
    @inline(__always)
    static func precedes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        a.withUnsafeBytes { a in
            b.withUnsafeBytes { b in
                let common = min(a.count, b.count)
                let c = common == 0 ? 0 : memcmp(a.baseAddress!, b.baseAddress!, common)
                return c != 0 ? c < 0 : a.count < b.count
            }
        }
    }

    /// Writes every uncommitted change and `checkpoint` in one SQLite transaction, then clears the
    /// dirty set. Call only after the Kafka transaction carrying ``pendingChanges()`` committed.
    /// It writes those very records (in key order, which is the tables' order), so the store is
    /// what a restore from the changelog would build.
    /// On error nothing is written and the dirty set is kept, so the call can be retried; if it
    /// keeps failing, the store is behind its changelog and restore repairs it.
    public func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        if let readFailure { throw readFailure }
        guard !restoring else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "commit during a restore: call commitRestore(checkpoint:)")
        }
        let records = sortedPendingChanges()
        try beginStatement.run()
        do throws(SQLiteError) {
            for record in records {
                // Our own encoding: it parses, so a failure here would be a bug, reported as misuse.
                do {
                    try write(record)
                } catch let error as SQLiteError {
                    throw error
                } catch {
                    throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "could not write own changelog record: \(error)")
                }
            }
            upsertCheckpoint.bind(checkpoint.sourceOffset, at: 1)
            upsertCheckpoint.bind(checkpoint.changelogOffset, at: 2)
            try upsertCheckpoint.run()
            try commitStatement.run()
        } catch {
            try? rollbackStatement.run()
            throw error
        }
        mergeDirtyIntoCache()
        self.checkpoint = checkpoint
    }

    func mergeDirtyIntoCache() {
        if cleanWindows.count + dirtyWindows.count > options.cacheCapacity { cleanWindows.removeAll(keepingCapacity: true) }
        if cleanCards.count + dirtyCards.count > options.cacheCapacity { cleanCards.removeAll(keepingCapacity: true) }
        for (key, value) in dirtyWindows { cleanWindows[key] = .some(value) }
        for (card, value) in dirtyCards { cleanCards[card] = .some(value) }
        if let dirtyStreamTime { committedStreamTime = dirtyStreamTime }
        clearDirty()
    }

    func clearDirty() {
        pendingCache = nil
        dirtyWindows.removeAll(keepingCapacity: true)
        dirtyCards.removeAll(keepingCapacity: true)
        dirtyStreamTime = nil
        readFailure = nil
    }

    /// Discards uncommitted changes (the Kafka transaction aborted) and an unfinished restore:
    /// afterwards the store reads as of the last commit.
    public func rollback() {
        if connection.inTransaction { try? rollbackStatement.run() }
        if restoring {
            restoring = false
            cleanWindows.removeAll(keepingCapacity: true)
            cleanCards.removeAll(keepingCapacity: true)
            reloadCommittedStreamTime()
        }
        clearDirty()
    }

    // MARK: - Restore

    /// Applies one record read from the changelog. Records are applied in one SQLite transaction
    /// until ``commitRestore(checkpoint:)``; applying is idempotent, so replaying a range twice
    /// gives the same state. Throws ``ChangelogDecodingError`` for a malformed record (nothing
    /// of it is applied; the restore transaction stays open) or ``SQLiteError``.
    /// Requires no uncommitted changes.
    public func apply(_ record: ChangelogRecord) throws {
        if !restoring { try beginRestore() }
        try write(record)
    }

    /// ``apply(_:)`` on borrowed key and value bytes (nil value: tombstone), copying nothing.
    public func apply(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws {
        if !restoring { try beginRestore() }
        try write(key: key, value: value)
    }

    @inline(__always)
    func write(_ record: ChangelogRecord) throws {
        try record.key.withUnsafeBytes { key in
            if let value = record.value {
                try value.withUnsafeBytes { value in try write(key: key, value: value) }
            } else {
                try write(key: key, value: nil)
            }
        }
    }

    /// Parses one encoded record and writes it to its table, in the open transaction.
    @inline(__always)
    func write(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws {
        let parsed = try ChangelogRecord.parseKey(key)
        let number: Int64? = try value.map { (v) throws(ChangelogDecodingError) in try ChangelogRecord.parseValue(v) }
        switch parsed.kind {
        case .window:
            let statement = number == nil ? deleteWindow : upsertWindow
            statement.bindBlobNoCopy(UnsafeRawBufferPointer(rebasing: key[parsed.card]), at: 1)
            statement.bind(parsed.windowStart, at: 2)
            if let number { statement.bind(number, at: 3) }
            try statement.run()
        case .cardMax:
            let statement = number == nil ? deleteCard : upsertCard
            statement.bindBlobNoCopy(UnsafeRawBufferPointer(rebasing: key[parsed.card]), at: 1)
            if let number { statement.bind(number, at: 2) }
            try statement.run()
        case .streamTime:
            if let number {
                upsertStream.bind(number, at: 1)
                try upsertStream.run()
            } else {
                try deleteStream.run()
            }
        }
    }

    func beginRestore() throws(SQLiteError) {
        guard pendingChangeCount == 0 else {
            throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "restore with uncommitted changes: commit or roll back first")
        }
        try beginStatement.run()
        restoring = true
        // The cache mirrors committed rows, which the restore is about to change.
        cleanWindows.removeAll(keepingCapacity: true)
        cleanCards.removeAll(keepingCapacity: true)
    }

    /// Commits the records applied since the last call together with `checkpoint` (its
    /// `changelogOffset` is the next changelog offset to read). May be called periodically during
    /// a long restore to bound the transaction; call it once more at the end.
    public func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        if !restoring { try beginRestore() }
        do throws(SQLiteError) {
            upsertCheckpoint.bind(checkpoint.sourceOffset, at: 1)
            upsertCheckpoint.bind(checkpoint.changelogOffset, at: 2)
            try upsertCheckpoint.run()
            try commitStatement.run()
        } catch {
            try? rollbackStatement.run()
            restoring = false
            reloadCommittedStreamTime()
            throw error
        }
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

    /// Steps `statement` over all its rows (after `bind`, and binding `card` as parameter 1 when
    /// given), recording a failure in ``readFailure``. The rows must be consumed inside `row`.
    func forEachRow(_ statement: SQLiteStatement, bind: (SQLiteStatement) -> Void, card: String? = nil,
                    row: (SQLiteStatement) -> Void) {
        func run() {
            bind(statement)
            defer { statement.reset() }
            do throws(SQLiteError) {
                while try statement.step() { row(statement) }
            } catch {
                readFailure = readFailure ?? error
            }
        }
        if let card {
            Self.withCardBytes(card) { bytes in
                statement.bindBlobNoCopy(bytes, at: 1)
                run()
            }
        } else {
            run()
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

    func committedState() throws(SQLiteError) -> CommittedState {
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
