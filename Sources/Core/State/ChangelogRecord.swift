#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One window: its start and how many records it counted.
public struct WindowCount: Sendable, Hashable {
    public var start: Int64
    public var count: Int64
    public init(start: Int64, count: Int64) {
        self.start = start
        self.count = count
    }
}

/// One card's whole state in a window store: its largest accepted event time and its open
/// windows, by start.
public struct CardState: Sendable, Hashable {
    public var max: Int64
    public var windows: [WindowCount]
    public init(max: Int64, windows: [WindowCount]) {
        self.max = max
        self.windows = windows
    }
}

/// One record of a window store's changelog topic: the key and value bytes of a Kafka record.
///
/// Encoding, version 2. Every key starts with the version byte `0x02`, then a one-byte tag:
///
/// | entry | key | value |
/// |---|---|---|
/// | card | `02` `'c'` (0x63), card id as UTF-8 | largest accepted event time, then per open window (by start, ascending) its start and count; each 8 bytes big-endian |
/// | stream time | `02` `'t'` (0x74) | partition stream time, 8 bytes big-endian |
///
/// Integers are two's complement. A nil value (a Kafka tombstone) deletes the key; on the topic
/// that is how expired cards leave the state (and how compaction forgets them).
/// One record per card, not per window: a record usually opens a window and closes the card's
/// previous one, which per-window keys wrote as two records and the card's maximum as a third.
/// The card id is the rest of the key, so it needs no length prefix. A reader rejects versions
/// it does not know rather than guess; version 1 (one key per window and per card maximum)
/// came before any release.
public struct ChangelogRecord: Sendable, Hashable {
    public var key: [UInt8]
    /// nil is a tombstone.
    public var value: [UInt8]?

    public init(key: [UInt8], value: [UInt8]?) {
        self.key = key
        self.value = value
    }

    /// The current encoding version (first key byte).
    public static let version: UInt8 = 0x02
    static let cardTag = UInt8(ascii: "c")
    static let streamTimeTag = UInt8(ascii: "t")

    /// Encodes `entry`.
    public init(_ entry: ChangelogEntry) {
        switch entry {
        case .card(let card, let state):
            var key: [UInt8] = [Self.version, Self.cardTag]
            key.append(contentsOf: card.utf8)
            self.init(key: key, value: state.map { state in
                var value: [UInt8] = []
                value.reserveCapacity(8 + 16 * state.windows.count)
                ChangelogBatch.appendValue(CardWindows(state), to: &value)
                return value
            })
        case .streamTime(let time):
            self.init(key: [Self.version, Self.streamTimeTag], value: time.map { t in
                var value: [UInt8] = []
                Self.appendBigEndian(t, to: &value)
                return value
            })
        }
    }

    /// Decodes the record; a malformed one throws a ``ChangelogDecodingError`` saying why.
    public func decode() throws(ChangelogDecodingError) -> ChangelogEntry {
        // Array.withUnsafeBytes only rethrows untyped errors: carry the typed one out in a Result.
        let parsed = try key.withUnsafeBytes { raw in
            Result { () throws(ChangelogDecodingError) in try Self.parseKey(raw) }
        }.get()
        switch parsed {
        case .card(let range):
            let card = String(decoding: key[range], as: UTF8.self)
            guard let value else { return .card(card: card, state: nil) }
            let windows = try value.withUnsafeBytes { raw in
                Result { () throws(ChangelogDecodingError) in try Self.parseCardValue(raw) }
            }.get()
            var state = CardState(max: windows.max, windows: [])
            windows.forEach { state.windows.append($0) }
            return .card(card: card, state: state)
        case .streamTime:
            guard let value else { return .streamTime(nil) }
            return .streamTime(try value.withUnsafeBytes { raw in
                Result { () throws(ChangelogDecodingError) in try Self.parseStreamTime(raw) }
            }.get())
        }
    }

    enum ParsedKey {
        /// Byte range of the card id within the key (already checked to be valid UTF-8).
        case card(Range<Int>)
        case streamTime
    }

    /// Parses a key without allocating (the restore path calls this per record).
    @inline(__always)
    static func parseKey(_ key: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> ParsedKey {
        guard key.count >= 2 else {
            throw ChangelogDecodingError("key of \(key.count) bytes is shorter than its 2-byte header")
        }
        guard key[0] == version else {
            if key[0] == 0x01 {
                throw ChangelogDecodingError("changelog encoding version 1, written by a development build before any release; this build reads version 2: delete the changelog topic and the state directory (or use a new application id) and reprocess")
            }
            throw ChangelogDecodingError("unknown changelog encoding version \(key[0]) (this build reads version \(version))")
        }
        switch key[1] {
        case cardTag:
            guard key.count - 2 <= 1024 else {
                throw ChangelogDecodingError("card key holds a card id of \(key.count - 2) bytes, more than 1024")
            }
            guard isValidUTF8(UnsafeRawBufferPointer(rebasing: key[2...])) else {
                throw ChangelogDecodingError("card key holds a card id that is not valid UTF-8")
            }
            return .card(2..<key.count)
        case streamTimeTag:
            guard key.count == 2 else {
                throw ChangelogDecodingError("stream time key has \(key.count) bytes, expected 2")
            }
            return .streamTime
        default:
            throw ChangelogDecodingError("unknown changelog key tag 0x\(String(key[1], radix: 16))")
        }
    }

    @inline(__always)
    static func parseStreamTime(_ value: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> Int64 {
        guard value.count == 8 else {
            throw ChangelogDecodingError("stream time value has \(value.count) bytes, expected 8")
        }
        return readBigEndian(value, at: 0)
    }

    /// A card value: the maximum, then windows with strictly ascending starts and positive
    /// counts, each at or before the maximum's window.
    static func parseCardValue(_ value: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> CardWindows {
        guard value.count >= 8, (value.count - 8) % 16 == 0 else {
            throw ChangelogDecodingError("card value has \(value.count) bytes, expected 8 plus 16 per window")
        }
        let n = (value.count - 8) / 16
        var state = CardWindows(max: readBigEndian(value, at: 0))
        var previous: Int64?
        for i in 0..<n {
            let start = readBigEndian(value, at: 8 + 16 * i)
            let count = readBigEndian(value, at: 16 + 16 * i)
            guard count > 0 else {
                throw ChangelogDecodingError("card value has a window of count \(count)")
            }
            guard start <= state.max else {
                throw ChangelogDecodingError("card value has a window starting at \(start), after the card's maximum \(state.max)")
            }
            if let previous, start <= previous {
                throw ChangelogDecodingError("card value has windows out of order (\(start) after \(previous))")
            }
            previous = start
            state.appendInOrder(WindowCount(start: start, count: count))
        }
        return state
    }

    @inline(__always)
    static func readBigEndian(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int64 {
        Int64(bitPattern: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
    }

    @inline(__always)
    static func appendBigEndian(_ value: Int64, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: UInt64(bitPattern: value).bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// UTF-8 validity by the same rules as the input reader's, without allocating.
    @inline(__always)
    static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return true }
        return UTF8Validation.firstInvalidByte(base.assumingMemoryBound(to: UInt8.self), bytes.count) == nil
    }
}

/// The meaning of a ``ChangelogRecord``. A nil payload is a deletion (tombstone).
public enum ChangelogEntry: Sendable, Hashable {
    case card(card: String, state: CardState?)
    case streamTime(Int64?)
}

/// A changelog record that is not a valid version-2 encoding.
public struct ChangelogDecodingError: Error, Sendable, Hashable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { "malformed changelog record: \(message)" }
}

/// Changelog records encoded back to back in one buffer (same encoding as ``ChangelogRecord``),
/// reused from cycle to cycle: filling it allocates nothing per record once it has grown,
/// where a `[ChangelogRecord]` costs two arrays per record.
public struct ChangelogBatch: Sendable {
    struct Entry: Sendable {
        var keyStart: Int32
        var keyCount: Int32
        /// -1 for a tombstone.
        var valueStart: Int32
        var valueCount: Int32
    }

    var bytes: [UInt8] = []
    var entries: [Entry] = []

    public init() {}

    /// Number of records.
    public var count: Int { entries.count }
    public var isEmpty: Bool { entries.isEmpty }
    /// Total key and value bytes.
    public var byteCount: Int { bytes.count }

    /// Calls `body` with record `index`'s key and value bytes (nil value: tombstone), valid only
    /// during the call.
    public func withRecord<R>(at index: Int, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer?) throws -> R) rethrows -> R {
        let e = entries[index]
        return try bytes.withUnsafeBytes { all in
            let key = UnsafeRawBufferPointer(rebasing: all[Int(e.keyStart)..<Int(e.keyStart + e.keyCount)])
            let value = e.valueStart < 0 ? nil : UnsafeRawBufferPointer(rebasing: all[Int(e.valueStart)..<Int(e.valueStart + e.valueCount)])
            return try body(key, value)
        }
    }

    /// Record `index` as a ``ChangelogRecord`` (copies).
    public func record(at index: Int) -> ChangelogRecord {
        withRecord(at: index) { key, value in ChangelogRecord(key: Array(key), value: value.map { Array($0) }) }
    }

    /// Every record, as ``ChangelogRecord``s (copies).
    public var records: [ChangelogRecord] { (0..<count).map(record(at:)) }

    mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        entries.removeAll(keepingCapacity: true)
    }

    /// Appends a card's record: its state, or a tombstone when it no longer exists.
    mutating func appendCard(_ card: CardBytes, _ state: CardWindows) {
        let start = bytes.count
        bytes.append(ChangelogRecord.version)
        bytes.append(ChangelogRecord.cardTag)
        bytes.append(contentsOf: card.buffer)
        let keyCount = bytes.count - start
        var valueStart: Int32 = -1
        if state.exists {
            valueStart = Int32(bytes.count)
            Self.appendValue(state, to: &bytes)
        }
        entries.append(Entry(keyStart: Int32(start), keyCount: Int32(keyCount), valueStart: valueStart,
                             valueCount: valueStart < 0 ? 0 : Int32(bytes.count) - valueStart))
    }

    /// A card's value bytes: its maximum, then each window's start and count.
    static func appendValue(_ state: CardWindows, to bytes: inout [UInt8]) {
        ChangelogRecord.appendBigEndian(state.max, to: &bytes)
        state.forEach { w in
            ChangelogRecord.appendBigEndian(w.start, to: &bytes)
            ChangelogRecord.appendBigEndian(w.count, to: &bytes)
        }
    }

    mutating func appendStreamTime(_ time: Int64) {
        let start = bytes.count
        bytes.append(ChangelogRecord.version)
        bytes.append(ChangelogRecord.streamTimeTag)
        ChangelogRecord.appendBigEndian(time, to: &bytes)
        entries.append(Entry(keyStart: Int32(start), keyCount: 2, valueStart: Int32(start + 2), valueCount: 8))
    }
}
