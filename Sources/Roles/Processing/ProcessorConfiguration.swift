import Crypto
import Foundation
import PolyglotSupport
import FraudModel
import KafkaClient
import StateStore
import StreamEngine

extension RuntimeConfiguration {
    /// The runtime settings of a role configured like the processor: the group is its
    /// application id, its stores live in `<state directory>/<application id>`, and its
    /// transactional id is `<application id>-<instance id>`.
    public init(role c: ProcessorConfiguration) {
        self.init(kafka: c.kafka, groupID: c.applicationID,
                  stateDirectory: URL(fileURLWithPath: c.stateDirectory).appendingPathComponent(c.applicationID).path,
                  guarantee: c.guarantee, commitInterval: c.commitInterval, untilEnd: c.untilEnd,
                  transactionalID: Self.transactionalID(c), connectTimeout: c.connectTimeout,
                  maxRecordsPerTransaction: c.maxRecordsPerTransaction)
        restoreStallLimit = c.restoreStallLimit
        streamThreads = c.streamThreads
    }

    static func transactionalID(_ c: ProcessorConfiguration) -> String {
        if let id = c.instanceID { return "\(c.applicationID)-\(id)" }
        let path = URL(fileURLWithPath: c.stateDirectory).standardizedFileURL.path
        let digest = SHA256.hash(data: Data("\(ProcessInfo.processInfo.hostName)\n\(path)".utf8))
        return "\(c.applicationID)-" + digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }
}

/// Everything `polyglot process` needs, already validated.
public struct ProcessorConfiguration: Sendable {
    /// librdkafka properties shared by every client (bootstrap servers, SASL, SSL, `-X` ones).
    public var kafka: KafkaConfiguration
    /// The consumer group id, and the prefix of the internal topics.
    public var applicationID: String
    public var inputTopic: String
    public var outputTopic: String
    public var deadLetterTopic: String
    /// Root of the task stores: one directory per input partition below it.
    public var stateDirectory: String
    public var guarantee: ProcessingGuarantee
    /// How often the open transaction commits.
    public var commitInterval: Duration
    public var parameters: DetectorParameters
    /// Hex SHA-256 of the environment fingerprint, sent in `polyglot-fingerprint`.
    public var fingerprintDigest: String
    /// Stop after reaching the input's end offsets seen at start.
    public var untilEnd: Bool
    /// Identifies this instance's transactional producer; stable across restarts of the same
    /// instance so a restart fences its predecessor. ``ProcessorSettings/resolve(environment:)``
    /// always sets it (``StateDirectory`` keeps it).
    public var instanceID: String?
    /// Tuning of the window stores.
    public var storeOptions: SQLiteWindowStore.Options
    /// The rule that says which partition a card belongs to; a record read elsewhere goes
    /// through the repartition topic first.
    public var partitioner: KafkaPartitioner
    /// How long start-up waits for the cluster to answer.
    public var connectTimeout: Duration
    /// A transaction commits once it holds this many records, before its interval is up.
    public var maxRecordsPerTransaction = 50_000
    /// How long a restore may go without advancing before it reports why it waits
    /// (``RuntimeConfiguration/restoreStallLimit``).
    public var restoreStallLimit: Duration = .seconds(30)
    /// Stream threads of this instance (``StreamThreadGroup``).
    public var streamThreads = 1

    public init(kafka: KafkaConfiguration,
                applicationID: String = PipelineNames.applicationID,
                inputTopic: String = PipelineNames.inputTopic,
                outputTopic: String = PipelineNames.outputTopic,
                deadLetterTopic: String = PipelineNames.deadLetterTopic,
                stateDirectory: String,
                guarantee: ProcessingGuarantee = .exactlyOnce,
                commitInterval: Duration = .milliseconds(100),
                parameters: DetectorParameters = .default,
                fingerprintDigest: String,
                untilEnd: Bool = false,
                instanceID: String? = nil,
                storeOptions: SQLiteWindowStore.Options = SQLiteWindowStore.Options(),
                partitioner: KafkaPartitioner = .murmur2,
                connectTimeout: Duration = .seconds(15)) {
        self.kafka = kafka
        self.applicationID = applicationID
        self.inputTopic = inputTopic
        self.outputTopic = outputTopic
        self.deadLetterTopic = deadLetterTopic
        self.stateDirectory = stateDirectory
        self.guarantee = guarantee
        self.commitInterval = commitInterval
        self.parameters = parameters
        self.fingerprintDigest = fingerprintDigest
        self.untilEnd = untilEnd
        self.instanceID = instanceID
        self.storeOptions = storeOptions
        self.partitioner = partitioner
        self.connectTimeout = connectTimeout
    }

    /// `<application-id>-windows-changelog`.
    public var changelogTopic: String { PipelineNames.windowsChangelog(applicationID: applicationID) }
    /// `<application-id>-repartition`.
    public var repartitionTopic: String { PipelineNames.repartitionTopic(group: applicationID) }

    /// Checks the settings; the message is one line for the operator.
    public func validate() throws(ConfigurationError) {
        guard let servers = kafka.bootstrapServers, !servers.isEmpty else {
            throw ConfigurationError("no Kafka bootstrap servers: set --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS")
        }
        guard !applicationID.isEmpty else { throw ConfigurationError("the application id must not be empty") }
        for (name, topic) in [("input", inputTopic), ("output", outputTopic), ("dead-letter", deadLetterTopic)] {
            guard Self.isValidTopicName(topic) else {
                throw ConfigurationError("invalid \(name) topic name '\(topic)' (1 to 249 of [a-zA-Z0-9._-])")
            }
        }
        guard Self.isValidTopicName(changelogTopic) else {
            throw ConfigurationError("application id '\(applicationID)' does not make a valid topic name")
        }
        guard Set([inputTopic, outputTopic, deadLetterTopic, changelogTopic, repartitionTopic]).count == 5 else {
            throw ConfigurationError("input, output, dead-letter and internal topics must all differ")
        }
        guard commitInterval > .zero, commitInterval <= .seconds(60) else {
            throw ConfigurationError("the commit interval must be between 1 ms and 60 s")
        }
        guard !stateDirectory.isEmpty else { throw ConfigurationError("the state directory must not be empty") }
        guard fingerprintDigest.utf8.count == 64, fingerprintDigest.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
            throw ConfigurationError("the environment fingerprint digest must be 64 lowercase hex digits")
        }
        if kafka["enable.auto.commit"] == "true" {
            throw ConfigurationError("enable.auto.commit=true is not allowed: offsets commit with the state")
        }
        guard connectTimeout > .zero else { throw ConfigurationError("the connect timeout must be more than 0") }
        guard (1...64).contains(streamThreads) else { throw ConfigurationError("stream threads must be between 1 and 64") }
        try RuntimeConfiguration.checkAssignmentStrategy(kafka)
    }

    static func isValidTopicName(_ name: String) -> Bool {
        (1...249).contains(name.utf8.count) && name != "." && name != ".."
            && name.utf8.allSatisfy { c in
                (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 48 && c <= 57) || c == 46 || c == 95 || c == 45
            }
    }
}
