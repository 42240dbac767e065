import Foundation
import PolyglotSupport
import FraudModel
import Observability

/// What `polyglot audit --files` reads and checks against.
public struct FileAuditOptions: Sendable {
    /// The input JSONL file `replay` read.
    public var input: String
    /// `replay`'s output file: one lane, in the order replay wrote it.
    public var output: String
    /// `replay`'s `--dlq` file; nil: rejected inputs are only counted.
    public var deadLetters: String?
    public var configuration: AuditConfiguration

    public init(input: String, output: String, deadLetters: String? = nil, configuration: AuditConfiguration) {
        self.input = input
        self.output = output
        self.deadLetters = deadLetters
        var configuration = configuration
        configuration.expectsDeadLetters = deadLetters != nil
        self.configuration = configuration
    }
}

/// A failed file audit: a file could not be read, or a dead-letter line is not one.
public struct FileAuditError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// The outcome of one file audit.
public struct FileAuditSummary: Sendable {
    public var counts: AuditCounts
    public var seconds: Double

    /// `audit: 2000 records (1000 inputs, 1000 outputs, 3 dead letters) in 0.01 s (200000 records/s)`:
    /// records are inputs plus outputs.
    public var line: String {
        let records = counts.inputs + counts.outputs
        let rate = seconds > 0 ? Int((Double(records) / seconds).rounded()) : records
        return "audit: \(records) records (\(counts.inputs) inputs, \(counts.outputs) outputs, \(counts.deadLetters) dead letters) in \(ReplaySummary.format(seconds)) s (\(rate) records/s)"
    }
}

/// The reconciler over a `replay` run's files; positions are line numbers.
///
/// Streams: inputs are read a little ahead of the outputs, so what is pending stays small when
/// the output is in input order (as replay writes it), whatever the files' sizes.
public struct FileAudit {
    public let options: FileAuditOptions

    /// How far inputs are read ahead of outputs.
    static let readAhead = 4_096

    public init(options: FileAuditOptions) {
        self.options = options
    }

    /// Runs the audit, handing each batch of findings to `findings` as they are found.
    public func run(findings: ([AuditFinding]) throws(FileIOError) -> Void) throws(FileAuditError) -> FileAuditSummary {
        let clock = ContinuousClock()
        let started = clock.now
        do {
            let counts = try runUnwrapped(findings: findings)
            return FileAuditSummary(counts: counts, seconds: (clock.now - started).inSeconds)
        } catch let error as FileAuditError {
            throw error
        } catch {
            throw FileAuditError(String(describing: error))
        }
    }

    private func runUnwrapped(findings: ([AuditFinding]) throws(FileIOError) -> Void) throws -> AuditCounts {
        let reconciler = AuditReconciler(configuration: options.configuration)
        let inputs = LineCursor(stream: try FileStream.openForReading(options.input))
        let outputs = LineCursor(stream: try FileStream.openForReading(options.output))
        let deadLetters = try options.deadLetters.map { path throws(FileIOError) in LineCursor(stream: try FileStream.openForReading(path)) }
        var inputLines = 0
        var inputsEnded = false

        func readInput() throws(FileIOError) -> Bool {
            guard !inputsEnded else { return false }
            while let line = try inputs.next() {
                inputLines = line.number
                if Replay.isBlank(line.bytes) { continue }
                reconciler.input(line.bytes, position: .line(line.number))
                return true
            }
            inputsEnded = true
            reconciler.endOfInputs()
            return false
        }

        while let line = try outputs.next() {
            while inputLines < line.number + Self.readAhead, try readInput() {}
            if Replay.isBlank(line.bytes) { continue }
            reconciler.output(line.bytes, position: .line(line.number))
            while reconciler.hasWaitingOutputs, try readInput() {}
            try findings(reconciler.takeFindings())
        }
        while try readInput() {}
        try findings(reconciler.takeFindings())
        if let deadLetters {
            while let line = try deadLetters.next() {
                if Replay.isBlank(line.bytes) { continue }
                let letter = try Self.deadLetter(line.bytes, number: line.number, path: options.deadLetters!)
                letter.raw.withUnsafeBytes {
                    reconciler.deadLetter($0, code: letter.code, source: .line(letter.line), position: .line(line.number))
                }
                try findings(reconciler.takeFindings())
            }
        }
        reconciler.finish()
        try findings(reconciler.takeFindings())
        return reconciler.counts
    }

    /// A `replay` dead-letter line (SEMANTICS.md §4): `{"line":L,"error":"CODE",…,"raw":"…"}`.
    static func deadLetter(_ bytes: UnsafeRawBufferPointer, number: Int, path: String) throws(FileAuditError) -> (line: Int, code: String?, raw: [UInt8]) {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
            let line = (object["line"] as? NSNumber)?.intValue
        else {
            throw FileAuditError("'\(path)' line \(number) is not a dead letter ({\"line\":L,\"error\":\"CODE\",…})")
        }
        let raw = (object["raw"] as? String).map { Array($0.utf8) } ?? []
        return (line, object["error"] as? String, raw)
    }
}

/// Lines of a stream, pulled one at a time (``LineReader`` pushes them, which does not let two
/// files be read in step). A line longer than `maxLineBytes` is handed out as its first
/// `maxLineBytes + 1` bytes, so memory stays bounded.
final class LineCursor {
    struct Line {
        /// Valid until the next call of ``LineCursor/next()``.
        var bytes: UnsafeRawBufferPointer
        /// From 1, blank lines included.
        var number: Int
    }

    private let stream: FileStream
    private let maxLineBytes: Int
    private let capacity: Int
    private let buffer: UnsafeMutableRawPointer
    private var filled = 0
    private var start = 0
    private var eof = false
    var number = 0

    init(stream: FileStream, maxLineBytes: Int = TransactionDecoder.maxRecordBytes, chunkSize: Int = 1 << 20) {
        self.stream = stream
        self.maxLineBytes = maxLineBytes
        capacity = chunkSize + maxLineBytes + 1
        buffer = .allocate(byteCount: capacity, alignment: 16)
    }

    deinit { buffer.deallocate() }

    func next() throws(FileIOError) -> Line? {
        var scan = start
        while true {
            if scan < filled, let found = memchr(buffer + scan, 0x0A, filled - scan) {
                let end = buffer.distance(to: UnsafeMutableRawPointer(found))
                return take(end, next: end + 1)
            }
            if eof {
                guard filled > start else { return nil }
                return take(filled, next: filled)
            }
            if start > 0 {
                memmove(buffer, buffer + start, filled - start)
                filled -= start
                start = 0
            }
            if filled == capacity {
                // No newline in a full buffer: keep the line's first bytes, skip to its end.
                try skipRestOfLine()
                scan = maxLineBytes + 1
                continue
            }
            scan = filled
            let n = try stream.read(into: buffer + filled, count: capacity - filled)
            if n == 0 { eof = true }
            filled += n
        }
    }

    private func take(_ end: Int, next: Int) -> Line {
        number += 1
        let line = Line(bytes: UnsafeRawBufferPointer(start: buffer + start, count: end - start), number: number)
        start = next
        return line
    }

    /// Drops everything after the first `maxLineBytes + 1` bytes up to the next newline, which
    /// it leaves in the buffer after them.
    private func skipRestOfLine() throws(FileIOError) {
        let keep = maxLineBytes + 1
        filled = keep
        while true {
            let n = try stream.read(into: buffer + keep, count: capacity - keep)
            if n == 0 {
                eof = true
                return
            }
            if let found = memchr(buffer + keep, 0x0A, n) {
                let at = buffer.distance(to: UnsafeMutableRawPointer(found))
                memmove(buffer + keep, buffer + at, keep + n - at)
                filled = keep + (keep + n - at)
                return
            }
        }
    }
}
