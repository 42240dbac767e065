import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

// The "State" suite, continued: the SQLite store against the in-memory one.
extension StateTests {
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
}
