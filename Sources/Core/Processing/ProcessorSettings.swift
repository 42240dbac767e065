import Crypto
import Foundation

/// The settings of `polyglot process` as given on the command line (nil: not given), resolved
/// over the environment: flags win over `KAFKA_BOOTSTRAP_SERVERS` and `POLYGLOT_*` variables,
/// which win over the defaults.
public struct ProcessorSettings: Sendable {
    public var bootstrapServers: String?
    public var applicationID: String?
    public var inputTopic: String?
    public var outputTopic: String?
    public var deadLetterTopic: String?
    public var stateDirectory: String?
    public var guarantee: String?
    public var commitInterval: String?
    public var instanceID: String?
    public var untilEnd: Bool = false
    /// `-X key=value` librdkafka properties (after those from `POLYGLOT_KAFKA_PROPERTIES`).
    public var kafkaProperties: [String] = []
    public var parameters: DetectorParameters = .default
    /// Hex SHA-256 of the environment fingerprint; nil derives one from the product and library versions.
    public var fingerprintDigest: String?

    public init() {}

    /// Environment variables read, for `--help`.
    public static let environmentHelp = """
        KAFKA_BOOTSTRAP_SERVERS, POLYGLOT_APPLICATION_ID, POLYGLOT_INPUT_TOPIC, POLYGLOT_OUTPUT_TOPIC, \
        POLYGLOT_DLQ_TOPIC, POLYGLOT_STATE_DIR, POLYGLOT_GUARANTEE, POLYGLOT_COMMIT_INTERVAL, \
        POLYGLOT_INSTANCE_ID, POLYGLOT_UNTIL_END (1/true), POLYGLOT_KAFKA_PROPERTIES (key=value pairs \
        separated by newlines or ';'), POLYGLOT_FINGERPRINT_DIGEST
        """

    /// Resolves and validates; a bad setting gives a one-line ``ConfigurationError``.
    public func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> ProcessorConfiguration {
        func pick(_ flag: String?, _ variable: String) -> String? {
            if let flag { return flag }
            if let value = environment[variable], !value.isEmpty { return value }
            return nil
        }
        var kafka = KafkaConfiguration()
        if let env = environment["POLYGLOT_KAFKA_PROPERTIES"] {
            let pairs = env.split(whereSeparator: { $0 == "\n" || $0 == ";" }).map(String.init).filter { !$0.allSatisfy(\.isWhitespace) }
            do { try kafka.apply(overrides: pairs) } catch {
                throw ConfigurationError("POLYGLOT_KAFKA_PROPERTIES: \(error.message)")
            }
        }
        try kafka.apply(overrides: kafkaProperties)
        if let servers = pick(bootstrapServers, "KAFKA_BOOTSTRAP_SERVERS") { kafka.set("bootstrap.servers", servers) }

        let guaranteeText = pick(guarantee, "POLYGLOT_GUARANTEE") ?? ProcessingGuarantee.exactlyOnce.rawValue
        guard let guaranteeValue = ProcessingGuarantee(rawValue: guaranteeText) else {
            throw ConfigurationError("guarantee '\(guaranteeText)' is not one of exactly-once, at-least-once")
        }
        let intervalMs = try Durations.milliseconds(pick(commitInterval, "POLYGLOT_COMMIT_INTERVAL") ?? "100ms", setting: "commit interval")
        let untilEndValue = untilEnd || ["1", "true", "yes"].contains(environment["POLYGLOT_UNTIL_END"]?.lowercased() ?? "")
        let digest = pick(fingerprintDigest, "POLYGLOT_FINGERPRINT_DIGEST") ?? Self.versionsDigest()

        let configuration = ProcessorConfiguration(
            kafka: kafka,
            applicationID: pick(applicationID, "POLYGLOT_APPLICATION_ID") ?? DevBrokerOptions.defaultApplicationID,
            inputTopic: pick(inputTopic, "POLYGLOT_INPUT_TOPIC") ?? DevBrokerOptions.inputTopic,
            outputTopic: pick(outputTopic, "POLYGLOT_OUTPUT_TOPIC") ?? DevBrokerOptions.outputTopic,
            deadLetterTopic: pick(deadLetterTopic, "POLYGLOT_DLQ_TOPIC") ?? DevBrokerOptions.deadLetterTopic,
            stateDirectory: pick(stateDirectory, "POLYGLOT_STATE_DIR") ?? "state",
            guarantee: guaranteeValue,
            commitInterval: .milliseconds(intervalMs),
            parameters: parameters,
            fingerprintDigest: digest,
            untilEnd: untilEndValue,
            instanceID: pick(instanceID, "POLYGLOT_INSTANCE_ID"))
        try configuration.validate()
        return configuration
    }

    /// SHA-256 of the product and library versions: the part of the environment fingerprint this
    /// process can always compute.
    static func versionsDigest() -> String {
        SHA256.hash(data: Data(ProductVersion.description.utf8)).map { String(format: "%02x", $0) }.joined()
    }
}
