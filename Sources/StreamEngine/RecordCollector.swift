import KafkaClient
import StateStore

/// Where tasks send records, and how a commit's changelog records reach the transaction.
///
/// Task records are copied into batches and produced on the ``KafkaEmitter``'s thread, in
/// order; the runtime drains them into the producer before it adds the changelog and offsets to
/// the transaction, and holds them back while a commit is in flight (they belong to the next
/// transaction). Changelog records go straight to the producer from the commit.
public final class RecordCollector {
    let producer: KafkaProducer
    @usableFromInline let emitter: KafkaEmitter
    private var topics: [String: KafkaProducerTopic] = [:]
    /// Partition counts of the role's sources, changelog and sinks, as checked at start.
    public internal(set) var partitionCounts: [String: Int] = [:]

    init(producer: KafkaProducer) {
        self.producer = producer
        emitter = KafkaEmitter(producer: producer)
    }

    /// A handle for `name`, made once per topic (sending by handle looks nothing up per record).
    public func topic(_ name: String) throws(KafkaError) -> KafkaProducerTopic {
        if let topic = topics[name] { return topic }
        let topic = try producer.topic(name)
        topics[name] = topic
        return topic
    }

    /// Sends one record (copied now): to `partition`, or where the producer's partitioner puts
    /// `key` when nil. `@inlinable`: the roles call it per record from their own module.
    @inlinable @inline(__always)
    public func send(to topic: KafkaProducerTopic, partition: Int32? = nil, key: UnsafeRawBufferPointer?,
                     value: UnsafeRawBufferPointer?, timestamp: Int64? = nil,
                     headers: (inout KafkaEmitter.HeaderWriter) -> Void) {
        emitter.append(to: topic, partition: partition, key: key, value: value, timestamp: timestamp, headers: headers)
    }

    /// Writes a task's changelog batch to its changelog partition inside the open transaction.
    /// The last record carries `positions` (the source positions the state covers) in its
    /// headers, since a restore keeps the last positions it sees and compaction never removes a
    /// partition's last record. `range` selects part of the batch (the runtime writes every
    /// task's first record before the rest). An empty batch writes `carrier` instead.
    func writeChangelog(_ batch: ChangelogBatch, range: Range<Int>, to topic: KafkaProducerTopic, partition: Int32,
                        positions: [UInt8], carrier: () -> ChangelogRecord) throws {
        func lastHeaders() -> KafkaRecordHeaders {
            var headers = KafkaRecordHeaders(capacity: 1)
            positions.withUnsafeBytes { headers.add(ChangelogPositions.header, $0) }
            return headers
        }
        if batch.count == 0 {
            let record = carrier()
            try record.key.withUnsafeBytes { key in
                if let v = record.value {
                    try v.withUnsafeBytes { value in
                        try producer.produce(to: topic, partition: partition, key: key, value: value,
                                             headers: lastHeaders(), blockIfQueueFull: true, trackOffset: true)
                    }
                } else {
                    try producer.produce(to: topic, partition: partition, key: key, value: nil,
                                         headers: lastHeaders(), blockIfQueueFull: true, trackOffset: true)
                }
            }
            return
        }
        for i in range {
            let last = i == batch.count - 1
            try batch.withRecord(at: i) { key, value in
                try producer.produce(to: topic, partition: partition, key: key, value: value,
                                     headers: last ? lastHeaders() : KafkaRecordHeaders(),
                                     blockIfQueueFull: true, trackOffset: last)
            }
        }
    }
}
