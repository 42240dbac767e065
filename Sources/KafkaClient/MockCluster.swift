internal import CRdKafka
import Foundation
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#endif
import PolyglotSupport

/// librdkafka's in-memory mock Kafka cluster, listening on loopback.
///
/// For development and tests only: no admin API (create topics with ``createTopic(_:partitions:)``),
/// no compaction, about 5 MB (or 100,000 batches) kept per partition, aborted transactional
/// records stay visible to read_committed consumers.
///
/// Owns an `rd_kafka_t` and the mock cluster it hosts. Call ``destroy()`` when done; the cluster
/// is destroyed before its `rd_kafka_t` (the reverse order aborts the process).
public final class MockCluster: @unchecked Sendable {
    // @unchecked: the handles are immutable pointers to librdkafka objects, which are
    // thread-safe; the mock cluster API locks inside librdkafka.
    private let handle: OpaquePointer
    private let cluster: OpaquePointer
    private let context: KafkaCallbackContext
    private let destroyed = Mutex(false)
    /// Comma-separated `host:port` list of the brokers.
    public let bootstrapServers: String
    public let brokerCount: Int

    /// Kafka protocol API keys for ``pushRequestErrors(apiKey:errors:)``.
    public enum APIKey {
        public static let produce: Int16 = 0
        public static let fetch: Int16 = 1
        public static let listOffsets: Int16 = 2
        public static let metadata: Int16 = 3
        public static let offsetCommit: Int16 = 8
        public static let offsetFetch: Int16 = 9
        public static let findCoordinator: Int16 = 10
        public static let joinGroup: Int16 = 11
        public static let heartbeat: Int16 = 12
        public static let syncGroup: Int16 = 14
        public static let initProducerId: Int16 = 22
        public static let addPartitionsToTxn: Int16 = 24
        public static let addOffsetsToTxn: Int16 = 25
        public static let endTxn: Int16 = 26
        public static let txnOffsetCommit: Int16 = 28
    }

    /// Starts a cluster of `brokers` brokers (ids 1...brokers).
    public init(brokers: Int = 1, logger: Logger = Logger(label: "polyglot.kafka.mock")) throws(KafkaError) {
        precondition(brokers >= 1, "a mock cluster needs at least one broker")
        context = KafkaCallbackContext(logger: logger)
        // The hosting handle never connects anywhere; it only owns the cluster's threads.
        // Warnings and worse only: it would otherwise note at start that it has no bootstrap.servers.
        handle = try KafkaHandleFactory.make(type: RD_KAFKA_PRODUCER, configuration: KafkaConfiguration(["log_level": "4"]),
                                             context: context)
        guard let cluster = rd_kafka_mock_cluster_new(handle, Int32(brokers)) else {
            rd_kafka_destroy(handle)
            throw KafkaError(RD_KAFKA_RESP_ERR__FAIL, detail: "cannot start the mock cluster")
        }
        self.cluster = cluster
        self.brokerCount = brokers
        bootstrapServers = String(cString: rd_kafka_mock_cluster_bootstraps(cluster))
        Self.disableNagle(ports: Set(bootstrapServers.split(separator: ",").compactMap { $0.split(separator: ":").last.flatMap { UInt16($0) } }))
    }

    /// Sets TCP_NODELAY on the cluster's listening sockets, which the connections they accept
    /// inherit. librdkafka 2.0.2's mock leaves Nagle on where a Kafka broker turns it off, and
    /// its last response to a burst of produce requests then waits ~40 ms for the client's
    /// delayed ACK: that stall made every transaction commit on the dev broker about twice as
    /// long as the work in it. Linux only; elsewhere the mock keeps its default.
    static func disableNagle(ports: Set<UInt16>) {
        #if os(Linux)
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return }
        for fd in fds.compactMap({ Int32($0) }) {
            var listening: Int32 = 0
            var length = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0, listening == 1 else { continue }
            var address = sockaddr_in()
            var addressLength = socklen_t(MemoryLayout<sockaddr_in>.size)
            let named = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &addressLength) }
            }
            guard named == 0, address.sin_family == sa_family_t(AF_INET), ports.contains(UInt16(bigEndian: address.sin_port)) else { continue }
            var on: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        #endif
    }

    deinit { destroy() }

    /// Creates a topic with `partitions` partitions (replication factor 1).
    public func createTopic(_ name: String, partitions: Int) throws(KafkaError) {
        try KafkaError.check(rd_kafka_mock_topic_create(cluster, name, Int32(partitions), 1), "create topic \(name)")
    }

    /// The next `errors.count` requests of type `apiKey` fail with these codes, in order.
    public func pushRequestErrors(apiKey: Int16, errors: [Int32]) {
        let codes = errors.map { rd_kafka_resp_err_t(rawValue: $0) }
        codes.withUnsafeBufferPointer { buffer in
            rd_kafka_mock_push_request_errors_array(cluster, apiKey, buffer.count, buffer.baseAddress)
        }
    }

    /// Forgets errors pushed for `apiKey` and not yet returned.
    public func clearRequestErrors(apiKey: Int16) {
        rd_kafka_mock_clear_request_errors(cluster, apiKey)
    }

    /// Takes a broker down: its connections close and new ones are refused.
    public func setBrokerDown(_ brokerID: Int32) throws(KafkaError) {
        try KafkaError.check(rd_kafka_mock_broker_set_down(cluster, brokerID), "broker \(brokerID) down")
    }

    public func setBrokerUp(_ brokerID: Int32) throws(KafkaError) {
        try KafkaError.check(rd_kafka_mock_broker_set_up(cluster, brokerID), "broker \(brokerID) up")
    }

    /// Moves a partition's leadership (-1 makes it leaderless).
    public func setPartitionLeader(topic: String, partition: Int32, brokerID: Int32) throws(KafkaError) {
        try KafkaError.check(rd_kafka_mock_partition_set_leader(cluster, topic, partition, brokerID),
                             "leader of \(topic)/\(partition)")
    }

    /// Makes `brokerID` the coordinator of a group (`"group"`) or transactional id (`"transaction"`).
    public func setCoordinator(keyType: String, key: String, brokerID: Int32) throws(KafkaError) {
        try KafkaError.check(rd_kafka_mock_coordinator_set(cluster, keyType, key, brokerID), "coordinator")
    }

    /// Adds a round-trip delay to a broker's responses.
    public func setBrokerRTT(_ brokerID: Int32, milliseconds: Int32) throws(KafkaError) {
        try KafkaError.check(rd_kafka_mock_broker_set_rtt(cluster, brokerID, milliseconds), "broker \(brokerID) rtt")
    }

    /// Stops the cluster (all data is lost) and then its owning handle. Safe to call twice.
    public func destroy() {
        let first = destroyed.withLock { d -> Bool in defer { d = true }; return !d }
        guard first else { return }
        rd_kafka_mock_cluster_destroy(cluster)
        rd_kafka_destroy(handle)
    }
}
