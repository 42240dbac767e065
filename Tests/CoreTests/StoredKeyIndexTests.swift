import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

extension StateTests {
    /// A store whose cache forgot keys answers a key SQLite does not hold without reading
    /// SQLite, and never answers wrong.
    @Suite("Stored key index")
    struct StoredKeyIndexTests {
        typealias Marks = CheckpointedStoreTests
        typealias Mark = Marks.Mark

        static func options(cacheCapacity: Int, flushKeys: Int = 0, absentReads: Int) -> StoreOptions {
            StoreOptions(cacheCapacity: cacheCapacity, integrityCheck: .none, flushInterval: nil, flushKeys: flushKeys,
                         absentReadsBeforeKeyIndex: absentReads)
        }

        /// New keys met after the cache was emptied (every transaction id the audit ledger
        /// meets) cost no SQLite read once misses are frequent (without the index, one each);
        /// kept and deleted keys still read right.
        @Test(arguments: [10, Int.max])
        func newKeysAfterEvictionCostNoRead(absentReads: Int) throws {
            let dir = try TemporaryDirectory("key-index-new")
            defer { dir.cleanup() }
            let store = try Marks.open(dir.path, Self.options(cacheCapacity: 4, absentReads: absentReads))
            for cycle in 0..<10 {
                for i in 0..<10 { Marks.set(store, "k\(cycle * 10 + i)", Mark(time: Int64(cycle), note: UInt8(i))) }
                try store.commit(checkpoint: StoreCheckpoint(positions: [Int64(cycle)], changelogOffset: Int64(cycle)))
            }
            for i in 0..<20 { Marks.set(store, "k\(i)", nil) }
            try store.commit(checkpoint: StoreCheckpoint(positions: [10], changelogOffset: 10))
            #expect(!store.cacheHoldsEveryCard && store.cache.count == 0)

            let before = store.statistics.keysRead
            for i in 0..<500 {
                Marks.set(store, "new\(i)", Mark(time: 100, note: 1))
                if i % 50 == 49 { try store.commit(checkpoint: StoreCheckpoint(positions: [Int64(11 + i)], changelogOffset: Int64(11 + i))) }
            }
            let indexed = absentReads == 10
            #expect(store.statistics.keysRead - before == (indexed ? 0 : 500))
            #expect(store.storedKeys?.count == (indexed ? 80 + 500 : nil))

            for i in 0..<100 {
                #expect(Marks.get(store, "k\(i)") == (i < 20 ? nil : Mark(time: Int64(i / 10), note: UInt8(i % 10))))
            }
            #expect(Marks.get(store, "new499") == Mark(time: 100, note: 1))
            #expect(Marks.get(store, "never") == nil)
            try store.close()
        }

        /// Random cycles of writes, deletes and reads, committed or rolled back, flushed now or
        /// later, with a cache of a few keys and the store reopened now and then: every read
        /// answers what a dictionary of the committed and open changes holds, with the index
        /// built at once and without it.
        @Test(arguments: [0, Int.max])
        func randomCyclesReadWhatWasWritten(absentReads: Int) throws {
            let dir = try TemporaryDirectory("key-index-random")
            defer { dir.cleanup() }
            var random = SplitMix64(seed: 42)
            let options = Self.options(cacheCapacity: 6, flushKeys: 7, absentReads: absentReads)
            var store = try Marks.open(dir.path, options)
            var committed: [String: Mark] = [:], sealed: [String: Mark]?, open: [String: Mark] = [:]
            var offset: Int64 = 0
            func commit() throws {
                offset += 1
                try store.commit(checkpoint: StoreCheckpoint(positions: [offset], changelogOffset: offset))
            }
            for cycle in 0..<600 {
                for _ in 0..<Int(random.next() % 12) {
                    let key = "key\(random.next() % 40)"
                    switch random.next() % 3 {
                    case 0:
                        let mark = Mark(time: Int64(cycle), note: UInt8(random.next() % 200))
                        Marks.set(store, key, mark)
                        open[key] = mark
                    case 1:
                        Marks.set(store, key, nil)
                        open[key] = nil
                    default:
                        #expect(Marks.get(store, key) == open[key], "cycle \(cycle): \(key)")
                    }
                }
                switch random.next() % 6 {
                case 0:
                    // Both the sealed and the open cycle roll back.
                    store.rollback()
                    (open, sealed) = (committed, nil)
                case 1 where sealed == nil:
                    try store.seal()
                    sealed = open
                default:
                    // The sealed cycle commits alone; the open one stays open.
                    try commit()
                    committed = sealed ?? open
                    sealed = nil
                }
                if sealed == nil, random.next() % 25 == 0 {
                    try commit()
                    committed = open
                    try store.close()
                    store = try Marks.open(dir.path, options)
                }
            }
            for i in 0..<40 { #expect(Marks.get(store, "key\(i)") == open["key\(i)"], "key\(i)") }
            if absentReads == 0 { #expect(store.storedKeys != nil) }
            try store.close()
        }

        /// A restore over rows it did not read (its records may have replaced or deleted them)
        /// drops the index; rebuilt from the table, it answers the restored rows right.
        @Test func restoreOverRowsRebuildsTheIndex() throws {
            let dir = try TemporaryDirectory("key-index-restore")
            defer { dir.cleanup() }
            let options = Self.options(cacheCapacity: 2, absentReads: 0)
            var store = try Marks.open(dir.path, options)
            for key in ["a", "b", "c", "d"] { Marks.set(store, key, Mark(time: 1, note: 1)) }
            try store.commit(checkpoint: StoreCheckpoint(positions: [1], changelogOffset: 1))
            try store.close()

            store = try Marks.open(dir.path, options)
            #expect(Marks.get(store, "x") == nil)
            #expect(store.storedKeys?.count == 4)
            // The changelog past the checkpoint deletes b and adds e.
            for record in [Marks.record("b", nil), Marks.record("e", Mark(time: 2, note: 2))] {
                try record.key.withUnsafeBytes { key in
                    if let value = record.value {
                        try value.withUnsafeBytes { try store.apply(key: key, value: $0) }
                    } else {
                        try store.apply(key: key, value: nil)
                    }
                }
            }
            try store.commitRestore(checkpoint: StoreCheckpoint(positions: [2], changelogOffset: 3))
            #expect(store.storedKeys == nil)
            #expect(Marks.get(store, "b") == nil)
            #expect(Marks.get(store, "e") == Mark(time: 2, note: 2))
            #expect(store.storedKeys?.count == 4)
            #expect(Marks.get(store, "a") == Mark(time: 1, note: 1))
            try store.close()
        }
    }
}

