/// The state the detector reads and writes for one input partition (SEMANTICS.md §2).
///
/// Implemented by ``InMemoryWindowStore`` (replay, auditor) and the SQLite store (process).
/// Cards are identified by their decoded `cardId`. Methods are `mutating` so that value types
/// and caching stores can implement them; a class conforms without change.
public protocol WindowStore {
    /// The largest event time accepted so far in the partition; nil before the first.
    var streamTime: Int64? { get }
    /// The largest event time accepted for `card`, nil when none (or purged).
    mutating func cardMax(_ card: String) -> Int64?
    /// The number of records counted in `card`'s window starting at `windowStart` (0 when none).
    mutating func windowCount(_ card: String, windowStart: Int64) -> Int64
    /// Records the effect of one accepted record: the window's new count, the card's new
    /// maximum and the partition's new stream time.
    mutating func putAccepted(_ card: String, windowStart: Int64, count: Int64, cardMax: Int64, streamTime: Int64)
    /// Deletes windows and card maxima that `parameters` say can no longer change a verdict.
    /// Never changes a verdict, so a store may do it lazily or partially.
    mutating func purgeExpired(_ parameters: DetectorParameters)
}
