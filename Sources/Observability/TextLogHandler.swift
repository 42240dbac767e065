import Logging

#if canImport(Glibc)
import Glibc
#endif
import PolyglotSupport
import KafkaClient

/// A swift-log handler writing one readable line per event, for a terminal, in the shape of
/// Rust's `tracing` fmt output and Go's `slog` text handler: time, level, the logger's name,
/// the message, then `key=value` fields sorted by key:
///
///     2026-01-31T23:59:59.123Z  INFO polyglot.process: progress lag=0 rate_per_second=41230 records=120000
///
/// A value holding a space, a quote, `=` or a control character is quoted, as slog quotes it.
public struct TextLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    private let label: String
    private let write: @Sendable (UnsafeRawBufferPointer) -> Void

    /// Writes each line with one `write(2)` to stderr, under the lock every handler shares.
    public static func standardError(label: String, level: Logger.Level = .info,
                                     metadataProvider: Logger.MetadataProvider? = nil) -> TextLogHandler {
        TextLogHandler(label: label, level: level, metadataProvider: metadataProvider) { StandardError.writeLocked($0) }
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

    public func log(event: LogEvent) {
        let fields = JSONLogHandler.fields(of: event, metadata: metadata, provider: metadataProvider)
        let out = ByteBuffer(capacity: 256)
        JSONLogHandler.appendTimestamp(to: out)
        let level = event.level.name
        out.appendText(String(repeating: " ", count: 1 + max(0, 5 - level.count)) + level + " ")
        out.appendText(label + ": ")
        out.appendText(event.message.description.replacingNewlines)
        for (key, value) in fields.sorted(by: { $0.key < $1.key }) {
            out.appendText(" " + key + "=")
            out.appendText(Self.quotedIfNeeded(Self.text(of: value)))
        }
        out.append(UInt8(ascii: "\n"))
        write(out.bytes)
    }

    /// A metadata value as text: lists as `[a,b]`, dictionaries as `{k:v}`.
    static func text(of value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let s): s
        case .stringConvertible(let c): c.description
        case .array(let a): "[" + a.map(text(of:)).joined(separator: ",") + "]"
        case .dictionary(let d): "{" + d.sorted { $0.key < $1.key }.map { "\($0.key):\(text(of: $0.value))" }.joined(separator: ",") + "}"
        }
    }

    /// `value` as is when it is one plain word, else in double quotes with `"`, `\` and control
    /// characters escaped.
    static func quotedIfNeeded(_ value: String) -> String {
        let plain = !value.isEmpty && value.unicodeScalars.allSatisfy { s in
            s.value > 0x20 && s.value != 0x7F && s != "\"" && s != "=" && s != "\\"
        }
        if plain { return value }
        var quoted = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": quoted += "\\\""
            case "\\": quoted += "\\\\"
            case "\n": quoted += "\\n"
            case "\t": quoted += "\\t"
            case "\r": quoted += "\\r"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    quoted += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    quoted.unicodeScalars.append(scalar)
                }
            }
        }
        return quoted + "\""
    }
}

extension Logger.Level {
    /// `TRACE`, `DEBUG`, `INFO`, `NOTICE`, `WARN`, `ERROR`, `CRIT`: the upper-case names log
    /// readers colour and filter by.
    var name: String {
        switch self {
        case .trace: "TRACE"
        case .debug: "DEBUG"
        case .info: "INFO"
        case .notice: "NOTICE"
        case .warning: "WARN"
        case .error: "ERROR"
        case .critical: "CRIT"
        }
    }
}

extension String {
    /// One line: a line break in a message would split the event in two.
    var replacingNewlines: String {
        contains(where: \.isNewline) ? split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).joined(separator: " ") : self
    }
}
