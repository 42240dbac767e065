import PolyglotSupport
import FraudModel
import Observability

/// What `polyglot replay` reads, writes and with which parameters.
public struct ReplayOptions: Sendable {
    /// Input JSONL path; `-` is stdin.
    public var input: String
    /// Output JSONL path; `-` is stdout.
    public var output: String
    /// Dead-letter JSONL path; nil drops rejected lines (they are still counted).
    public var deadLetters: String?
    public var parameters: DetectorParameters
    /// Draw a progress bar on stderr (only meaningful on a terminal).
    public var showProgress: Bool

    public init(input: String, output: String = "-", deadLetters: String? = nil,
                parameters: DetectorParameters = .default, showProgress: Bool = false) {
        self.input = input
        self.output = output
        self.deadLetters = deadLetters
        self.parameters = parameters
        self.showProgress = showProgress
    }

    /// Refuses an output or dead-letter file that is the input, or one another: writing it would
    /// destroy what is being read or mix the two streams. The message is one line.
    public func validate() throws(ConfigurationError) {
        if FileStream.isSameFile(input, stream: 0, output, stream: 1) {
            throw ConfigurationError("-o \(output) is the input file; write the output to another file")
        }
        guard let deadLetters else { return }
        if FileStream.isSameFile(input, stream: 0, deadLetters, stream: 1) {
            throw ConfigurationError("--dlq \(deadLetters) is the input file; write the dead letters to another file")
        }
        if FileStream.isSameFile(output, stream: 1, deadLetters, stream: 1) {
            throw ConfigurationError("-o and --dlq are the same file (\(output)); give them different files")
        }
    }
}

/// Counts of one replay run, for the one-line summary.
public struct ReplaySummary: Sendable, Equatable {
    /// Lines read, blank ones included.
    public var lines = 0
    /// Valid records (each produced one output).
    public var records = 0
    public var flagged = 0
    public var late = 0
    public var rejected: [RejectionCode: Int] = [:]
    public var seconds = 0.0

    public var rejectedTotal: Int { rejected.values.reduce(0, +) }

    /// Counts one valid record's verdict.
    mutating func count(_ verdict: Verdict) {
        records += 1
        if verdict.isFlagged { flagged += 1 }
        if verdict.isLate { late += 1 }
    }

    /// `replay: 300 records in 0.01 s (30000 records/s): 12 flagged, 0 late, 2 rejected (invalid_json 2)`.
    public var line: String {
        let rate = seconds > 0 ? Int((Double(records) / seconds).rounded()) : records
        var s = "replay: \(records) records in \(Self.format(seconds)) s (\(rate) records/s): \(flagged) flagged, \(late) late, \(rejectedTotal) rejected"
        if rejectedTotal > 0 {
            let parts = RejectionCode.allCases.compactMap { code in rejected[code].map { "\(code.rawValue) \($0)" } }
            s += " (" + parts.joined(separator: ", ") + ")"
        }
        return s
    }

    static func format(_ seconds: Double) -> String {
        let hundredths = Int((seconds * 100).rounded())
        let fraction = hundredths % 100
        return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
    }
}

/// A failed replay: the files given are unusable together (``ReplayOptions/validate()``), or the
/// input or an output could not be read or written.
public struct ReplayError: Error, Sendable, CustomStringConvertible {
    public enum Reason: Sendable {
        case options(ConfigurationError)
        case io(FileIOError)
    }
    public let reason: Reason
    public var description: String {
        switch reason {
        case .options(let error): error.message
        case .io(let error): error.description
        }
    }
}

/// SEMANTICS.md over a JSONL file, no broker: one partition, outputs in input order.
///
/// Streams: one read buffer, one output buffer and the window state, whatever the file's size.
public struct Replay {
    public let options: ReplayOptions

    public init(options: ReplayOptions) {
        self.options = options
    }

    /// Flush output buffers at this size: large writes, bounded memory.
    static let flushBytes = 1 << 20

    public func run() throws(ReplayError) -> ReplaySummary {
        do {
            try options.validate()
        } catch {
            throw ReplayError(reason: .options(error))
        }
        do {
            return try runUnwrapped()
        } catch {
            throw ReplayError(reason: .io(error))
        }
    }

    /// One hand-over from the decoding thread to the detecting thread. A class so that its
    /// arrays travel by reference and are reused batch after batch.
    final class Batch: @unchecked Sendable {
        // @unchecked: owned by one thread at a time; the hand-over queue (locked) passes it on,
        // and neither side touches a batch it has handed over.
        enum Entry {
            /// A valid record whose ids hold no escapes, copied into `records` at `offset`: the
            /// common case, handled without building a String.
            case raw(TransactionView, offset: Int)
            /// A valid record with escaped ids.
            case decoded(Transaction)
            case rejected(line: Int, Rejection, raw: [UInt8])
        }
        var entries: [Entry] = []
        /// The bytes of the `raw` records.
        let records = ByteBuffer(capacity: Replay.batchSize * 128)
        var consumedBytes = 0
        init() {
            entries.reserveCapacity(Replay.batchSize)
        }

        func clear() {
            entries.removeAll(keepingCapacity: true)
            records.removeAll()
        }
    }

    static let batchSize = 2_048
    static let batchesInFlight = 4

    private struct Stopped: Error {}

    /// Two threads: one reads and decodes (the strict JSON work), the other runs the detector and
    /// writes; batches of decoded records pass between them. The detector stays sequential, so
    /// output order and verdicts are those of a single thread.
    private func runUnwrapped() throws(FileIOError) -> ReplaySummary {
        let clock = ContinuousClock()
        let started = clock.now
        let input = try FileStream.openForReading(options.input)
        let output = try FileStream.openForWriting(options.output)
        let deadLetters = try options.deadLetters.map { path throws(FileIOError) in try FileStream.openForWriting(path) }

        let full = HandoffQueue<Batch>(limit: Self.batchesInFlight)
        let free = HandoffQueue<Batch>(limit: Self.batchesInFlight)
        for _ in 0..<Self.batchesInFlight { free.put(Batch()) }
        let reading = ReaderOutcome()
        let reader = DedicatedThread.start {
            Self.decodeLines(input: input, full: full, free: free, outcome: reading)
        }

        let parameters = options.parameters
        let detector = InMemoryDetector(parameters: parameters, initialCapacity: 1 << 16)
        let encoder = EnrichedRecordEncoder(parameters: parameters)
        var summary = ReplaySummary()
        let out = ByteBuffer(capacity: Self.flushBytes + 64 * 1024)
        let dlq = ByteBuffer(capacity: 64 * 1024)
        var progress = options.showProgress ? ProgressBar(totalBytes: input.regularFileSize) : nil
        var writeFailure: FileIOError?

        while let batch = full.take() {
            do throws(FileIOError) {
                let records = batch.records.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
                batch.entries.withUnsafeBufferPointer { entries in
                    detector.planLookups(entries.count) { i in
                        guard case .raw(let view, let offset) = entries[i] else { return nil }
                        return CardBytes(base: records + offset + view.cardId.start, count: view.cardId.length)
                    }
                }
                for (i, entry) in batch.entries.enumerated() {
                    detector.prefetch(ahead: i)
                    switch entry {
                    case .raw(let view, let offset):
                        let record = records + offset
                        let card = CardBytes(base: record + view.cardId.start, count: view.cardId.length)
                        let verdict = detector.process(card: card, eventTime: view.timestamp)
                        summary.count(verdict)
                        encoder.append(view: view, record: record, verdict, to: out)
                        out.append(0x0A)
                    case .decoded(let transaction):
                        let verdict = detector.process(card: transaction.cardId, eventTime: transaction.timestamp)
                        summary.count(verdict)
                        encoder.append(transaction, verdict, to: out)
                        out.append(0x0A)
                    case .rejected(let line, let rejection, let raw):
                        summary.rejected[rejection.code, default: 0] += 1
                        if let deadLetters {
                            raw.withUnsafeBytes { DeadLetterLine.append(line: line, rejection: rejection, raw: $0, to: dlq) }
                            if dlq.count >= Self.flushBytes { try deadLetters.drain(dlq) }
                        }
                    }
                }
                if out.count >= Self.flushBytes { try output.drain(out) }
            } catch {
                writeFailure = error
                full.close()
                free.close()
                break
            }
            progress?.update(bytes: batch.consumedBytes, records: summary.records)
            batch.clear()
            free.put(batch)
        }
        reader.join()
        if let writeFailure { throw writeFailure }
        if let failure = reading.error { throw failure }
        summary.lines = reading.lines
        try output.drain(out)
        try output.close()
        if let deadLetters {
            try deadLetters.drain(dlq)
            try deadLetters.close()
        }
        try input.close()
        progress?.finish()
        summary.seconds = (clock.now - started).inSeconds
        return summary
    }

    /// Where the decoding thread leaves its outcome for the detecting thread; read after `join`.
    private final class ReaderOutcome: @unchecked Sendable {
        var error: FileIOError?
        var lines = 0
    }

    /// The decoding thread: lines to batches of decoded records or rejections.
    private static func decodeLines(
        input: FileStream, full: HandoffQueue<Batch>, free: HandoffQueue<Batch>, outcome: ReaderOutcome
    ) {
        defer { full.close() }
        guard var batch = free.take() else { return }
        var decoder = TransactionDecoder()
        let maxBytes = TransactionDecoder.maxRecordBytes
        do throws(LineReaderError<Stopped>) {
            try LineReader(stream: input, maxLineBytes: TransactionDecoder.maxRecordBytes).forEachLine { (line, number, fullLength, consumed) throws(Stopped) in
                outcome.lines = number
                if isBlank(line) { return }
                do throws(Rejection) {
                    if fullLength > maxBytes {
                        throw Rejection(.tooLarge, "line is \(fullLength) bytes; the limit is \(maxBytes) (raw holds its first \(maxBytes + 1) bytes)")
                    }
                    let view = try decoder.decodeView(line)
                    if view.idsAreRaw {
                        batch.entries.append(.raw(view, offset: batch.records.count))
                        batch.records.append(line)
                    } else {
                        batch.entries.append(.decoded(decoder.transaction(from: view, in: line)))
                    }
                } catch {
                    batch.entries.append(.rejected(line: number, error, raw: Array(line)))
                }
                if batch.entries.count >= batchSize {
                    batch.consumedBytes = consumed
                    guard full.put(batch), let next = free.take() else { throw Stopped() }
                    batch = next
                }
            }
        } catch {
            if case .io(let e) = error { outcome.error = e }
            return
        }
        if !batch.entries.isEmpty { full.put(batch) }
    }

    /// SEMANTICS.md §1: a line of nothing but spaces, tabs and `\r` is skipped silently.
    @inline(__always)
    static func isBlank(_ line: UnsafeRawBufferPointer) -> Bool {
        for byte in line where byte != 0x20 && byte != 0x09 && byte != 0x0D { return false }
        return true
    }
}
