// Why raw sqlite3 and not GRDB: the window store's SQLite work is a loop of bind/step/reset on a
// handful of cached statements (the flush of committed keys and the restore's final write), and
// that loop is all this file provides. GRDB's value (records, observation, migrations, pools) is
// not needed there; it was worth taking only if it cost nothing on that loop. Measured, it costs
// about twice as much:
//
// Workload: the store's schema and pragmas (WITHOUT ROWID tables, WAL, synchronous=NORMAL,
// exclusive locking), `INSERT ... ON CONFLICT DO UPDATE` of one window row and one card row per
// key, 15-byte card ids; rounds of 20,000 upserts in one transaction (new keys, then the same keys
// updated), then 1,000,000 upserts in transactions of 100,000. Raw: sqlite3_prepare_v3 once,
// bind/step/reset, card bound as a BLOB without copying. GRDB 7.10.0: `Database.cachedStatement`
// and `Statement.execute(arguments:)` inside `DatabaseQueue.inTransaction`, card as `Data` (BLOB)
// or `String` (TEXT). Release builds, thread CPU time, best of 3 alternating runs, SQLite 3.40.1,
// 2-core x86_64 Linux shared with other builds; two sessions:
//
//                          20,000 keys insert / update     1,000,000 upserts
//   raw sqlite3            20.4 / 32.7 ms  25.3 / 41.5 ms   783,000 / 532,000 rows/s
//   GRDB, card as Data     53.3 / 69.1 ms  48.1 / 60.9 ms   386,000 / 289,000 rows/s
//   GRDB, card as String   45.9 / 61.4 ms  54.6 / 67.5 ms   415,000 / 327,000 rows/s
//
// So: raw sqlite3, behind the small owner types below.

internal import CSQLite
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PolyglotSupport

/// An error from SQLite or from this module's use of it.
///
/// Shaped like GRDB's `DatabaseError`: a code to switch on, the extended C result code it came
/// from, SQLite's message, and whether trying again can succeed.
public struct SQLiteError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What went wrong, by kind. SQLite's primary result codes, plus the store's own conditions.
    public enum Code: Sendable, Hashable {
        case busy
        case locked
        case corrupt
        case notADatabase
        case full
        case ioError
        case cantOpen
        case constraint
        case readOnly
        case misuse
        /// Another SQLite primary result code.
        case other(Int32)
        /// The file's schema version (`PRAGMA user_version`) is not one this build knows.
        case unsupportedSchema
        /// The caller broke an API precondition (for example restoring with uncommitted changes).
        case apiMisuse
        /// The state was written under other detector parameters (SEMANTICS.md §2c): it cannot
        /// be used, and must not be silently rebuilt either.
        case otherParameters
    }

    public let code: Code
    /// The extended SQLite result code (`sqlite3_extended_errcode`), 0 for the store's own codes.
    public let resultCode: Int32
    public let message: String

    public init(code: Code, resultCode: Int32, message: String) {
        self.code = code
        self.resultCode = resultCode
        self.message = message
    }

    /// Builds an error from an SQLite result code, mapping its primary part to a ``Code``.
    public init(resultCode: Int32, message: String) {
        let code: Code
        switch resultCode & 0xff {
        case SQLITE_BUSY: code = .busy
        case SQLITE_LOCKED: code = .locked
        case SQLITE_CORRUPT: code = .corrupt
        case SQLITE_NOTADB: code = .notADatabase
        case SQLITE_FULL: code = .full
        case SQLITE_IOERR: code = .ioError
        case SQLITE_CANTOPEN: code = .cantOpen
        case SQLITE_CONSTRAINT: code = .constraint
        case SQLITE_READONLY: code = .readOnly
        case SQLITE_MISUSE: code = .misuse
        default: code = .other(resultCode & 0xff)
        }
        self.init(code: code, resultCode: resultCode, message: message)
    }

    /// BUSY and LOCKED: another connection holds a lock; the same call can succeed later.
    public var isRetriable: Bool { code == .busy || code == .locked }

    /// The file cannot be trusted or read by this build: the caller should delete it
    /// (``SQLiteWindowStore/destroy(directory:)``) and restore the state from the changelog.
    public var requiresRebuild: Bool {
        code == .corrupt || code == .notADatabase || code == .unsupportedSchema
    }

    public var description: String {
        let name: String
        switch code {
        case .other(let c): name = "SQLite error \(c)"
        case .otherParameters: return message
        default: name = "\(code)"
        }
        return resultCode == 0 ? "\(name): \(message)" : "\(name) (\(resultCode)): \(message)"
    }
}

/// The one owner of an `sqlite3*` connection.
///
/// Blocking and single-threaded by design: opened with `SQLITE_OPEN_NOMUTEX`, so SQLite takes no
/// locks of its own and the caller must use the connection (and its statements) from one thread at
/// a time: in `polyglot process`, the task's dedicated thread, never the Swift cooperative pool,
/// since every call here may block on disk. Deliberately not `Sendable`.
///
/// Call ``close()`` to finalize the statements and close the handle and see any error;
/// `deinit` only releases what is still open.
public final class SQLiteConnection {
    private var handle: OpaquePointer?
    private var statements: [String: SQLiteStatement] = [:]
    /// The file path this connection opened.
    public let path: String

    /// Opens (creating when `create` is true) the database at `path`. The file and its `-wal`,
    /// `-shm` and `-journal` companions are readable by their owner only (0600), whatever the
    /// umask: they hold card ids.
    public init(path: String, create: Bool = true) throws(SQLiteError) {
        self.path = path
        Self.makePrivate(path, create: create)
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? String(cString: sqlite3_errstr(rc))
            let extended = db.map { sqlite3_extended_errcode($0) } ?? rc
            sqlite3_close_v2(db)
            throw SQLiteError(resultCode: extended, message: "\(message) (\(path))")
        }
        sqlite3_extended_result_codes(db, 1)
        handle = db
    }

    /// Creates `path` empty with mode 0600 when missing (SQLite takes an empty file for a new
    /// database, and gives its companion files the database file's mode) and takes group and
    /// other permissions off existing files. Failures are left to `sqlite3_open_v2` to report.
    private static func makePrivate(_ path: String, create: Bool) {
        if create {
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            if fd >= 0 { _ = Glibc.close(fd) }
        }
        for file in [path, path + "-wal", path + "-shm", path + "-journal"] {
            var st = stat()
            if stat(file, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, st.st_mode & 0o077 != 0 {
                _ = chmod(file, st.st_mode & 0o700)
            }
        }
    }

    deinit {
        // Release only: errors cannot be reported from here; `close()` is where they are seen.
        for statement in statements.values { statement.finalize() }
        if let handle { sqlite3_close_v2(handle) }
    }

    /// Whether ``close()`` has not been called yet.
    public var isOpen: Bool { handle != nil }

    /// Finalizes every statement and closes the connection. Idempotent.
    public func close() throws(SQLiteError) {
        guard let db = handle else { return }
        for statement in statements.values { statement.finalize() }
        statements.removeAll()
        handle = nil
        let rc = sqlite3_close_v2(db)
        if rc != SQLITE_OK {
            throw SQLiteError(resultCode: rc, message: "close failed (\(path))")
        }
    }

    func requireHandle() throws(SQLiteError) -> OpaquePointer {
        guard let handle else { throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "connection is closed (\(path))") }
        return handle
    }

    func error(_ rc: Int32) -> SQLiteError {
        guard let handle else { return SQLiteError(resultCode: rc, message: String(cString: sqlite3_errstr(rc))) }
        return SQLiteError(resultCode: sqlite3_extended_errcode(handle), message: String(cString: sqlite3_errmsg(handle)))
    }

    /// Runs one or more SQL statements that return no rows of interest.
    public func execute(_ sql: String) throws(SQLiteError) {
        let db = try requireHandle()
        var messagePointer: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(db, sql, nil, nil, &messagePointer)
        if rc != SQLITE_OK {
            let message = messagePointer.map { String(cString: $0) } ?? String(cString: sqlite3_errstr(rc))
            sqlite3_free(messagePointer)
            throw SQLiteError(resultCode: sqlite3_extended_errcode(db), message: "\(message) in: \(sql)")
        }
    }

    /// The prepared statement for `sql`, compiled once per connection and reused (reset and
    /// unbound before it is handed out).
    public func statement(_ sql: String) throws(SQLiteError) -> SQLiteStatement {
        if let cached = statements[sql] {
            cached.reset()
            return cached
        }
        let db = try requireHandle()
        var stmt: OpaquePointer?
        let rc = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &stmt, nil)
        guard rc == SQLITE_OK, let stmt else { throw error(rc) }
        let statement = SQLiteStatement(stmt, connection: self)
        statements[sql] = statement
        return statement
    }

    /// The single integer that `sql` returns (nil when no row or NULL).
    public func scalarInt64(_ sql: String) throws(SQLiteError) -> Int64? {
        let s = try statement(sql)
        defer { s.reset() }
        guard try s.step() else { return nil }
        return s.isNull(0) ? nil : s.int64(0)
    }

    /// The rows of the first text column `sql` returns (for pragmas such as `quick_check`).
    public func textColumn(_ sql: String) throws(SQLiteError) -> [String] {
        let s = try statement(sql)
        defer { s.reset() }
        var rows: [String] = []
        while try s.step() { rows.append(s.text(0)) }
        return rows
    }

    /// Whether a transaction is open (not in autocommit mode).
    public var inTransaction: Bool {
        guard let handle else { return false }
        return sqlite3_get_autocommit(handle) == 0
    }
}

/// A prepared statement owned by its ``SQLiteConnection`` (which finalizes it on close).
///
/// Same thread rule as the connection. Parameter and column indices: parameters start at 1 as in
/// SQLite, columns at 0.
public final class SQLiteStatement {
    private var handle: OpaquePointer?
    private unowned let connection: SQLiteConnection

    init(_ handle: OpaquePointer, connection: SQLiteConnection) {
        self.handle = handle
        self.connection = connection
    }

    deinit { finalize() }

    func finalize() {
        if let handle { sqlite3_finalize(handle) }
        handle = nil
    }

    /// Resets the statement and clears its bindings so it can run again.
    public func reset() {
        guard let handle else { return }
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    /// Runs to the next row: true when a row is available, false when done.
    @inline(__always)
    public func step() throws(SQLiteError) -> Bool {
        guard let handle else { throw SQLiteError(code: .apiMisuse, resultCode: 0, message: "statement used after its connection closed") }
        let rc = sqlite3_step(handle)
        if rc == SQLITE_ROW { return true }
        if rc == SQLITE_DONE { return false }
        // sqlite3_reset returns the same error; reset now so the statement is reusable.
        let error = connection.error(rc)
        sqlite3_reset(handle)
        throw error
    }

    /// Runs a statement that returns no rows, then resets it for reuse.
    @inline(__always)
    public func run() throws(SQLiteError) {
        defer { if let handle { sqlite3_reset(handle) } }
        while try step() {}
    }

    /// ``run()`` for closures that cannot throw: returns the error instead (nil on success).
    @inline(__always)
    public func runReturningError() -> SQLiteError? {
        do throws(SQLiteError) {
            try run()
            return nil
        } catch {
            return error
        }
    }

    @inline(__always)
    public func bind(_ value: Int64, at index: Int32) {
        sqlite3_bind_int64(handle, index, value)
    }

    @inline(__always)
    public func bindNull(at index: Int32) {
        sqlite3_bind_null(handle, index)
    }

    /// Binds `bytes` as a BLOB without copying: the memory must stay valid until the statement
    /// is stepped and reset (use inside the `withUnsafe…` scope that provides it).
    @inline(__always)
    public func bindBlobNoCopy(_ bytes: UnsafeRawBufferPointer, at index: Int32) {
        if bytes.isEmpty {
            // A NULL pointer would bind SQL NULL, not an empty BLOB.
            sqlite3_bind_zeroblob(handle, index, 0)
        } else {
            sqlite3_bind_blob(handle, index, bytes.baseAddress, Int32(bytes.count), polyglot_sqlite_static())
        }
    }

    /// Binds `bytes` as a BLOB, copied by SQLite.
    public func bindBlob(_ bytes: [UInt8], at index: Int32) {
        bytes.withUnsafeBytes { raw in
            if raw.isEmpty {
                _ = sqlite3_bind_zeroblob(handle, index, 0)
            } else {
                _ = sqlite3_bind_blob(handle, index, raw.baseAddress, Int32(raw.count), polyglot_sqlite_transient())
            }
        }
    }

    @inline(__always)
    public func int64(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }

    @inline(__always)
    public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }

    /// The column's bytes, valid until the next step/reset (use them before then).
    @inline(__always)
    public func withBlob<R>(_ column: Int32, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let pointer = sqlite3_column_blob(handle, column)
        let count = Int(sqlite3_column_bytes(handle, column))
        return try body(UnsafeRawBufferPointer(start: pointer, count: pointer == nil ? 0 : count))
    }

    public func text(_ column: Int32) -> String {
        guard let pointer = sqlite3_column_text(handle, column) else { return "" }
        return String(cString: pointer)
    }
}
