/// How a record's key picks its partition: the rule that says which partition a card belongs to.
///
/// Producers disagree: Java clients (and Kafka Streams) hash keys with murmur2, librdkafka's
/// default (`consistent_random`) with CRC32. A stateful consumer that trusted whatever partition
/// a record arrived on would split one card's windows over two tasks whenever two kinds of
/// producer write the same topic, so the processor computes the card's partition itself with
/// one of these and moves a record that is elsewhere.
public enum KafkaPartitioner: String, Sendable, Hashable, CaseIterable {
    /// Java's default partitioner (`Utils.toPositive(Utils.murmur2(key)) % partitions`), also
    /// librdkafka's `murmur2` and `murmur2_random` for non-empty keys.
    case murmur2
    /// librdkafka's `consistent` (and `consistent_random` for non-empty keys): CRC32 of the key.
    case crc32

    /// The librdkafka `partitioner` property that places keys the same way.
    public var librdkafkaName: String {
        switch self {
        case .murmur2: "murmur2_random"
        case .crc32: "consistent_random"
        }
    }

    /// The partition of `key` among `count` partitions (`count` > 0).
    @inline(__always)
    public func partition(of key: UnsafeBufferPointer<UInt8>, count: Int32) -> Int32 {
        switch self {
        case .murmur2: Int32(bitPattern: Self.murmur2(key) & 0x7fff_ffff) % count
        case .crc32: Int32(truncatingIfNeeded: Self.crc32(key) % UInt32(count))
        }
    }

    /// Kafka's murmur2 (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils.murmur2`.
    public static func murmur2(_ data: UnsafeBufferPointer<UInt8>) -> UInt32 {
        let m: UInt32 = 0x5bd1_e995
        let length = data.count
        var h: UInt32 = 0x9747_b28c ^ UInt32(truncatingIfNeeded: length)
        var i = 0
        while i + 4 <= length {
            var k = UInt32(data[i]) | UInt32(data[i + 1]) << 8 | UInt32(data[i + 2]) << 16 | UInt32(data[i + 3]) << 24
            k &*= m
            k ^= k >> 24
            k &*= m
            h &*= m
            h ^= k
            i += 4
        }
        let rest = length & 3
        if rest == 3 { h ^= UInt32(data[i + 2]) << 16 }
        if rest >= 2 { h ^= UInt32(data[i + 1]) << 8 }
        if rest >= 1 {
            h ^= UInt32(data[i])
            h &*= m
        }
        h ^= h >> 13
        h &*= m
        h ^= h >> 15
        return h
    }

    /// CRC-32 (IEEE 802.3, reflected, as zlib's `crc32`), the hash of librdkafka's `consistent`.
    public static func crc32(_ data: UnsafeBufferPointer<UInt8>) -> UInt32 {
        var crc: UInt32 = 0xffff_ffff
        for byte in data {
            crc = crcTable[Int((crc ^ UInt32(byte)) & 0xff)] ^ (crc >> 8)
        }
        return crc ^ 0xffff_ffff
    }

    private static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xedb8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }
}
