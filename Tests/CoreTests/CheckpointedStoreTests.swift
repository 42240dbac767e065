import Foundation
import Testing
@testable import FraudModel
@testable import StateStore

extension StateTests {
    /// The store machinery without the detector: a tiny value type, ranked by a time, as the
    /// auditor's settled entries will be.
    @Suite("Checkpointed store")
    struct CheckpointedStoreTests {
        /// A mark on a key: a time (its rank) and a one-byte note.
        struct Mark: StoreValue, CustomStringConvertible {
            var exists: Bool
            var time: Int64
            var note: UInt8

            static let absent = Mark(exists: false, time: 0, note: 0)
            static let changelogTag = UInt8(ascii: "m")
            var rank: Int64 { time }
            var description: String { exists ? "\(time)/\(note)" : "absent" }

            init(exists: Bool = true, time: Int64, note: UInt8) {
                self.exists = exists
                self.time = time
                self.note = note
            }

            func encode(into bytes: inout [UInt8]) {
                ChangelogRecord.appendBigEndian(time, to: &bytes)
                bytes.append(note)
            }

            static func decode(_ bytes: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> Mark {
                guard bytes.count == 9 else { throw ChangelogDecodingError("mark of \(bytes.count) bytes, expected 9") }
                return Mark(time: ChangelogRecord.readBigEndian(bytes, at: 0), note: bytes[8])
            }

            static func == (a: Mark, b: Mark) -> Bool {
                a.exists == b.exists && (!a.exists || (a.time == b.time && a.note == b.note))
            }
        }

        typealias Store = CheckpointedStore<Mark>

        static let fast = StoreOptions(integrityCheck: .none, flushInterval: nil, flushKeys: 0)

        static func open(_ directory: String, _ options: StoreOptions = fast) throws -> Store {
            try Store(directory: directory, fileName: "marks.sqlite", options: options)
        }

        static func set(_ store: Store, _ key: String, _ mark: Mark?) {
            var key = key
            key.withUTF8 { store.setValue(mark ?? .absent, for: CardBytes($0)) }
        }

        static func get(_ store: Store, _ key: String) -> Mark? {
            var key = key
            let mark = key.withUTF8 { store.value(for: CardBytes($0)) }
            return mark.exists ? mark : nil
        }

        static func pending(_ store: Store) throws -> [ChangelogRecord] {
            var batch = ChangelogBatch()
            try store.pendingChanges(into: &batch)
            return batch.records
        }

        static func record(_ key: String, _ mark: Mark?) -> ChangelogRecord {
            var value: [UInt8]? = nil
            if let mark {
                value = []
                mark.encode(into: &value!)
            }
            return ChangelogRecord(key: [ChangelogRecord.version, Mark.changelogTag] + Array(key.utf8), value: value)
        }

        /// Committed rows as "key=time/note@rank", in key order, and the stream time.
        static func rows(_ store: Store) throws -> ([String], Int64?) {
            let (rows, streamTime) = try store.committedRows()
            return (rows.map { "\(String(decoding: $0.key, as: UTF8.self))=\($0.value)@\($0.rank)" }, streamTime)
        }

        @Test func cyclesCommitSealAndRollBack() throws {
            let dir = try TemporaryDirectory("generic-cycles")
            defer { dir.cleanup() }
            var store = try Self.open(dir.path)
            #expect(store.wasCreated && store.checkpoint == nil && store.streamTime == nil)
            Self.set(store, "a", Mark(time: 1, note: 1))
            Self.set(store, "b", Mark(time: 2, note: 1))
            Self.set(store, "a", Mark(time: 3, note: 1))
            store.setStreamTime(3)
            #expect(try Self.pending(store) == [
                Self.record("a", Mark(time: 3, note: 1)), Self.record("b", Mark(time: 2, note: 1)), ChangelogRecord(.streamTime(3)),
            ])
            let first = StoreCheckpoint(positions: [5, 7], changelogOffset: 3)
            try store.commit(checkpoint: first)
            #expect(try Self.pending(store).isEmpty)
            #expect(try Self.rows(store) == (["a=3/1@3", "b=2/1@2"], 3))

            // A sealed cycle commits alone; the open one after it stays open.
            Self.set(store, "a", Mark(time: 4, note: 2))
            store.setStreamTime(4)
            try store.seal()
            #expect(throws: SQLiteError.self) { try store.seal() }
            #expect(throws: SQLiteError.self) { try store.flush() }
            Self.set(store, "b", nil)
            Self.set(store, "c", Mark(time: 5, note: 1))
            #expect(try Self.pending(store) == [Self.record("b", nil), Self.record("c", Mark(time: 5, note: 1))])
            try store.commit(checkpoint: StoreCheckpoint(positions: [6, -1], changelogOffset: 5))
            #expect(try Self.rows(store) == (["a=4/2@4", "b=2/1@2"], 4))
            store.rollback()
            #expect(Self.get(store, "b") == Mark(time: 2, note: 1))
            #expect(Self.get(store, "c") == nil)
            #expect(store.streamTime == 4)

            // Sealed and open cycles both roll back.
            Self.set(store, "a", Mark(time: 9, note: 9))
            try store.seal()
            Self.set(store, "d", Mark(time: 9, note: 9))
            store.setStreamTime(9)
            store.rollback()
            #expect(!store.isSealed)
            #expect(Self.get(store, "a") == Mark(time: 4, note: 2))
            #expect(Self.get(store, "d") == nil)
            #expect(store.streamTime == 4)
            #expect(try Self.pending(store).isEmpty)
            try store.close()

            store = try Self.open(dir.path)
            #expect(!store.wasCreated)
            #expect(store.checkpoint == StoreCheckpoint(positions: [6, -1], changelogOffset: 5))
            #expect(store.checkpoint?.sourceOffset == 6)
            #expect(Self.get(store, "a") == Mark(time: 4, note: 2))
            #expect(store.streamTime == 4)
            try store.close()
        }

        @Test func flushWaitsForTheKeyCount() throws {
            let dir = try TemporaryDirectory("generic-flush")
            defer { dir.cleanup() }
            let store = try Self.open(dir.path, StoreOptions(integrityCheck: .none, flushInterval: nil, flushKeys: 3))
            Self.set(store, "a", Mark(time: 1, note: 0))
            Self.set(store, "b", Mark(time: 1, note: 0))
            try store.commit(checkpoint: StoreCheckpoint(positions: [2], changelogOffset: 2))
            #expect(!store.flushIsDue)
            #expect(store.checkpoint == nil)
            #expect(store.committedCheckpoint == StoreCheckpoint(positions: [2], changelogOffset: 2))
            #expect(store.unflushedChangeCount == 2)
            Self.set(store, "c", Mark(time: 1, note: 0))
            try store.commit(checkpoint: StoreCheckpoint(positions: [3], changelogOffset: 3))
            #expect(store.checkpoint == StoreCheckpoint(positions: [3], changelogOffset: 3))
            #expect(store.unflushedChangeCount == 0)
            #expect(store.statistics.flushes == 1 && store.statistics.keysFlushed == 3)
            try store.close()
        }

        @Test func restoreRebuildsTheSameRows() throws {
            let dir = try TemporaryDirectory("generic-restore")
            defer { dir.cleanup() }
            let live = try Self.open(dir.sub("live"))
            var changelog: [ChangelogRecord] = []
            for cycle in 0..<5 {
                for i in 0..<4 { Self.set(live, "k\((cycle + i) % 6)", Mark(time: Int64(cycle * 10 + i), note: UInt8(cycle))) }
                if cycle == 3 { Self.set(live, "k1", nil) }
                live.setStreamTime(Int64(cycle * 10 + 3))
                changelog += try Self.pending(live)
                try live.commit(checkpoint: StoreCheckpoint(positions: [Int64(cycle)], changelogOffset: Int64(changelog.count)))
            }
            #expect(changelog.contains { $0.value == nil })

            let restored = try Self.open(dir.sub("restored"))
            // Another store's records are not this store's: the tag says so.
            #expect {
                try [UInt8]([0x02, 0x63, 0x61]).withUnsafeBytes { try restored.apply(key: $0, value: nil) }
            } throws: { ($0 as? ChangelogDecodingError)?.message.contains("unknown changelog key tag 0x63") == true }
            for record in changelog + changelog {  // applying twice changes nothing
                try record.key.withUnsafeBytes { key in
                    if let value = record.value {
                        try value.withUnsafeBytes { try restored.apply(key: key, value: $0) }
                    } else {
                        try restored.apply(key: key, value: nil)
                    }
                }
            }
            #expect {
                try Self.record("x", nil).key.withUnsafeBytes { key in try [UInt8]([1, 2]).withUnsafeBytes { try restored.apply(key: key, value: $0) } }
            } throws: { ($0 as? ChangelogDecodingError)?.message.contains("mark of 2 bytes") == true }
            let checkpoint = StoreCheckpoint(positions: [4, 0], changelogOffset: Int64(changelog.count))
            try restored.commitRestore(checkpoint: checkpoint)
            #expect(restored.checkpoint == checkpoint)
            #expect(restored.statistics.recordsRestored == 2 * changelog.count)
            #expect(try Self.rows(restored) == Self.rows(live))
            try live.close()
            try restored.close()
        }

        /// A cache over its capacity is emptied at a flush; reads then go to SQLite.
        @Test func evictedKeysAreReadBack() throws {
            let dir = try TemporaryDirectory("generic-evict")
            defer { dir.cleanup() }
            let store = try Self.open(dir.path, StoreOptions(cacheCapacity: 2, integrityCheck: .none, flushInterval: nil, flushKeys: 0))
            #expect(store.cacheHoldsEveryCard)
            for (i, key) in ["a", "b", "c"].enumerated() { Self.set(store, key, Mark(time: Int64(i), note: 7)) }
            try store.commit(checkpoint: StoreCheckpoint(positions: [3], changelogOffset: 3))
            #expect(store.cache.count == 0)
            #expect(!store.cacheHoldsEveryCard)
            #expect(Self.get(store, "b") == Mark(time: 1, note: 7))
            #expect(Self.get(store, "z") == nil)
            #expect(store.cache.count == 2)
            // A flush that evicts keeps the open cycle's keys, renumbered.
            Self.set(store, "a", nil)
            Self.set(store, "d", Mark(time: 4, note: 1))
            try store.seal()
            Self.set(store, "e", Mark(time: 5, note: 1))
            try store.commit(checkpoint: StoreCheckpoint(positions: [4], changelogOffset: 5))
            #expect(store.cache.count == 1)
            #expect(try Self.pending(store) == [Self.record("e", Mark(time: 5, note: 1))])
            try store.commit(checkpoint: StoreCheckpoint(positions: [5], changelogOffset: 6))
            #expect(try Self.rows(store).0 == ["b=1/7@1", "c=2/7@2", "d=4/1@4", "e=5/1@5"])
            try store.close()
        }

        /// The rank scan finds cached keys in memory and the others in SQLite.
        @Test(arguments: [100, 0])
        func rankScanFindsEntriesUpToTheBound(cacheCapacity: Int) throws {
            let dir = try TemporaryDirectory("generic-rank")
            defer { dir.cleanup() }
            let store = try Self.open(dir.path, StoreOptions(cacheCapacity: cacheCapacity, integrityCheck: .none, flushInterval: nil, flushKeys: 0))
            let times: [String: Int64] = ["a": 5, "b": 10, "c": 11, "d": -3, "e": 10]
            for (key, time) in times { Self.set(store, key, Mark(time: time, note: 0)) }
            Self.set(store, "f", Mark(time: 1, note: 0))
            try store.commit(checkpoint: StoreCheckpoint(positions: [1], changelogOffset: 1))
            Self.set(store, "f", nil)  // deleted in the open cycle: no longer found
            var found: [String] = []
            store.forEachEntry(rankAtMost: 10) { e in
                found.append(String(decoding: store.key(e).buffer, as: UTF8.self))
                if store[e].time < 10 { store.update(e) { $0 = .absent } }
            }
            #expect(found.sorted() == ["a", "b", "d", "e"])
            #expect(Set(try Self.pending(store)) == [Self.record("a", nil), Self.record("d", nil), Self.record("f", nil)])
            try store.commit(checkpoint: StoreCheckpoint(positions: [2], changelogOffset: 4))
            #expect(try Self.rows(store).0 == ["b=10/0@10", "c=11/0@11", "e=10/0@10"])
            try store.close()
        }
    }
}
