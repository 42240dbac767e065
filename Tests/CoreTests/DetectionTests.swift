import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import Roles

@Suite("Detection")
struct DetectionTests {
    @Test func windowPhrase() throws {
        #expect(try DetectorParameters(window: 60_000).windowPhrase == "1 minute")
        #expect(try DetectorParameters(window: 120_000).windowPhrase == "2 minutes")
        #expect(try DetectorParameters(window: 1_000).windowPhrase == "1 second")
        #expect(try DetectorParameters(window: 30_000).windowPhrase == "30 seconds")
        #expect(try DetectorParameters(window: 1_500).windowPhrase == "1500 ms")
    }

    @Test func rejectsUndefinedParameters() {
        #expect(throws: ConfigurationError.self) { try DetectorParameters(window: 0) }
        #expect(throws: ConfigurationError.self) { try DetectorParameters(threshold: -1) }
        #expect(throws: ConfigurationError.self) { try DetectorParameters(grace: -1) }
        #expect(throws: ConfigurationError.self) { try DetectorParameters(retention: -1) }
    }

    @Test func countsFlagsAndClosesWindows() throws {
        let p = try DetectorParameters(window: 1_000, threshold: 2, grace: 0, retention: 10_000)
        var detector = Detector(parameters: p)
        var store = InMemoryWindowStore(parameters: p)
        let counts = [100, 200, 300, 400].map { detector.process(card: "c", eventTime: Int64($0), store: &store) }
        #expect(counts.map(\.count) == [1, 2, 3, 4])
        #expect(counts.map(\.isFlagged) == [false, false, true, true])
        // Card moves to the next window: the first closes for this card only.
        #expect(detector.process(card: "c", eventTime: 1_000, store: &store).count == 1)
        #expect(detector.process(card: "c", eventTime: 999, store: &store).isLate)
        #expect(detector.process(card: "d", eventTime: 999, store: &store).count == 1)
        // Retention closes old windows for every card.
        _ = detector.process(card: "e", eventTime: 20_000, store: &store)
        #expect(detector.process(card: "f", eventTime: 9_000, store: &store).isLate)
        #expect(!detector.process(card: "f", eventTime: 9_001 + 1_000, store: &store).isLate)
    }

    @Test func arithmeticDoesNotWrapNearInt64Max() throws {
        let p = try DetectorParameters(window: 60_000, threshold: 1, grace: 3_600_000, retention: 3_600_000)
        var detector = Detector(parameters: p)
        var store = InMemoryWindowStore(parameters: p)
        let top = Int64.max
        let v1 = detector.process(card: "c", eventTime: top, store: &store)
        let v2 = detector.process(card: "c", eventTime: top - 1, store: &store)
        #expect(v1.windowStart == top - top % 60_000)
        #expect(!v1.isLate && !v2.isLate)
        #expect(v2.count == 2 && v2.isFlagged)
        #expect(detector.process(card: "c", eventTime: 0, store: &store).isLate)
    }

    /// SEMANTICS.md §2 taken literally: unbounded maps, mathematical integers, no purging.
    struct ReferenceModel {
        let p: DetectorParameters
        var cardMax: [String: Int128] = [:]
        var count: [String: Int] = [:]
        var streamTime: Int128?

        mutating func process(card: String, t: Int64) -> Verdict {
            let W = Int128(p.window), G = Int128(p.grace), R = Int128(p.retention)
            let s = Int128(t) - Int128(t) % W
            if let m = cardMax[card], s + W + G <= m { return Verdict(windowStart: Int64(s), count: 0, isFlagged: false, isLate: true) }
            if let st = streamTime, s + W + G <= st - R { return Verdict(windowStart: Int64(s), count: 0, isFlagged: false, isLate: true) }
            let key = "\(card)/\(s)"
            count[key, default: 0] += 1
            cardMax[card] = max(cardMax[card] ?? Int128(t), Int128(t))
            streamTime = max(streamTime ?? Int128(t), Int128(t))
            let k = count[key]!
            return Verdict(windowStart: Int64(s), count: Int64(k), isFlagged: Int64(k) > p.threshold, isLate: false)
        }
    }

    /// The optimized store (inline windows, spill, purge, table growth) against the literal
    /// model, over disordered streams with several parameter sets.
    @Test(arguments: [
        (1_000 as Int64, 2 as Int64, 0 as Int64, 5_000 as Int64),
        (1_000, 1, 200, 5_000),
        (1_000, 3, 4_500, 20_000),  // grace of 4.5 windows: cards spill past four inline windows
        (60_000, 3, 0, 3_600_000),
        (500, 0, 0, 0),
    ])
    func matchesLiteralModel(window: Int64, threshold: Int64, grace: Int64, retention: Int64) throws {
        let p = try DetectorParameters(window: window, threshold: threshold, grace: grace, retention: retention)
        var random = SplitMix64(seed: UInt64(window + grace))
        var detector = Detector(parameters: p)
        var store = InMemoryWindowStore(parameters: p, initialCapacity: 4)
        var model = ReferenceModel(p: p)
        var clock: Int64 = 1_000_000
        var mismatches = 0
        for i in 0..<60_000 {
            clock += Int64(random.next() % UInt64(max(1, window / 20)))
            let card = "card-\(random.next() % 300)"
            let jitter = Int64(random.next() % UInt64(window * 3 + grace + 1))
            let t = i % 7 == 0 ? max(0, clock - jitter) : clock
            let expected = model.process(card: card, t: t)
            let actual = detector.process(card: card, eventTime: t, store: &store)
            if expected != actual { mismatches += 1 }
        }
        #expect(mismatches == 0)
        // Purging kept state bounded: far fewer windows than records.
        #expect(store.openWindowCount < 3_000)
    }
}
