import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

// The "State" suite, continued: sealed cycles, crashes before a flush, read failures.
extension StateTests {
    // MARK: Commit cycles, crashes and read failures

    @Test func crashBeforeFlushLeavesStoreBehindAndRestoreRepairs() throws {
        let dir = try TemporaryDirectory("behind")
        defer { dir.cleanup() }
        let deferred = SQLiteWindowStore.Options(integrityCheck: .none, flushInterval: nil, flushKeys: .max)
        // A long retention: no purge (which flushes) during the test, so only the explicit flush writes.
        let parameters = try DetectorParameters(window: 1000, threshold: 2, grace: 200, retention: 1_000_000)
        var changelog: [ChangelogRecord] = []
        var expected: SQLiteWindowStore.CommittedState
        let crashed = dir.sub("crashed")
        do {
            var store = try SQLiteWindowStore(directory: dir.sub("live"), parameters: parameters, options: deferred)
            var detector = Detector(parameters: parameters)
            for cycle in 0..<6 {
                for i in 0..<50 {
                    _ = detector.process(card: "card-\(i % 7)", eventTime: Int64(cycle * 900 + i * 13), store: &store)
                }
                changelog += try store.pendingChanges()
                try store.commit(checkpoint: StoreCheckpoint(sourceOffset: Int64((cycle + 1) * 50), changelogOffset: Int64(changelog.count)))
                #expect(store.unflushedChangeCount > 0)
                if cycle == 2 { try store.flush() }
            }
            #expect(store.checkpoint?.sourceOffset == 150)
            #expect(store.committedCheckpoint?.sourceOffset == 300)
            // Reads see every commit; a rollback keeps them.
            store.rollback()
            let streamTime: Int64 = 5 * 900 + 49 * 13
            #expect(store.streamTime == streamTime)
            // A crash now: copy the files as they are (database and WAL), as the process dying
            // would leave them.
            let crashedFile = SQLiteWindowStore.path(directory: crashed)
            try FileManager.default.createDirectory(atPath: crashed, withIntermediateDirectories: true)
            let live = SQLiteWindowStore.path(directory: dir.sub("live"))
            try FileManager.default.copyItem(atPath: live, toPath: crashedFile)
            try FileManager.default.copyItem(atPath: live + "-wal", toPath: crashedFile + "-wal")
            // What the live store holds once everything is written.
            expected = try store.committedState()
            try store.close()
        }
        let store = try SQLiteWindowStore(directory: crashed, parameters: parameters, options: Self.fast)
        let behind = try #require(store.checkpoint)
        #expect(behind.sourceOffset == 150)
        for record in changelog[Int(behind.changelogOffset)...] { try store.apply(record) }
        try store.commitRestore(checkpoint: StoreCheckpoint(sourceOffset: 300, changelogOffset: Int64(changelog.count)))
        #expect(try store.committedState() == expected)
        try store.close()
    }

    /// The processor flushes while its Kafka commit is in flight, with the next cycle's changes
    /// pending: the flush must write committed values only and leave the pending changes whole.
    @Test func flushWithPendingChangesWritesCommittedValuesOnly() throws {
        let dir = try TemporaryDirectory("pending-flush")
        defer { dir.cleanup() }
        let deferred = SQLiteWindowStore.Options(integrityCheck: .none, flushInterval: nil, flushKeys: .max)
        let parameters = try DetectorParameters(window: 1000, threshold: 2, grace: 200, retention: 1_000_000)
        func run(_ directory: String, flushBetween: Bool) throws -> SQLiteWindowStore.CommittedState {
            var store = try SQLiteWindowStore(directory: directory, parameters: parameters, options: deferred)
            var detector = Detector(parameters: parameters)
            for i in 0..<40 { _ = detector.process(card: "card-\(i % 5)", eventTime: Int64(i * 37), store: &store) }
            _ = try store.pendingChanges()
            try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 40, changelogOffset: 10))
            #expect(!store.flushIsDue)
            let first = flushBetween ? try store.committedState() : nil
            for i in 40..<80 { _ = detector.process(card: "card-\(i % 5)", eventTime: Int64(i * 37 - (i % 3) * 400), store: &store) }
            let pending = try store.pendingChanges()
            #expect(!pending.isEmpty)
            if flushBetween {
                // committedState() flushes first: with changes pending, SQLite still holds the first commit.
                #expect(try store.committedState() == first)
                #expect(store.checkpoint?.sourceOffset == 40)
                #expect(try store.pendingChanges() == pending)
            }
            try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 80, changelogOffset: 20))
            let state = try store.committedState()
            #expect(store.checkpoint?.sourceOffset == 80)
            try store.close()
            return state
        }
        #expect(try run(dir.sub("flushed"), flushBetween: true) == run(dir.sub("plain"), flushBetween: false))
    }

    /// The processor seals a cycle, keeps handling records while Kafka commits it, then commits
    /// the sealed cycle alone; an abort then rolls back both.
    @Test func sealedCycleCommitsAloneAndRollbackUndoesBoth() throws {
        let dir = try TemporaryDirectory("sealed")
        defer { dir.cleanup() }
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        var detector = Detector(parameters: Self.parameters)
        _ = detector.process(card: "a", eventTime: 100, store: &store)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 1, changelogOffset: 2))
        // Cycle 2, sealed: a counts again, b appears.
        _ = detector.process(card: "a", eventTime: 150, store: &store)
        _ = detector.process(card: "b", eventTime: 160, store: &store)
        let sealedChanges = try store.pendingChanges()
        try store.seal()
        #expect(store.isSealed)
        #expect(throws: SQLiteError.self) { try store.seal() }
        #expect(throws: SQLiteError.self) { try store.flush() }
        // Cycle 3 while cycle 2 commits: its changes are relative to cycle 2.
        _ = detector.process(card: "a", eventTime: 170, store: &store)
        _ = detector.process(card: "c", eventTime: 1_300, store: &store)
        #expect(try store.pendingChanges() == [
            ChangelogRecord(.card(card: "a", state: CardState(max: 170, windows: [WindowCount(start: 0, count: 3)]))),
            ChangelogRecord(.card(card: "c", state: CardState(max: 1_300, windows: [WindowCount(start: 1_000, count: 1)]))),
            ChangelogRecord(.streamTime(1_300)),
        ])
        #expect(sealedChanges.count == 3)
        // Cycle 2 commits; SQLite gets cycle 2's values, not cycle 3's.
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 3, changelogOffset: 5))
        #expect(!store.isSealed)
        let state = try store.committedState()
        #expect(state.cards == [
            .init(card: "a", state: CardState(max: 150, windows: [WindowCount(start: 0, count: 2)])),
            .init(card: "b", state: CardState(max: 160, windows: [WindowCount(start: 0, count: 1)])),
        ])
        #expect(state.streamTime == 160)
        // Cycle 3 is still open and aborts: the store reads as of cycle 2.
        store.rollback()
        #expect(store.windowCount("a", windowStart: 0) == 2)
        #expect(store.cardMax("c") == nil)
        #expect(store.streamTime == 160)

        // Sealed again and aborted before the commit: both cycles go.
        _ = detector.process(card: "a", eventTime: 180, store: &store)
        _ = try store.pendingChanges()
        try store.seal()
        _ = detector.process(card: "d", eventTime: 190, store: &store)
        store.rollback()
        #expect(!store.isSealed)
        #expect(store.windowCount("a", windowStart: 0) == 2)
        #expect(store.cardMax("d") == nil)
        #expect(try store.pendingChanges().isEmpty)
        try store.close()
    }

    /// A new store knows every card it holds until its cache first forgets one: until then a
    /// miss reads nothing; afterwards it reads SQLite again.
    @Test func newStoreSkipsReadsUntilItsCacheForgets() throws {
        let dir = try TemporaryDirectory("complete-cache")
        defer { dir.cleanup() }
        let options = SQLiteWindowStore.Options(cacheCapacity: 2, integrityCheck: .none, flushInterval: nil, flushKeys: 0)
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: options)
        #expect(store.cacheHoldsEveryCard)
        var detector = Detector(parameters: Self.parameters)
        _ = detector.process(card: "a", eventTime: 100, store: &store)
        _ = detector.process(card: "b", eventTime: 100, store: &store)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 2, changelogOffset: 2))
        #expect(store.cacheHoldsEveryCard)
        _ = detector.process(card: "c", eventTime: 100, store: &store)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 3, changelogOffset: 3))
        // Three cards in a cache of two: it forgot them all, so reads go to SQLite again.
        #expect(!store.cacheHoldsEveryCard)
        #expect(store.windowCount("a", windowStart: 0) == 1)
        #expect(detector.process(card: "b", eventTime: 150, store: &store).count == 2)
        #expect(store.cardMax("d") == nil)
        try store.close()
    }

    /// A failed read cannot throw through ``WindowStore``; it must stop the cycle from committing.
    @Test func readFailureBlocksTheCommit() throws {
        let dir = try TemporaryDirectory("read-failure")
        defer { dir.cleanup() }
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        var detector = Detector(parameters: Self.parameters)
        _ = detector.process(card: "a", eventTime: 100, store: &store)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 1, changelogOffset: 3))
        // Reopened with a card in SQLite, the store reads SQLite for a card it has not seen.
        try store.close()
        store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        #expect(!store.cacheHoldsEveryCard)
        // Pull SQLite out from under the store: every later read fails.
        try store.connection.close()
        #expect(detector.process(card: "unseen", eventTime: 200, store: &store).count == 1)
        #expect(store.readFailure?.code == .apiMisuse)
        #expect(throws: SQLiteError.self) { try store.pendingChanges() }
        #expect(throws: SQLiteError.self) { try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 2, changelogOffset: 6)) }
        store.rollback()
        #expect(store.readFailure == nil)
        #expect(store.committedCheckpoint == StoreCheckpoint(sourceOffset: 1, changelogOffset: 3))
    }

    @Test func restoreRequiresNoPendingChanges() throws {
        let dir = try TemporaryDirectory("restore-pending")
        defer { dir.cleanup() }
        let store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        store.putAccepted("a", windowStart: 0, count: 1, cardMax: 1, streamTime: 1)
        #expect {
            try store.apply(ChangelogRecord(.streamTime(5)))
        } throws: { ($0 as? SQLiteError)?.code == .apiMisuse }
        store.rollback()
        try store.apply(ChangelogRecord(.streamTime(5)))
        store.rollback()  // abandons the restore
        #expect(store.streamTime == nil)
        try store.close()
    }
}
