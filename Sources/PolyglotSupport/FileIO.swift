#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A file or stream that could not be opened, read or written; its message is one line.
public struct FileIOError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let operation: String
    /// The `errno` value.
    public let code: Int32

    package init(path: String, operation: String, code: Int32) {
        self.path = path
        self.operation = operation
        self.code = code
    }

    public var description: String { "cannot \(operation) '\(path)': \(String(cString: strerror(code)))" }
}

/// An owned file descriptor for streaming I/O; `-` means stdin or stdout.
///
/// POSIX read/write on large buffers rather than FileHandle: replay moves hundreds of
/// megabytes and each extra copy shows in its throughput.
public final class FileStream {
    public let path: String
    let fd: Int32
    private let owned: Bool
    private var closed = false
    /// A temporary file written in place of `target`, renamed over it by ``close()``.
    private let replacing: (temporary: String, target: String)?

    private init(path: String, fd: Int32, owned: Bool, replacing: (temporary: String, target: String)? = nil) {
        self.path = path
        self.fd = fd
        self.owned = owned
        self.replacing = replacing
    }

    /// Takes ownership of an open descriptor (closed by ``close()``).
    package convenience init(adopting fd: Int32, path: String) {
        self.init(path: path, fd: fd, owned: true)
    }

    /// Opens `path` for reading (`-`: stdin).
    public static func openForReading(_ path: String) throws(FileIOError) -> FileStream {
        if path == "-" { return FileStream(path: "stdin", fd: 0, owned: false) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw FileIOError(path: path, operation: "open", code: errno) }
        var st = stat()
        if fstat(fd, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR {
            Glibc.close(fd)
            throw FileIOError(path: path, operation: "read", code: EISDIR)
        }
        return FileStream(path: path, fd: fd, owned: true)
    }

    /// Opens `path` for writing (`-`: stdout). A regular file (or a path that does not exist yet)
    /// is written to a temporary file beside it, which ``close()`` renames into place: a run that
    /// fails, or never reaches `close()`, leaves the old file as it was and no half-written one.
    /// Anything else (`/dev/null`, a pipe, a terminal) is written directly.
    public static func openForWriting(_ path: String) throws(FileIOError) -> FileStream {
        if path == "-" { return FileStream(path: "stdout", fd: 1, owned: false) }
        var target = path
        var mode: mode_t = 0o644
        var st = stat()
        if stat(path, &st) == 0 {
            guard (st.st_mode & S_IFMT) == S_IFREG else {
                if (st.st_mode & S_IFMT) == S_IFDIR { throw FileIOError(path: path, operation: "write", code: EISDIR) }
                let fd = open(path, O_WRONLY | O_CLOEXEC)
                guard fd >= 0 else { throw FileIOError(path: path, operation: "open", code: errno) }
                return FileStream(path: path, fd: fd, owned: true)
            }
            // Replace the file a symbolic link points to, not the link; keep the file's mode.
            if let resolved = realpath(path, nil) {
                target = String(cString: resolved)
                free(resolved)
            }
            mode = st.st_mode & 0o7777
        }
        let directory = target.lastIndex(of: "/").map { String(target[...$0]) } ?? ""
        let name = target.lastIndex(of: "/").map { String(target[target.index(after: $0)...]) } ?? target
        for attempt in 0..<100 {
            let temporary = "\(directory).\(name).\(getpid())-\(attempt).tmp"
            let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
            if fd < 0 && errno == EEXIST { continue }
            guard fd >= 0 else { throw FileIOError(path: path, operation: "create", code: errno) }
            guard Interruption.register(temporary: temporary) else {
                Glibc.close(fd)
                unlink(temporary)
                throw FileIOError(path: path, operation: "create", code: EINTR)
            }
            // Created under the umask; an existing file's mode is kept as it was.
            if mode != 0o644 { _ = fchmod(fd, mode) }
            return FileStream(path: path, fd: fd, owned: true, replacing: (temporary, target))
        }
        throw FileIOError(path: path, operation: "create", code: EEXIST)
    }

    /// Whether `a` and `b` name the same file, whatever their spelling: the same device and inode
    /// when both exist (hard and symbolic links included), else the same absolute path once `.`,
    /// `..` and links in the folder part are resolved. `-` stands for the standard stream given
    /// beside it (0 for an input, 1 for an output), compared by the file behind it.
    public static func isSameFile(_ a: String, stream streamA: Int32, _ b: String, stream streamB: Int32) -> Bool {
        func identity(_ path: String, _ stream: Int32) -> (device: UInt64, inode: UInt64)? {
            var st = stat()
            if path == "-" {
                guard fstat(stream, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
            } else if stat(path, &st) != 0 {
                return nil
            }
            return (UInt64(st.st_dev), UInt64(st.st_ino))
        }
        if a == "-" && b == "-" { return streamA == streamB }
        if let x = identity(a, streamA), let y = identity(b, streamB) { return x == y }
        guard a != "-", b != "-" else { return false }
        return canonicalPath(a) == canonicalPath(b)
    }

    /// `path` made absolute, its folder part resolved through `realpath` when it exists.
    static func canonicalPath(_ path: String) -> String {
        let split = path.lastIndex(of: "/")
        let folder = split.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
        let name = split.map { String(path[path.index(after: $0)...]) } ?? path
        guard let resolved = realpath(folder, nil) else { return path }
        defer { free(resolved) }
        let base = String(cString: resolved)
        return (base.hasSuffix("/") ? base : base + "/") + name
    }

    /// The whole content of a (small) file, such as a settings file.
    public static func readAll(_ path: String) throws(FileIOError) -> [UInt8] {
        let stream = try openForReading(path)
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { buffer in
                Result { () throws(FileIOError) in try stream.read(into: buffer.baseAddress!, count: buffer.count) }
            }
            let count = try n.get()
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        try stream.close()
        return bytes
    }

    /// Size in bytes of a regular file, nil for pipes and terminals.
    public var regularFileSize: Int? {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        return Int(st.st_size)
    }

    /// Reads up to `count` bytes into `buffer`; 0 at end of file.
    @usableFromInline package func read(into buffer: UnsafeMutableRawPointer, count: Int) throws(FileIOError) -> Int {
        while true {
            let n = Glibc.read(fd, buffer, count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw FileIOError(path: path, operation: "read", code: errno)
        }
    }

    /// Writes all of `bytes`.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(FileIOError) {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                throw FileIOError(path: path, operation: "write", code: errno)
            }
            offset += n
        }
    }

    /// Writes all of `bytes`.
    public func write(_ bytes: [UInt8]) throws(FileIOError) {
        try bytes.withUnsafeBytes { buffer in Result { () throws(FileIOError) in try write(buffer) } }.get()
    }

    /// Writes the buffer's bytes and empties it, keeping its capacity.
    public func drain(_ buffer: ByteBuffer) throws(FileIOError) {
        guard !buffer.isEmpty else { return }
        try write(buffer.bytes)
        buffer.removeAll()
    }

    /// Closes the descriptor (not stdin/stdout), reporting a failed close, which on some file
    /// systems is where a write error surfaces; a file opened by ``openForWriting(_:)`` then
    /// replaces its target.
    public func close() throws(FileIOError) {
        guard owned, !closed else { return }
        closed = true
        if Glibc.close(fd) != 0 {
            let code = errno
            if let replacing { Interruption.finish(temporary: replacing.temporary) { _ = unlink(replacing.temporary) } }
            throw FileIOError(path: path, operation: "close", code: code)
        }
        guard let replacing else { return }
        let code = Interruption.finish(temporary: replacing.temporary) { () -> Int32 in
            guard rename(replacing.temporary, replacing.target) != 0 else { return 0 }
            let code = errno
            unlink(replacing.temporary)
            return code
        }
        if code != 0 { throw FileIOError(path: path, operation: "replace", code: code) }
    }

    deinit {
        if owned && !closed {
            _ = Glibc.close(fd)
            if let replacing { Interruption.finish(temporary: replacing.temporary) { _ = unlink(replacing.temporary) } }
        }
    }
}

/// Splits a stream into lines without copying them: each line is handed out as a view into the
/// read buffer. Memory stays bounded whatever the input: a line longer than `maxLineBytes` is
/// handed out truncated to its first `maxLineBytes + 1` bytes, with its true length.
public struct LineReader {
    public let stream: FileStream
    public let maxLineBytes: Int
    @usableFromInline let chunkSize: Int

    public init(stream: FileStream, maxLineBytes: Int, chunkSize: Int = 4 << 20) {
        self.stream = stream
        self.maxLineBytes = maxLineBytes
        self.chunkSize = chunkSize
    }

    /// Calls `body(line, lineNumber, fullLength, bytesConsumed)` for every line, numbered from 1.
    /// The view is valid only during the call. The final line needs no newline.
    ///
    /// Inlinable: the callers (replay, the loader, the file audit) are in other modules, and
    /// `body` runs once per record, which only a specialized copy calls directly.
    @inlinable
    public func forEachLine<E: Error>(
        _ body: (UnsafeRawBufferPointer, Int, Int, Int) throws(E) -> Void
    ) throws(LineReaderError<E>) {
        let capacity = chunkSize + maxLineBytes + 1
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: capacity, alignment: 16)
        defer { buffer.deallocate() }
        // The first bytes of an oversize line, kept aside while the rest of it is skipped.
        var oversizePrefix: UnsafeMutableRawPointer?
        defer { oversizePrefix?.deallocate() }
        var skipped = -1  // >= 0 while inside an oversize line: its bytes dropped so far
        var filled = 0
        var start = 0
        var lineNumber = 0
        var consumed = 0
        var eof = false
        while !eof {
            if start > 0 {
                if filled > start { memmove(buffer, buffer + start, filled - start) }
                filled -= start
                start = 0
            }
            let n: Int
            do { n = try stream.read(into: buffer + filled, count: capacity - filled) } catch { throw .io(error) }
            if n == 0 { eof = true }
            var scan = filled
            filled += n
            while true {
                let remaining = filled - scan
                let found = remaining > 0 ? memchr(buffer + scan, 0x0A, remaining) : nil
                let lineEnd: Int
                if let found {
                    lineEnd = buffer.distance(to: UnsafeMutableRawPointer(found))
                    consumed += lineEnd - start + 1
                } else if eof && (filled > start || skipped >= 0) {
                    lineEnd = filled
                    consumed += lineEnd - start
                } else {
                    break
                }
                lineNumber += 1
                do {
                    if skipped >= 0, let prefix = oversizePrefix {
                        let full = skipped + (lineEnd - start)
                        skipped = -1
                        try body(UnsafeRawBufferPointer(start: prefix, count: maxLineBytes + 1), lineNumber, full, consumed)
                    } else {
                        try body(UnsafeRawBufferPointer(start: buffer + start, count: lineEnd - start), lineNumber, lineEnd - start, consumed)
                    }
                } catch {
                    throw .body(error)
                }
                start = min(lineEnd + 1, filled)
                scan = start
                if lineEnd == filled { break }
            }
            // An incomplete line that can no longer fit: keep its first bytes, drop the rest.
            if !eof && filled - start > maxLineBytes {
                let pending = filled - start
                if skipped < 0 {
                    let prefix = oversizePrefix ?? UnsafeMutableRawPointer.allocate(byteCount: maxLineBytes + 1, alignment: 16)
                    oversizePrefix = prefix
                    prefix.copyMemory(from: buffer + start, byteCount: maxLineBytes + 1)
                    skipped = pending
                } else {
                    skipped += pending
                }
                consumed += pending
                start = filled
            }
        }
    }
}

/// Failure while reading lines: either the stream or the line handler failed.
public enum LineReaderError<Body: Error>: Error {
    case io(FileIOError)
    case body(Body)
}
