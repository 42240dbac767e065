internal import CSQLite
import PolyglotSupport

/// Facts about the SQLite this process runs with.
public enum SQLiteLibrary {
    /// Runtime version, e.g. `3.40.1`.
    public static var runtimeVersion: String { String(cString: sqlite3_libversion()) }
    /// Version of the headers the binary was compiled against.
    public static var compiledVersion: String { SQLITE_VERSION }
}
