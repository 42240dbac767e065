import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

/// A fresh directory under the system's temporary directory, removed by `cleanup()`.
struct TemporaryDirectory {
    let path: String
    init(_ name: String) throws {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("polyglot-state-\(name)-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    func sub(_ name: String) -> String { path + "/" + name }
    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

@Suite("State")
struct StateTests {
    static let parameters = try! DetectorParameters(window: 1000, threshold: 2, grace: 200, retention: 5000)
    /// Writes to SQLite at every commit; never by elapsed time, which would make tests timing-dependent.
    static let fast = SQLiteWindowStore.Options(integrityCheck: .none, flushInterval: nil, flushKeys: 0)

    // MARK: Changelog encoding

    @Test func changelogEncodingIsTheDocumentedBytes() throws {
        let card = ChangelogRecord(.card(card: "c1", state: CardState(max: 0x0102_0304_0506_0708, windows: [
            WindowCount(start: 0x0102_0304_0506_0000, count: 5), WindowCount(start: 0x0102_0304_0506_0700, count: 1),
        ])))
        #expect(card.key == [0x02, 0x63, 0x63, 0x31])
        #expect(card.value == [1, 2, 3, 4, 5, 6, 7, 8,
                               1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5,
                               1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0, 1])
        let accented = ChangelogRecord(.card(card: "é", state: CardState(max: 2, windows: [])))
        #expect(accented.key == [0x02, 0x63, 0xc3, 0xa9])
        #expect(accented.value == [0, 0, 0, 0, 0, 0, 0, 2])
        let stream = ChangelogRecord(.streamTime(256))
        #expect(stream.key == [0x02, 0x74])
        #expect(stream.value == [0, 0, 0, 0, 0, 0, 1, 0])
        #expect(ChangelogRecord(.card(card: "c1", state: nil)).value == nil)
    }

    @Test func changelogRoundTrip() throws {
        let entries: [ChangelogEntry] = [
            .card(card: "card-1", state: CardState(max: 1, windows: [WindowCount(start: 0, count: 1)])),
            .card(card: "card-1", state: CardState(max: Int64.max, windows: [
                WindowCount(start: Int64.max - Int64.max % 1000 - 1000, count: 2),
                WindowCount(start: Int64.max - Int64.max % 1000, count: CardWindows.maxWindowCount),
            ])),
            .card(card: "0", state: nil),
            .card(card: "kärtchen 🃏", state: CardState(max: 60_001, windows: (0..<5).map { WindowCount(start: Int64($0) * 10_000, count: 3) })),
            .card(card: "x", state: CardState(max: 9, windows: [])),
            .card(card: String(repeating: "z", count: 1024), state: nil),
            .streamTime(12_345),
            .streamTime(nil),
        ]
        for entry in entries {
            let record = ChangelogRecord(entry)
            #expect(try record.decode() == entry)
        }
    }

    @Test func malformedChangelogRecordsThrowClearErrors() throws {
        let cases: [(ChangelogRecord, String)] = [
            (ChangelogRecord(key: [], value: nil), "shorter than its 2-byte header"),
            (ChangelogRecord(key: [0x02], value: nil), "shorter than its 2-byte header"),
            (ChangelogRecord(key: [0x03, 0x63], value: nil), "unknown changelog encoding version 3"),
            (ChangelogRecord(key: [0x01, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0x61], value: [0, 0, 0, 0, 0, 0, 0, 1]),
             "encoding version 1, written by a development build"),
            (ChangelogRecord(key: [0x02, 0x78], value: nil), "unknown changelog key tag 0x78"),
            (ChangelogRecord(key: [0x02, 0x63, 0xff], value: nil), "not valid UTF-8"),
            (ChangelogRecord(key: [0x02, 0x63, 0xed, 0xa0, 0x80], value: nil), "not valid UTF-8"),  // a surrogate
            (ChangelogRecord(key: [0x02, 0x63] + Array(repeating: 0x61, count: 1025), value: nil), "more than 1024"),
            (ChangelogRecord(key: [0x02, 0x63], value: [0, 0, 0, 0, 0, 0, 0, 1]), "holds an empty id"),  // ids are 1 to 1024 bytes
            (ChangelogRecord(key: [0x02, 0x74, 0x00], value: [0, 0, 0, 0, 0, 0, 0, 1]), "stream time key has 3 bytes"),
            (ChangelogRecord(key: [0x02, 0x74], value: [1, 2, 3]), "stream time value has 3 bytes, expected 8"),
            (ChangelogRecord(key: [0x02, 0x63, 0x61], value: [1, 2, 3]), "card value has 3 bytes"),
            (ChangelogRecord(key: [0x02, 0x63, 0x61], value: []), "card value has 0 bytes"),
            (ChangelogRecord(key: [0x02, 0x63, 0x61], value: Array(repeating: 0, count: 9)), "card value has 9 bytes"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: 0, count: 0)]))), "window of count 0"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: 6, count: 1)]))), "after the card's maximum"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: 2, count: 1), WindowCount(start: 1, count: 1)]))),
             "out of order"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: 0, count: 1), WindowCount(start: 0, count: 1)]))),
             "out of order"),
            // Event times are never negative, and no partition holds enough records to reach the bound.
            (ChangelogRecord(.card(card: "a", state: CardState(max: -1, windows: []))), "negative maximum -1"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: -1_000, count: 1)]))), "before the epoch"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: 0, count: -3)]))), "window of count -3"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: 0, count: CardWindows.maxWindowCount + 1)]))),
             "more than any partition can hold"),
            (ChangelogRecord(.card(card: "a", state: CardState(max: 5, windows: [WindowCount(start: 0, count: Int64.max)]))),
             "more than any partition can hold"),
            (ChangelogRecord(.streamTime(-1)), "stream time -1 is negative"),
            (ChangelogRecord(.streamTime(Int64.min)), "is negative"),
        ]
        for (record, expected) in cases {
            #expect {
                _ = try record.decode()
            } throws: { error in
                guard let error = error as? ChangelogDecodingError else { return false }
                return error.message.contains(expected)
            }
        }

        // The store rejects the same records during a restore and applies nothing of them.
        let dir = try TemporaryDirectory("malformed")
        defer { dir.cleanup() }
        let store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        let ok = CardState(max: 5, windows: [WindowCount(start: 0, count: 2)])
        try store.apply(ChangelogRecord(.card(card: "ok", state: ok)))
        for (record, _) in cases {
            #expect(throws: ChangelogDecodingError.self) { try store.apply(record) }
        }
        try store.commitRestore(checkpoint: StoreCheckpoint(sourceOffset: 1, changelogOffset: 1))
        let state = try store.committedState()
        #expect(state.cards == [.init(card: "ok", state: ok)])
        #expect(state.streamTime == nil)
        try store.close()
    }

    @Test func positionsHeaderEncoding() throws {
        #expect(ChangelogPositions.header == "polyglot-positions")
        let lists: [[Int64]] = [[], [0], [-1], [1_200, -1], [Int64.max, 0, 7], Array(repeating: 9, count: ChangelogPositions.maxCount)]
        for positions in lists {
            let bytes = ChangelogPositions.encode(positions)
            #expect(bytes.withUnsafeBytes { ChangelogPositions.decode($0) } == positions)
        }
        #expect(ChangelogPositions.encode([1_200, -1]) == Array("1200,-1".utf8))
        // Every negative position means unknown.
        #expect(ChangelogPositions.encode([-1_001, Int64.min]) == Array("-1,-1".utf8))
        let malformed = [
            ",", "1,", ",1", "1,,2", " 1", "1 ", "+1", "-0", "-2", "-10", "-1-1", "01", "00", "1.5", "0x10", "1e3",
            "9223372036854775808", "99999999999999999999", "-", "--1", "1;2", "１",
            Array(repeating: "1", count: ChangelogPositions.maxCount + 1).joined(separator: ","),
            String(repeating: "1", count: ChangelogPositions.maxByteCount + 1),
        ]
        for text in malformed {
            #expect(Array(text.utf8).withUnsafeBytes { ChangelogPositions.decode($0) } == nil, "\(text)")
        }
        #expect(Array("9223372036854775807".utf8).withUnsafeBytes { ChangelogPositions.decode($0) } == [Int64.max])
    }

    @Test func checkpointKeepsEverySourcePosition() throws {
        let dir = try TemporaryDirectory("positions")
        defer { dir.cleanup() }
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        store.putAccepted("a", windowStart: 0, count: 1, cardMax: 1, streamTime: 1)
        try store.commit(checkpoint: StoreCheckpoint(positions: [12, -1_001, 40], changelogOffset: 2))
        try store.close()
        store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        #expect(store.checkpoint == StoreCheckpoint(positions: [12, -1, 40], changelogOffset: 2))
        #expect(store.checkpoint?.sourceOffset == 12)
        try store.close()
        #expect(StoreCheckpoint(sourceOffset: 3, changelogOffset: 4) == StoreCheckpoint(positions: [3], changelogOffset: 4))
        #expect(StoreCheckpoint(positions: [], changelogOffset: 4).sourceOffset == -1)

        // A checkpoint row this build could not have written: the file is not trusted.
        let db = try SQLiteConnection(path: SQLiteWindowStore.path(directory: dir.path))
        try db.execute("UPDATE checkpoint SET positions = CAST('12,,40' AS BLOB)")
        try db.close()
        #expect {
            _ = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        } throws: { ($0 as? SQLiteError).map { $0.code == .corrupt && $0.requiresRebuild } ?? false }
    }

    // MARK: Store behaviour

    @Test func commitWritesOneRecordPerKeyAndReopens() throws {
        let dir = try TemporaryDirectory("commit")
        defer { dir.cleanup() }
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        #expect(store.wasCreated)
        #expect(store.checkpoint == nil)
        var detector = Detector(parameters: Self.parameters)
        for t: Int64 in [100, 200, 300, 1_100] {
            _ = detector.process(card: "a", eventTime: t, store: &store)
        }
        _ = detector.process(card: "b", eventTime: 1_150, store: &store)
        let changes = try store.pendingChanges()
        // Card a counted four records in two windows: still one record, in the order first changed.
        #expect(changes == [
            ChangelogRecord(.card(card: "a", state: CardState(max: 1_100, windows: [WindowCount(start: 0, count: 3), WindowCount(start: 1_000, count: 1)]))),
            ChangelogRecord(.card(card: "b", state: CardState(max: 1_150, windows: [WindowCount(start: 1_000, count: 1)]))),
            ChangelogRecord(.streamTime(1_150)),
        ])
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 5, changelogOffset: 6))
        #expect(try store.pendingChanges().isEmpty)
        try store.close()

        store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters)
        #expect(!store.wasCreated)
        #expect(store.checkpoint == StoreCheckpoint(sourceOffset: 5, changelogOffset: 6))
        #expect(store.streamTime == 1_150)
        #expect(store.cardMax("a") == 1_100)
        #expect(store.windowCount("a", windowStart: 0) == 3)
        #expect(store.windowCount("b", windowStart: 1_000) == 1)
        #expect(store.cardMax("c") == nil)
        try store.close()
    }

    /// Card ids are bytes: "é" precomposed and decomposed are canonically equivalent `String`s
    /// (equal under `==`) but two different cards, in SQLite, in the changelog and in memory.
    @Test func canonicallyEquivalentCardIdsAreDifferentCards() throws {
        let dir = try TemporaryDirectory("canonical")
        defer { dir.cleanup() }
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        var detector = Detector(parameters: Self.parameters)
        let composed = "caf\u{E9}"
        let decomposed = "cafe\u{301}"
        #expect(composed == decomposed)  // the premise: Swift's String equality merges them
        var counts: [Int64] = []
        for card in [composed, decomposed, composed, decomposed, decomposed] {
            counts.append(detector.process(card: card, eventTime: 100, store: &store).count)
        }
        #expect(counts == [1, 1, 2, 2, 3])
        var reference = InMemoryWindowStore(parameters: Self.parameters)
        var referenceDetector = Detector(parameters: Self.parameters)
        let referenceCounts = [composed, decomposed, composed, decomposed, decomposed].map {
            referenceDetector.process(card: $0, eventTime: 100, store: &reference).count
        }
        #expect(referenceCounts == counts)
        let cards = try store.pendingChanges().filter { $0.key[1] == UInt8(ascii: "c") }
        #expect(cards.count == 2)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 5, changelogOffset: 9))
        #expect(try store.committedState().cards.flatMap(\.state.windows).map(\.count).sorted() == [2, 3])
        try store.close()
    }

    /// Times up to Int64.max: cutoffs and window ends leave Int64, nothing may trap or wrap.
    @Test func extremeTimesMatchTheInMemoryStore() throws {
        let dir = try TemporaryDirectory("extreme")
        defer { dir.cleanup() }
        let p = Self.parameters
        var store = try SQLiteWindowStore(directory: dir.path, parameters: p, options: Self.fast)
        var reference = InMemoryWindowStore(parameters: p)
        var detector = Detector(parameters: p)
        var referenceDetector = Detector(parameters: p)
        let max = Int64.max
        let times: [Int64] = [0, 1, 999, max - 20_000, max - 9_000, max - 1_500, max - 1_000, max, max - 1, max - 7_000, 0, max]
        for (i, t) in times.enumerated() {
            for card in ["a", "b"] {
                let expected = referenceDetector.process(card: card, eventTime: t, store: &reference)
                #expect(detector.process(card: card, eventTime: t, store: &store) == expected, "\(card) at \(t)")
            }
            store.purgeExpired(p)
            reference.purgeExpired(p)
            _ = try store.pendingChanges()
            try store.commit(checkpoint: StoreCheckpoint(sourceOffset: Int64(i + 1), changelogOffset: 0))
        }
        #expect(store.streamTime == max)
        #expect(try store.committedState().cards.flatMap(\.state.windows).allSatisfy { $0.start == max - max % p.window })
        try store.close()
    }

    @Test func rollbackReadsAsOfTheLastCommit() throws {
        let dir = try TemporaryDirectory("rollback")
        defer { dir.cleanup() }
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        var detector = Detector(parameters: Self.parameters)
        _ = detector.process(card: "a", eventTime: 100, store: &store)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 1, changelogOffset: 3))
        _ = detector.process(card: "a", eventTime: 150, store: &store)
        _ = detector.process(card: "b", eventTime: 3_000, store: &store)
        #expect(store.windowCount("a", windowStart: 0) == 2)
        store.rollback()
        #expect(try store.pendingChanges().isEmpty)
        #expect(store.windowCount("a", windowStart: 0) == 1)
        #expect(store.cardMax("b") == nil)
        #expect(store.streamTime == 100)
        #expect(store.checkpoint == StoreCheckpoint(sourceOffset: 1, changelogOffset: 3))
        try store.close()
    }

    /// Cached cards expire in memory; evicted ones (a cache of 0 empties at every flush) are
    /// found in SQLite by their stored maximum.
    @Test(arguments: [50_000, 0])
    func purgeTombstonesExpiredCardsAndDeletesRows(cacheCapacity: Int) throws {
        let dir = try TemporaryDirectory("purge")
        defer { dir.cleanup() }
        let options = SQLiteWindowStore.Options(cacheCapacity: cacheCapacity, integrityCheck: .none, flushInterval: nil, flushKeys: 0)
        let store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: options)
        let p = Self.parameters
        func card(_ max: Int64, _ windows: [(Int64, Int64)]) -> CardState {
            CardState(max: max, windows: windows.map { WindowCount(start: $0.0, count: $0.1) })
        }
        // Card a: window 0 stays open at max 1100 (0 + 1000 + 200 > 1100); card b far behind.
        store.putAccepted("a", windowStart: 0, count: 2, cardMax: 500, streamTime: 500)
        store.putAccepted("b", windowStart: 0, count: 1, cardMax: 600, streamTime: 600)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 2, changelogOffset: 4))
        store.putAccepted("a", windowStart: 1_000, count: 1, cardMax: 1_100, streamTime: 1_100)
        #expect(try store.pendingChanges() == [
            ChangelogRecord(.card(card: "a", state: card(1_100, [(0, 2), (1_000, 1)]))), ChangelogRecord(.streamTime(1_100)),
        ])
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 3, changelogOffset: 7))
        // Max 2500 closes both (1200 <= 2500 and 2200 <= 2500) as it is accepted.
        store.putAccepted("a", windowStart: 2_000, count: 1, cardMax: 2_500, streamTime: 2_500)
        store.purgeExpired(p)
        #expect(try store.pendingChanges() == [
            ChangelogRecord(.card(card: "a", state: card(2_500, [(2_000, 1)]))), ChangelogRecord(.streamTime(2_500)),
        ])
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 4, changelogOffset: 12))
        #expect(try store.committedState().cards == [.init(card: "a", state: card(2_500, [(2_000, 1)])),
                                                     .init(card: "b", state: card(600, [(0, 1)]))])

        // Stream time 20000: both expire (window 2000 + 1200 <= 20000 - 5000).
        store.putAccepted("c", windowStart: 20_000, count: 1, cardMax: 20_000, streamTime: 20_000)
        store.purgeExpired(p)
        let changes = try store.pendingChanges()
        #expect(Set(changes) == [
            ChangelogRecord(.card(card: "c", state: card(20_000, [(20_000, 1)]))), ChangelogRecord(.card(card: "a", state: nil)),
            ChangelogRecord(.card(card: "b", state: nil)), ChangelogRecord(.streamTime(20_000)),
        ])
        #expect(changes.count == 4)
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 5, changelogOffset: 20))
        #expect(try store.committedState().cards == [.init(card: "c", state: card(20_000, [(20_000, 1)]))])
        // Rolled back, a purge leaves the rows where they were.
        store.putAccepted("d", windowStart: 30_000, count: 1, cardMax: 30_000, streamTime: 30_000)
        store.purgeExpired(p)
        #expect(try store.pendingChanges().contains(ChangelogRecord(.card(card: "c", state: nil))))
        store.rollback()
        #expect(store.cardMax("c") == 20_000)
        #expect(store.cardMax("d") == nil)
        try store.close()
    }

    @Test func windowsOpenedAndClosedWithinOneCycleLeaveNoTrace() throws {
        let dir = try TemporaryDirectory("transient")
        defer { dir.cleanup() }
        var store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        var detector = Detector(parameters: Self.parameters)
        for t in stride(from: Int64(0), to: 10_000, by: 500) {
            _ = detector.process(card: "a", eventTime: t, store: &store)
        }
        store.purgeExpired(Self.parameters)
        // Only the windows still open for a (max 9500): 8000 is closed (8000+1200 <= 9500).
        #expect(try store.pendingChanges() == [
            ChangelogRecord(.card(card: "a", state: CardState(max: 9_500, windows: [WindowCount(start: 9_000, count: 2)]))),
            ChangelogRecord(.streamTime(9_500)),
        ])
        try store.close()
    }

    /// Commits reach SQLite only at a flush: a crash in between leaves the store behind its
    /// checkpoint, never inconsistent, and replaying the changelog from that checkpoint repairs it.
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

    // MARK: Differential test against the in-memory store

    /// Drives the detector over the SQLite store and the in-memory store with the same random
    /// records (late ones, gaps past retention, several cards) in commit cycles, some aborted and
    /// replayed, reopening the store now and then; every verdict must match. Then restores a new
    /// store from the changelog the cycles produced and checks it holds the same rows and keeps
    /// giving the same verdicts.
    /// A cache capacity of 0 sends nearly every read to SQLite; 64 evicts often.
    /// Flushes to SQLite at every commit, every few hundred keys, or only at reopen.
    @Test(arguments: [(UInt64(1), 0, 0), (2, 64, 300), (3, 50_000, Int.max), (4, 64, 0), (5, 0, 1_000), (6, 64, 1), (7, 50_000, 37)])
    func sameVerdictsAsInMemoryStore(seed: UInt64, cacheCapacity: Int, flushKeys: Int) throws {
        let p = Self.parameters
        let dir = try TemporaryDirectory("differential")
        defer { dir.cleanup() }
        var random = SplitMix64(seed: seed)
        let cards = (0..<12).map { "card-\($0)" } + ["kärtchen-é", "long-card-id-that-is-not-inline-\(seed)"]

        var reference = InMemoryWindowStore(parameters: p)
        var referenceDetector = Detector(parameters: p)
        var store = try SQLiteWindowStore(directory: dir.sub("live"), parameters: p,
                                          options: .init(cacheCapacity: cacheCapacity, integrityCheck: .quick,
                                                         flushInterval: nil, flushKeys: flushKeys))
        var detector = Detector(parameters: p)
        var changelog: [ChangelogRecord] = []
        var clock: Int64 = 0
        var offset: Int64 = 0
        var verdicts = 0
        var late = 0
        var flagged = 0

        // Mostly in order with small steps (so windows fill up and get flagged), some records
        // behind by up to 1.5 retentions (around every closing boundary), rare jumps past retention.
        func nextRecord() -> (String, Int64) {
            let card = cards[Int.random(in: 0..<cards.count, using: &random)]
            let roll = Int.random(in: 0..<100, using: &random)
            if roll < 2 {
                clock += Int64.random(in: 5_000...12_000, using: &random)
            } else if roll < 75 {
                clock += Int64.random(in: 0...12, using: &random)
            }
            let t: Int64
            if roll >= 75 {
                t = max(0, clock - Int64.random(in: 0...7_500, using: &random))
            } else {
                t = clock
            }
            return (card, t)
        }

        for cycle in 0..<60 {
            let batch = (0..<Int.random(in: 1...300, using: &random)).map { _ in nextRecord() }
            // An aborted cycle: the store runs the batch, rolls back, and must then give the
            // same verdicts again (the reference store cannot roll back, so it runs once, below).
            if cycle % 7 == 3 {
                let savedDetector = detector
                let firstAttempt = batch.map { detector.process(card: $0.0, eventTime: $0.1, store: &store) }
                _ = try store.pendingChanges()
                store.rollback()
                detector = savedDetector
                let secondAttempt = batch.map { detector.process(card: $0.0, eventTime: $0.1, store: &store) }
                #expect(firstAttempt == secondAttempt, "seed \(seed) cycle \(cycle): verdicts after rollback")
                store.rollback()
                detector = savedDetector
            }
            for (card, t) in batch {
                let expected = referenceDetector.process(card: card, eventTime: t, store: &reference)
                let actual = detector.process(card: card, eventTime: t, store: &store)
                #expect(actual == expected, "seed \(seed) cycle \(cycle): \(card) at \(t)")
                if expected.isLate { late += 1 }
                if expected.isFlagged { flagged += 1 }
                verdicts += 1
            }
            let changes = try store.pendingChanges()
            var encoded = ChangelogBatch()
            try store.pendingChanges(into: &encoded)
            #expect(encoded.records == changes)
            // One record per key per commit.
            #expect(Set(changes.map(\.key)).count == changes.count)
            offset += Int64(batch.count)
            changelog += changes
            try store.commit(checkpoint: StoreCheckpoint(sourceOffset: offset, changelogOffset: Int64(changelog.count)))
            if cycle % 13 == 12 {
                try store.close()
                store = try SQLiteWindowStore(directory: dir.sub("live"), parameters: p,
                                              options: .init(cacheCapacity: cacheCapacity, integrityCheck: .full,
                                                             flushInterval: nil, flushKeys: flushKeys))
                #expect(store.checkpoint?.sourceOffset == offset)
            }
        }
        #expect(late > 1_000, "the input exercises late records")
        #expect(flagged > 1_000, "the input exercises flags")
        #expect(changelog.contains { $0.value == nil }, "the input exercises purges")

        // Restore a second store from the changelog: same rows, same checkpoint.
        var restored = try SQLiteWindowStore(directory: dir.sub("restored"), parameters: p, options: Self.fast)
        for (i, record) in changelog.enumerated() {
            try restored.apply(record)
            if i % 500 == 499 {
                try restored.commitRestore(checkpoint: StoreCheckpoint(sourceOffset: -1, changelogOffset: Int64(i + 1)))
            }
        }
        let checkpoint = StoreCheckpoint(sourceOffset: offset, changelogOffset: Int64(changelog.count))
        try restored.commitRestore(checkpoint: checkpoint)
        #expect(restored.checkpoint == checkpoint)
        #expect(try restored.committedState() == store.committedState())

        // Both keep agreeing with the reference afterwards.
        var restoredDetector = Detector(parameters: p)
        for _ in 0..<2_000 {
            let (card, t) = nextRecord()
            let expected = referenceDetector.process(card: card, eventTime: t, store: &reference)
            #expect(detector.process(card: card, eventTime: t, store: &store) == expected)
            #expect(restoredDetector.process(card: card, eventTime: t, store: &restored) == expected)
        }
        // Purge timing differs (each detector schedules its own), but after one more purge at the
        // same stream time both hold the same rows.
        store.purgeExpired(p)
        restored.purgeExpired(p)
        let next = StoreCheckpoint(sourceOffset: offset + 2_000, changelogOffset: 0)
        try store.commit(checkpoint: next)
        try restored.commit(checkpoint: next)
        #expect(try restored.committedState() == store.committedState())

        // And they hold as many cards and windows as the in-memory store after the same purge:
        // nothing that may be deleted is left behind.
        reference.purgeExpired(p)
        let state = try store.committedState()
        #expect(state.streamTime == reference.streamTime)
        #expect(state.cards.count == reference.cardCount && state.cards.count > 0)
        // Windows a card's maximum closed are gone; those only retention closed may wait until
        // the card next accepts a record or expires (SEMANTICS.md §2 lets stores purge lazily).
        let open = state.cards.flatMap { card in
            card.state.windows.filter { !p.isClosed(windowStart: $0.start, cardMax: nil, streamTime: state.streamTime) }
        }
        #expect(open.count == reference.openWindowCount)
        #expect(state.cards.allSatisfy { card in
            card.state.windows.allSatisfy { !p.isClosed(windowStart: $0.start, cardMax: card.state.max, streamTime: nil) }
        })
        try store.close()
        try restored.close()
        #expect(verdicts > 5_000)
    }

    // MARK: Opening, corruption, schema

    @Test func garbageFileRequiresRebuild() throws {
        let dir = try TemporaryDirectory("garbage")
        defer { dir.cleanup() }
        let file = SQLiteWindowStore.path(directory: dir.path)
        try Data(repeating: 0x5a, count: 8_192).write(to: URL(fileURLWithPath: file))
        #expect {
            _ = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters)
        } throws: { ($0 as? SQLiteError)?.requiresRebuild == true }
        try SQLiteWindowStore.destroy(directory: dir.path)
        #expect(!FileManager.default.fileExists(atPath: file))
        let store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters)
        #expect(store.wasCreated && store.checkpoint == nil)
        try store.close()
    }

    @Test func damagedPageIsDetectedAtOpen() throws {
        let dir = try TemporaryDirectory("damaged")
        defer { dir.cleanup() }
        let store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        for i in 0..<3_000 {
            store.putAccepted("card-\(i)", windowStart: Int64(i) * 1000, count: 1, cardMax: Int64(i) * 1000, streamTime: Int64(i) * 1000)
        }
        try store.commit(checkpoint: StoreCheckpoint(sourceOffset: 3_000, changelogOffset: 6_001))
        try store.close()
        let file = SQLiteWindowStore.path(directory: dir.path)
        let handle = try FileHandle(forUpdating: URL(fileURLWithPath: file))
        let size = try handle.seekToEnd()
        #expect(size > 8 * 4_096)
        try handle.seek(toOffset: 4_096 * 3)
        try handle.write(contentsOf: Data(repeating: 0xa5, count: 4_096 * 2))
        try handle.close()
        #expect {
            _ = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters)
        } throws: { ($0 as? SQLiteError)?.requiresRebuild == true }
    }

    @Test func unknownSchemaVersionRequiresRebuild() throws {
        let dir = try TemporaryDirectory("schema")
        defer { dir.cleanup() }
        let db = try SQLiteConnection(path: SQLiteWindowStore.path(directory: dir.path))
        try db.execute("CREATE TABLE other(x); PRAGMA user_version = 99")
        try db.close()
        #expect {
            _ = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters)
        } throws: { ($0 as? SQLiteError).map { $0.code == .unsupportedSchema && $0.requiresRebuild } ?? false }
    }

    /// A file an earlier build wrote (schema 2: a `cards` table, one source offset) is rebuilt.
    @Test func earlierSchemaRequiresRebuild() throws {
        let dir = try TemporaryDirectory("schema-2")
        defer { dir.cleanup() }
        let db = try SQLiteConnection(path: SQLiteWindowStore.path(directory: dir.path))
        try db.execute("""
            CREATE TABLE cards(card BLOB NOT NULL PRIMARY KEY, max INTEGER NOT NULL, state BLOB NOT NULL) WITHOUT ROWID;
            CREATE TABLE stream(id INTEGER PRIMARY KEY CHECK (id = 1), time INTEGER NOT NULL);
            CREATE TABLE checkpoint(id INTEGER PRIMARY KEY CHECK (id = 1), source_offset INTEGER NOT NULL, changelog_offset INTEGER NOT NULL);
            INSERT INTO checkpoint VALUES (1, 10, 20);
            PRAGMA user_version = 2
            """)
        try db.close()
        #expect(SQLiteWindowStore.schemaVersion > 2)
        #expect {
            _ = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters)
        } throws: { ($0 as? SQLiteError).map { $0.code == .unsupportedSchema && $0.requiresRebuild } ?? false }
        try SQLiteWindowStore.destroy(directory: dir.path)
        let store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        #expect(store.wasCreated && store.checkpoint == nil)
        try store.close()
    }

    @Test func secondOpenOfAnOpenStoreIsBusy() throws {
        let dir = try TemporaryDirectory("busy")
        defer { dir.cleanup() }
        let store = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        #expect {
            _ = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        } throws: { ($0 as? SQLiteError)?.isRetriable == true }
        try store.close()
        let again = try SQLiteWindowStore(directory: dir.path, parameters: Self.parameters, options: Self.fast)
        try again.close()
    }

    @Test func sqliteErrorCarriesCodes() throws {
        let dir = try TemporaryDirectory("errors")
        defer { dir.cleanup() }
        let db = try SQLiteConnection(path: dir.sub("x.sqlite"))
        try db.execute("CREATE TABLE t(x INTEGER PRIMARY KEY)")
        try db.execute("INSERT INTO t VALUES (1)")
        #expect {
            try db.execute("INSERT INTO t VALUES (1)")
        } throws: { error in
            guard let error = error as? SQLiteError else { return false }
            // SQLITE_CONSTRAINT_PRIMARYKEY = 1555
            return error.code == .constraint && error.resultCode == 1555 && !error.isRetriable
                && error.message.contains("UNIQUE constraint failed")
        }
        try db.close()
        #expect(throws: SQLiteError.self) { try db.execute("SELECT 1") }
        #expect {
            _ = try SQLiteConnection(path: dir.sub("missing/dir/x.sqlite"))
        } throws: { ($0 as? SQLiteError)?.code == .cantOpen }
    }
}
