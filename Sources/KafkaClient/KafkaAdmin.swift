internal import CRdKafka
import Logging
import PolyglotSupport

/// A topic to create.
public struct KafkaTopicSpecification: Sendable, Hashable {
    public var name: String
    public var partitions: Int
    /// -1 uses the broker's default.
    public var replicationFactor: Int
    /// Topic configs, e.g. `cleanup.policy=compact`.
    public var config: [String: String]
    public init(name: String, partitions: Int, replicationFactor: Int = -1, config: [String: String] = [:]) {
        self.name = name
        self.partitions = partitions
        self.replicationFactor = replicationFactor
        self.config = config
    }
}

/// Topic administration: creation through the admin API, partition counts from metadata.
///
/// Owns one `rd_kafka_t`. Every method blocks (network round trips): call from a dedicated
/// thread, or use the `async` twins.
public final class KafkaAdmin: @unchecked Sendable {
    // @unchecked: immutable after init; librdkafka's admin API is thread-safe, and the
    // callback context is written only before the handle starts its threads.
    let handle: OpaquePointer
    private let context: KafkaCallbackContext
    private let executor: BlockingExecutor
    private let logger: Logger
    private let closed = Mutex(false)

    public init(configuration: KafkaConfiguration, logger: Logger = Logger(label: "polyglot.kafka.admin")) throws(KafkaError) {
        self.logger = logger
        context = KafkaCallbackContext(logger: logger)
        handle = try KafkaHandleFactory.make(type: RD_KAFKA_PRODUCER, configuration: configuration, context: context)
        executor = BlockingExecutor(label: "polyglot.kafka.admin.blocking")
    }

    deinit {
        if !closed.withLock({ $0 }) { rd_kafka_destroy(handle) }
    }

    /// Destroys the handle. Blocking (briefly).
    public func close() {
        let first = closed.withLock { c -> Bool in defer { c = true }; return !c }
        if first { rd_kafka_destroy(handle) }
    }

    /// Creates topics. A topic that already exists is not an error when `ignoreExisting`.
    ///
    /// - Throws: ``KafkaAdminUnavailable`` when the broker has no CreateTopics API (librdkafka's
    ///   mock cluster): the caller falls back to checking partition counts;
    ///   ``KafkaError`` for any other failure (the first failing topic).
    public func createTopics(_ topics: [KafkaTopicSpecification], ignoreExisting: Bool = true,
                             timeout: Duration = .seconds(30)) throws {
        guard !topics.isEmpty else { return }
        try requireController(operation: "CreateTopics", timeout: timeout)
        var errstr = [CChar](repeating: 0, count: 512)
        var newTopics: [OpaquePointer?] = []
        defer { for t in newTopics { rd_kafka_NewTopic_destroy(t) } }
        for spec in topics {
            guard let t = rd_kafka_NewTopic_new(spec.name, Int32(spec.partitions), Int32(spec.replicationFactor), &errstr, errstr.count) else {
                throw KafkaError(RD_KAFKA_RESP_ERR__INVALID_ARG, detail: "topic \(spec.name): \(cString(errstr))")
            }
            newTopics.append(t)
            for (key, value) in spec.config.sorted(by: { $0.key < $1.key }) {
                try KafkaError.check(rd_kafka_NewTopic_set_config(t, key, value), "topic \(spec.name) config \(key)")
            }
        }
        let queue = rd_kafka_queue_new(handle)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(handle, RD_KAFKA_ADMIN_OP_CREATETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_operation_timeout(options, milliseconds(timeout), &errstr, errstr.count)
        _ = rd_kafka_AdminOptions_set_request_timeout(options, milliseconds(timeout), &errstr, errstr.count)
        newTopics.withUnsafeMutableBufferPointer { buffer in
            rd_kafka_CreateTopics(handle, buffer.baseAddress, buffer.count, options, queue)
        }
        let event = try Self.result(of: "CreateTopics", on: queue, timeout: timeout)
        defer { rd_kafka_event_destroy(event) }
        guard let result = rd_kafka_event_CreateTopics_result(event) else {
            throw KafkaError(RD_KAFKA_RESP_ERR__BAD_MSG, detail: "CreateTopics: unexpected result event")
        }
        var count = 0
        guard let results = rd_kafka_CreateTopics_result_topics(result, &count) else { return }
        for i in 0..<count {
            let r = results[i]
            let e = rd_kafka_topic_result_error(r)
            if e == RD_KAFKA_RESP_ERR_NO_ERROR || (ignoreExisting && e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) { continue }
            let name = String(cString: rd_kafka_topic_result_name(r))
            let message = rd_kafka_topic_result_error_string(r).map { String(cString: $0) } ?? ""
            let error = KafkaError(e, detail: "topic \(name): \(message)")
            if Self.meansNoAdminAPI(e) { throw KafkaAdminUnavailable(operation: "CreateTopics", underlying: error) }
            throw error
        }
    }

    public func createTopics(_ topics: [KafkaTopicSpecification], ignoreExisting: Bool = true,
                             timeout: Duration = .seconds(30)) async throws {
        try await executor.run { () throws in try self.createTopics(topics, ignoreExisting: ignoreExisting, timeout: timeout) }
    }

    /// Deletes topics; one that does not exist is not an error.
    ///
    /// - Throws: ``KafkaAdminUnavailable`` when the broker has no admin API; ``KafkaError`` for
    ///   any other failure (the first failing topic).
    public func deleteTopics(_ names: [String], timeout: Duration = .seconds(30)) throws {
        guard !names.isEmpty else { return }
        try requireController(operation: "DeleteTopics", timeout: timeout)
        var errstr = [CChar](repeating: 0, count: 512)
        var deletions: [OpaquePointer?] = names.map { rd_kafka_DeleteTopic_new($0) }
        defer { for d in deletions { rd_kafka_DeleteTopic_destroy(d) } }
        let queue = rd_kafka_queue_new(handle)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(handle, RD_KAFKA_ADMIN_OP_DELETETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_operation_timeout(options, milliseconds(timeout), &errstr, errstr.count)
        _ = rd_kafka_AdminOptions_set_request_timeout(options, milliseconds(timeout), &errstr, errstr.count)
        deletions.withUnsafeMutableBufferPointer { buffer in
            rd_kafka_DeleteTopics(handle, buffer.baseAddress, buffer.count, options, queue)
        }
        let event = try Self.result(of: "DeleteTopics", on: queue, timeout: timeout)
        defer { rd_kafka_event_destroy(event) }
        guard let result = rd_kafka_event_DeleteTopics_result(event) else {
            throw KafkaError(RD_KAFKA_RESP_ERR__BAD_MSG, detail: "DeleteTopics: unexpected result event")
        }
        var count = 0
        guard let results = rd_kafka_DeleteTopics_result_topics(result, &count) else { return }
        for i in 0..<count {
            let e = rd_kafka_topic_result_error(results[i])
            if e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART { continue }
            let name = String(cString: rd_kafka_topic_result_name(results[i]))
            let error = KafkaError(e, detail: "topic \(name): \(rd_kafka_topic_result_error_string(results[i]).map { String(cString: $0) } ?? "")")
            if Self.meansNoAdminAPI(e) { throw KafkaAdminUnavailable(operation: "DeleteTopics", underlying: error) }
            throw error
        }
    }

    /// Admin requests go to the controller. A cluster whose metadata names no controller among
    /// its brokers (librdkafka's mock cluster says 0, its brokers count from 1) cannot serve them:
    /// fail at once instead of waiting out the request timeout.
    private func requireController(operation: String, timeout: Duration) throws {
        var metadata: UnsafePointer<rd_kafka_metadata>? = nil
        try KafkaError.check(rd_kafka_metadata(handle, 0, nil, &metadata, milliseconds(timeout)), "metadata")
        guard let metadata else { return }
        defer { rd_kafka_metadata_destroy(metadata) }
        let md = metadata.pointee
        let brokers = Set((0..<Int(md.broker_cnt)).map { md.brokers[$0].id })
        let controller = rd_kafka_controllerid(handle, 0)
        if !brokers.contains(controller) {
            throw KafkaAdminUnavailable(operation: operation, underlying: KafkaError(
                RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE,
                detail: "the cluster names controller \(controller), which is none of its brokers \(brokers.sorted())"))
        }
    }

    /// The value of one config of `topic` (DescribeConfigs), nil when the broker does not
    /// report it.
    ///
    /// - Throws: ``KafkaAdminUnavailable`` when the broker has no admin API; ``KafkaError``
    ///   otherwise.
    public func topicConfig(_ topic: String, name: String, timeout: Duration = .seconds(10)) throws -> String? {
        try requireController(operation: "DescribeConfigs", timeout: timeout)
        var errstr = [CChar](repeating: 0, count: 512)
        var resources: [OpaquePointer?] = [rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic)]
        defer { for r in resources { rd_kafka_ConfigResource_destroy(r) } }
        let queue = rd_kafka_queue_new(handle)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(handle, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_request_timeout(options, milliseconds(timeout), &errstr, errstr.count)
        resources.withUnsafeMutableBufferPointer { buffer in
            rd_kafka_DescribeConfigs(handle, buffer.baseAddress, buffer.count, options, queue)
        }
        let event = try Self.result(of: "DescribeConfigs", on: queue, timeout: timeout)
        defer { rd_kafka_event_destroy(event) }
        guard let result = rd_kafka_event_DescribeConfigs_result(event) else {
            throw KafkaError(RD_KAFKA_RESP_ERR__BAD_MSG, detail: "DescribeConfigs: unexpected result event")
        }
        var count = 0
        guard let described = rd_kafka_DescribeConfigs_result_resources(result, &count), count > 0, let resource = described[0] else {
            return nil
        }
        let e = rd_kafka_ConfigResource_error(resource)
        if e != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(e, detail: "topic \(topic): \(rd_kafka_ConfigResource_error_string(resource).map { String(cString: $0) } ?? "")")
        }
        var entries = 0
        guard let configs = rd_kafka_ConfigResource_configs(resource, &entries) else { return nil }
        for i in 0..<entries {
            guard let entry = configs[i], String(cString: rd_kafka_ConfigEntry_name(entry)) == name else { continue }
            return rd_kafka_ConfigEntry_value(entry).map { String(cString: $0) }
        }
        return nil
    }

    /// Waits for an admin request's result event (the caller destroys it); a request-level
    /// error throws, as ``KafkaAdminUnavailable`` when it means the broker has no admin API.
    private static func result(of operation: String, on queue: OpaquePointer?, timeout: Duration) throws -> OpaquePointer {
        // The request itself times out after `timeout`; wait a little longer for its result.
        guard let event = rd_kafka_queue_poll(queue, milliseconds(timeout) + 5_000) else {
            throw KafkaError(RD_KAFKA_RESP_ERR__TIMED_OUT, detail: "\(operation): no response")
        }
        let err = rd_kafka_event_error(event)
        guard err != RD_KAFKA_RESP_ERR_NO_ERROR else { return event }
        let error = KafkaError(err, detail: rd_kafka_event_error_string(event).map { String(cString: $0) })
        rd_kafka_event_destroy(event)
        if meansNoAdminAPI(err) { throw KafkaAdminUnavailable(operation: operation, underlying: error) }
        throw error
    }

    static func meansNoAdminAPI(_ err: rd_kafka_resp_err_t) -> Bool {
        err == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE || err == RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION
            || err == RD_KAFKA_RESP_ERR_INVALID_REQUEST
    }

    /// Partition counts of the topics that exist among `topics` (missing ones are absent from the
    /// result). Reads cluster metadata for all topics, so asking never auto-creates a topic.
    /// librdkafka's reason when a connection failed in authentication (SASL), nil otherwise.
    public var authenticationFailure: String? { context.authenticationFailure.withLock { $0 } }

    public func partitionCounts(_ topics: [String], timeout: Duration = .seconds(10)) throws(KafkaError) -> [String: Int] {
        try ClusterMetadata.partitionCounts(handle, topics, timeout: timeout)
    }

    public func partitionCounts(_ topics: [String], timeout: Duration = .seconds(10)) async throws(KafkaError) -> [String: Int] {
        try await executor.run { () throws(KafkaError) in try self.partitionCounts(topics, timeout: timeout) }
    }
}

import Synchronization

/// Cluster metadata read through any client handle.
enum ClusterMetadata {
    /// Partition counts of the topics that exist among `topics`. Reads metadata for all topics,
    /// so asking never auto-creates a topic. Blocking.
    static func partitionCounts(_ handle: OpaquePointer, _ topics: [String], timeout: Duration) throws(KafkaError) -> [String: Int] {
        var metadata: UnsafePointer<rd_kafka_metadata>? = nil
        try KafkaError.check(rd_kafka_metadata(handle, 1, nil, &metadata, milliseconds(timeout)), "metadata")
        guard let metadata else { return [:] }
        defer { rd_kafka_metadata_destroy(metadata) }
        let wanted = Set(topics)
        var counts: [String: Int] = [:]
        let md = metadata.pointee
        for i in 0..<Int(md.topic_cnt) {
            let t = md.topics[i]
            let name = String(cString: t.topic)
            guard wanted.contains(name), t.err == RD_KAFKA_RESP_ERR_NO_ERROR else { continue }
            counts[name] = Int(t.partition_cnt)
        }
        return counts
    }
}
