import Foundation
import Logging
import Synchronization
import PolyglotSupport

/// Topic creation on a ``MockCluster`` by its clients.
///
/// librdkafka's mock cluster answers no CreateTopics request, and the topics it creates by
/// itself (for a metadata request that names an unknown topic) always get its default of 4
/// partitions: a client cannot get a topic co-partitioned with its input from it. The process
/// hosting the cluster can create topics of any size, so it keeps a one-partition request topic,
/// ``topic``: a client produces one record per topic it needs (key: the name, value: the
/// partition count in decimal) and the host creates each one (``MockTopicRequestServer``).
///
/// A client asks this way only after the admin API turned out to be unavailable and only when
/// the cluster has the request topic, so a real cluster never sees a request.
public enum MockTopicRequests {
    /// The request topic.
    public static let topic = "__mock-topic-requests"

    /// Asks the cluster's host to create `topics`, then waits until each exists, or `timeout`.
    ///
    /// - Returns: false when the cluster has no request topic (it is not a mock cluster whose
    ///   host creates topics on request). Blocking.
    /// - Throws: ``KafkaError`` when a request cannot be delivered, or `_TIMED_OUT` when a topic
    ///   is still missing after `timeout` (the host refused it: see its log).
    public static func request(_ topics: [KafkaTopicSpecification], configuration: KafkaConfiguration,
                               timeout: Duration, logger: Logger) throws(KafkaError) -> Bool {
        let producer = try KafkaProducer(configuration: configuration, logger: logger)
        defer { _ = producer.close(flushTimeout: .seconds(1)) }
        let names = topics.map(\.name)
        guard try producer.partitionCounts([topic], timeout: timeout)[topic] != nil else { return false }
        for spec in topics {
            try producer.produce(topic: topic, partition: 0, key: Array(spec.name.utf8), value: Array(String(spec.partitions).utf8))
        }
        try producer.flush(timeout: timeout)
        let deadline = ContinuousClock.now + timeout
        while true {
            let counts = try producer.partitionCounts(names, timeout: timeout)
            if names.allSatisfy({ counts[$0] != nil }) { return true }
            guard ContinuousClock.now < deadline else {
                let missing = names.filter { counts[$0] == nil }
                throw KafkaError(code: KafkaError.Code.timedOut, name: KafkaError.name(ofCode: KafkaError.Code.timedOut),
                                 message: "the mock cluster's host did not create \(missing.joined(separator: ", ")) within \(timeout)")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    /// The topic a request asks for, or why it is refused (one line).
    static func parse(key: [UInt8]?, value: [UInt8]?) -> Result<(name: String, partitions: Int), RefusedRequest> {
        let name = String(decoding: key ?? [], as: UTF8.self)
        guard !name.isEmpty, name.utf8.count <= 249, name != "." && name != "..",
              name.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0)) }) else {
            return .failure(RefusedRequest(reason: "not a valid topic name: '\(name)'"))
        }
        let text = String(decoding: value ?? [], as: UTF8.self)
        guard let partitions = Int(text), (1...10_000).contains(partitions) else {
            return .failure(RefusedRequest(reason: "topic \(name): partition count must be between 1 and 10000, not '\(text)'"))
        }
        return .success((name, partitions))
    }

    struct RefusedRequest: Error { let reason: String }
}

/// Serves ``MockTopicRequests`` for a ``MockCluster``: creates the request topic, then reads it
/// on a thread of its own and creates every topic asked for (one that exists already is left
/// as it is; the client then checks its partition count). Call ``stop()`` before destroying
/// the cluster.
public final class MockTopicRequestServer: Sendable {
    private let consumer: KafkaConsumer
    private let stopping = Atomic<Bool>(false)
    private let thread: Mutex<DedicatedThread?> = Mutex(nil)

    /// Topics created on request so far, in order.
    public var created: [String] { createdTopics.withLock { $0 } }
    private let createdTopics = Mutex<[String]>([])

    public init(cluster: MockCluster, logger: Logger) throws(KafkaError) {
        try cluster.createTopic(MockTopicRequests.topic, partitions: 1)
        consumer = try KafkaConsumer(configuration: KafkaConfiguration(["bootstrap.servers": cluster.bootstrapServers,
                                                                       "fetch.wait.max.ms": "20", "log_level": "4"]),
                                     logger: logger)
        try consumer.assign([KafkaTopicPartitionOffset(MockTopicRequests.topic, 0, offset: KafkaOffset.beginning)])
        let started = DedicatedThread.start(name: "mock-topic-reqs") { [self] in serve(cluster, logger: logger) }
        thread.withLock { $0 = started }
    }

    /// Reads requests and creates their topics until ``stop()``.
    private func serve(_ cluster: MockCluster, logger: Logger) {
        while !stopping.load(ordering: .acquiring) {
            let messages: [KafkaMessage]
            do {
                messages = try consumer.poll(maxMessages: 100, timeout: .milliseconds(100))
            } catch {
                logger.warning("cannot read topic requests", metadata: ["error": "\(error)"])
                continue
            }
            for message in messages {
                switch MockTopicRequests.parse(key: message.key, value: message.value) {
                case .failure(let refused):
                    logger.warning("topic request refused", metadata: ["reason": "\(refused.reason)"])
                case .success(let request):
                    create(request.name, partitions: request.partitions, on: cluster, logger: logger)
                }
            }
        }
    }

    private func create(_ name: String, partitions: Int, on cluster: MockCluster, logger: Logger) {
        do {
            try cluster.createTopic(name, partitions: partitions)
        } catch {
            if error.code == KafkaError.Code.topicAlreadyExists {
                logger.debug("requested topic exists already", metadata: ["topic": "\(name)"])
            } else {
                logger.warning("cannot create requested topic", metadata: ["topic": "\(name)", "error": "\(error)"])
            }
            return
        }
        createdTopics.withLock { $0.append(name) }
        logger.info("created topic on request", metadata: ["topic": "\(name)", "partitions": .number(partitions)])
    }

    /// Stops reading requests and closes the reader. Blocking (one poll at most); safe to call twice.
    public func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        thread.withLock { $0 }?.join()
        consumer.close()
    }
}
