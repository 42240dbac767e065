import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

// The "State" suite, continued: opening, corruption and schema versions.
extension StateTests {
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
