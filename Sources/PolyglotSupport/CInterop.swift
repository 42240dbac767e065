/// Milliseconds for a C timeout argument (librdkafka's, SQLite's) from a Swift duration,
/// clamped to Int32.
package func milliseconds(_ duration: Duration) -> Int32 {
    let (seconds, attoseconds) = duration.components
    let ms = seconds * 1000 + attoseconds / 1_000_000_000_000_000
    return Int32(clamping: max(ms, 0))
}

/// Reads a C error buffer.
package func cString(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Carries a non-Sendable reference that is safe to share (an atomic, a C handle) into a closure.
package struct UnsafeSendable<T>: @unchecked Sendable {
    package let value: T
    package init(_ value: T) { self.value = value }
}
