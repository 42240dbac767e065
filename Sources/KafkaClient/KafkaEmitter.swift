internal import CRdKafka
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif
import PolyglotSupport

/// Produces records on a thread of its own, in the order they were appended.
///
/// Building a record's header list and queueing it in librdkafka (six allocations, a partition
/// lock and a copy per record) was a third of `process`'s per-record time on its one processing
/// thread; here that thread only copies the bytes into a batch, and batches go to the emitting
/// thread when ``send()`` hands them over. ``drain()`` waits until everything handed over is
/// queued in the producer, so a caller that drains before committing a transaction commits
/// exactly what it appended.
///
/// While ``isHolding`` (a transactional producer takes no record between a commit and the next
/// `begin_transaction`), ``send()`` keeps batches back; ``release()`` hands them over in order.
///
/// Not thread-safe apart from the emitting thread: one owner appends, sends and drains.
public final class KafkaEmitter: @unchecked Sendable {
    // @unchecked: the owner's state (the open batch, held batches) is touched by the owning
    // thread only; what crosses to the emitting thread goes through the locked queue and
    // spare list, and the counters are atomics or mutexes.
    /// Records copied into one buffer. Owned by one thread at a time: the queue and the spare
    /// list (both locked) pass it on.
    @usableFromInline
    final class Batch: @unchecked Sendable {
        // @unchecked: see above; a batch has one owner at any time.
        @usableFromInline struct Record {
            @usableFromInline var topic: KafkaProducerTopic
            /// nil: the producer's partitioner chooses.
            @usableFromInline var partition: Int32?
            /// Offsets in `bytes`; a negative start means nil (a null key or value).
            @usableFromInline var keyStart: Int
            @usableFromInline var keyCount: Int
            @usableFromInline var valueStart: Int
            @usableFromInline var valueCount: Int
            @usableFromInline var headers: Range<Int>
            @usableFromInline var timestamp: Int64?

            @inlinable
            init(topic: KafkaProducerTopic, partition: Int32?, keyStart: Int, keyCount: Int, valueStart: Int,
                 valueCount: Int, headers: Range<Int>, timestamp: Int64?) {
                self.topic = topic
                self.partition = partition
                self.keyStart = keyStart
                self.keyCount = keyCount
                self.valueStart = valueStart
                self.valueCount = valueCount
                self.headers = headers
                self.timestamp = timestamp
            }
        }

        @usableFromInline struct Header {
            @usableFromInline var name: String
            /// -1: a null value.
            @usableFromInline var valueStart: Int
            @usableFromInline var valueCount: Int

            @inlinable
            init(name: String, valueStart: Int, valueCount: Int) {
                self.name = name
                self.valueStart = valueStart
                self.valueCount = valueCount
            }
        }

        @usableFromInline var bytes: [UInt8] = []
        @usableFromInline var records: [Record] = []
        @usableFromInline var headers: [Header] = []

        var isEmpty: Bool { records.isEmpty }

        func removeAll() {
            bytes.removeAll(keepingCapacity: true)
            records.removeAll(keepingCapacity: true)
            headers.removeAll(keepingCapacity: true)
        }

        @inlinable
        func copy(_ buffer: UnsafeRawBufferPointer?) -> Int {
            guard let buffer else { return -1 }
            let start = bytes.count
            bytes.append(contentsOf: buffer)
            return start
        }
    }

    private let producer: KafkaProducer
    private let queue: HandoffQueue<Batch>
    private let spareLimit: Int
    /// Emptied batches, for reuse (guarded: both threads use it).
    private let spare = Mutex<[Batch]>([])
    private let failure = Mutex<KafkaError?>(nil)
    /// Batches handed over and not yet produced: ``drain()`` waits for none.
    private let pending = ConditionLock(0)
    private var thread: DedicatedThread?

    @usableFromInline var current = Batch()
    private var held: [Batch] = []
    /// Whether ``send()`` keeps batches back (see the type's notes).
    public var isHolding = false

    /// Starts the emitting thread for `producer`. Call ``stop()`` before closing the producer.
    public init(producer: KafkaProducer, queueLimit: Int = 64) {
        self.producer = producer
        queue = HandoffQueue(limit: queueLimit)
        spareLimit = queueLimit
        let me = UnsafeSendable(self)
        // Named for profilers and `top -H`.
        thread = DedicatedThread.start(name: "polyglot-emit") {
            me.value.run()
        }
    }

    /// Appends a record to the open batch. `headers` are (name, value) pairs; a nil value is a
    /// null header. `@inlinable` with its batch and writer: it runs once per record sent, from
    /// the roles' module, where an inlined copy also inlines the caller's `headers` closure.
    @inlinable @inline(__always)
    public func append(to topic: KafkaProducerTopic, partition: Int32? = nil, key: UnsafeRawBufferPointer?,
                       value: UnsafeRawBufferPointer?, timestamp: Int64? = nil, headers: (inout HeaderWriter) -> Void) {
        let keyStart = current.copy(key)
        let valueStart = current.copy(value)
        let first = current.headers.count
        var writer = HeaderWriter(batch: current)
        headers(&writer)
        current.records.append(Batch.Record(topic: topic, partition: partition, keyStart: keyStart, keyCount: key?.count ?? 0, valueStart: valueStart,
                                            valueCount: value?.count ?? 0, headers: first..<current.headers.count, timestamp: timestamp))
    }

    /// Adds headers to the record being appended.
    public struct HeaderWriter {
        @usableFromInline let batch: Batch

        @inlinable
        init(batch: Batch) { self.batch = batch }

        @inlinable @inline(__always)
        public mutating func add(_ name: String, _ value: UnsafeRawBufferPointer?) {
            let start = batch.copy(value)
            batch.headers.append(Batch.Header(name: name, valueStart: start, valueCount: value?.count ?? 0))
        }
    }

    /// Records appended and not yet produced (held, open, or on the emitting thread).
    public var hasUnsent: Bool { !current.isEmpty || !held.isEmpty }

    /// Hands the open batch over (or holds it back while ``isHolding``).
    public func send() {
        guard !current.isEmpty else { return }
        let batch = current
        current = spare.withLock { $0.popLast() } ?? Batch()
        if isHolding {
            held.append(batch)
        } else {
            hand(batch)
        }
    }

    /// Stops holding and hands over what was held, in order.
    public func release() {
        isHolding = false
        for batch in held { hand(batch) }
        held.removeAll()
    }

    private func hand(_ batch: Batch) {
        pending.withLock { $0 += 1 }
        queue.put(batch)
    }

    /// Sends the open batch and waits until every batch handed over is queued in the producer.
    /// Throws the first produce error since the last drain (the records after it were dropped:
    /// the caller aborts the transaction they were meant for).
    public func drain() throws(KafkaError) {
        precondition(!isHolding, "drain while holding")
        send()
        pending.wait(until: { $0 == 0 }) { _ in }
        if let error = failure.withLock({ f -> KafkaError? in defer { f = nil }; return f }) { throw error }
    }

    /// Drops what is open and held; batches already on the emitting thread still go out (the
    /// caller aborts the transaction they are in).
    public func discard() {
        current.removeAll()
        for batch in held { recycle(batch) }
        held.removeAll()
        isHolding = false
    }

    /// Ends the emitting thread after it produced what it was handed.
    public func stop() {
        queue.close()
        thread?.join()
        thread = nil
    }

    private func recycle(_ batch: Batch) {
        batch.removeAll()
        // Kept for reuse up to the queue's depth: a batch that grew to its working size costs no
        // further allocation, and while a commit is in flight many are held at once.
        spare.withLock { if $0.count < spareLimit { $0.append(batch) } }
    }

    private func run() {
        while let batch = queue.take() {
            if failure.withLock({ $0 == nil }) {
                do {
                    try produce(batch)
                } catch {
                    failure.withLock { $0 = $0 ?? error }
                }
            }
            recycle(batch)
            pending.withLock { $0 -= 1 }
        }
    }

    private func produce(_ batch: Batch) throws(KafkaError) {
        var failed: KafkaError?
        batch.bytes.withUnsafeBytes { all in
            func slice(_ start: Int, _ count: Int) -> UnsafeRawBufferPointer? {
                start < 0 ? nil : UnsafeRawBufferPointer(rebasing: all[start..<start + count])
            }
            for r in batch.records {
                var headers = KafkaRecordHeaders(capacity: r.headers.count)
                for h in batch.headers[r.headers] {
                    if let value = slice(h.valueStart, h.valueCount) { headers.add(h.name, value) } else { headers.addNull(h.name) }
                }
                do throws(KafkaError) {
                    try producer.produce(to: r.topic, partition: r.partition, key: slice(r.keyStart, r.keyCount), value: slice(r.valueStart, r.valueCount),
                                         headers: headers, timestamp: r.timestamp, blockIfQueueFull: true)
                } catch {
                    failed = error
                    return
                }
            }
        }
        if let failed { throw failed }
    }
}
