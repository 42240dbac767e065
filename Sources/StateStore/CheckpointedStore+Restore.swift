internal import CSQLite
import Foundation
import FraudModel

// Restore from the changelog, and the SQLite reads under the cache.
extension CheckpointedStore {
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
