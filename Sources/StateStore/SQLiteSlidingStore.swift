import FraudModel

/// One input partition's sliding-window state (SEMANTICS.md §2b) in SQLite: a
/// ``CheckpointedStore`` of ``CardTimes`` that the ``SlidingDetector`` reads and writes as a
/// ``SlidingWindowStore``. The sliding counterpart of ``SQLiteWindowStore``, with the same
/// commit cycle, restore and threading rules (see there); a card's whole state (its maximum and
/// its accepted times) is one row, one changelog record and one cache entry.
public final class SQLiteSlidingStore: SlidingWindowStore {
    /// The database file's name inside the task's directory: not the tumbling store's, so a
    /// state directory of one kind is never read as the other.
    public static let fileName = "sliding.sqlite"

    public let directory: String
    public let parameters: DetectorParameters
    let store: CheckpointedStore<CardTimes>

    /// Opens the store in `directory` (created when missing); errors as ``SQLiteWindowStore``'s.
    public init(directory: String, parameters: DetectorParameters, options: StoreOptions = StoreOptions()) throws(SQLiteError) {
        self.directory = directory
        self.parameters = parameters
        store = try CheckpointedStore(directory: directory, fileName: Self.fileName, options: options)
    }

    /// The database path for a task directory.
    public static func path(directory: String) -> String {
        StoreDatabase.path(directory: directory, fileName: fileName)
    }

    /// Deletes the store's files in `directory`. Missing files are fine.
    public static func destroy(directory: String) throws(SQLiteError) {
        try StoreDatabase.destroy(path: path(directory: directory))
    }

    public var checkpoint: StoreCheckpoint? { store.checkpoint }
    public var committedCheckpoint: StoreCheckpoint? { store.committedCheckpoint }
    public var wasCreated: Bool { store.wasCreated }
    public var readFailure: SQLiteError? { store.readFailure }
    public var statistics: StoreStatistics { store.statistics }

    public func close() throws(SQLiteError) { try store.close() }

    // MARK: - SlidingWindowStore

    public var streamTime: Int64? { store.streamTime }

    public func cardMax(_ card: CardBytes) -> Int64? {
        let e = store.entry(for: card)
        return store[e].exists ? store[e].max : nil
    }

    public func accept(_ card: CardBytes, eventTime: Int64, from: Int64, cardMax: Int64, streamTime: Int64) -> Int64 {
        let e = store.entry(for: card)  // the detector just asked: the table's last lookup
        var earlier: Int64 = 0
        let p = parameters
        store.update(e) { earlier = $0.accept(eventTime: eventTime, from: from, cardMax: cardMax, streamTime: streamTime, parameters: p) }
        store.setStreamTime(streamTime)
        return earlier
    }

    /// Deletes the cards SEMANTICS.md §2b lets go (`cardMax + W + G <= streamTime - R`): those
    /// ranked (by maximum) up to that bound, found in memory and, for cards not cached, by one
    /// scan of SQLite. A kept card's useless times go when it next accepts a record.
    public func purgeExpired(_ parameters: DetectorParameters) {
        guard let now = streamTime else { return }
        let p = parameters
        let bound = Int128(now) - Int128(p.retention) - Int128(p.window) - Int128(p.grace)
        guard bound >= 0 else { return }
        let store = store
        store.forEachEntry(rankAtMost: Int64(bound)) { e in
            guard p.isCardExpired(slidingCardMax: store[e].max, streamTime: now) else { return }
            store.update(e) { $0 = .absent }
        }
    }

    /// The accepted times kept for `card`, ascending (tests and tools).
    public func times(_ card: String) -> [Int64] {
        var card = card
        let e = card.withUTF8 { store.entry(for: CardBytes($0)) }
        var times: [Int64] = []
        if store[e].exists { store[e].times.forEach { times.append($0) } }
        return times
    }

    /// ``cardMax(_:)-(CardBytes)`` by a `String` id (tests and tools).
    public func cardMax(_ card: String) -> Int64? {
        var card = card
        return card.withUTF8 { cardMax(CardBytes($0)) }
    }

    // MARK: - Commit cycle and restore (as ``SQLiteWindowStore``'s)

    public func pendingChanges(into batch: inout ChangelogBatch) throws(SQLiteError) { try store.pendingChanges(into: &batch) }
    public func seal() throws(SQLiteError) { try store.seal() }
    public func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) { try store.commit(checkpoint: checkpoint) }
    public func flush() throws(SQLiteError) { try store.flush() }
    public func rollback() { store.rollback() }
    public func apply(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws { try store.apply(key: key, value: value) }
    public func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) { try store.commitRestore(checkpoint: checkpoint) }
}
