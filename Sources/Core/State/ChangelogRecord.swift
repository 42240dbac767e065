/// One record of a window store's changelog topic: the key and value bytes of a Kafka record.
///
/// Encoding, version 1. Every key starts with the version byte `0x01`, then a one-byte tag:
///
/// | entry | key | value |
/// |---|---|---|
/// | window count | `01` `'w'` (0x77), window start as 8 bytes big-endian, card id as UTF-8 | count, 8 bytes big-endian |
/// | card maximum | `01` `'m'` (0x6d), card id as UTF-8 | largest accepted event time, 8 bytes big-endian |
/// | stream time | `01` `'t'` (0x74) | partition stream time, 8 bytes big-endian |
///
/// Integers are two's complement. A nil value (a Kafka tombstone) deletes the key; on the topic
/// that is how purged windows and cards leave the state (and how compaction forgets them).
/// The card id is the rest of the key, so it needs no length prefix. Window keys put the start
/// before the card so that, byte-ordered, a card's windows and each window's cards sort by time.
/// A future version changes the first byte; a reader rejects versions it does not know rather
/// than guess.
public struct ChangelogRecord: Sendable, Hashable {
    public var key: [UInt8]
    /// nil is a tombstone.
    public var value: [UInt8]?

    public init(key: [UInt8], value: [UInt8]?) {
        self.key = key
        self.value = value
    }

    /// The current encoding version (first key byte).
    public static let version: UInt8 = 0x01
    static let windowTag = UInt8(ascii: "w")
    static let cardMaxTag = UInt8(ascii: "m")
    static let streamTimeTag = UInt8(ascii: "t")

    /// Encodes `entry`.
    public init(_ entry: ChangelogEntry) {
        switch entry {
        case .window(let card, let windowStart, let count):
            var key: [UInt8] = []
            key.reserveCapacity(10 + card.utf8.count)
            key.append(Self.version)
            key.append(Self.windowTag)
            Self.appendBigEndian(windowStart, to: &key)
            key.append(contentsOf: card.utf8)
            self.init(key: key, value: count.map(Self.bigEndianBytes))
        case .cardMax(let card, let max):
            var key: [UInt8] = []
            key.reserveCapacity(2 + card.utf8.count)
            key.append(Self.version)
            key.append(Self.cardMaxTag)
            key.append(contentsOf: card.utf8)
            self.init(key: key, value: max.map(Self.bigEndianBytes))
        case .streamTime(let time):
            self.init(key: [Self.version, Self.streamTimeTag], value: time.map(Self.bigEndianBytes))
        }
    }

    /// Decodes the record; a malformed one throws a ``ChangelogDecodingError`` saying why.
    public func decode() throws(ChangelogDecodingError) -> ChangelogEntry {
        // Array.withUnsafeBytes only rethrows untyped errors: carry the typed one out in a Result.
        let parsed = try key.withUnsafeBytes { raw in
            Result { () throws(ChangelogDecodingError) in try Self.parseKey(raw) }
        }.get()
        let number: Int64?
        if let value {
            number = try value.withUnsafeBytes { raw in
                Result { () throws(ChangelogDecodingError) in try Self.parseValue(raw) }
            }.get()
        } else {
            number = nil
        }
        switch parsed.kind {
        case .window:
            return .window(card: String(decoding: key[parsed.card], as: UTF8.self), windowStart: parsed.windowStart, count: number)
        case .cardMax:
            return .cardMax(card: String(decoding: key[parsed.card], as: UTF8.self), max: number)
        case .streamTime:
            return .streamTime(number)
        }
    }

    enum Kind { case window, cardMax, streamTime }

    struct ParsedKey {
        var kind: Kind
        var windowStart: Int64
        /// Byte range of the card id within the key (already checked to be valid UTF-8).
        var card: Range<Int>
    }

    /// Parses a key without allocating (the restore path calls this per record).
    @inline(__always)
    static func parseKey(_ key: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> ParsedKey {
        guard key.count >= 2 else {
            throw ChangelogDecodingError("key of \(key.count) bytes is shorter than its 2-byte header")
        }
        guard key[0] == version else {
            throw ChangelogDecodingError("unknown changelog encoding version \(key[0]) (this build reads version \(version))")
        }
        switch key[1] {
        case windowTag:
            guard key.count >= 10 else {
                throw ChangelogDecodingError("window key of \(key.count) bytes is shorter than its 10-byte header")
            }
            let start = readBigEndian(key, at: 2)
            guard isValidUTF8(UnsafeRawBufferPointer(rebasing: key[10...])) else {
                throw ChangelogDecodingError("window key holds a card id that is not valid UTF-8")
            }
            return ParsedKey(kind: .window, windowStart: start, card: 10..<key.count)
        case cardMaxTag:
            guard isValidUTF8(UnsafeRawBufferPointer(rebasing: key[2...])) else {
                throw ChangelogDecodingError("card key holds a card id that is not valid UTF-8")
            }
            return ParsedKey(kind: .cardMax, windowStart: 0, card: 2..<key.count)
        case streamTimeTag:
            guard key.count == 2 else {
                throw ChangelogDecodingError("stream time key has \(key.count) bytes, expected 2")
            }
            return ParsedKey(kind: .streamTime, windowStart: 0, card: 2..<2)
        default:
            throw ChangelogDecodingError("unknown changelog key tag 0x\(String(key[1], radix: 16))")
        }
    }

    @inline(__always)
    static func parseValue(_ value: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> Int64 {
        guard value.count == 8 else {
            throw ChangelogDecodingError("value has \(value.count) bytes, expected 8")
        }
        return readBigEndian(value, at: 0)
    }

    @inline(__always)
    static func readBigEndian(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int64 {
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(bytes[offset + i]) }
        return Int64(bitPattern: v)
    }

    @inline(__always)
    static func appendBigEndian(_ value: Int64, to bytes: inout [UInt8]) {
        let v = UInt64(bitPattern: value)
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }

    static func bigEndianBytes(_ value: Int64) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(8)
        appendBigEndian(value, to: &bytes)
        return bytes
    }

    /// UTF-8 validity without allocating: card ids are nearly always ASCII, so check that first.
    @inline(__always)
    static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var ascii = true
        for b in bytes where b >= 0x80 {
            ascii = false
            break
        }
        if ascii { return true }
        let hadError = transcode(bytes.makeIterator(), from: UTF8.self, to: UTF32.self, stoppingOnError: true) { _ in }
        return !hadError
    }
}

/// The meaning of a ``ChangelogRecord``. A nil payload is a deletion (tombstone).
public enum ChangelogEntry: Sendable, Hashable {
    case window(card: String, windowStart: Int64, count: Int64?)
    case cardMax(card: String, max: Int64?)
    case streamTime(Int64?)
}

/// A changelog record that is not a valid version-1 encoding.
public struct ChangelogDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "malformed changelog record: \(message)" }
}
