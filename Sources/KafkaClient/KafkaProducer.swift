internal import CRdKafka
import Dispatch
import Foundation
import Logging
import Synchronization
import PolyglotSupport

/// Counts of delivery reports served so far.
public struct KafkaDeliveryCounts: Sendable, Hashable {
    /// Records the broker acknowledged.
    public var delivered: Int
    /// Records that failed for good (after librdkafka's own retries).
    public var failed: Int
    /// The first few failures, oldest first (at most ``KafkaProducer/keptFailures``).
    public var failures: [KafkaError]
}

final class ProducerContext: KafkaCallbackContext, @unchecked Sendable {
    // @unchecked: the delivery state is behind a mutex; everything else is the base
    // context's, written before librdkafka starts calling back.
    struct State {
        var counts = KafkaDeliveryCounts(delivered: 0, failed: 0, failures: [])
        var waiters: [CheckedContinuation<Void, Never>] = []
        /// Highest delivered offset of records produced with `trackOffset`.
        var trackedOffsets: [KafkaTopicPartition: Int64] = [:]
        /// Every delivered record's offset since the journal was last taken, while it is kept.
        var journal: [KafkaTopicPartition: [Int64]] = [:]
    }
    let state = Mutex(State())
    /// Whether deliveries go into `State.journal` (read lock-free on every report).
    let journaling = Atomic<Bool>(false)

    func deliveryReport(_ message: UnsafePointer<rd_kafka_message_t>) {
        let err = message.pointee.err
        let isTracked = message.pointee._private != nil, journaling = journaling.load(ordering: .relaxed)
        // Only tracked (or journaled) records pay for a topic name.
        let tracked: KafkaTopicPartition? = ((isTracked || journaling) && err == RD_KAFKA_RESP_ERR_NO_ERROR)
            ? KafkaTopicPartition(String(cString: rd_kafka_topic_name(message.pointee.rkt)), message.pointee.partition) : nil
        let offset = message.pointee.offset
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            if let tracked, isTracked { s.trackedOffsets[tracked] = max(s.trackedOffsets[tracked] ?? -1, offset) }
            if let tracked, journaling { s.journal[tracked, default: []].append(offset) }
            if err == RD_KAFKA_RESP_ERR_NO_ERROR {
                s.counts.delivered += 1
            } else {
                s.counts.failed += 1
                if s.counts.failures.count < KafkaProducer.keptFailures { s.counts.failures.append(KafkaError(err)) }
            }
            let w = s.waiters
            s.waiters.removeAll()
            return w
        }
        for w in waiters { w.resume() }
    }
}

/// An idempotent Kafka producer; transactional when its configuration has `transactional.id`.
///
/// Owns one `rd_kafka_t`. Delivery reports are served by a dedicated polling thread and counted
/// (``deliveryCounts``). Thread-safe: librdkafka's producer API is.
///
/// Blocking methods (never call them from the Swift cooperative pool; each has an `async`
/// twin that runs it on a dedicated queue): ``flush(timeout:)``, ``initTransactions(timeout:)``,
/// ``sendOffsetsToTransaction(_:consumer:timeout:)``, ``commitTransaction(timeout:)``,
/// ``abortTransaction(timeout:)``, ``close(flushTimeout:)``, and ``produce(topic:partition:key:value:headers:timestamp:blockIfQueueFull:)``
/// when `blockIfQueueFull` is true.
public final class KafkaProducer: @unchecked Sendable {
    // @unchecked: the handle is an immutable pointer to a thread-safe librdkafka producer;
    // the mutable state (closed flag, topic cache, delivery counts) is atomic or locked.
    /// How many failures ``KafkaDeliveryCounts/failures`` keeps.
    public static let keptFailures = 16

    let handle: OpaquePointer
    private let context: ProducerContext
    private let logger: Logger
    private let executor: BlockingExecutor
    private let pollLoop: PollLoop
    private struct State {
        var closed = false
        var topics: [String: OpaquePointer] = [:]
    }
    private let state = Mutex(State())
    /// Mirrors `State.closed` for the lock-free produce path.
    private let closedFlag = Atomic<Bool>(false)
    /// True when created with `transactional.id`.
    public let isTransactional: Bool
    /// Client name librdkafka chose, e.g. `rdkafka#producer-1`.
    public let name: String

    /// Creates the producer. Idempotence is on unless the configuration turns it off.
    public init(configuration: KafkaConfiguration, logger: Logger = Logger(label: "polyglot.kafka.producer")) throws(KafkaError) {
        var configuration = configuration
        configuration.setDefault("enable.idempotence", "true")
        self.isTransactional = configuration["transactional.id"] != nil
        self.logger = logger
        let context = ProducerContext(logger: logger)
        self.context = context
        handle = try KafkaHandleFactory.make(type: RD_KAFKA_PRODUCER, configuration: configuration, context: context) { conf in
            rd_kafka_conf_set_dr_msg_cb(conf) { rk, message, _ in
                guard let rk, let message,
                      let context = KafkaCallbackContext.from(rd_kafka_opaque(rk)) as? ProducerContext else { return }
                context.deliveryReport(message)
            }
        }
        name = String(cString: rd_kafka_name(handle))
        executor = BlockingExecutor(label: "polyglot.kafka.\(name).blocking")
        let rk = UnsafeSendable(handle)
        // Serves delivery reports (and error/log callbacks) until close.
        pollLoop = PollLoop(name: "kafka-dr-poll") { rd_kafka_poll(rk.value, 50) }
        logger.debug("producer created", metadata: ["client": "\(name)", "transactional": "\(isTransactional)"])
    }

    deinit {
        let wasOpen = state.withLock { !$0.closed }
        if wasOpen {
            logger.warning("producer deinitialised without close(); destroying without flushing", metadata: ["client": "\(name)"])
            pollLoop.stop()
            for (_, rkt) in state.withLock({ $0.topics }) { rd_kafka_topic_destroy(rkt) }
            rd_kafka_destroy(handle)
        }
    }

    // MARK: Producing

    /// Queues one record. Non-blocking unless `blockIfQueueFull` (then it waits for space in the
    /// local queue: call it from a dedicated thread only).
    ///
    /// - Parameters:
    ///   - partition: nil lets the partitioner pick (from the key).
    ///   - value: nil produces a tombstone.
    ///   - timestamp: epoch milliseconds; nil means now.
    ///   - trackOffset: remember the offset it is delivered at (see ``deliveredOffset(_:)``).
    /// - Throws: ``KafkaError`` with code ``KafkaError/Code/queueFull`` (retriable) when the local
    ///   queue is full and `blockIfQueueFull` is false.
    public func produce(topic: String, partition: Int32? = nil, key: [UInt8]?, value: [UInt8]?,
                        headers: [KafkaHeader] = [], timestamp: Int64? = nil,
                        blockIfQueueFull: Bool = false, trackOffset: Bool = false) throws(KafkaError) {
        let handle = try self.topic(topic)
        // Both closures are non-throwing: carry the typed error out.
        let failure: KafkaError? = withOptionalBytes(key) { keyPtr, keyLen in
            withOptionalBytes(value) { valuePtr, valueLen in
                var list = KafkaRecordHeaders(capacity: headers.count)
                for h in headers {
                    if let v = h.value {
                        v.withUnsafeBytes { list.add(h.name, $0) }
                    } else {
                        list.addNull(h.name)
                    }
                }
                do throws(KafkaError) {
                    try produce(to: handle, partition: partition,
                                key: keyPtr.map { UnsafeRawBufferPointer(start: $0, count: keyLen) },
                                value: valuePtr.map { UnsafeRawBufferPointer(start: $0, count: valueLen) },
                                headers: list, timestamp: timestamp, blockIfQueueFull: blockIfQueueFull, trackOffset: trackOffset)
                    return nil
                } catch {
                    return error
                }
            }
        }
        if let failure { throw failure }
    }

    /// A topic's handle, for the allocation-free ``produce(to:partition:key:value:headers:timestamp:blockIfQueueFull:trackOffset:)``.
    /// Valid until ``close(flushTimeout:)``.
    public func topic(_ name: String) throws(KafkaError) -> KafkaProducerTopic {
        KafkaProducerTopic(rkt: try topicHandle(name), name: name)
    }

    /// Queues one record from borrowed bytes (copied by librdkafka before it returns), taking
    /// over `headers`. The hot path: no Swift allocation. Same rules as
    /// ``produce(topic:partition:key:value:headers:timestamp:blockIfQueueFull:trackOffset:)``;
    /// a nil `value` is a tombstone, a nil `key` a null key.
    public func produce(to topic: KafkaProducerTopic, partition: Int32? = nil,
                        key: UnsafeRawBufferPointer?, value: UnsafeRawBufferPointer?,
                        headers: consuming KafkaRecordHeaders, timestamp: Int64? = nil,
                        blockIfQueueFull: Bool = false, trackOffset: Bool = false) throws(KafkaError) {
        guard !closedFlag.load(ordering: .relaxed) else {
            throw KafkaError(RD_KAFKA_RESP_ERR__DESTROY, detail: "producer \(name) is closed")
        }
        let hdrs = headers.take()
        let flags = RD_KAFKA_MSG_F_COPY | (blockIfQueueFull ? RD_KAFKA_MSG_F_BLOCK : 0)
        // An empty buffer may have no address; a non-nil pointer keeps it "empty", not null.
        let keyPtr = key.map { $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)! }
        let valuePtr = value.map { $0.baseAddress ?? UnsafeRawPointer(bitPattern: 1)! }
        let error: OpaquePointer? = withUnsafeTemporaryAllocation(of: rd_kafka_vu_t.self, capacity: 8) { vus in
            vus.initialize(repeating: rd_kafka_vu_t())
            var n = 0
            vus[n].vtype = RD_KAFKA_VTYPE_RKT; vus[n].u.rkt = topic.rkt; n += 1
            vus[n].vtype = RD_KAFKA_VTYPE_PARTITION; vus[n].u.i32 = partition ?? RD_KAFKA_PARTITION_UA; n += 1
            vus[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS; vus[n].u.i = flags; n += 1
            vus[n].vtype = RD_KAFKA_VTYPE_VALUE
            vus[n].u.mem.ptr = valuePtr.map { UnsafeMutableRawPointer(mutating: $0) }; vus[n].u.mem.size = value?.count ?? 0; n += 1
            if let keyPtr {
                vus[n].vtype = RD_KAFKA_VTYPE_KEY
                vus[n].u.mem.ptr = UnsafeMutableRawPointer(mutating: keyPtr); vus[n].u.mem.size = key?.count ?? 0; n += 1
            }
            if let timestamp {
                vus[n].vtype = RD_KAFKA_VTYPE_TIMESTAMP; vus[n].u.i64 = timestamp; n += 1
            }
            if trackOffset {
                // Any non-null opaque marks the record for ``deliveredOffset(_:)``.
                vus[n].vtype = RD_KAFKA_VTYPE_OPAQUE; vus[n].u.ptr = UnsafeMutableRawPointer(bitPattern: 1); n += 1
            }
            if let hdrs {
                vus[n].vtype = RD_KAFKA_VTYPE_HEADERS; vus[n].u.headers = hdrs; n += 1
            }
            return rd_kafka_produceva(handle, vus.baseAddress, n)
        }
        if let error {
            // On failure the headers were not taken over.
            if let hdrs { rd_kafka_headers_destroy(hdrs) }
            throw KafkaError(consuming: error)
        }
    }

    /// Queues one record, waiting (without blocking a thread) while the local queue is full.
    public func send(topic: String, partition: Int32? = nil, key: [UInt8]?, value: [UInt8]?,
                     headers: [KafkaHeader] = [], timestamp: Int64? = nil) async throws(KafkaError) {
        while true {
            do {
                try produce(topic: topic, partition: partition, key: key, value: value, headers: headers, timestamp: timestamp)
                return
            } catch where error.code == KafkaError.Code.queueFull {
                await waitForDeliveryProgress()
            }
        }
    }

    /// Returns after the next delivery report (or at once if nothing is in flight).
    public func waitForDeliveryProgress() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = context.state.withLock { s -> Bool in
                if rd_kafka_outq_len(handle) == 0 { return true }
                s.waiters.append(continuation)
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    /// Delivery reports served so far.
    public var deliveryCounts: KafkaDeliveryCounts { context.state.withLock { $0.counts } }

    /// The highest offset delivered so far to `partition` by records produced with `trackOffset`.
    public func deliveredOffset(_ partition: KafkaTopicPartition) -> Int64? {
        context.state.withLock { $0.trackedOffsets[partition] }
    }

    /// Starts keeping every delivered record's partition and offset (a topic name per record:
    /// for tests that must tell which records an aborted transaction wrote).
    public func keepDeliveryJournal() { context.journaling.store(true, ordering: .relaxed) }

    /// The records delivered since the journal was last taken, per partition in delivery order;
    /// empties it. Empty unless ``keepDeliveryJournal()`` was called.
    public func takeDeliveryJournal() -> [KafkaTopicPartition: [Int64]] {
        context.state.withLock { s in defer { s.journal = [:] }; return s.journal }
    }

    /// Partition counts of the topics that exist among `topics`, from cluster metadata (asking
    /// never auto-creates a topic). Blocking.
    /// librdkafka's reason when a connection failed in authentication (SASL), nil otherwise.
    public var authenticationFailure: String? { context.authenticationFailure.withLock { $0 } }

    public func partitionCounts(_ topics: [String], timeout: Duration) throws(KafkaError) -> [String: Int] {
        try ClusterMetadata.partitionCounts(handle, topics, timeout: timeout)
    }

    /// Records queued, in flight or awaiting their delivery report.
    public var outstanding: Int { Int(rd_kafka_outq_len(handle)) }

    /// The producer's fatal error, if one was raised (it is then unusable).
    public var fatalError: KafkaError? { KafkaHandleFactory.fatalError(handle) }

    /// Blocks until every queued record has its delivery report, or `timeout` passes.
    /// - Throws: a `_TIMED_OUT` ``KafkaError`` when records are still outstanding.
    public func flush(timeout: Duration) throws(KafkaError) {
        let err = rd_kafka_flush(handle, milliseconds(timeout))
        try KafkaError.check(err, "flush: \(outstanding) records outstanding")
    }

    /// ``flush(timeout:)`` on a dedicated queue.
    public func flush(timeout: Duration) async throws(KafkaError) {
        try await executor.run { () throws(KafkaError) in try self.flush(timeout: timeout) }
    }

    // MARK: Transactions

    /// Registers the transactional id with the coordinator and fences older instances. Blocking.
    public func initTransactions(timeout: Duration) throws(KafkaError) {
        try KafkaError.check(rd_kafka_init_transactions(handle, milliseconds(timeout)))
    }

    public func initTransactions(timeout: Duration) async throws(KafkaError) {
        try await executor.run { () throws(KafkaError) in try self.initTransactions(timeout: timeout) }
    }

    /// Starts a transaction. Local and quick (does not block on the network).
    public func beginTransaction() throws(KafkaError) {
        try KafkaError.check(rd_kafka_begin_transaction(handle))
    }

    /// Adds consumed positions (next offsets to read) to the open transaction, committed with it
    /// for `consumer`'s group. Blocking.
    public func sendOffsetsToTransaction(_ offsets: [KafkaTopicPartitionOffset], consumer: KafkaConsumer,
                                         timeout: Duration) throws(KafkaError) {
        guard !offsets.isEmpty else { return }
        let metadata = try consumer.groupMetadata()
        defer { rd_kafka_consumer_group_metadata_destroy(metadata) }
        let list = PartitionList.make(offsets)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_send_offsets_to_transaction(handle, list, metadata, milliseconds(timeout)))
    }

    public func sendOffsetsToTransaction(_ offsets: [KafkaTopicPartitionOffset], consumer: KafkaConsumer,
                                         timeout: Duration) async throws(KafkaError) {
        try await executor.run { () throws(KafkaError) in
            try self.sendOffsetsToTransaction(offsets, consumer: consumer, timeout: timeout)
        }
    }

    /// Flushes and commits the open transaction. Blocking.
    /// On error, see ``KafkaError/transactionAction``: retry the commit, abort, or give up.
    public func commitTransaction(timeout: Duration) throws(KafkaError) {
        // The commit flushes, and librdkafka's flush waits in 10 ms slices unless it serves the
        // delivery reports itself: with our poll thread taking the last one, every commit
        // waited out most of a slice. So the poll thread steps aside (yield wakes it from its
        // poll) and the flush serves the reports, through the same callback.
        pollLoop.pause()
        rd_kafka_yield(handle)
        defer { pollLoop.resume() }
        try KafkaError.check(rd_kafka_commit_transaction(handle, milliseconds(timeout)))
    }

    public func commitTransaction(timeout: Duration) async throws(KafkaError) {
        try await executor.run { () throws(KafkaError) in try self.commitTransaction(timeout: timeout) }
    }

    /// Aborts the open transaction, purging records not yet delivered. Blocking.
    public func abortTransaction(timeout: Duration) throws(KafkaError) {
        try KafkaError.check(rd_kafka_abort_transaction(handle, milliseconds(timeout)))
    }

    public func abortTransaction(timeout: Duration) async throws(KafkaError) {
        try await executor.run { () throws(KafkaError) in try self.abortTransaction(timeout: timeout) }
    }

    // MARK: Closing

    /// Flushes (up to `flushTimeout`), stops the polling thread and destroys the handle. Blocking.
    /// Records still outstanding after the timeout are lost and reported by the returned count.
    @discardableResult
    public func close(flushTimeout: Duration = .seconds(10)) -> Int {
        let first = state.withLock { s -> Bool in
            if s.closed { return false }
            s.closed = true
            return true
        }
        guard first else { return 0 }
        closedFlag.store(true, ordering: .relaxed)
        if !isTransactional || fatalError == nil {
            _ = rd_kafka_flush(handle, milliseconds(flushTimeout))
        }
        let left = outstanding
        if left > 0 { logger.warning("producer closing with records undelivered", metadata: ["client": "\(name)", "undelivered_records": .number(Int(left))]) }
        pollLoop.stop()
        for (_, rkt) in state.withLock({ $0.topics }) { rd_kafka_topic_destroy(rkt) }
        rd_kafka_destroy(handle)
        // Wake anyone awaiting progress: nothing more will be delivered.
        let waiters = context.state.withLock { s in defer { s.waiters.removeAll() }; return s.waiters }
        for w in waiters { w.resume() }
        return left
    }

    public func close(flushTimeout: Duration = .seconds(10)) async -> Int {
        await executor.run { self.close(flushTimeout: flushTimeout) }
    }

    /// Topic handles are cached: looking a topic up by name on every record costs a lock and a hash.
    private func topicHandle(_ topic: String) throws(KafkaError) -> OpaquePointer {
        let result = state.withLock { s -> OpaquePointer?? in
            if s.closed { return .some(nil) }
            if let rkt = s.topics[topic] { return rkt }
            guard let rkt = rd_kafka_topic_new(handle, topic, nil) else { return .some(nil) }
            s.topics[topic] = rkt
            return rkt
        }
        switch result {
        case .some(.some(let rkt)): return rkt
        default:
            if state.withLock({ $0.closed }) {
                throw KafkaError(RD_KAFKA_RESP_ERR__DESTROY, detail: "producer \(name) is closed")
            }
            throw KafkaError(rd_kafka_last_error(), detail: "cannot create topic handle for \(topic)")
        }
    }
}

/// A cached topic handle of one producer (see ``KafkaProducer/topic(_:)``).
public struct KafkaProducerTopic: @unchecked Sendable {
    // @unchecked: an immutable pointer to a librdkafka topic handle, which is thread-safe
    // and lives as long as its producer.
    let rkt: OpaquePointer
    public let name: String
}

/// One record's headers, built in librdkafka's own list (no Swift allocation) and taken over by
/// ``KafkaProducer/produce(to:partition:key:value:headers:timestamp:blockIfQueueFull:trackOffset:)``.
public struct KafkaRecordHeaders: ~Copyable {
    private var list: OpaquePointer?

    /// No headers.
    public init() { list = nil }

    /// An empty list with room for `capacity` headers (none allocated when 0).
    public init(capacity: Int) {
        list = capacity > 0 ? rd_kafka_headers_new(capacity) : nil
    }

    /// Appends a header (its bytes are copied).
    public mutating func add(_ name: String, _ value: UnsafeRawBufferPointer) {
        let list = self.list ?? rd_kafka_headers_new(4)
        self.list = list
        _ = rd_kafka_header_add(list, name, -1, value.baseAddress ?? UnsafeRawPointer(bitPattern: 1), value.count)
    }

    /// Appends a header with a null value.
    public mutating func addNull(_ name: String) {
        let list = self.list ?? rd_kafka_headers_new(4)
        self.list = list
        _ = rd_kafka_header_add(list, name, -1, nil, 0)
    }

    consuming func take() -> OpaquePointer? {
        let list = self.list
        discard self
        return list
    }

    deinit {
        if let list { rd_kafka_headers_destroy(list) }
    }
}

/// Calls `body` with a pointer and length for optional bytes (nil pointer for nil).
@inline(__always)
func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawPointer?, Int) -> R) -> R {
    guard let bytes else { return body(nil, 0) }
    return bytes.withUnsafeBytes { buffer in
        // An empty array may have no base address; a non-nil pointer keeps it "empty", not null.
        body(buffer.baseAddress ?? UnsafeRawPointer(bitPattern: 1), buffer.count)
    }
}

/// A dedicated thread calling `body` in a loop until ``stop()``: where blocking polls run.
final class PollLoop: Sendable {
    private struct Gate {
        var paused = false
        var stopped = false
        var finished = false
    }

    private let gate = ConditionLock(Gate())

    init(name: String, _ body: @escaping @Sendable () -> Void) {
        DedicatedThread.detach(name: name) { [self] in
            // Waits while paused; each call of the body is one poll with its own timeout, so
            // taking the lock once per call costs nothing next to it.
            while gate.wait(until: { !$0.paused || $0.stopped }, then: { !$0.stopped }) {
                body()
            }
            gate.withLock { $0.finished = true }
        }
    }

    /// Stops calling the body (after the call in progress) until ``resume()``.
    func pause() {
        gate.withLock { $0.paused = true }
    }

    func resume() {
        gate.withLock { $0.paused = false }
    }

    /// Asks the loop to stop and waits for its current iteration to end.
    func stop() {
        gate.withLock { $0.stopped = true }
        gate.wait(until: { $0.finished }) { _ in }
    }
}
