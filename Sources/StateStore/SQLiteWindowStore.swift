import Foundation
import FraudModel

/// One input partition's window state (SEMANTICS.md §2) in SQLite, for `polyglot process`: a
/// ``CheckpointedStore`` of ``CardWindows`` that the ``Detector`` reads and writes as a
/// ``WindowStore``.
///
/// **State by card.** A card's whole state (its maximum and open windows) is one SQLite row, one
/// changelog record and one cache entry: a record usually opens a window and closes the card's
/// previous one, which a row per window turned into three writes. The row's rank is the card's
/// maximum, by which ``purgeExpired(_:)`` finds expired cards.
///
/// **Cycle**, as the processor drives it (the store's notes say what each step does):
/// 1. feed records through ``Detector/process(card:eventTime:store:)``;
/// 2. send ``pendingChanges(into:)`` to the changelog inside the Kafka transaction, and
///    ``seal()`` the cycle while Kafka commits it;
/// 3. after Kafka commits, ``commit(checkpoint:)`` (it flushes to SQLite when due);
///    if Kafka aborts, ``rollback()``;
/// 4. on revocation or shutdown, after the last commit, ``close()`` (it flushes).
/// On assignment: open; if ``checkpoint`` is nil or behind the changelog's end, ``apply(_:)``
/// the changelog from ``checkpoint``'s `changelogOffset` (or the start) and
/// ``commitRestore(checkpoint:)``; then resume input at ``checkpoint``'s `positions`.
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
/// **Durability.** WAL with `synchronous=NORMAL`; the checkpoint row commits atomically with the
/// state, so a lost SQLite transaction leaves the store behind, never inconsistent, and restore
/// from the changelog repairs it.
public final class SQLiteWindowStore: WindowStore {
    /// Tuning; the defaults suit 32 partitions per process.
    public typealias Options = StoreOptions
    /// Counters of the writes to SQLite.
    public typealias Statistics = StoreStatistics

    /// The database file's name inside the task's directory.
    public static let fileName = "windows.sqlite"
    /// `PRAGMA user_version` of the schema this build writes; a file of an earlier version is
    /// rebuilt from the changelog.
    public static let schemaVersion = StoreDatabase.schemaVersion

    public let directory: String
    public let parameters: DetectorParameters
    /// The cards, their rows and the commit cycle.
    let store: CheckpointedStore<CardWindows>

    /// Opens the store in `directory` (created when missing), creating the database when absent.
    /// `parameters` must be the ones the task's ``Detector`` uses: an accepted record drops the
    /// windows it closes by them.
    ///
    /// Throws an ``SQLiteError`` whose ``SQLiteError/requiresRebuild`` is true when the file is
    /// corrupt, not a database, or of another schema (an earlier build's included): delete it
    /// with ``destroy(directory:)`` and restore from the changelog's start.
    /// ``SQLiteError/isRetriable`` errors (BUSY) mean another connection still holds the store
    /// (it is opened in exclusive locking mode, so two processes cannot share a state directory
    /// by mistake).
    public init(directory: String, parameters: DetectorParameters, options: Options = Options()) throws(SQLiteError) {
        self.directory = directory
        self.parameters = parameters
        store = try CheckpointedStore(directory: directory, fileName: Self.fileName, options: options)
    }

    /// The database path for a task directory.
    public static func path(directory: String) -> String {
        StoreDatabase.path(directory: directory, fileName: fileName)
    }

    /// Deletes the store's files in `directory` (database, WAL and shared-memory files), for a
    /// store that must be rebuilt. Close any store open on it first. Missing files are fine.
    public static func destroy(directory: String) throws(SQLiteError) {
        try StoreDatabase.destroy(path: path(directory: directory))
    }

    public var options: Options { store.options }
    /// The checkpoint stored in SQLite with the state it describes: read at open (nil for a new
    /// store), advanced by each flush. Restore resumes from its `changelogOffset`.
    public var checkpoint: StoreCheckpoint? { store.checkpoint }
    /// The checkpoint of the last ``commit(checkpoint:)``, flushed or not.
    public var committedCheckpoint: StoreCheckpoint? { store.committedCheckpoint }
    /// Whether opening created the database (no state yet: restore from the changelog's start).
    public var wasCreated: Bool { store.wasCreated }
    /// The first SQLite error met by a read since the last commit or rollback (see the type's notes).
    public var readFailure: SQLiteError? { store.readFailure }
    /// Whether a cycle is sealed, waiting for ``commit(checkpoint:)``.
    public var isSealed: Bool { store.isSealed }
    /// What this store has written to SQLite since it was opened.
    public var statistics: Statistics { store.statistics }
    /// Number of cards changed in the open cycle, plus one for a changed stream time (an upper
    /// bound: a card changed and changed back produces no record).
    public var pendingChangeCount: Int { store.pendingChangeCount }
    /// Number of committed cards not yet written to SQLite, plus one for the stream time.
    public var unflushedChangeCount: Int { store.unflushedChangeCount }
    /// Whether ``commit(checkpoint:)`` will write to SQLite (see ``Options/flushInterval``).
    public var flushIsDue: Bool { store.flushIsDue }

    var connection: SQLiteConnection { store.connection }
    var cacheHoldsEveryCard: Bool { store.cacheHoldsEveryCard }

    /// Discards uncommitted changes, writes committed ones (``flush()``) and closes the database.
    /// Call before ``destroy(directory:)`` or handing the partition to another owner; the
    /// processor commits first. If the flush fails the database is still closed (it is behind,
    /// which restore repairs) and the error is thrown.
    public func close() throws(SQLiteError) { try store.close() }

    // MARK: - WindowStore

    public var streamTime: Int64? { store.streamTime }

    /// Cards come as their id's bytes, borrowed (the processor's decoder hands them out without
    /// copying); the cache copies them once, when it first sees a card.
    public typealias CardKey = CardBytes

    public func cardMax(_ card: CardBytes) -> Int64? {
        let e = store.entry(for: card)
        return store[e].exists ? store[e].max : nil
    }

    public func windowCount(_ card: CardBytes, windowStart: Int64) -> Int64 {
        let e = store.entry(for: card)
        return store[e].exists ? store[e].count(at: windowStart) : 0
    }

    public func putAccepted(_ card: CardBytes, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64) {
        let e = store.entry(for: card)  // the detector just asked: the table's last lookup
        store.update(e) { $0.accept(windowStart: windowStart, count: count, max: cardMax, streamTime: streamTime, parameters: parameters) }
        store.setStreamTime(streamTime)
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

    /// Deletes the cards SEMANTICS.md §2 lets go: those whose latest window left retention.
    /// (Windows closed by their card's maximum or by retention already went when the card last
    /// accepted a record.) A card expires when `windowStart(max) <= cutoff`, that is when
    /// `max < windowStart(cutoff) + W`: the cards ranked (by maximum) up to that bound, which the
    /// store finds in memory and, for cards it does not cache, by one scan of SQLite.
    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let now = streamTime else { return }
        let p = parameters
        let cutoff = Int128(now) - Int128(p.retention) - Int128(p.window) - Int128(p.grace)
        guard cutoff >= 0 else { return }
        let w = Int128(p.window)
        guard let bound = Self.clampToInt64(cutoff - cutoff % w + w - 1) else { return }
        let store = store
        store.forEachEntry(rankAtMost: bound) { e in
            guard p.isCardExpired(cardMax: store[e].max, streamTime: now) else { return }
            store.update(e) { $0 = .absent }
        }
    }

    static func clampToInt64(_ value: Int128) -> Int64? {
        if value < Int128(Int64.min) { return nil }
        if value > Int128(Int64.max) { return .max }
        return Int64(value)
    }

    // MARK: - Commit cycle

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
        try store.pendingChanges(into: &batch)
    }

    /// Closes the open cycle without committing it, so that the next one can start while the
    /// Kafka transaction carrying this one's ``pendingChanges()`` commits: the processor keeps
    /// handling records meanwhile. The next ``commit(checkpoint:)`` commits the sealed cycle
    /// only; ``rollback()`` rolls back both. Call after ``pendingChanges()`` succeeded, with no
    /// cycle sealed already.
    public func seal() throws(SQLiteError) { try store.seal() }

    /// Makes the sealed cycle's changes (see ``seal()``), or with none sealed the open cycle's,
    /// committed: call it only after the Kafka transaction carrying their ``pendingChanges()``
    /// committed. Reads see them from now on and ``rollback()`` keeps them. They reach SQLite,
    /// with `checkpoint`, at the ``flush()`` this call runs when ``flushIsDue``; a thrown error
    /// concerns only that write (the commit itself took effect), and the next commit retries it.
    public func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) { try store.commit(checkpoint: checkpoint) }

    /// Writes every committed change and the last commit's checkpoint to SQLite in one
    /// transaction. On error nothing is written and the changes stay queued, so the call can be
    /// retried.
    public func flush() throws(SQLiteError) { try store.flush() }

    /// Discards uncommitted changes (the Kafka transaction aborted) and an unfinished restore:
    /// afterwards the store reads as of the last commit.
    public func rollback() { store.rollback() }

    // MARK: - Restore

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
        try store.apply(key: key, value: value)
    }

    /// Writes the records applied since the last call, in one SQLite transaction, together with
    /// `checkpoint` (its `changelogOffset` is the next changelog offset to read). May be called
    /// periodically during a long restore to bound memory; call it once more at the end.
    public func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        try store.commitRestore(checkpoint: checkpoint)
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
        let (rows, streamTime) = try store.committedRows()
        var state = CommittedState(streamTime: streamTime)
        for row in rows {
            guard row.rank == row.value.max else {
                throw SQLiteError(code: .corrupt, resultCode: 0, message: "card row ranked \(row.rank), not by its maximum \(row.value.max)")
            }
            state.cards.append(.init(card: String(decoding: row.key, as: UTF8.self), state: row.value.state!))
        }
        return state
    }
}
