import PolyglotSupport
import FraudModel

/// Where a record the auditor read sits: a Kafka record's `topic/partition/offset` (the form of
/// the `polyglot-source` header), or a line of a JSONL file.
public enum AuditPosition: Sendable, Hashable, CustomStringConvertible {
    case record(topic: String, partition: Int32, offset: Int64)
    /// A line number, counted from 1 with blank lines included (as `replay`'s dead letters count).
    case line(Int)

    /// Parses `topic/partition/offset`. Topic names cannot hold `/`, so the last two fields are
    /// split from the right; nil when the text is not of that form.
    public init?(source text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, let partition = Int32(parts[1]), let offset = Int64(parts[2]) else {
            return nil
        }
        self = .record(topic: String(parts[0]), partition: partition, offset: offset)
    }

    /// `topic/partition/offset`, or `line N`.
    public var description: String {
        switch self {
        case .record(let topic, let partition, let offset): "\(topic)/\(partition)/\(offset)"
        case .line(let n): "line \(n)"
        }
    }

    /// `{"topic":…,"partition":…,"offset":…}` or `{"line":N}`.
    func appendJSON(to out: ByteBuffer) {
        switch self {
        case .record(let topic, let partition, let offset):
            out.append("{\"topic\":")
            JSONOutput.appendString(topic, to: out)
            out.append(",\"partition\":")
            out.appendInteger(Int64(partition))
            out.append(",\"offset\":")
            out.appendInteger(offset)
            out.append(UInt8(ascii: "}"))
        case .line(let n):
            out.append("{\"line\":")
            out.appendInteger(Int64(n))
            out.append(UInt8(ascii: "}"))
        }
    }
}

extension AuditPosition: Comparable {
    /// Lines before records; lines by number; records by topic, partition and offset.
    public static func < (a: AuditPosition, b: AuditPosition) -> Bool {
        switch (a, b) {
        case (.line(let x), .line(let y)): x < y
        case (.line, .record): true
        case (.record, .line): false
        case (.record(let t1, let p1, let o1), .record(let t2, let p2, let o2)): (t1, p1, o1) < (t2, p2, o2)
        }
    }
}
