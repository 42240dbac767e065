import PolyglotSupport
import FraudModel

/// The auditor's report file: `{"findings":[…],"counts":{…}}`, one finding per line.
///
/// Findings are written as they are found, so the report of a long run costs no memory; the
/// counts, known only at the end, come last.
public final class AuditReport {
    private let stream: FileStream
    private let buffer = ByteBuffer(capacity: 1 << 16)
    private var written = 0

    /// Creates or truncates the report at `path` (`-`: stdout).
    public init(path: String) throws(FileIOError) {
        stream = try FileStream.openForWriting(path)
        buffer.append("{\"findings\":[")
    }

    /// Appends findings.
    public func write(_ findings: [AuditFinding]) throws(FileIOError) {
        for finding in findings {
            buffer.append(written == 0 ? "\n" : ",\n")
            finding.appendJSON(to: buffer)
            written += 1
        }
        if buffer.count >= 1 << 20 { try stream.drain(buffer) }
    }

    /// Writes the counts and closes the file.
    public func finish(_ counts: AuditCounts) throws(FileIOError) {
        buffer.append(written == 0 ? "],\n\"counts\":{" : "\n],\n\"counts\":{")
        for (i, entry) in counts.entries.enumerated() {
            if i > 0 { buffer.append(UInt8(ascii: ",")) }
            JSONOutput.appendString(entry.name, to: buffer)
            buffer.append(UInt8(ascii: ":"))
            buffer.appendInteger(Int64(entry.value))
        }
        buffer.append("}}\n")
        try stream.drain(buffer)
        try stream.close()
    }

    /// The counts as a two-column table, for a terminal.
    public static func summary(_ counts: AuditCounts) -> String {
        let entries = counts.entries
        let width = entries.map(\.name.count).max() ?? 0
        let numbers = entries.map { String($0.value) }
        let numberWidth = numbers.map(\.count).max() ?? 0
        var lines: [String] = []
        for (entry, number) in zip(entries, numbers) {
            lines.append(entry.name + String(repeating: " ", count: width - entry.name.count + 2)
                + String(repeating: " ", count: numberWidth - number.count) + number)
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
