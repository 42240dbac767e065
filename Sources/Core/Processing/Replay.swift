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

/// A failed replay: the input or an output could not be read or written.
public struct ReplayError: Error, Sendable, CustomStringConvertible {
    public let underlying: FileIOError
    public var description: String { underlying.description }
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
            return try runUnwrapped()
        } catch {
            throw ReplayError(underlying: error)
        }
    }

    private func runUnwrapped() throws(FileIOError) -> ReplaySummary {
        let clock = ContinuousClock()
        let started = clock.now
        let input = try FileStream.openForReading(options.input)
        let output = try FileStream.openForWriting(options.output)
        let deadLetters = try options.deadLetters.map { path throws(FileIOError) in try FileStream.openForWriting(path) }

        let parameters = options.parameters
        var decoder = TransactionDecoder()
        var detector = Detector(parameters: parameters)
        var store = InMemoryWindowStore(parameters: parameters)
        let encoder = EnrichedRecordEncoder(parameters: parameters)
        var summary = ReplaySummary()
        var out: [UInt8] = []
        out.reserveCapacity(Self.flushBytes + 64 * 1024)
        var dlq: [UInt8] = []
        var progress = options.showProgress ? ProgressBar(totalBytes: input.regularFileSize) : nil
        let maxBytes = TransactionDecoder.maxRecordBytes

        do throws(LineReaderError<FileIOError>) {
            try LineReader(stream: input).forEachLine { (line, number, fullLength, consumed) throws(FileIOError) in
                summary.lines = number
                if Self.isBlank(line) { return }
                let transaction: Transaction
                do throws(Rejection) {
                    if fullLength > maxBytes {
                        throw Rejection(.tooLarge, "line is \(fullLength) bytes; the limit is \(maxBytes) (raw holds its first \(maxBytes + 1) bytes)")
                    }
                    transaction = try decoder.decode(line)
                } catch {
                    summary.rejected[error.code, default: 0] += 1
                    if let deadLetters {
                        DeadLetterLine.append(line: number, rejection: error, raw: line, to: &dlq)
                        if dlq.count >= Self.flushBytes { try deadLetters.drain(&dlq) }
                    }
                    return
                }
                let verdict = detector.process(card: transaction.cardId, eventTime: transaction.timestamp, store: &store)
                summary.records += 1
                if verdict.isFlagged { summary.flagged += 1 }
                if verdict.isLate { summary.late += 1 }
                encoder.append(transaction, verdict, to: &out)
                out.append(0x0A)
                if out.count >= Self.flushBytes {
                    try output.drain(&out)
                    if progress != nil { progress!.update(bytes: consumed, records: summary.records) }
                }
            }
        } catch {
            switch error {
            case .io(let e): throw e
            case .body(let e): throw e
            }
        }
        try output.drain(&out)
        try output.close()
        if let deadLetters {
            try deadLetters.drain(&dlq)
            try deadLetters.close()
        }
        try input.close()
        progress?.finish()
        summary.seconds = ProgressBar.seconds(clock.now - started)
        return summary
    }

    /// SEMANTICS.md §1: a line of nothing but spaces, tabs and `\r` is skipped silently.
    @inline(__always)
    static func isBlank(_ line: UnsafeRawBufferPointer) -> Bool {
        for byte in line where byte != 0x20 && byte != 0x09 && byte != 0x0D { return false }
        return true
    }
}
