/// The text of a header that nearly every record carries with the same bytes (its producer's
/// fingerprint, its detector parameters): one String shared by all of them, made again only
/// when the bytes change, rather than one allocated per record.
struct RepeatedHeaderText {
    private var bytes: [UInt8] = []
    private var text = ""

    /// The text of `value` (nil when the record has no such header).
    mutating func text(of value: UnsafeRawBufferPointer?) -> String? {
        guard let value else { return nil }
        if !TopicAudit.same(value, bytes) {
            bytes = Array(value)
            text = String(decoding: value, as: UTF8.self)
        }
        return text
    }
}
