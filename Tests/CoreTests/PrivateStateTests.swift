import Foundation
import Testing
@testable import PolyglotSupport
@testable import StateStore
@testable import Roles

@Suite("Private state")
struct PrivateStateTests {
    @Test func sqliteFilesAreOwnerOnlyWhateverTheUmask() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("x.sqlite").path
        let db = try SQLiteConnection(path: path)
        try db.execute("PRAGMA journal_mode = WAL; CREATE TABLE t (a); INSERT INTO t VALUES (1)")
        #expect(try fileMode(path) == 0o600)
        #expect(try fileMode(path + "-wal") == 0o600)
        try db.close()
        // A file made by an older build, readable by everyone, is made private on open.
        chmod(path, 0o644)
        let reopened = try SQLiteConnection(path: path)
        #expect(try fileMode(path) == 0o600)
        try reopened.close()
    }

    @Test func theStateDirectoryIsCreatedPrivateAndKeepsTheInstanceID() throws {
        let root = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        let state = root.appendingPathComponent("a/state").path
        #expect(try StateDirectory.storedInstanceID(in: state) == nil)
        let first = try StateDirectory.prepare(state, instanceID: "id-1")
        #expect(first == StateDirectory.Preparation(tightened: false, storedInstanceID: true))
        #expect(try fileMode(state) == 0o700)
        #expect(try fileMode(state + "/instance-id") == 0o600)
        #expect(try StateDirectory.storedInstanceID(in: state) == "id-1")
        // Kept, not replaced, on the next start.
        #expect(try StateDirectory.prepare(state, instanceID: "id-2").storedInstanceID == false)
        #expect(try StateDirectory.storedInstanceID(in: state) == "id-1")
        chmod(state, 0o755)
        #expect(try StateDirectory.prepare(state, instanceID: "id-1").tightened)
        #expect(try fileMode(state) == 0o700)
        let file = root.appendingPathComponent("file").path
        try Data().write(to: URL(fileURLWithPath: file))
        let error = #expect(throws: FileIOError.self) { try StateDirectory.prepare(file + "/state", instanceID: "x") }
        #expect(error?.description == "cannot create directory '\(file)/state': Not a directory")
    }

    @Test func theInstanceIDIsStablePerStateDirectoryAndUniqueAcrossThem() throws {
        let root = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        func resolve(_ directory: String) throws -> ProcessorConfiguration {
            var settings = ProcessorSettings()
            settings.stateDirectory = directory
            settings.fingerprintDigest = String(repeating: "0", count: 64)
            return try settings.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1"])
        }
        let a = root.appendingPathComponent("a").path, b = root.appendingPathComponent("b").path
        let first = try resolve(a)
        let id = try #require(first.instanceID)
        _ = try StateDirectory.prepare(a, instanceID: id)
        #expect(try resolve(a).instanceID == id)
        let other = try #require(try resolve(b).instanceID)
        #expect(other != id)
        #expect(other.count == 32)
    }

    @Test func theDefaultStateDirectoryIsAbsoluteAndFollowsSystemd() throws {
        #expect(StateDirectory.defaultPath(environment: [:], workingDirectory: "/srv/app") == "/srv/app/state")
        #expect(StateDirectory.defaultPath(environment: ["STATE_DIRECTORY": "/var/lib/polyglot/process:/var/lib/x"],
                                           workingDirectory: "/srv/app") == "/var/lib/polyglot/process")
        #expect(StateDirectory.absolute("./s", workingDirectory: "/w/") == "/w/s")
        var settings = ProcessorSettings()
        settings.stateDirectory = "relative/state"
        settings.instanceID = "i"
        settings.fingerprintDigest = String(repeating: "0", count: 64)
        let resolved = try settings.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1"])
        #expect(resolved.stateDirectory == FileManager.default.currentDirectoryPath + "/relative/state")
        settings.stateDirectory = nil
        let root = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        let systemd = try settings.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1", "STATE_DIRECTORY": root.path])
        #expect(systemd.stateDirectory == root.path)
    }

    /// Each task's store folder, made under the state directory as the runtime makes it, is as
    /// private as the state directory, and so is every file in it, whatever the umask; a folder
    /// left readable by an older build is tightened when its store opens.
    @Test func everyFolderAndFileUnderTheStateDirectoryIsPrivate() throws {
        let root = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        let state = root.appendingPathComponent("state").path
        _ = try StateDirectory.prepare(state, instanceID: "i")
        let old = umask(0o022)
        defer { umask(old) }
        let options = SQLiteWindowStore.Options(integrityCheck: .none, flushInterval: nil, flushKeys: 0)
        let stale = state + "/financial-transactions-1"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        #expect(try fileMode(stale) == 0o755)
        for partition in 0..<2 {
            let store = try SQLiteWindowStore(directory: state + "/financial-transactions-\(partition)", parameters: .default, options: options)
            try store.close()
        }
        let enumerator = try #require(FileManager.default.enumerator(atPath: state))
        var seen = (folders: 0, files: 0)
        for case let name as String in enumerator {
            let path = state + "/" + name
            var isDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory)
            if isDirectory.boolValue {
                seen.folders += 1
                #expect(try fileMode(path) == 0o700, "\(name)")
            } else {
                seen.files += 1
                #expect(try fileMode(path) == 0o600, "\(name)")
            }
        }
        #expect(seen.folders == 2 && seen.files >= 2, "\(seen)")
        #expect(try fileMode(state) == 0o700)
    }
}
