#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import PolyglotSupport

/// The state directory of `polyglot process`: private to its owner, and home of the instance id
/// that names the instance's transactional producer.
public enum StateDirectory {
    /// The file in the state directory holding the instance id, one line.
    public static let instanceIDFile = "instance-id"

    /// The default directory: systemd's `$STATE_DIRECTORY` (its first entry) under a unit with
    /// `StateDirectory=`, else `state` in the working directory; always made absolute.
    public static func defaultPath(environment: [String: String], workingDirectory: String) -> String {
        if let systemd = environment["STATE_DIRECTORY"]?.split(separator: ":").first, !systemd.isEmpty {
            return absolute(String(systemd), workingDirectory: workingDirectory)
        }
        return absolute("state", workingDirectory: workingDirectory)
    }

    /// `path` joined to `workingDirectory` when relative.
    public static func absolute(_ path: String, workingDirectory: String) -> String {
        if path.hasPrefix("/") { return path }
        let base = workingDirectory.hasSuffix("/") ? String(workingDirectory.dropLast()) : workingDirectory
        return path == "." ? base : base + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
    }

    /// The instance id kept in `directory`, nil when the directory or the file does not exist yet.
    public static func storedInstanceID(in directory: String) throws(ConfigurationError) -> String? {
        let path = directory + "/" + instanceIDFile
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        let bytes: [UInt8]
        do {
            bytes = try FileStream.readAll(path)
        } catch {
            throw ConfigurationError("instance id: \(error.description)")
        }
        let id = String(decoding: bytes, as: UTF8.self).trimmingWhitespace()
        guard isValidInstanceID(id) else {
            throw ConfigurationError("\(path) does not hold an instance id (1 to 200 of [a-zA-Z0-9._-]); fix or delete it")
        }
        return id
    }

    /// A new instance id: 128 random bits in hex.
    public static func newInstanceID() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<2).map { _ in
            let hex = String(generator.next() as UInt64, radix: 16)
            return String(repeating: "0", count: 16 - hex.count) + hex
        }.joined()
    }

    /// Characters a transactional id built from the instance id may hold.
    public static func isValidInstanceID(_ id: String) -> Bool {
        (1...200).contains(id.utf8.count) && id.utf8.allSatisfy { c in
            (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 46 || c == 95 || c == 45
        }
    }

    /// Creates `directory` and missing parents with mode 0700, and takes group and other
    /// permissions off it when it exists and is ours (a folder made by an older build): every
    /// folder under the state directory, each task's store folder included, is its owner's
    /// alone. True when an existing folder was tightened.
    @discardableResult
    public static func makePrivateDirectory(_ directory: String) throws(FileIOError) -> Bool {
        var prefix = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            prefix += "/" + component
            if mkdir(prefix, 0o700) != 0 && errno != EEXIST {
                throw FileIOError(path: prefix, operation: "create directory", code: errno)
            }
        }
        var st = stat()
        guard stat(directory, &st) == 0 else { throw FileIOError(path: directory, operation: "open", code: errno) }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw FileIOError(path: directory, operation: "use as a directory", code: ENOTDIR) }
        guard st.st_mode & 0o077 != 0, st.st_uid == geteuid() else { return false }
        guard chmod(directory, 0o700) == 0 else { throw FileIOError(path: directory, operation: "make private", code: errno) }
        return true
    }

    /// What ``prepare(_:instanceID:)`` did.
    public struct Preparation: Sendable, Equatable {
        /// The directory existed with group or other permissions, now taken off.
        public var tightened = false
        /// The instance id file was written now (it did not exist).
        public var storedInstanceID = false
    }

    /// Creates `directory` (and missing parents) with mode 0700, takes group and other
    /// permissions off it when it exists (card ids are in it), and keeps `instanceID` in it when
    /// it holds none yet, so that the next start reuses it.
    public static func prepare(_ directory: String, instanceID: String) throws(FileIOError) -> Preparation {
        var preparation = Preparation()
        preparation.tightened = try makePrivateDirectory(directory)
        let path = directory + "/" + instanceIDFile
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd < 0 {
            guard errno == EEXIST else { throw FileIOError(path: path, operation: "create", code: errno) }
            return preparation
        }
        let stream = FileStream(adopting: fd, path: path)
        try stream.write(Array((instanceID + "\n").utf8))
        try stream.close()
        preparation.storedInstanceID = true
        return preparation
    }
}
