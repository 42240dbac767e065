import FraudModel

/// The source positions a store's state covers, as one Kafka record header on the changelog.
///
/// A task's last changelog record of a commit carries the next offset of each of its source
/// topics (in the role's source order), so that a restore knows where input resumes: the
/// restore keeps the last value it sees, and compaction never removes a partition's last
/// record. The same bytes hold the positions in a store's checkpoint row.
///
/// Format: the positions in decimal, separated by commas, nothing else (`"1200,-1"`). A position
/// is -1 (unknown) or a non-negative offset written without sign or leading zeros, so each list
/// has exactly one encoding. The changelog is read back as input: ``decode(_:)`` rejects
/// anything else rather than guess.
public enum ChangelogPositions {
    /// The header's name.
    public static let header = HeaderName.positions

    /// The most positions a list may hold. A role reads a handful of source topics; the bound
    /// keeps a hostile header from costing more than a few hundred bytes of parsing.
    public static let maxCount = 16

    /// The longest encoding of ``maxCount`` positions: 19 digits each (Int64.max) and the commas.
    static let maxByteCount = maxCount * 20 - 1

    /// The header's value for `positions`. A negative position is written as -1 (unknown).
    public static func encode(_ positions: [Int64]) -> [UInt8] {
        precondition(positions.count <= maxCount, "\(positions.count) source positions, more than \(maxCount)")
        var bytes: [UInt8] = []
        bytes.reserveCapacity(positions.count * 8)
        for (i, position) in positions.enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            if position < 0 {
                bytes.append(UInt8(ascii: "-"))
                bytes.append(UInt8(ascii: "1"))
            } else {
                bytes.append(contentsOf: String(position).utf8)
            }
        }
        return bytes
    }

    /// The positions `bytes` encode, or nil when they are not exactly ``encode(_:)``'s format
    /// (empty items, signs other than in -1, leading zeros, spaces, a value beyond Int64, more
    /// than ``maxCount`` items). Empty bytes are the empty list.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> [Int64]? {
        guard bytes.count <= maxByteCount else { return nil }
        var positions: [Int64] = []
        if bytes.isEmpty { return positions }
        var i = 0
        while true {
            guard positions.count < maxCount, let (position, end) = item(bytes, from: i) else { return nil }
            positions.append(position)
            if end == bytes.count { return positions }
            guard bytes[end] == UInt8(ascii: ",") else { return nil }
            i = end + 1
        }
    }

    /// One position starting at `start`, and the index after it.
    private static func item(_ bytes: UnsafeRawBufferPointer, from start: Int) -> (Int64, Int)? {
        guard start < bytes.count else { return nil }
        if bytes[start] == UInt8(ascii: "-") {
            guard start + 1 < bytes.count, bytes[start + 1] == UInt8(ascii: "1") else { return nil }
            let end = start + 2
            guard end == bytes.count || !isDigit(bytes[end]) else { return nil }
            return (-1, end)
        }
        var value: Int64 = 0
        var end = start
        while end < bytes.count, isDigit(bytes[end]) {
            // A leading zero is only the whole number 0.
            if end > start, bytes[start] == UInt8(ascii: "0") { return nil }
            let (shifted, o1) = value.multipliedReportingOverflow(by: 10)
            let (added, o2) = shifted.addingReportingOverflow(Int64(bytes[end] - UInt8(ascii: "0")))
            guard !o1, !o2 else { return nil }
            value = added
            end += 1
        }
        return end > start ? (value, end) : nil
    }

    @inline(__always)
    private static func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
}
