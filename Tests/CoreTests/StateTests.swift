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
}
