/// The source positions a task's state covers, as one changelog header: on the last record a
/// task writes in a commit, so a restore from the changelog alone knows where input resumes.
///
/// The value is the next offset of each source topic, in the role's source order, as
/// comma-separated decimals (`-1`: none known), e.g. `1200,-1`.
public enum ChangelogPositions {
    /// The header's name.
    public static let header = "polyglot-positions"
    /// More sources than any role has: a longer header is not one of ours.
    static let maxSources = 16

    /// The header value for `positions`.
    public static func encode(_ positions: [Int64]) -> [UInt8] {
        Array(positions.map(String.init).joined(separator: ",").utf8)
    }

    /// The positions in a header value, or nil when it is malformed (anything but 1 to 16
    /// comma-separated integers, each -1 or more).
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> [Int64]? {
        guard !bytes.isEmpty, bytes.count <= maxSources * 21 else { return nil }
        var out: [Int64] = []
        for field in bytes.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
            guard out.count < maxSources, let value = parse(field) else { return nil }
            out.append(value)
        }
        return out
    }

    private static func parse(_ field: Slice<UnsafeRawBufferPointer>) -> Int64? {
        if field.elementsEqual("-1".utf8) { return -1 }
        guard !field.isEmpty, field.count <= 19 else { return nil }
        var v: Int64 = 0
        for b in field {
            guard b >= 48, b <= 57 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (a, o2) = m.addingReportingOverflow(Int64(b - 48))
            guard !o1, !o2 else { return nil }
            v = a
        }
        return v
    }
}
