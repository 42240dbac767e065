internal import CSQLite
import Foundation
import FraudModel

// The commit cycle: the open cycle's changes as changelog records, sealed while Kafka commits
// them, then written to SQLite with the checkpoint; or rolled back.
extension CheckpointedStore {
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
            let exists = committedValue(e).exists
            noteRowWritten(e, exists: exists)
            cache[e].row = exists ? .present : .absent
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

    /// Keeps ``storedKeys`` in step with a flushed entry's row (before `row` is updated): a row
    /// whose previous state is not known (restored over, or a failed read) drops the index.
    private func noteRowWritten(_ e: Int, exists: Bool) {
        guard storedKeys != nil else { return }
        switch (cache[e].row, exists) {
        case (.absent, true):
            storedKeys!.inserted(cache.key(e))
        case (.present, false):
            if !storedKeys!.deleted(cache.key(e)) { storedKeys = nil }
        case (.present, true), (.absent, false):
            break
        case (.unknown, _), (.failed, _):
            storedKeys = nil
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
}
