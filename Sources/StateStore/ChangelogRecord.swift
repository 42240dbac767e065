#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FraudModel

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
/// | sliding card | `02` `'s'` (0x73), card id as UTF-8 | largest accepted event time (8 bytes big-endian), then the accepted times as runs: gap from the previous run's time and run length, unsigned LEB128 each |
/// | parameters | `02` `'p'` (0x70) | the detector parameters that wrote the changelog, as the `polyglot-detector` header text |
///
/// Tumbling windows write `'c'` cards, sliding windows `'s'` cards, and each writes its
/// parameters record at the first commit of every task it runs: a restore under other
/// parameters (another kind included) stops instead of reading state that means something else.
///
/// Integers are two's complement. A nil value (a Kafka tombstone) deletes the key; on the topic
/// that is how expired cards leave the state (and how compaction forgets them).
/// One record per card, not per window: a record usually opens a window and closes the card's
/// previous one, which per-window keys wrote as two records and the card's maximum as a third.
/// The card id is the rest of the key, so it needs no length prefix. A reader rejects versions
/// it does not know rather than guess; version 1 (one key per window and per card maximum)
/// came before any release.
///
/// Every ``CheckpointedStore`` shares the key layout (version, its value type's
/// ``StoreValue/changelogTag``, then the id, 1 to 1024 bytes of UTF-8 like the input's ids) and
/// the stream time entry. The changelog is read back as input, so a reader also rejects what no
/// valid state holds: negative times, counts no partition could reach, windows out of order.
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
    /// A sliding-window store's card (``CardTimes``).
    static let slidingCardTag = UInt8(ascii: "s")
    /// The detector parameters that wrote the changelog (SEMANTICS.md §2c).
    static let parametersTag = UInt8(ascii: "p")
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
                CardWindows(state).encode(into: &value)
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
            Result { () throws(ChangelogDecodingError) in try Self.parseKey(raw, entryTag: Self.cardTag) }
        }.get()
        switch parsed {
        case .entry(let range):
            let card = String(decoding: key[range], as: UTF8.self)
            guard let value else { return .card(card: card, state: nil) }
            let windows = try value.withUnsafeBytes { raw in
                Result { () throws(ChangelogDecodingError) in try CardWindows.decode(raw) }
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
        /// Byte range of the entry's id within the key (already checked: 1 to 1024 bytes, valid UTF-8).
        case entry(Range<Int>)
        case streamTime
    }

    /// The longest id a key may hold: the input's limit for card and transaction ids (SEMANTICS.md §1).
    package static let maxIdByteCount = 1024

    /// Parses the key of a store whose entries have tag `entryTag`, without allocating (the
    /// restore path calls this per record).
    @inline(__always)
    static func parseKey(_ key: UnsafeRawBufferPointer, entryTag: UInt8,
                         maxIdByteCount: Int = maxIdByteCount) throws(ChangelogDecodingError) -> ParsedKey {
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
        case entryTag:
            guard key.count > 2 else {
                throw ChangelogDecodingError("key with tag 0x\(String(entryTag, radix: 16)) holds an empty id")
            }
            guard key.count - 2 <= maxIdByteCount else {
                throw ChangelogDecodingError("key with tag 0x\(String(entryTag, radix: 16)) holds an id of \(key.count - 2) bytes, more than \(maxIdByteCount)")
            }
            guard isValidUTF8(UnsafeRawBufferPointer(rebasing: key[2...])) else {
                throw ChangelogDecodingError("key with tag 0x\(String(entryTag, radix: 16)) holds an id that is not valid UTF-8")
            }
            return .entry(2..<key.count)
        case streamTimeTag:
            guard key.count == 2 else {
                throw ChangelogDecodingError("stream time key has \(key.count) bytes, expected 2")
            }
            return .streamTime
        default:
            throw ChangelogDecodingError("unknown changelog key tag 0x\(String(key[1], radix: 16))")
        }
    }

    /// A stream time: the largest event time of a partition, so never negative (SEMANTICS.md §1).
    @inline(__always)
    static func parseStreamTime(_ value: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> Int64 {
        guard value.count == 8 else {
            throw ChangelogDecodingError("stream time value has \(value.count) bytes, expected 8")
        }
        let time = readBigEndian(value, at: 0)
        guard time >= 0 else {
            throw ChangelogDecodingError("stream time \(time) is negative")
        }
        return time
    }

    @inline(__always)
    package static func readBigEndian(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int64 {
        Int64(bitPattern: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt64.self)))
    }

    @inline(__always)
    package static func appendBigEndian(_ value: Int64, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: UInt64(bitPattern: value).bigEndian) { bytes.append(contentsOf: $0) }
    }

    /// UTF-8 validity by the same rules as the input reader's, without allocating.
    @inline(__always)
    package static func isValidUTF8(_ bytes: UnsafeRawBufferPointer) -> Bool {
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

    /// Appends an entry's record: its value, or a tombstone when it no longer exists.
    mutating func append<Value: StoreValue>(_ key: CardBytes, _ value: Value) {
        let start = bytes.count
        bytes.append(ChangelogRecord.version)
        bytes.append(Value.changelogTag)
        bytes.append(contentsOf: key.buffer)
        let keyCount = bytes.count - start
        var valueStart: Int32 = -1
        if value.exists {
            valueStart = Int32(bytes.count)
            value.encode(into: &bytes)
        }
        entries.append(Entry(keyStart: Int32(start), keyCount: Int32(keyCount), valueStart: valueStart,
                             valueCount: valueStart < 0 ? 0 : Int32(bytes.count) - valueStart))
    }

    /// Appends every record of `other`.
    package mutating func append(contentsOf other: ChangelogBatch) {
        let shift = Int32(bytes.count)
        bytes.append(contentsOf: other.bytes)
        for e in other.entries {
            entries.append(Entry(keyStart: e.keyStart + shift, keyCount: e.keyCount,
                                 valueStart: e.valueStart < 0 ? -1 : e.valueStart + shift, valueCount: e.valueCount))
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
