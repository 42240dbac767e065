import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Unbuffered writes to stderr, safe from any thread (a single write(2) per message).
public enum StandardError {
    public static func write(_ text: String) {
        var text = text
        text.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(2, bytes.baseAddress! + offset, bytes.count - offset)
                if n <= 0 { return }
                offset += n
            }
        }
    }

    /// Writes `bytes` whole while no other caller of this method writes: a line longer than
    /// the pipe's atomic size (4 KiB) still never interleaves with another thread's.
    public static func writeLocked(_ bytes: UnsafeRawBufferPointer) {
        lock.withLock { _ in
            var offset = 0
            while offset < bytes.count {
                let n = Glibc.write(2, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0, errno == EINTR { continue }
                if n <= 0 { return }
                offset += n
            }
        }
    }

    private static let lock = Mutex(())
}
