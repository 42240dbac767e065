internal import CRdKafka
import PolyglotSupport

/// A topic partition.
public struct KafkaTopicPartition: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var topic: String
    public var partition: Int32
    public init(_ topic: String, _ partition: Int32) {
        self.topic = topic
        self.partition = partition
    }
    public var description: String { "\(topic)/\(partition)" }
    public static func < (a: Self, b: Self) -> Bool {
        (a.topic, a.partition) < (b.topic, b.partition)
    }
}

/// A topic partition with an offset: a start position, a committed position or a position to
/// commit (the next offset to read, i.e. last processed + 1).
public struct KafkaTopicPartitionOffset: Sendable, Hashable, CustomStringConvertible {
    public var topicPartition: KafkaTopicPartition
    /// An offset, or one of the logical values in ``KafkaOffset``.
    public var offset: Int64
    public init(_ topic: String, _ partition: Int32, offset: Int64) {
        self.topicPartition = KafkaTopicPartition(topic, partition)
        self.offset = offset
    }
    public init(_ topicPartition: KafkaTopicPartition, offset: Int64) {
        self.topicPartition = topicPartition
        self.offset = offset
    }
    public var topic: String { topicPartition.topic }
    public var partition: Int32 { topicPartition.partition }
    public var description: String { "\(topicPartition)@\(offset)" }
}

/// Logical offsets.
public enum KafkaOffset {
    public static let beginning = Int64(RD_KAFKA_OFFSET_BEGINNING)
    public static let end = Int64(RD_KAFKA_OFFSET_END)
    public static let stored = Int64(RD_KAFKA_OFFSET_STORED)
    public static let invalid = Int64(RD_KAFKA_OFFSET_INVALID)
}

/// One record header. A nil value is a header with a null value (distinct from empty).
public struct KafkaHeader: Sendable, Hashable {
    public var name: String
    public var value: [UInt8]?
    public init(_ name: String, _ value: [UInt8]?) {
        self.name = name
        self.value = value
    }
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = Array(value.utf8)
    }
}

/// How a record's timestamp was set.
public enum KafkaTimestampType: Sendable, Hashable {
    case createTime
    case logAppendTime
}

/// A consumed record, copied out of librdkafka (no pointer into librdkafka memory survives).
public struct KafkaMessage: Sendable, Hashable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]?
    /// Nil for a tombstone (a null value), which is not an error.
    public var value: [UInt8]?
    public var headers: [KafkaHeader]
    /// Epoch milliseconds, nil when the record carries none.
    public var timestamp: Int64?
    public var timestampType: KafkaTimestampType?

    public init(topic: String, partition: Int32, offset: Int64, key: [UInt8]?, value: [UInt8]?,
                headers: [KafkaHeader] = [], timestamp: Int64? = nil, timestampType: KafkaTimestampType? = nil) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
        self.timestamp = timestamp
        self.timestampType = timestampType
    }

    public var isTombstone: Bool { value == nil }
    public var topicPartition: KafkaTopicPartition { KafkaTopicPartition(topic, partition) }

    /// The first header named `name`, if any (nil also when its value is null).
    public func header(_ name: String) -> [UInt8]? {
        headers.first { $0.name == name }?.value ?? nil
    }
}

/// Low (oldest) and high (next to be written) offsets of a partition.
public struct KafkaWatermarks: Sendable, Hashable {
    public var low: Int64
    public var high: Int64
    public init(low: Int64, high: Int64) {
        self.low = low
        self.high = high
    }
}

/// Converts between Swift values and `rd_kafka_topic_partition_list_t`.
enum PartitionList {
    /// A new list the caller destroys with `rd_kafka_topic_partition_list_destroy`.
    static func make(_ items: [KafkaTopicPartitionOffset]) -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        let list = rd_kafka_topic_partition_list_new(Int32(max(items.count, 1)))!
        for item in items {
            let element = rd_kafka_topic_partition_list_add(list, item.topic, item.partition)!
            element.pointee.offset = item.offset
        }
        return list
    }

    static func make(_ partitions: [KafkaTopicPartition], offset: Int64 = KafkaOffset.invalid)
        -> UnsafeMutablePointer<rd_kafka_topic_partition_list_t> {
        make(partitions.map { KafkaTopicPartitionOffset($0, offset: offset) })
    }

    /// Reads a list; `errors` collects per-partition errors.
    static func read(_ list: UnsafePointer<rd_kafka_topic_partition_list_t>?) -> [KafkaTopicPartitionOffset] {
        guard let list, let elems = list.pointee.elems else { return [] }
        return (0..<Int(list.pointee.cnt)).map { i in
            let e = elems[i]
            return KafkaTopicPartitionOffset(String(cString: e.topic), e.partition, offset: e.offset)
        }
    }

    /// The partitions of a list whose per-partition error is one of `errors`.
    static func partitions(_ list: UnsafePointer<rd_kafka_topic_partition_list_t>, failedWith errors: [rd_kafka_resp_err_t]) -> [KafkaTopicPartition] {
        guard let elems = list.pointee.elems else { return [] }
        return (0..<Int(list.pointee.cnt)).filter { errors.contains(elems[$0].err) }.map {
            KafkaTopicPartition(String(cString: elems[$0].topic), elems[$0].partition)
        }
    }

    /// The first per-partition error in a list, if any (`excluding` those errors).
    static func firstError(_ list: UnsafePointer<rd_kafka_topic_partition_list_t>,
                           excluding excluded: [rd_kafka_resp_err_t] = []) -> KafkaError? {
        guard let elems = list.pointee.elems else { return nil }
        for i in 0..<Int(list.pointee.cnt) where elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR && !excluded.contains(elems[i].err) {
            let e = elems[i]
            return KafkaError(e.err, detail: "\(String(cString: e.topic))/\(e.partition): \(String(cString: rd_kafka_err2str(e.err)))")
        }
        return nil
    }
}
