import Foundation
import Logging
import ServiceLifecycle
import PolyglotSupport
import KafkaClient

/// Settings of `polyglot dev broker`.
public struct DevBrokerOptions: Sendable, Hashable {
    public var brokers: Int
    public var partitions: Int
    /// Where to write the bootstrap list once the broker is ready (atomically).
    public var bootstrapFile: String?
    /// The application id whose internal topics are created.
    public var applicationID: String

    public init(brokers: Int = 1, partitions: Int = 6, bootstrapFile: String? = nil,
                applicationID: String = PipelineNames.applicationID) {
        self.brokers = brokers
        self.partitions = partitions
        self.bootstrapFile = bootstrapFile
        self.applicationID = applicationID
    }

    /// Every topic the pipeline uses with the default names (``PipelineNames/allTopics(applicationID:)``),
    /// created at start. The mock cluster has no admin API: the internal topics of other
    /// application ids and groups are created when a role asks (``MockTopicRequests``).
    public var topics: [String] { PipelineNames.allTopics(applicationID: applicationID) }

    /// Checks the numbers; the message is one line for the operator.
    public func validate() throws(ConfigurationError) {
        guard (1...32).contains(brokers) else { throw ConfigurationError("--brokers must be between 1 and 32 (got \(brokers))") }
        guard (1...10_000).contains(partitions) else {
            throw ConfigurationError("--partitions must be between 1 and 10000 (got \(partitions))")
        }
        if let bootstrapFile, bootstrapFile.isEmpty { throw ConfigurationError("--bootstrap-file must not be empty") }
    }
}

/// librdkafka's mock cluster as a service: starts it, creates the pipeline's topics, serves the
/// topic requests of roles with other application ids or groups, announces the bootstrap list, and runs until graceful shutdown (then destroys the cluster and removes the
/// bootstrap file so no reader connects to a dead broker).
public struct DevBrokerService: Service {
    public let options: DevBrokerOptions
    private let logger: Logger
    private let onReady: @Sendable (String) -> Void

    /// - Parameter onReady: called once with the bootstrap list, after the topics exist and the
    ///   bootstrap file is written.
    public init(options: DevBrokerOptions, logger: Logger = Logger(label: "polyglot.dev.broker"),
                onReady: @escaping @Sendable (String) -> Void = { _ in }) {
        self.options = options
        self.logger = logger
        self.onReady = onReady
    }

    public func run() async throws {
        try options.validate()
        let cluster = try MockCluster(brokers: options.brokers, logger: logger)
        defer { cluster.destroy() }
        for topic in options.topics {
            try cluster.createTopic(topic, partitions: options.partitions)
        }
        // The internal topics of any other application id or auditor group are created when
        // the role asks for them, with its input's partition count.
        let topicRequests = try MockTopicRequestServer(cluster: cluster, logger: logger)
        defer { topicRequests.stop() }
        if let path = options.bootstrapFile {
            try Self.writeAtomically(cluster.bootstrapServers + "\n", to: path)
        }
        logger.info("dev broker ready", metadata: [
            "bootstrap": "\(cluster.bootstrapServers)", "brokers": .number(options.brokers),
            "partitions": .number(options.partitions), "topics": "\(options.topics.joined(separator: ","))",
        ])
        onReady(cluster.bootstrapServers)
        // Returns on graceful shutdown (SIGINT/SIGTERM through the service group) or cancellation.
        try? await gracefulShutdown()
        if let path = options.bootstrapFile {
            try? FileManager.default.removeItem(atPath: path)
        }
        logger.info("dev broker stopped")
    }

    /// Writes a temporary file beside `path`, then renames it: readers see no file or the whole one.
    static func writeAtomically(_ text: String, to path: String) throws(FileIOError) {
        let stream = try FileStream.openForWriting(path)
        try stream.write(Array(text.utf8))
        try stream.close()
    }
}
