/// A failure of `polyglot image`: a file that cannot be read or written, or a fingerprint file
/// that is not one.
///
/// None is retriable: each names a file or a fact that a person has to fix.
public struct ImageError: Error, Sendable, Equatable, CustomStringConvertible {
    /// What went wrong, for callers that branch on it.
    public enum Code: String, Sendable, Equatable {
        /// The running executable could not be read to hash it (`/proc` not mounted?).
        case executableUnreadable
        /// A file could not be read.
        case readFailed
        /// A file could not be written.
        case writeFailed
        /// A fingerprint file is not a JSON object of strings.
        case malformedFingerprint
    }

    public let code: Code
    /// The underlying `errno`, when a system call failed.
    public let systemError: Int32?
    public let message: String

    public init(_ code: Code, _ message: String, systemError: Int32? = nil) {
        self.code = code
        self.message = message
        self.systemError = systemError
    }

    public var isRetriable: Bool { false }

    public var description: String { message }
}
