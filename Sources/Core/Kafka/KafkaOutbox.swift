#if canImport(Glibc)
import Glibc
#endif

import CRdKafka

/// Records held back while the producer cannot take them, sent later in the order they came.
///
/// A transactional producer takes no record between `commit_transaction` and the next
/// `begin_transaction`; the processor keeps handling input during a commit (tens of
/// milliseconds, mostly waiting for the broker) and puts what it would produce here. Key and
/// value bytes are copied into one buffer; header lists are kept as built and handed over to
/// the producer as they are.
///
/// Not thread-safe: used by the thread that owns the producer's transactions.
public final class KafkaOutbox {
    struct Record {
        var topic: KafkaProducerTopic
        /// Offsets in `bytes`; a negative start means nil (a null key or value).
        var keyStart: Int
        var keyCount: Int
        var valueStart: Int
        var valueCount: Int
        var headers: OpaquePointer?
        var timestamp: Int64?
    }

    private var bytes: [UInt8] = []
    private var records: [Record] = []

    public init() {}

    deinit { removeAll() }

    /// Number of records held.
    public var count: Int { records.count }
    public var isEmpty: Bool { records.isEmpty }

    /// Holds one record (key and value are copied).
    public func append(to topic: KafkaProducerTopic, key: UnsafeRawBufferPointer?, value: UnsafeRawBufferPointer?,
                       headers: consuming KafkaRecordHeaders, timestamp: Int64? = nil) {
        let keyStart = copy(key)
        let valueStart = copy(value)
        records.append(Record(topic: topic, keyStart: keyStart, keyCount: key?.count ?? 0, valueStart: valueStart,
                              valueCount: value?.count ?? 0, headers: headers.take(), timestamp: timestamp))
    }

    private func copy(_ buffer: UnsafeRawBufferPointer?) -> Int {
        guard let buffer else { return -1 }
        let start = bytes.count
        bytes.append(contentsOf: buffer)
        return start
    }

    /// Produces every record held, in order, then empties the outbox. On a failure the record
    /// that failed and those after it are dropped with the rest (the caller aborts the
    /// transaction they were meant for).
    public func send(with producer: KafkaProducer) throws(KafkaError) {
        defer { removeAll() }
        var failure: KafkaError?
        bytes.withUnsafeBytes { all in
            for i in records.indices {
                let r = records[i]
                records[i].headers = nil
                let key = r.keyStart < 0 ? nil : UnsafeRawBufferPointer(rebasing: all[r.keyStart..<r.keyStart + r.keyCount])
                let value = r.valueStart < 0 ? nil : UnsafeRawBufferPointer(rebasing: all[r.valueStart..<r.valueStart + r.valueCount])
                do throws(KafkaError) {
                    try producer.produce(to: r.topic, key: key, value: value, headers: KafkaRecordHeaders(taking: r.headers),
                                         timestamp: r.timestamp, blockIfQueueFull: true)
                } catch {
                    failure = error
                    return
                }
            }
        }
        if let failure { throw failure }
    }

    /// Drops every record held.
    public func removeAll() {
        for r in records { if let h = r.headers { rd_kafka_headers_destroy(h) } }
        records.removeAll(keepingCapacity: true)
        bytes.removeAll(keepingCapacity: true)
    }
}
