import Foundation
import Logging
import PolyglotSupport
import FraudModel
import KafkaClient
import Observability
import StreamEngine

/// The settings of `polyglot produce` as given on the command line (nil: not given), resolved
/// through the same settings file, environment and `-X` layers as `process`
/// (``ProcessorSettings``), so one settings file serves both.
public struct InputLoaderSettings: Sendable {
    /// The JSONL file to load; `-` is stdin.
    public var input: String
    public var bootstrapServers: String?
    public var inputTopic: String?
    /// `murmur2` (the default) or `crc32`: must be the processor's.
    public var partitioner: String?
    public var connectTimeout: String?
    /// `-X key=value` librdkafka properties (after those from the settings file and `POLYGLOT_KAFKA_PROPERTIES`).
    public var kafkaProperties: [String] = []
    /// A settings file of `NAME=value` lines (see ``ProcessorSettings/readFile(_:)``).
    public var configFile: String?

    public init(input: String) {
        self.input = input
    }

    /// Environment variables read, for `--help`.
    public static let environmentHelp = Setting.environmentHelp(for: .produce)

    /// Resolves and validates; a bad setting gives a one-line ``ConfigurationError``.
    public func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> InputLoaderConfiguration {
        try resolve(layers: SettingsLayers(configFile: configFile, environment: environment))
    }

    /// Resolves over settings already read (the file is read once per start); ``configFile``
    /// is not read again.
    public func resolve(layers: SettingsLayers) throws(ConfigurationError) -> InputLoaderConfiguration {
        let kafka = try layers.kafka(properties: kafkaProperties, bootstrapServers: bootstrapServers)
        guard let servers = kafka.bootstrapServers, !servers.isEmpty else {
            throw ConfigurationError("no Kafka bootstrap servers: set --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS")
        }
        if kafka["transactional.id"] != nil {
            throw ConfigurationError("-X transactional.id: produce writes with an idempotent producer, outside transactions")
        }
        let topic = layers.inputTopic(inputTopic)
        guard !topic.isEmpty else { throw ConfigurationError("the input topic name is empty") }
        return InputLoaderConfiguration(input: input, kafka: kafka, topic: topic, partitioner: try layers.partitioner(partitioner),
                                        connectTimeout: try layers.connectTimeout(connectTimeout))
    }
}

/// What ``InputLoader`` loads, where to, and how it places records.
public struct InputLoaderConfiguration: Sendable {
    /// The JSONL file; `-` is stdin.
    public var input: String
    public var kafka: KafkaConfiguration
    public var topic: String
    public var partitioner: KafkaPartitioner
    /// How long start-up waits for the cluster's metadata.
    public var connectTimeout: Duration

    public init(input: String, kafka: KafkaConfiguration, topic: String = PipelineNames.inputTopic,
                partitioner: KafkaPartitioner = .murmur2, connectTimeout: Duration = .seconds(15)) {
        self.input = input
        self.kafka = kafka
        self.topic = topic
        self.partitioner = partitioner
        self.connectTimeout = connectTimeout
    }
}

/// Counts of one load, for the one-line summary.
public struct InputLoadSummary: Sendable, Equatable {
    public var topic = ""
    public var partitions = 0
    /// Records delivered: one per line that is not blank.
    public var records = 0
    /// Records keyed by their card id, on the card's partition.
    public var keyed = 0
    /// Records with no readable card id, placed by librdkafka.
    public var unkeyed = 0
    /// Blank lines, skipped as replay skips them.
    public var blankLines = 0
    /// Lines over ``TransactionDecoder/maxRecordBytes``, not sent.
    public var oversizeLines = 0
    /// From the first line read to the last delivery report.
    public var seconds = 0.0

    /// `produce: 500000 records to financial-transactions (32 partitions) in 1.52 s (328947 records/s): 499000 keyed, 1000 unkeyed`.
    public var line: String {
        let rate = seconds > 0 ? Int((Double(records) / seconds).rounded()) : records
        var s = "produce: \(records) records to \(topic) (\(partitions) partitions) in \(ReplaySummary.format(seconds)) s (\(rate) records/s): \(keyed) keyed, \(unkeyed) unkeyed"
        if blankLines > 0 { s += ", \(blankLines) blank line\(blankLines == 1 ? "" : "s") skipped" }
        if oversizeLines > 0 {
            s += ", \(oversizeLines) line\(oversizeLines == 1 ? "" : "s") over \(TransactionDecoder.maxRecordBytes) bytes not sent"
        }
        return s
    }
}

/// A failed load; its description is one line.
public struct InputLoaderError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        /// The input could not be opened or read.
        case input
        /// The cluster did not answer within the connect timeout.
        case unreachable
        /// The topic does not exist.
        case missingTopic = "missing_topic"
        /// A record was refused or not delivered.
        case delivery
        /// Any other Kafka failure.
        case kafka
    }

    public let code: Code
    public let message: String
    public var description: String { message }

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
}

/// `polyglot produce`: a JSONL file into the input topic, each record explicitly on the
/// partition the processor computes for its card (``KafkaPartitioner`` over the topic's
/// partition count), so `process` never moves it through the repartition topic.
///
/// A record's key is its card id as the processor's decoder reads it (``TransactionDecoder/cardKey(of:into:)``);
/// a line with no readable card id is sent without a key and placed by librdkafka. Each
/// line's bytes are sent as they are, without its line ending (LF or CRLF). One thread reads,
/// decodes and queues; librdkafka's own threads batch and send.
public struct InputLoader: Sendable {
    public let configuration: InputLoaderConfiguration
    private let logger: Logger

    /// `logger` gets the producer's and librdkafka's lines.
    public init(configuration: InputLoaderConfiguration, logger: Logger = Logger(label: "polyglot.produce")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Producer settings for a bulk load, under the user's `-X`: large batches (the dev broker
    /// finds a fetch offset by walking a partition's batches, so many small ones slow every later
    /// read of the topic), a linger long enough to fill them, and a deep local queue.
    public static let producerTuning: [String: String] = [
        "linger.ms": "50",
        "batch.num.messages": "100000",
        "batch.size": "1000000",
        "queue.buffering.max.messages": "1000000",
        "queue.buffering.max.kbytes": "1048576",
        // A record of up to 1 MiB (SEMANTICS.md's limit) plus its framing.
        "message.max.bytes": "1049600",
    ]

    /// Runs ``run()`` on a thread of its own (every call in it blocks), bridged to async.
    public func runOnDedicatedThread() async throws(InputLoaderError) -> InputLoadSummary {
        let result: Result<InputLoadSummary, InputLoaderError> = await withCheckedContinuation { continuation in
            DedicatedThread.detach(name: "polyglot-produce") {
                continuation.resume(returning: Result { () throws(InputLoaderError) in try self.run() })
            }
        }
        return try result.get()
    }

    /// Blocking: the whole load, flushed. Call on a dedicated thread.
    public func run() throws(InputLoaderError) -> InputLoadSummary {
        let c = configuration
        // The input first: a missing file fails at once, whatever the cluster.
        let input: FileStream
        do { input = try FileStream.openForReading(c.input) } catch { throw InputLoaderError(.input, error.description) }
        defer { try? input.close() }

        var kafka = c.kafka
        for (key, value) in Self.producerTuning { kafka.setDefault(key, value) }
        // Records without a key are placed by the same family of partitioner (at random).
        kafka.setDefault("partitioner", c.partitioner.librdkafkaName)
        let producer: KafkaProducer
        do { producer = try KafkaProducer(configuration: kafka, logger: logger) } catch { throw InputLoaderError(.kafka, "Kafka: \(error.message)") }
        defer { producer.close(flushTimeout: .zero) }

        let partitions = try Self.partitionCount(of: c.topic, producer: producer, kafka: kafka, timeout: c.connectTimeout)
        let topic: KafkaProducerTopic
        do { topic = try producer.topic(c.topic) } catch { throw InputLoaderError(.kafka, "Kafka: \(error.message)") }

        var summary = InputLoadSummary()
        summary.topic = c.topic
        summary.partitions = partitions
        let clock = ContinuousClock()
        let started = clock.now
        var decoder = TransactionDecoder()
        var key: [UInt8] = []
        key.reserveCapacity(TransactionDecoder.maxIdBytes)
        let count = Int32(partitions)
        let partitioner = c.partitioner
        let maxBytes = TransactionDecoder.maxRecordBytes
        do throws(LineReaderError<InputLoaderError>) {
            try LineReader(stream: input, maxLineBytes: TransactionDecoder.maxRecordBytes).forEachLine { (line, number, fullLength, _) throws(InputLoaderError) in
                if Replay.isBlank(line) {
                    summary.blankLines += 1
                    return
                }
                if fullLength > maxBytes {
                    summary.oversizeLines += 1
                    return
                }
                // A CRLF line ending is the line's end, not its content.
                let record = line.last == 0x0D ? UnsafeRawBufferPointer(rebasing: line[..<(line.count - 1)]) : line
                do throws(KafkaError) {
                    if decoder.cardKey(of: record, into: &key).hasKey {
                        try key.withUnsafeBufferPointer { k in
                            Result { () throws(KafkaError) in
                                try producer.produce(to: topic, partition: partitioner.partition(of: k, count: count),
                                                     key: UnsafeRawBufferPointer(k), value: record,
                                                     headers: KafkaRecordHeaders(), blockIfQueueFull: true)
                            }
                        }.get()
                        summary.keyed += 1
                    } else {
                        try producer.produce(to: topic, key: nil, value: record, headers: KafkaRecordHeaders(), blockIfQueueFull: true)
                        summary.unkeyed += 1
                    }
                } catch {
                    throw InputLoaderError(.delivery, "line \(number) not sent: \(error.message)")
                }
                // A failed delivery ends the load early: the rest would most likely fail alike.
                if number & 0xFFF == 0, producer.deliveryCounts.failed > 0 {
                    throw Self.deliveryFailure(producer.deliveryCounts, sent: summary.keyed + summary.unkeyed)
                }
            }
        } catch {
            switch error {
            case .io(let e): throw InputLoaderError(.input, e.description)
            case .body(let e): throw e
            }
        }
        let sent = summary.keyed + summary.unkeyed
        // librdkafka's message.timeout.ms bounds how long a record can stay undelivered.
        while producer.outstanding > 0 {
            if producer.deliveryCounts.failed > 0 { break }
            if let fatal = producer.fatalError { throw InputLoaderError(.delivery, "Kafka: \(fatal.message)") }
            try? producer.flush(timeout: .milliseconds(500))
        }
        let counts = producer.deliveryCounts
        guard counts.failed == 0, counts.delivered == sent else {
            throw Self.deliveryFailure(counts, sent: sent)
        }
        summary.records = sent
        summary.seconds = (clock.now - started).inSeconds
        return summary
    }

    static func deliveryFailure(_ counts: KafkaDeliveryCounts, sent: Int) -> InputLoaderError {
        let reason = counts.failures.first.map { ": \($0.name): \($0.message)" } ?? ""
        return InputLoaderError(.delivery, "\(counts.failed) of \(sent) records sent were not delivered\(reason)")
    }

    /// The topic's partition count from metadata, asked in short slices until `timeout`.
    static func partitionCount(of topic: String, producer: KafkaProducer, kafka: KafkaConfiguration,
                               timeout: Duration) throws(InputLoaderError) -> Int {
        let counts: [String: Int]
        do throws(ClusterWaitFailure) {
            counts = try ClusterWait.partitionCounts(timeout: timeout, authenticationFailure: { producer.authenticationFailure }) {
                (slice) throws(KafkaError) in try producer.partitionCounts([topic], timeout: slice)
            }
        } catch {
            switch error {
            case .stopped:  // nothing here asks it to stop
                throw InputLoaderError(.kafka, "stopped before Kafka answered")
            case .authentication(let reason): throw InputLoaderError(.kafka, "authentication failed: \(reason)")
            case .failed(let failure): throw InputLoaderError(.kafka, "Kafka: \(failure.message)")
            case .unreachable(let failure):
                throw InputLoaderError(.unreachable, ClusterWaitFailure.unreachableMessage(failure, kafka: kafka, timeout: timeout))
            }
        }
        guard let count = counts[topic], count > 0 else {
            throw InputLoaderError(.missingTopic, "topic '\(topic)' does not exist at \(kafka.bootstrapServers ?? "(no servers)"); create it, or give --input-topic")
        }
        return count
    }
}
