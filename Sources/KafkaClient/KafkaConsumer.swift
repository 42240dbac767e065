internal import CRdKafka
import Foundation
import Logging
import Synchronization
import PolyglotSupport

/// What a consumer does when the group gives it partitions or takes them away.
///
/// Both hooks run synchronously on the thread calling ``KafkaConsumer/poll(timeout:)`` (inside
/// librdkafka's rebalance callback), so blocking work in them (restoring or checkpointing a store)
/// is fine and finishes before the rebalance does.
public struct KafkaRebalanceHooks: Sendable {
    /// Called with newly assigned partitions before fetching starts. Returns the offsets to start
    /// from; a partition left out starts from its committed offset (or `auto.offset.reset`).
    public var onAssigned: @Sendable ([KafkaTopicPartition]) -> [KafkaTopicPartition: Int64]
    /// Called with partitions about to be taken away, before they are unassigned: the place to
    /// flush, commit and checkpoint. `lost` is true when the group already gave them to another
    /// member (a commit would be fenced).
    public var onRevoked: @Sendable (_ partitions: [KafkaTopicPartition], _ lost: Bool) -> Void
    /// Pause every newly assigned partition as soon as it is assigned, before anything is
    /// fetched: for a consumer that restores state first and resumes each partition when ready,
    /// so the restore happens in its poll loop rather than inside the rebalance callback.
    public var pauseAssigned: Bool

    public init(onAssigned: @escaping @Sendable ([KafkaTopicPartition]) -> [KafkaTopicPartition: Int64] = { _ in [:] },
                onRevoked: @escaping @Sendable ([KafkaTopicPartition], Bool) -> Void = { _, _ in },
                pauseAssigned: Bool = false) {
        self.onAssigned = onAssigned
        self.onRevoked = onRevoked
        self.pauseAssigned = pauseAssigned
    }
}

final class ConsumerContext: KafkaCallbackContext, @unchecked Sendable {
    // @unchecked: the hooks are immutable and run on the polling thread (librdkafka calls
    // the rebalance callback from inside poll); the counters are atomics.
    let hooks: KafkaRebalanceHooks
    /// Number of completed assign/revoke callbacks: lets callers await a rebalance.
    let rebalances = Atomic<Int>(0)
    init(logger: Logger, hooks: KafkaRebalanceHooks, brokerState: KafkaBrokerState?) {
        self.hooks = hooks
        super.init(logger: logger, brokerState: brokerState)
    }

    func rebalance(_ rk: OpaquePointer, _ err: rd_kafka_resp_err_t, _ list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?) {
        let cooperative = String(cString: rd_kafka_rebalance_protocol(rk)) == "COOPERATIVE"
        let partitions = PartitionList.read(list).map(\.topicPartition)
        switch err {
        case RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS:
            let starts = hooks.onAssigned(partitions)
            if let list, let elems = list.pointee.elems {
                for i in 0..<Int(list.pointee.cnt) {
                    let tp = KafkaTopicPartition(String(cString: elems[i].topic), elems[i].partition)
                    if let start = starts[tp] { elems[i].offset = start }
                }
            }
            if cooperative {
                if let error = rd_kafka_incremental_assign(rk, list) {
                    logger.error("incremental assign failed", metadata: ["error": "\(KafkaError(consuming: error))"])
                }
            } else {
                let e = rd_kafka_assign(rk, list)
                if e != RD_KAFKA_RESP_ERR_NO_ERROR { logger.error("assign failed", metadata: ["error": "\(KafkaError(e))"]) }
            }
            if hooks.pauseAssigned, let list {
                let e = rd_kafka_pause_partitions(rk, list)
                if e != RD_KAFKA_RESP_ERR_NO_ERROR { logger.error("pausing assigned partitions failed", metadata: ["error": "\(KafkaError(e))"]) }
            }
            logger.info("partitions assigned", metadata: ["partitions": "\(partitions.map(\.description).joined(separator: ","))"])
        case RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS:
            let lost = rd_kafka_assignment_lost(rk) != 0
            hooks.onRevoked(partitions, lost)
            if cooperative {
                if let error = rd_kafka_incremental_unassign(rk, list) {
                    logger.error("incremental unassign failed", metadata: ["error": "\(KafkaError(consuming: error))"])
                }
            } else {
                _ = rd_kafka_assign(rk, nil)
            }
            logger.info("partitions revoked", metadata: ["partitions": "\(partitions.map(\.description).joined(separator: ","))", "lost": "\(lost)"])
        default:
            logger.error("rebalance error", metadata: ["error": "\(KafkaError(err))"])
            _ = rd_kafka_assign(rk, nil)
        }
        rebalances.add(1, ordering: .releasing)
    }
}

/// A Kafka consumer: a group member (``subscribe(_:)``) or a plain reader of chosen partitions
/// (``assign(_:)``), with manual offsets only (`enable.auto.commit=false`,
/// `enable.auto.offset.store=false`).
///
/// Owns one `rd_kafka_t`. Call ``close()`` before dropping it; `deinit` only destroys a
/// forgotten consumer (without leaving the group cleanly) and logs it.
///
/// Blocking methods (call them from a dedicated thread; the `async` twins run them on the
/// consumer's own queue): ``poll(timeout:)``, ``poll(maxMessages:timeout:)``, ``commit(_:)``,
/// ``committed(_:timeout:)``, ``seek(_:timeout:)``, ``queryWatermarks(_:timeout:)``, ``close()``.
/// Non-blocking: ``subscribe(_:)``, ``assign(_:)``, ``unassign()``, ``assignment()``,
/// ``position(_:)``, ``cachedWatermarks(_:)``, ``pause(_:)``, ``resume(_:)``.
public final class KafkaConsumer: @unchecked Sendable {
    // @unchecked: the handle is an immutable pointer to a librdkafka consumer, whose API is
    // thread-safe; the remaining state is immutable, atomic or locked.
    let handle: OpaquePointer
    private let context: ConsumerContext
    private let logger: Logger
    private let executor: BlockingExecutor
    private struct State {
        var closed = false
        /// Topic names by `rd_kafka_topic_t` pointer: one String per topic, not one per record.
        var topicNames: [Int: String] = [:]
        /// Where the consumer last reached the end of each partition (with `enable.partition.eof`).
        var partitionEnds: [KafkaTopicPartition: Int64] = [:]
    }
    private let state = Mutex(State())
    /// The `group.id` in use (generated for assign-only readers that set none).
    public let groupID: String
    public let name: String

    /// Creates a consumer. Without `group.id`, a unique one is generated (assign-only use).
    /// `brokerState`, when given, is kept current from the consumer's error and statistics
    /// callbacks (served by its polls), statistics once a second unless the configuration says.
    public init(configuration: KafkaConfiguration, hooks: KafkaRebalanceHooks = KafkaRebalanceHooks(),
                brokerState: KafkaBrokerState? = nil,
                logger: Logger = Logger(label: "polyglot.kafka.consumer")) throws(KafkaError) {
        var configuration = configuration
        configuration.setDefault("group.id", "polyglot-reader-\(UUID().uuidString.lowercased())")
        configuration.set("enable.auto.commit", "false")
        configuration.set("enable.auto.offset.store", "false")
        self.groupID = configuration["group.id"]!
        self.logger = logger
        let context = ConsumerContext(logger: logger, hooks: hooks, brokerState: brokerState)
        self.context = context
        handle = try KafkaHandleFactory.make(type: RD_KAFKA_CONSUMER, configuration: configuration, context: context) { conf in
            rd_kafka_conf_set_rebalance_cb(conf) { rk, err, list, _ in
                guard let rk, let context = KafkaCallbackContext.from(rd_kafka_opaque(rk)) as? ConsumerContext else { return }
                context.rebalance(rk, err, list)
            }
        }
        // One queue: consumer_poll also serves errors and other callbacks.
        rd_kafka_poll_set_consumer(handle)
        name = String(cString: rd_kafka_name(handle))
        executor = BlockingExecutor(label: "polyglot.kafka.\(name).blocking")
    }

    deinit {
        if !state.withLock({ $0.closed }) {
            logger.warning("consumer deinitialised without close(); destroying without leaving the group", metadata: ["client": "\(name)"])
            rd_kafka_destroy_flags(handle, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE)
        }
    }

    // MARK: Membership and assignment

    /// Joins the group for `topics`; partitions arrive through the rebalance hooks during polls.
    public func subscribe(_ topics: [String]) throws(KafkaError) {
        let list = PartitionList.make(topics.map { KafkaTopicPartition($0, RD_KAFKA_PARTITION_UA) })
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_subscribe(handle, list), "subscribe")
    }

    /// Reads exactly these partitions from these offsets (``KafkaOffset`` values allowed), without
    /// group membership. Replaces any previous assignment.
    public func assign(_ partitions: [KafkaTopicPartitionOffset]) throws(KafkaError) {
        let list = PartitionList.make(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_assign(handle, list), "assign")
    }

    public func unassign() throws(KafkaError) {
        try KafkaError.check(rd_kafka_assign(handle, nil), "unassign")
    }

    /// The current assignment.
    public func assignment() throws(KafkaError) -> [KafkaTopicPartition] {
        var list: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>? = nil
        try KafkaError.check(rd_kafka_assignment(handle, &list), "assignment")
        defer { if let list { rd_kafka_topic_partition_list_destroy(list) } }
        return PartitionList.read(list).map(\.topicPartition).sorted()
    }

    /// How many rebalance callbacks (assign or revoke) have completed.
    public var rebalanceCount: Int { context.rebalances.load(ordering: .acquiring) }

    /// Stops fetching these partitions (keeps them assigned).
    public func pause(_ partitions: [KafkaTopicPartition]) throws(KafkaError) {
        let list = PartitionList.make(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_pause_partitions(handle, list), "pause")
    }

    public func resume(_ partitions: [KafkaTopicPartition]) throws(KafkaError) {
        let list = PartitionList.make(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_resume_partitions(handle, list), "resume")
    }

    // MARK: Polling

    /// Waits up to `timeout` for one record. Blocking; serves rebalance callbacks (and so runs
    /// the hooks). Returns nil on timeout. Non-fatal client errors are logged and skipped
    /// (librdkafka recovers from them by itself); a fatal error throws.
    public func poll(timeout: Duration) throws(KafkaError) -> KafkaMessage? {
        var wait = milliseconds(timeout)
        while true {
            guard let message = rd_kafka_consumer_poll(handle, wait) else { return nil }
            defer { rd_kafka_message_destroy(message) }
            if let copied = try copy(message) { return copied }
            wait = 0
        }
    }

    /// Waits up to `timeout` for a first record, then takes whatever else is ready, up to
    /// `maxMessages`. Blocking.
    public func poll(maxMessages: Int, timeout: Duration) throws(KafkaError) -> [KafkaMessage] {
        var out: [KafkaMessage] = []
        out.reserveCapacity(min(maxMessages, 1024))
        guard let first = try poll(timeout: timeout) else { return out }
        out.append(first)
        while out.count < maxMessages, let next = try poll(timeout: .zero) { out.append(next) }
        return out
    }

    /// Like ``poll(maxMessages:timeout:)`` but lends each record to `body` without copying it
    /// (the fast path for restores). Blocking. Returns the number of records handed over.
    public func pollBorrowing(maxMessages: Int, timeout: Duration,
                              _ body: (borrowing KafkaRecordView) throws -> Void) throws -> Int {
        var count = 0
        var wait = milliseconds(timeout)
        while count < maxMessages {
            guard let message = rd_kafka_consumer_poll(handle, wait) else { break }
            defer { rd_kafka_message_destroy(message) }
            wait = 0
            let m = message.pointee
            if m.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                // Errors and end-of-partition events: the copying path decides what they mean.
                _ = try copy(message)
                continue
            }
            let view = KafkaRecordView(
                message: message, topic: topicName(m.rkt), partition: m.partition, offset: m.offset,
                key: m.key.map { UnsafeRawBufferPointer(start: $0, count: m.key_len) },
                value: m.payload.map { UnsafeRawBufferPointer(start: $0, count: m.len) })
            try body(view)
            count += 1
        }
        return count
    }

    /// ``poll(maxMessages:timeout:)`` on the consumer's own queue.
    public func poll(maxMessages: Int, timeout: Duration) async throws(KafkaError) -> [KafkaMessage] {
        try await executor.run { () throws(KafkaError) in try self.poll(maxMessages: maxMessages, timeout: timeout) }
    }

    /// Copies everything out of a librdkafka message (before it is destroyed); nil for an
    /// event that is not a record.
    private func copy(_ message: UnsafeMutablePointer<rd_kafka_message_t>) throws(KafkaError) -> KafkaMessage? {
        let m = message.pointee
        if m.err != RD_KAFKA_RESP_ERR_NO_ERROR {
            if m.err == RD_KAFKA_RESP_ERR__PARTITION_EOF {
                let partition = KafkaTopicPartition(topicName(m.rkt), m.partition)
                let offset = m.offset
                state.withLock { $0.partitionEnds[partition] = max($0.partitionEnds[partition] ?? offset, offset) }
                return nil
            }
            if let fatal = KafkaHandleFactory.fatalError(handle) { throw fatal }
            let detail = rd_kafka_message_errstr(message).map { String(cString: $0) }
            let error = KafkaError(m.err, detail: detail)
            switch m.err {
            case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED,
                 RD_KAFKA_RESP_ERR__FATAL:
                throw error
            default:
                logger.warning("consumer error", metadata: ["client": "\(name)", "error": "\(error)"])
                return nil
            }
        }
        let topic = topicName(m.rkt)
        let key = m.key.map { Array(UnsafeRawBufferPointer(start: $0, count: m.key_len)) }
        // A null payload is a tombstone; an empty one is an empty value.
        let value: [UInt8]? = m.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: m.len)) }
        let headers = copyHeaders(message)
        var tsType = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ts = rd_kafka_message_timestamp(message, &tsType)
        let timestampType: KafkaTimestampType? = switch tsType {
        case RD_KAFKA_TIMESTAMP_CREATE_TIME: .createTime
        case RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME: .logAppendTime
        default: nil
        }
        return KafkaMessage(topic: topic, partition: m.partition, offset: m.offset, key: key, value: value,
                            headers: headers, timestamp: timestampType == nil ? nil : ts, timestampType: timestampType)
    }

    /// The fetch position at which the consumer last reached the end of `partition`, or nil
    /// (needs `enable.partition.eof=true`). Unlike ``position(_:)``, which stops after the last
    /// record handed out, this is past any transaction markers that follow it, so it reaches the
    /// high watermark once everything there is to read has been read.
    public func endOfPartition(_ partition: KafkaTopicPartition) -> Int64? {
        state.withLock { $0.partitionEnds[partition] }
    }

    private func topicName(_ rkt: OpaquePointer?) -> String {
        guard let rkt else { return "" }
        let key = Int(bitPattern: UnsafeMutableRawPointer(rkt))
        return state.withLock { s in
            if let name = s.topicNames[key] { return name }
            let name = String(cString: rd_kafka_topic_name(rkt))
            s.topicNames[key] = name
            return name
        }
    }

    // MARK: Offsets

    /// Commits these positions (next offsets to read: last processed + 1) for the group. Blocking.
    public func commit(_ offsets: [KafkaTopicPartitionOffset]) throws(KafkaError) {
        guard !offsets.isEmpty else { return }
        let list = PartitionList.make(offsets)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_commit(handle, list, 0), "commit")
        if let error = PartitionList.firstError(list) { throw error }
    }

    public func commit(_ offsets: [KafkaTopicPartitionOffset]) async throws(KafkaError) {
        try await executor.run { () throws(KafkaError) in try self.commit(offsets) }
    }

    /// The group's committed positions (``KafkaOffset/invalid`` when none). Blocking.
    public func committed(_ partitions: [KafkaTopicPartition], timeout: Duration) throws(KafkaError) -> [KafkaTopicPartitionOffset] {
        let list = PartitionList.make(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_committed(handle, list, milliseconds(timeout)), "committed")
        if let error = PartitionList.firstError(list) { throw error }
        return PartitionList.read(list)
    }

    /// The next offset the consumer will return for each partition (``KafkaOffset/invalid`` when
    /// unknown). Local; non-blocking.
    public func position(_ partitions: [KafkaTopicPartition]) throws(KafkaError) -> [KafkaTopicPartitionOffset] {
        let list = PartitionList.make(partitions)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_position(handle, list), "position")
        return PartitionList.read(list)
    }

    /// Moves assigned partitions to these offsets. Blocking (up to `timeout`). Forgets where
    /// those partitions last reached their end (``endOfPartition(_:)``): after a rewind, the
    /// records between the new position and that end are still to be read.
    ///
    /// Returns the partitions librdkafka refuses to seek because their fetcher is not running
    /// (`_STATE`, or `_PREV_IN_PROGRESS` while it stops): not started yet (an assignment waits
    /// for the group's committed offsets first), or stopped (unassigned). Such a partition
    /// fetches nothing until its fetcher starts, so the seek can be retried then. Any other
    /// refusal throws.
    @discardableResult
    public func seek(_ offsets: [KafkaTopicPartitionOffset], timeout: Duration) throws(KafkaError) -> [KafkaTopicPartition] {
        guard !offsets.isEmpty else { return [] }
        state.withLock { s in for o in offsets { s.partitionEnds[o.topicPartition] = nil } }
        let list = PartitionList.make(offsets)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_seek_partitions(handle, list, milliseconds(timeout)))
        let stoppedFetcher = [RD_KAFKA_RESP_ERR__STATE, RD_KAFKA_RESP_ERR__PREV_IN_PROGRESS]
        if let error = PartitionList.firstError(list, excluding: stoppedFetcher) { throw error }
        return PartitionList.partitions(list, failedWith: stoppedFetcher)
    }

    /// The high watermarks (end offsets) of many partitions in one request per leader, rather
    /// than a round trip per partition. Blocking.
    public func endOffsets(_ partitions: [KafkaTopicPartition], timeout: Duration) throws(KafkaError) -> [KafkaTopicPartition: Int64] {
        try offsets(partitions, at: KafkaOffset.end, timeout: timeout)
    }

    /// The low watermarks (first offsets still held) of many partitions at once. Blocking.
    public func beginningOffsets(_ partitions: [KafkaTopicPartition], timeout: Duration) throws(KafkaError) -> [KafkaTopicPartition: Int64] {
        try offsets(partitions, at: KafkaOffset.beginning, timeout: timeout)
    }

    /// ListOffsets for every partition at the logical time `time` (end or beginning).
    private func offsets(_ partitions: [KafkaTopicPartition], at time: Int64, timeout: Duration) throws(KafkaError) -> [KafkaTopicPartition: Int64] {
        guard !partitions.isEmpty else { return [:] }
        let list = PartitionList.make(partitions, offset: time)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        try KafkaError.check(rd_kafka_offsets_for_times(handle, list, milliseconds(timeout)), "list offsets")
        if let error = PartitionList.firstError(list) { throw error }
        return Dictionary(PartitionList.read(list).map { ($0.topicPartition, $0.offset) }, uniquingKeysWith: { a, _ in a })
    }

    /// Asks the partition leader for the low and high watermarks. Blocking.
    public func queryWatermarks(_ partition: KafkaTopicPartition, timeout: Duration) throws(KafkaError) -> KafkaWatermarks {
        var low: Int64 = 0, high: Int64 = 0
        try KafkaError.check(rd_kafka_query_watermark_offsets(handle, partition.topic, partition.partition, &low, &high,
                                                              milliseconds(timeout)), "watermarks of \(partition)")
        return KafkaWatermarks(low: low, high: high)
    }

    public func queryWatermarks(_ partition: KafkaTopicPartition, timeout: Duration) async throws(KafkaError) -> KafkaWatermarks {
        try await executor.run { () throws(KafkaError) in try self.queryWatermarks(partition, timeout: timeout) }
    }

    /// The last watermarks seen in fetch responses, without a request; nil when not yet known.
    public func cachedWatermarks(_ partition: KafkaTopicPartition) -> KafkaWatermarks? {
        var low: Int64 = KafkaOffset.invalid, high: Int64 = KafkaOffset.invalid
        let err = rd_kafka_get_watermark_offsets(handle, partition.topic, partition.partition, &low, &high)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR, high != KafkaOffset.invalid else { return nil }
        return KafkaWatermarks(low: low, high: high)
    }

    /// The group metadata a transactional producer needs to commit offsets for this group.
    /// The caller destroys it with `rd_kafka_consumer_group_metadata_destroy`.
    func groupMetadata() throws(KafkaError) -> OpaquePointer {
        guard let metadata = rd_kafka_consumer_group_metadata(handle) else {
            throw KafkaError(RD_KAFKA_RESP_ERR__STATE, detail: "consumer \(name) has no group metadata")
        }
        return metadata
    }

    /// The consumer's fatal error, if one was raised.
    public var fatalError: KafkaError? { KafkaHandleFactory.fatalError(handle) }

    // MARK: Closing

    /// Leaves the group (running the revoke hook for the current assignment), then destroys the
    /// handle. Blocking. Safe to call twice.
    public func close() {
        let first = state.withLock { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        guard first else { return }
        let err = rd_kafka_consumer_close(handle)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR { logger.warning("consumer close failed", metadata: ["client": "\(name)", "error": "\(KafkaError(err))"]) }
        rd_kafka_destroy(handle)
    }

    public func close() async {
        await executor.run { self.close() }
    }
}

/// A consumed record lent by ``KafkaConsumer/pollBorrowing(maxMessages:timeout:_:)``: its bytes
/// belong to librdkafka and are valid only during the call.
public struct KafkaRecordView: ~Copyable {
    fileprivate let message: UnsafeMutablePointer<rd_kafka_message_t>
    /// The topic's name (cached by the consumer: no allocation per record).
    public let topic: String
    public let partition: Int32
    public let offset: Int64
    /// Nil for a null key.
    public let key: UnsafeRawBufferPointer?
    /// Nil for a tombstone.
    public let value: UnsafeRawBufferPointer?

    /// The record's timestamp (CreateTime or LogAppendTime), nil when it has none.
    public var timestamp: Int64? {
        var type = RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        let ts = rd_kafka_message_timestamp(message, &type)
        return type == RD_KAFKA_TIMESTAMP_CREATE_TIME || type == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME ? ts : nil
    }

    /// Every header, copied, in record order.
    public var headers: [KafkaHeader] { copyHeaders(message) }

    /// The last header named `name` (nil when absent or null).
    public func header(_ name: String) -> UnsafeRawBufferPointer? {
        var hdrs: OpaquePointer? = nil
        guard rd_kafka_message_headers(message, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs else { return nil }
        var valuePtr: UnsafeRawPointer? = nil
        var size = 0
        guard rd_kafka_header_get_last(hdrs, name, &valuePtr, &size) == RD_KAFKA_RESP_ERR_NO_ERROR, let valuePtr else { return nil }
        return UnsafeRawBufferPointer(start: valuePtr, count: size)
    }
}

/// A message's headers, copied, in record order (none when it has none).
private func copyHeaders(_ message: UnsafeMutablePointer<rd_kafka_message_t>) -> [KafkaHeader] {
    var headers: [KafkaHeader] = []
    var hdrs: OpaquePointer? = nil
    guard rd_kafka_message_headers(message, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs else { return headers }
    var index = 0
    var namePtr: UnsafePointer<CChar>? = nil
    var valuePtr: UnsafeRawPointer? = nil
    var size = 0
    while rd_kafka_header_get_all(hdrs, index, &namePtr, &valuePtr, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
        let name = namePtr.map { String(cString: $0) } ?? ""
        headers.append(KafkaHeader(name, valuePtr.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) }))
        index += 1
    }
    return headers
}
