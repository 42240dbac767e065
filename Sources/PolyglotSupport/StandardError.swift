import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Unbuffered writes to stderr, safe from any thread (a single write(2) per message).
///
/// On a terminal a status line (a progress line, redrawn in place) may sit at the bottom:
/// anything else written meanwhile goes above it, the status line is drawn again below, and
/// no log line lands inside it.
public enum StandardError {
    public static func write(_ text: String) {
        var text = text
        text.withUTF8 { writeLocked(UnsafeRawBufferPointer($0)) }
    }

    /// Writes `bytes` whole while no other caller of this method writes: a line longer than
    /// the pipe's atomic size (4 KiB) still never interleaves with another thread's.
    public static func writeLocked(_ bytes: UnsafeRawBufferPointer) {
        state.withLock { status in
            guard !status.isEmpty else { return writeAll(bytes) }
            framed(Array(bytes), status: status).withUnsafeBytes { writeAll($0) }
        }
    }

    /// `text` written above the status line: the line erased, `text` (ended by a newline),
    /// then the status line again.
    static func framed(_ text: [UInt8], status: String) -> [UInt8] {
        var out = Array("\r\u{1B}[K".utf8) + text
        if let last = text.last, last != 0x0A { out.append(0x0A) }
        return out + Array(status.utf8)
    }

    /// Draws `line` as the status line, replacing the one shown.
    public static func showStatus(_ line: String) {
        state.withLock { status in
            status = line
            clearLine()
            writeAll(line)
        }
    }

    /// Leaves the status line as it was drawn last, ends it with a newline, and shows no
    /// status line from now on.
    public static func endStatus() {
        state.withLock { status in
            guard !status.isEmpty else { return }
            status = ""
            writeAll("\n")
        }
    }

    /// The status line shown, empty when none.
    private static let state = Mutex("")

    /// Back to the start of the line and erase it (ANSI CSI K).
    private static func clearLine() { writeAll("\r\u{1B}[K") }

    private static func writeAll(_ text: String) {
        var text = text
        text.withUTF8 { writeAll(UnsafeRawBufferPointer($0)) }
    }

    private static func writeAll(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            let n = Glibc.write(2, bytes.baseAddress! + offset, bytes.count - offset)
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return }
            offset += n
        }
    }
}
