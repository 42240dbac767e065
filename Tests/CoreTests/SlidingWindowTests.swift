import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

/// Sliding windows (SEMANTICS.md §2b): the detector against a literal model, both stores, the
/// changelog encoding and restore.
@Suite("Sliding windows")
struct SlidingWindowTests {
    /// SEMANTICS.md §2b taken literally: every accepted time kept forever, mathematical integers.
    struct ReferenceModel {
        let p: DetectorParameters
        var times: [String: [Int128]] = [:]
        var cardMax: [String: Int128] = [:]
        var streamTime: Int128?

        mutating func process(card: String, t: Int64) -> Verdict {
            let W = Int128(p.window), G = Int128(p.grace), R = Int128(p.retention), T = Int128(t)
            let s = Int64(max(0, T - W + 1))
            let late = (cardMax[card].map { T + W + G <= $0 } ?? false) || (streamTime.map { T + W + G <= $0 - R } ?? false)
            if late { return Verdict(windowStart: s, count: 0, isFlagged: false, isLate: true) }
            let k = Int64(1 + (times[card] ?? []).filter { T - W + 1 <= $0 && $0 <= T }.count)
            times[card, default: []].append(T)
            cardMax[card] = max(cardMax[card] ?? T, T)
            streamTime = max(streamTime ?? T, T)
            return Verdict(windowStart: s, count: k, isFlagged: k > p.threshold, isLate: false)
        }
    }

    static let minute = try! DetectorParameters(kind: .sliding)

    @Test func aBurstAcrossAMinuteBoundaryIsFlaggedOnlyBySlidingWindows() throws {
        let base: Int64 = 1_700_000_040_000  // 12:00:00 of some day, a whole minute
        let times = [50_000, 55_000, 65_000, 70_000].map { base + Int64($0) }
        let sliding = InMemoryDetector(parameters: Self.minute)
        let tumbling = InMemoryDetector(parameters: try DetectorParameters(kind: .tumbling))
        #expect(times.map { sliding.process(card: "c", eventTime: $0).count } == [1, 2, 3, 4])
        #expect(times.map { tumbling.process(card: "c", eventTime: $0).count } == [1, 2, 1, 2])
        #expect(sliding.process(card: "d", eventTime: base).windowStart == base - 59_999)
    }

    @Test func theWindowIsTheWMillisecondsEndingAtTheRecord() throws {
        let p = try DetectorParameters(kind: .sliding, window: 1_000, threshold: 1)
        let d = InMemoryDetector(parameters: p)
        #expect(d.process(card: "a", eventTime: 10_000).count == 1)
        #expect(d.process(card: "a", eventTime: 10_999).count == 2, "W - 1 apart: inside")
        #expect(d.process(card: "a", eventTime: 11_000).count == 2, "W apart from the first: outside")
        // Near 0 the start is clamped.
        #expect(d.process(card: "z", eventTime: 5).windowStart == 0)
        // An out-of-order record counts what was accepted before it, and not what is after it.
        #expect(d.process(card: "a", eventTime: 10_500).count == 2)
        #expect(d.process(card: "a", eventTime: 11_400).count == 4)
    }

    @Test func arithmeticDoesNotWrapNearInt64Max() throws {
        let p = try DetectorParameters(kind: .sliding, window: .max, threshold: 1, grace: .max, retention: .max)
        let top = Int64.max
        for detector in [InMemoryDetector(parameters: p) as any PartitionDetector,
                         try SQLiteDetectorStore(directory: try TestPaths.temporaryDirectory().path, parameters: p)] {
            let v1 = detector.process(card: "c", eventTime: top)
            let v2 = detector.process(card: "c", eventTime: 0)
            let v3 = detector.process(card: "c", eventTime: top - 1)
            #expect(v1 == Verdict(windowStart: 1, count: 1, isFlagged: false, isLate: false))
            #expect(v2 == Verdict(windowStart: 0, count: 1, isFlagged: false, isLate: false))
            #expect(v3.count == 2 && v3.isFlagged)
        }
    }

    /// Random streams of few cards, disorder, lateness and retention: the in-memory and SQLite
    /// stores (the latter committed and rolled back at random, and purging) agree with the model.
    @Test(arguments: [(1_000, 2, 0, 10_000), (1_000, 3, 400, 5_000), (30_000, 2, 5_000, 600_000), (7, 1, 3, 20)])
    func matchesLiteralModel(window: Int64, threshold: Int64, grace: Int64, retention: Int64) throws {
        let p = try DetectorParameters(kind: .sliding, window: window, threshold: threshold, grace: grace, retention: retention)
        var model = ReferenceModel(p: p)
        let memory = InMemoryDetector(parameters: p)
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let sqlite = try SQLiteDetectorStore(directory: dir.path, parameters: p,
                                             options: StoreOptions(cacheCapacity: 3, integrityCheck: .none, flushInterval: nil, flushKeys: 0))
        var rng = SplitMix64(seed: UInt64(window + threshold * 7 + grace * 13))
        var t: Int64 = 0
        for i in 0..<6_000 {
            t += Int64(rng.next() % UInt64(max(1, window / 3)))
            let jitter = Int64(rng.next() % UInt64(window * 2 + grace + 1))
            let at = max(0, t - (rng.next() % 4 == 0 ? jitter : 0))
            let card = "card-\(rng.next() % 5)"
            let expected = model.process(card: card, t: at)
            #expect(memory.process(card: card, eventTime: at) == expected, "memory, record \(i)")
            #expect(sqlite.process(card: card, eventTime: at) == expected, "sqlite, record \(i)")
            if i % 97 == 0 {
                var batch = ChangelogBatch()
                try sqlite.pendingChanges(into: &batch)
                try sqlite.commit(checkpoint: StoreCheckpoint(positions: [Int64(i)], changelogOffset: Int64(i)))
            }
        }
        try sqlite.close()
    }

    /// State stays bounded by `2W + G` per card: a long stream of one card keeps only the times
    /// that can still count.
    @Test func stateIsBoundedPerCard() throws {
        let p = try DetectorParameters(kind: .sliding, window: 1_000, threshold: 3, grace: 500, retention: 1_000_000)
        var detector = SlidingDetector(parameters: p)
        var store = InMemorySlidingStore(parameters: p)
        for i in 0..<100_000 { _ = detector.process(card: "c", eventTime: Int64(i) * 10, store: &store) }
        let kept = store.times("c")
        // Times within 2W + G = 2,500 ms of the maximum, 10 ms apart: 250, plus those not yet
        // dropped since the last compaction.
        #expect(kept.count <= 2 * 251 + 16, "\(kept.count) times kept")
        #expect(kept.last == 999_990)
        // Retention drops a quiet card altogether.
        _ = detector.process(card: "d", eventTime: 999_990 + 1_000_000 + 10_000, store: &store)
        _ = detector.process(card: "d", eventTime: 999_990 + 3_000_000, store: &store)
        #expect(store.cardCount == 1)
    }

    /// A burst of one card in one millisecond and in one second, in and out of order: counts stay
    /// exact (the store is a sorted array read by binary search).
    @Test func aBurstOfOneCardCountsExactly() throws {
        let p = try DetectorParameters(kind: .sliding, window: 60_000, threshold: 3)
        let d = InMemoryDetector(parameters: p)
        for i in 0..<100_000 {
            let v = d.process(card: "c", eventTime: 1_000_000 + Int64(i / 100))
            if v.count != Int64(i + 1) { Issue.record("record \(i): count \(v.count)"); break }
        }
        // Out of order but not late: counts what was accepted before it up to its own time.
        let v = d.process(card: "c", eventTime: 1_000_000 + 499)
        #expect(v.count == 50_000 + 1)
    }

    @Test func changelogValuesRoundTripAndRejectGarbage() throws {
        var times = AcceptedTimes()
        for t: Int64 in [0, 5, 5, 5, 300, 1 << 40, Int64.max - 1, Int64.max - 1] { times.insert(t) }
        let card = CardTimes(exists: true, max: Int64.max, times: times)
        var bytes: [UInt8] = []
        card.encode(into: &bytes)
        let decoded = try bytes.withUnsafeBytes { try CardTimes.decode($0) }
        #expect(decoded == card)
        // Runs: a burst in one millisecond is one gap and one count.
        var burst = AcceptedTimes()
        for _ in 0..<100_000 { burst.insert(1_700_000_000_000) }
        var burstBytes: [UInt8] = []
        CardTimes(exists: true, max: 1_700_000_000_000, times: burst).encode(into: &burstBytes)
        #expect(burstBytes.count < 24)

        func rejects(_ value: [UInt8], _ fragment: String) {
            let error = #expect(throws: ChangelogDecodingError.self) { try value.withUnsafeBytes { try CardTimes.decode($0) } }
            #expect(error?.message.contains(fragment) == true, "\(error?.message ?? "")")
        }
        let max10: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 10]
        rejects([0, 0, 0], "expected at least 8")
        rejects([0x80, 0, 0, 0, 0, 0, 0, 0], "negative maximum")
        rejects(max10 + [11, 1], "after the card's maximum")
        rejects(max10 + [1, 0], "no records")
        rejects(max10 + [1, 1, 0, 1], "out of order")
        rejects(max10 + [1, 0x80], "ends inside a number")
        rejects(max10 + [0x81, 0x00, 1], "shortest form")
        rejects(max10 + [1] + [UInt8](repeating: 0xFF, count: 10) + [1], "over 64 bits")
    }

    /// A sliding store's changes restore into a fresh store that then decides as the original.
    @Test func restoreFromTheChangelogContinuesTheSameVerdicts() throws {
        let p = try DetectorParameters(kind: .sliding, window: 1_000, threshold: 2, grace: 200, retention: 5_000)
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let live = try SQLiteDetectorStore(directory: dir.appendingPathComponent("live").path, parameters: p)
        var changelog: [ChangelogRecord] = []
        var rng = SplitMix64(seed: 9)
        for cycle in 0..<20 {
            for i in 0..<50 { _ = live.process(card: "card-\(rng.next() % 6)", eventTime: Int64(cycle * 400 + i * 7)) }
            var batch = ChangelogBatch()
            try live.pendingChanges(into: &batch)
            changelog += batch.records
            try live.commit(checkpoint: StoreCheckpoint(positions: [Int64(cycle)], changelogOffset: Int64(changelog.count)))
        }
        #expect(changelog.contains { $0.key == [ChangelogRecord.version, ChangelogRecord.parametersTag] })
        #expect(changelog.allSatisfy { $0.key[1] != ChangelogRecord.cardTag }, "sliding cards use their own tag")
        let restored = try SQLiteDetectorStore(directory: dir.appendingPathComponent("restored").path, parameters: p)
        for record in changelog {
            try record.key.withUnsafeBytes { key in
                if let value = record.value { try value.withUnsafeBytes { try restored.apply(key: key, value: $0) } }
                else { try restored.apply(key: key, value: nil) }
            }
        }
        try restored.commitRestore(checkpoint: StoreCheckpoint(positions: [19], changelogOffset: Int64(changelog.count)))
        #expect(restored.streamTime == live.streamTime)
        for i in 0..<300 {
            let card = "card-\(rng.next() % 6)", t = Int64(8_000 + i * 3 - Int(rng.next() % 900))
            #expect(restored.process(card: card, eventTime: t) == live.process(card: card, eventTime: t), "record \(i)")
        }
        try live.close()
        try restored.close()
    }
}

