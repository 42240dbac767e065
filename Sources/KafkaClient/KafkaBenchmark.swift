import Dispatch
import Foundation
import Logging
import PolyglotSupport

/// Produce and consume throughput of this Kafka layer, for `polyglot dev kafka-bench`.
public struct KafkaBenchmark: Sendable {
    public struct Options: Sendable {
        /// nil starts an in-process mock cluster.
        public var bootstrapServers: String?
        public var brokers: Int = 1
        public var records: Int = 500_000
        public var partitions: Int = 32
        public var valueSize: Int = 100
        /// An existing topic to use (its records before the run are skipped); nil creates one.
        public var topic: String?
        /// Extra librdkafka properties for both clients (`-X`).
        public var overrides: KafkaConfiguration = KafkaConfiguration()
        public init() {}
    }

    public struct Result: Sendable, CustomStringConvertible {
        public var records: Int
        public var bytes: Int
        public var produceSeconds: Double
        public var consumeSeconds: Double
        /// The same records read again through the borrowing poll (no copies).
        public var borrowingConsumeSeconds: Double
        public var produceRate: Double { Double(records) / produceSeconds }
        public var consumeRate: Double { Double(records) / consumeSeconds }
        public var borrowingConsumeRate: Double { Double(records) / borrowingConsumeSeconds }
        public var description: String {
            let mb = Double(bytes) / 1_048_576
            return """
            produce: \(records) records (\(String(format: "%.1f", mb)) MiB) in \(String(format: "%.3f", produceSeconds)) s = \(Int(produceRate)) records/s
            consume: \(records) records in \(String(format: "%.3f", consumeSeconds)) s = \(Int(consumeRate)) records/s (copied)
            consume: \(records) records in \(String(format: "%.3f", borrowingConsumeSeconds)) s = \(Int(borrowingConsumeRate)) records/s (borrowed)
            """
        }
    }

    public let options: Options
    private let logger: Logger
    public init(options: Options, logger: Logger = Logger(label: "polyglot.dev.kafka-bench")) {
        self.options = options
        self.logger = logger
    }

    /// Producer settings for throughput: large batches, a short linger, a deep local queue.
    public static let producerTuning: [String: String] = [
        "linger.ms": "5",
        "batch.num.messages": "100000",
        "batch.size": "8000000",
        "queue.buffering.max.messages": "1000000",
        "queue.buffering.max.kbytes": "1048576",
    ]

    /// Consumer settings for throughput: big fetches kept ahead of the application.
    public static let consumerTuning: [String: String] = [
        "fetch.wait.max.ms": "10",
        "fetch.min.bytes": "1",
        "max.partition.fetch.bytes": "4194304",
        "fetch.max.bytes": "67108864",
        "queued.min.messages": "200000",
        "queued.max.messages.kbytes": "262144",
        "auto.offset.reset": "earliest",
    ]

    /// Runs both phases on a dedicated thread (every call in them blocks).
    public func run() async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            DedicatedThread.detach(name: "kafka-bench") {
                continuation.resume(with: Swift.Result { try self.runBlocking() })
            }
        }
    }

    func runBlocking() throws -> Result {
        var mock: MockCluster? = nil
        defer { mock?.destroy() }
        let bootstrap: String
        var topic = "polyglot-bench-\(UUID().uuidString.prefix(8).lowercased())"
        var partitions = options.partitions
        if let servers = options.bootstrapServers {
            bootstrap = servers
            let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: servers).merging(options.overrides), logger: logger)
            defer { admin.close() }
            if let existing = options.topic {
                topic = existing
                guard let count = try admin.partitionCounts([existing])[existing] else {
                    throw KafkaError(code: -1, name: "BENCH", message: "topic \(existing) does not exist")
                }
                partitions = count
            } else {
                try admin.createTopics([KafkaTopicSpecification(name: topic, partitions: options.partitions)])
            }
        } else {
            let cluster = try MockCluster(brokers: options.brokers, logger: logger)
            mock = cluster
            bootstrap = cluster.bootstrapServers
            try cluster.createTopic(topic, partitions: options.partitions)
        }
        let base = KafkaConfiguration(bootstrapServers: bootstrap)
        // Read only what this run writes.
        let starts = try { () throws -> [KafkaTopicPartitionOffset] in
            let probe = try KafkaConsumer(configuration: base.merging(options.overrides), logger: logger)
            defer { probe.close() }
            return try (0..<partitions).map { p in
                KafkaTopicPartitionOffset(topic, Int32(p), offset: try probe.queryWatermarks(KafkaTopicPartition(topic, Int32(p)), timeout: .seconds(10)).high)
            }
        }()

        // Records shaped like the pipeline's input: a card id key and a fixed-size value.
        let value = [UInt8](repeating: UInt8(ascii: "x"), count: options.valueSize)
        let keys = (0..<1000).map { Array("card-\($0)".utf8) }
        let producer = try KafkaProducer(
            configuration: base.merging(KafkaConfiguration(Self.producerTuning)).merging(options.overrides), logger: logger)
        let produceStart = ContinuousClock.now
        for i in 0..<options.records {
            try producer.produce(topic: topic, key: keys[i % keys.count], value: value, blockIfQueueFull: true)
        }
        try producer.flush(timeout: .seconds(120))
        let produceTime = ContinuousClock.now - produceStart
        let counts = producer.deliveryCounts
        producer.close()
        guard counts.delivered == options.records, counts.failed == 0 else {
            throw KafkaError(code: -1, name: "BENCH", message: "delivered \(counts.delivered), failed \(counts.failed): \(counts.failures.first.map { "\($0)" } ?? "")")
        }

        let consumer = try KafkaConsumer(
            configuration: base.merging(KafkaConfiguration(Self.consumerTuning)).merging(options.overrides), logger: logger)
        defer { consumer.close() }
        let consumeStart = ContinuousClock.now
        try consumer.assign(starts)
        var seen = 0
        var bytes = 0
        let deadline = ContinuousClock.now + .seconds(120)
        while seen < options.records {
            guard ContinuousClock.now < deadline else {
                throw KafkaError(code: -1, name: "BENCH", message: "consumed only \(seen) of \(options.records) records")
            }
            for message in try consumer.poll(maxMessages: 10_000, timeout: .milliseconds(100)) {
                seen += 1
                bytes += (message.key?.count ?? 0) + (message.value?.count ?? 0)
            }
        }
        let consumeTime = ContinuousClock.now - consumeStart

        // Again with a fresh consumer, lending records instead of copying them.
        let borrower = try KafkaConsumer(
            configuration: base.merging(KafkaConfiguration(Self.consumerTuning)).merging(options.overrides), logger: logger)
        defer { borrower.close() }
        let borrowStart = ContinuousClock.now
        try borrower.assign(starts)
        var lent = 0
        var lentBytes = 0
        while lent < options.records {
            guard ContinuousClock.now < deadline + .seconds(120) else {
                throw KafkaError(code: -1, name: "BENCH", message: "borrowed only \(lent) of \(options.records) records")
            }
            lent += try borrower.pollBorrowing(maxMessages: 10_000, timeout: .milliseconds(100)) { m in
                lentBytes += (m.key?.count ?? 0) + (m.value?.count ?? 0)
            }
        }
        let borrowTime = ContinuousClock.now - borrowStart
        guard lentBytes == bytes else {
            throw KafkaError(code: -1, name: "BENCH", message: "borrowed \(lentBytes) bytes, copied \(bytes)")
        }
        return Result(records: seen, bytes: bytes, produceSeconds: produceTime.inSeconds, consumeSeconds: consumeTime.inSeconds,
                      borrowingConsumeSeconds: borrowTime.inSeconds)
    }
}
