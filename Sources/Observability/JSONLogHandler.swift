import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif
import PolyglotSupport
import FraudModel
import KafkaClient

/// A swift-log handler writing one JSON object per line: `time` (UTC, milliseconds), `level`,
/// `logger` (the label), `message`, then every metadata field (a key that is one of those four
/// gets a `_` in front): numbers (``Logger/MetadataValue/number(_:)``, any integer or
/// ``LogNumber``) as JSON numbers, booleans as booleans, everything else as strings. For log
/// shippers, which read a line as one event; a key names its unit (`rate_per_second`).
///
/// Values belong in metadata, not in the message: the message stays the same for every
/// occurrence and can be searched for.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let write: @Sendable (UnsafeRawBufferPointer) -> Void

    /// Writes each line with one `write(2)` to stderr, under a lock shared by every handler, so
    /// that lines from different threads never interleave.
    public static func standardError(label: String, level: Logger.Level = .info,
                                     metadataProvider: Logger.MetadataProvider? = nil) -> JSONLogHandler {
        JSONLogHandler(label: label, level: level, metadataProvider: metadataProvider) { StandardError.writeLocked($0) }
    }

    /// `write` receives each line, newline included.
    public init(label: String, level: Logger.Level = .info, metadataProvider: Logger.MetadataProvider? = nil,
                write: @escaping @Sendable (UnsafeRawBufferPointer) -> Void) {
        self.label = label
        self.logLevel = level
        self.metadataProvider = metadataProvider
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// An event's fields, as both line formats write them: the handler's metadata, then the
    /// provider's, then the event's own (later ones win), and its error as `error`.
    static func fields(of event: LogEvent, metadata: Logger.Metadata, provider: Logger.MetadataProvider?) -> Logger.Metadata {
        var fields = metadata
        if let provided = provider?.get() { fields.merge(provided) { _, new in new } }
        if let own = event.metadata { fields.merge(own) { _, new in new } }
        if let error = event.error { fields["error"] = "\(error)" }
        return fields
    }

    public func log(event: LogEvent) {
        let fields = Self.fields(of: event, metadata: metadata, provider: metadataProvider)
        let out = ByteBuffer(capacity: 256)
        out.append("{\"time\":\"")
        Self.appendTimestamp(to: out)
        out.append("\",\"level\":")
        JSONOutput.appendString(event.level.rawValue, to: out)
        out.append(",\"logger\":")
        JSONOutput.appendString(label, to: out)
        out.append(",\"message\":")
        JSONOutput.appendString(event.message.description, to: out)
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            out.append(UInt8(ascii: ","))
            JSONOutput.appendString(Self.reserved.contains(key) ? "_" + key : key, to: out)
            out.append(UInt8(ascii: ":"))
            Self.append(value, to: out)
        }
        out.append("}\n")
        write(out.bytes)
    }

    static let reserved: Set<String> = ["time", "level", "logger", "message"]

    /// A metadata value: strings as JSON strings, dictionaries as objects, arrays as arrays.
    static func append(_ value: Logger.Metadata.Value, to out: ByteBuffer) {
        switch value {
        case .string(let s):
            JSONOutput.appendString(s, to: out)
        case .stringConvertible(let c):
            if isNumber(c) {
                out.appendText(c.description)
            } else {
                JSONOutput.appendString(c.description, to: out)
            }
        case .dictionary(let d):
            out.append(UInt8(ascii: "{"))
            for (i, (key, inner)) in d.sorted(by: { $0.key < $1.key }).enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSONOutput.appendString(key, to: out)
                out.append(UInt8(ascii: ":"))
                append(inner, to: out)
            }
            out.append(UInt8(ascii: "}"))
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (i, inner) in a.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                append(inner, to: out)
            }
            out.append(UInt8(ascii: "]"))
        }
    }

    /// Whether `value` is written bare: an integer, a ``LogNumber``, a finite floating-point
    /// number or a boolean.
    static func isNumber(_ value: any CustomStringConvertible & Sendable) -> Bool {
        switch value {
        case is Int, is Int64, is Int32, is UInt, is UInt64, is UInt32, is LogNumber, is Bool: true
        case let d as Double: d.isFinite
        default: false
        }
    }

    /// `2026-01-31T23:59:59.123Z`.
    static func appendTimestamp(to out: ByteBuffer) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func digits(_ value: Int, _ width: Int) {
            var divisor = 1
            for _ in 1..<width { divisor *= 10 }
            var v = value
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8(v / divisor % 10))
                v %= divisor
                divisor /= 10
            }
        }
        digits(Int(parts.tm_year) + 1900, 4); out.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mon) + 1, 2); out.append(UInt8(ascii: "-"))
        digits(Int(parts.tm_mday), 2); out.append(UInt8(ascii: "T"))
        digits(Int(parts.tm_hour), 2); out.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_min), 2); out.append(UInt8(ascii: ":"))
        digits(Int(parts.tm_sec), 2); out.append(UInt8(ascii: "."))
        digits(Int(now.tv_nsec) / 1_000_000, 3); out.append(UInt8(ascii: "Z"))
    }
}

/// How the binary logs: one bootstrap of swift-log for every command.
public enum LogOutput {
    /// JSON lines when stderr is not a terminal (a service's journal, a container's log), else
    /// readable text, message first (``TextLogHandler``). Every logger made afterwards starts
    /// at `level`.
    public static func bootstrap(level: Logger.Level, json: Bool = isatty(2) == 0) {
        LoggingSystem.bootstrap { label in
            if json { return JSONLogHandler.standardError(label: label, level: level) }
            return TextLogHandler.standardError(label: label, level: level)
        }
    }
}
