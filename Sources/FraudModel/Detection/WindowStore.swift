/// The state the detector reads and writes for one input partition (SEMANTICS.md §2).
///
/// Implemented by ``InMemoryWindowStore`` (replay, auditor) and the SQLite store (process).
/// Each store names how it identifies a card (`CardKey`): the in-memory store takes the id's
/// bytes in place, so the hot path never builds a String; other stores may take a `String`.
/// Methods are `mutating` so that value types and caching stores can implement them; a class
/// conforms without change.
public protocol WindowStore {
    /// How the store is handed a card's id (its decoded `cardId`).
    associatedtype CardKey

    /// The largest event time accepted so far in the partition; nil before the first.
    var streamTime: Int64? { get }
    /// The largest event time accepted for `card`, nil when none (or purged).
    mutating func cardMax(_ card: CardKey) -> Int64?
    /// The number of records counted in `card`'s window starting at `windowStart` (0 when none).
    mutating func windowCount(_ card: CardKey, windowStart: Int64) -> Int64
    /// Records the effect of one accepted record: the window's new count, the card's new
    /// maximum and the partition's new stream time.
    mutating func putAccepted(_ card: CardKey, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64)
    /// Deletes windows and card maxima that `parameters` say can no longer change a verdict.
    /// Never changes a verdict, so a store may do it lazily or partially.
    mutating func purgeExpired(_ parameters: DetectorParameters)
}

/// A card id's UTF-8 bytes, borrowed for the duration of one call.
public struct CardBytes {
    public let base: UnsafePointer<UInt8>
    public let count: Int

    public init(_ buffer: UnsafeBufferPointer<UInt8>) {
        // An empty buffer may have no address; any valid pointer will do for zero bytes.
        base = buffer.baseAddress ?? UnsafePointer(bitPattern: 1)!
        count = buffer.count
    }

    /// The bytes, valid as long as their owner keeps them.
    public var buffer: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(start: base, count: count) }

    public init(base: UnsafePointer<UInt8>, count: Int) {
        self.base = base
        self.count = count
    }
}
