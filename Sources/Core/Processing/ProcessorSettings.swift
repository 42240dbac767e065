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
    /// `murmur2` (Java's, the default) or `crc32` (librdkafka's): which partition a card belongs to.
    public var partitioner: String?
    /// How long start-up waits for the cluster (a duration).
    public var connectTimeout: String?
    /// `-X key=value` librdkafka properties (after those from `POLYGLOT_KAFKA_PROPERTIES`).
    public var kafkaProperties: [String] = []
    /// Detector parameters as durations (`60s`) and a count; nil: environment, file or default.
    public var window: String?
    public var threshold: String?
    public var grace: String?
    public var retention: String?
    public var maxFutureSkew: String?
    /// A settings file of `NAME=value` lines using the environment variables' names (`#` starts
    /// a comment line); the lowest layer.
    public var configFile: String?
    /// Hex SHA-256 of the environment fingerprint, for tests; nil (the command line) computes
    /// the running environment's.
    public var fingerprintDigest: String?

    public init() {}

    /// Environment variables read, for `--help`.
    public static let environmentHelp = """
        KAFKA_BOOTSTRAP_SERVERS, POLYGLOT_APPLICATION_ID, POLYGLOT_INPUT_TOPIC, POLYGLOT_OUTPUT_TOPIC, \
        POLYGLOT_DLQ_TOPIC, POLYGLOT_STATE_DIR, POLYGLOT_GUARANTEE, POLYGLOT_COMMIT_INTERVAL, \
        POLYGLOT_INSTANCE_ID, POLYGLOT_UNTIL_END (1/true), POLYGLOT_KAFKA_PROPERTIES (key=value pairs \
        separated by newlines, or by ';' before a property name), POLYGLOT_WINDOW, POLYGLOT_THRESHOLD, POLYGLOT_GRACE, POLYGLOT_RETENTION, \
        POLYGLOT_MAX_FUTURE_SKEW, POLYGLOT_PARTITIONER, POLYGLOT_CONNECT_TIMEOUT, \(ObservabilitySettings.environmentHelp), \
        POLYGLOT_CONFIG (the settings file)
        """

    /// Reads a settings file: `NAME=value` per line (LF, CRLF or CR; a leading UTF-8 byte order
    /// mark is skipped), blank lines and `#` comments ignored. Unknown names are an error (a typo
    /// must not be silently ignored).
    public static func readFile(_ path: String) throws(ConfigurationError) -> [String: String] {
        let bytes: [UInt8]
        do {
            bytes = try FileStream.readAll(path)
        } catch {
            throw ConfigurationError("settings file: \(error.description)")
        }
        guard var text = String(validating: bytes, as: UTF8.self) else {
            throw ConfigurationError("settings file \(path) is not UTF-8 text")
        }
        if text.hasPrefix("\u{FEFF}") { text.removeFirst() }
        var values: [String: String] = [:]
        // A Character is a whole grapheme, so "\r\n" is one newline here, as are "\n" and "\r".
        for (index, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let eq = line.firstIndex(of: "=") else {
                throw ConfigurationError("\(path):\(index + 1): expected NAME=value")
            }
            let name = line[..<eq].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            guard knownNames.contains(name) else {
                throw ConfigurationError("\(path):\(index + 1): unknown setting \(name)")
            }
            if name == "POLYGLOT_KAFKA_PROPERTIES", let previous = values[name] {
                values[name] = previous + "\n" + value
            } else {
                values[name] = value
            }
        }
        return values
    }

    static let knownNames: Set<String> = Set([
        "KAFKA_BOOTSTRAP_SERVERS", "POLYGLOT_APPLICATION_ID", "POLYGLOT_INPUT_TOPIC", "POLYGLOT_OUTPUT_TOPIC",
        "POLYGLOT_DLQ_TOPIC", "POLYGLOT_STATE_DIR", "POLYGLOT_GUARANTEE", "POLYGLOT_COMMIT_INTERVAL",
        "POLYGLOT_INSTANCE_ID", "POLYGLOT_UNTIL_END", "POLYGLOT_KAFKA_PROPERTIES", "POLYGLOT_WINDOW",
        "POLYGLOT_THRESHOLD", "POLYGLOT_GRACE", "POLYGLOT_RETENTION", "POLYGLOT_MAX_FUTURE_SKEW",
        "POLYGLOT_PARTITIONER", "POLYGLOT_CONNECT_TIMEOUT",
        // The auditor's own (AuditorSettings).
        "POLYGLOT_AUDIT_GROUP", "POLYGLOT_AUDIT_FINDINGS_TOPIC", "POLYGLOT_AUDIT_SETTLE", "POLYGLOT_AUDIT_HIGH_VALUE",
    ]).union(ObservabilitySettings.knownNames)

    /// The detector's parameters from the flags over `environment` (already merged with the
    /// settings file, as ``mergedEnvironment(_:)`` gives it) over the defaults.
    public func detectorParameters(environment: [String: String]) throws(ConfigurationError) -> DetectorParameters {
        func pick(_ flag: String?, _ variable: String) -> String? {
            if let flag { return flag }
            if let value = environment[variable], !value.isEmpty { return value }
            return nil
        }
        func milliseconds(_ flag: String?, _ variable: String, _ option: String, _ fallback: Int64) throws(ConfigurationError) -> Int64 {
            guard let text = pick(flag, variable) else { return fallback }
            return try Durations.milliseconds(text, setting: flag != nil ? option : variable)
        }
        let d = DetectorParameters.default
        let thresholdText = pick(threshold, "POLYGLOT_THRESHOLD")
        let thresholdValue: Int64
        if let thresholdText {
            guard let n = Int64(thresholdText.trimmingCharacters(in: .whitespaces)) else {
                throw ConfigurationError("\(threshold != nil ? "--threshold" : "POLYGLOT_THRESHOLD"): '\(thresholdText)' is not an integer")
            }
            thresholdValue = n
        } else {
            thresholdValue = d.threshold
        }
        let parameters = try DetectorParameters(
            window: milliseconds(window, "POLYGLOT_WINDOW", "--window", d.window),
            threshold: thresholdValue,
            grace: milliseconds(grace, "POLYGLOT_GRACE", "--grace", d.grace),
            retention: milliseconds(retention, "POLYGLOT_RETENTION", "--retention", d.retention),
            maxFutureSkew: milliseconds(maxFutureSkew, "POLYGLOT_MAX_FUTURE_SKEW", "--max-future-skew", d.maxFutureSkew))
        return parameters
    }

    /// `environment` over the settings file (``configFile`` or `POLYGLOT_CONFIG`), when there is one.
    public func mergedEnvironment(_ environment: [String: String]) throws(ConfigurationError) -> [String: String] {
        guard let path = configFile ?? environment["POLYGLOT_CONFIG"].flatMap({ $0.isEmpty ? nil : $0 }) else { return environment }
        return try Self.readFile(path).merging(environment) { _, env in env }
    }

    /// Resolves and validates; a bad setting gives a one-line ``ConfigurationError``.
    public func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> ProcessorConfiguration {
        let layers = try SettingsLayers(configFile: configFile, environment: environment)
        let environment = layers.environment
        func pick(_ flag: String?, _ variable: String) -> String? { layers.pick(flag, variable) }
        let parameters = try detectorParameters(environment: environment)
        let kafka = try layers.kafka(properties: kafkaProperties, bootstrapServers: bootstrapServers)

        let guaranteeText = pick(guarantee, "POLYGLOT_GUARANTEE") ?? ProcessingGuarantee.exactlyOnce.rawValue
        guard let guaranteeValue = ProcessingGuarantee(rawValue: guaranteeText) else {
            throw ConfigurationError("guarantee '\(guaranteeText)' is not one of exactly-once, at-least-once")
        }
        let intervalMs = try Durations.milliseconds(pick(commitInterval, "POLYGLOT_COMMIT_INTERVAL") ?? "100ms", setting: "commit interval")
        let partitionerValue = try layers.partitioner(partitioner)
        let connectTimeoutValue = try layers.connectTimeout(connectTimeout)
        for property in RuntimeConfiguration.ownedProperties.keys.sorted() where kafka[property] != nil {
            throw ConfigurationError("-X \(property) is set by polyglot itself; use \(RuntimeConfiguration.ownedProperties[property]!) instead")
        }
        let untilEndValue = untilEnd || ["1", "true", "yes"].contains(environment["POLYGLOT_UNTIL_END"]?.lowercased() ?? "")
        // The header carries the real environment's digest, computed once at start-up (hashing
        // the binary takes a fraction of a second), so the auditor's drift check means something.
        let digest: String
        do {
            digest = try fingerprintDigest ?? EnvironmentFingerprint.current().digest
        } catch {
            throw ConfigurationError("cannot compute the environment fingerprint: \(error)")
        }

        // Absolute from here on: the path logged at start is the one used, whatever later
        // changes the working directory.
        let workingDirectory = FileManager.default.currentDirectoryPath
        let stateDirectoryValue = pick(stateDirectory, "POLYGLOT_STATE_DIR").map {
            StateDirectory.absolute($0, workingDirectory: workingDirectory)
        } ?? StateDirectory.defaultPath(environment: environment, workingDirectory: workingDirectory)
        // Flag, environment, then the id kept in the state directory, then a new one, which the
        // service keeps there at start: an instance's restarts share one transactional id, and
        // two instances never do, wherever they run.
        let instanceIDValue: String
        if let given = pick(instanceID, "POLYGLOT_INSTANCE_ID") {
            guard StateDirectory.isValidInstanceID(given) else {
                throw ConfigurationError("instance id '\(given)' must be 1 to 200 of [a-zA-Z0-9._-]")
            }
            instanceIDValue = given
        } else {
            instanceIDValue = try StateDirectory.storedInstanceID(in: stateDirectoryValue) ?? StateDirectory.newInstanceID()
        }

        let configuration = ProcessorConfiguration(
            kafka: kafka,
            applicationID: pick(applicationID, "POLYGLOT_APPLICATION_ID") ?? DevBrokerOptions.defaultApplicationID,
            inputTopic: layers.inputTopic(inputTopic),
            outputTopic: pick(outputTopic, "POLYGLOT_OUTPUT_TOPIC") ?? DevBrokerOptions.outputTopic,
            deadLetterTopic: pick(deadLetterTopic, "POLYGLOT_DLQ_TOPIC") ?? DevBrokerOptions.deadLetterTopic,
            stateDirectory: stateDirectoryValue,
            guarantee: guaranteeValue,
            commitInterval: .milliseconds(intervalMs),
            parameters: parameters,
            fingerprintDigest: digest,
            untilEnd: untilEndValue,
            instanceID: instanceIDValue,
            partitioner: partitionerValue,
            connectTimeout: connectTimeoutValue)
        try configuration.validate()
        return configuration
    }
}

/// The layers every Kafka command's settings resolve through: the settings file under the
/// environment under the flags, and librdkafka properties added up from the file, then
/// `POLYGLOT_KAFKA_PROPERTIES`, then `-X`, each later one winning per property.
struct SettingsLayers {
    /// The environment with the settings file's values under it.
    let environment: [String: String]
    private let kafkaLayers: [(source: String, text: String)]

    /// Reads the settings file (`configFile`, else `POLYGLOT_CONFIG`), if there is one.
    init(configFile: String?, environment: [String: String]) throws(ConfigurationError) {
        var environment = environment
        var kafkaLayers: [(source: String, text: String)] = []
        if let path = configFile ?? environment["POLYGLOT_CONFIG"].flatMap({ $0.isEmpty ? nil : $0 }) {
            let file = try ProcessorSettings.readFile(path)
            if let text = file["POLYGLOT_KAFKA_PROPERTIES"] { kafkaLayers.append((path, text)) }
            environment = file.merging(environment) { _, env in env }
        }
        if let text = environment["POLYGLOT_KAFKA_PROPERTIES"], kafkaLayers.last?.text != text {
            kafkaLayers.append(("POLYGLOT_KAFKA_PROPERTIES", text))
        }
        self.environment = environment
        self.kafkaLayers = kafkaLayers
    }

    /// The flag's value, else the variable's when it is set and not empty.
    func pick(_ flag: String?, _ variable: String) -> String? {
        if let flag { return flag }
        if let value = environment[variable], !value.isEmpty { return value }
        return nil
    }

    /// The librdkafka properties of every layer, `-X` `properties` last, and the bootstrap servers.
    func kafka(properties: [String], bootstrapServers: String?) throws(ConfigurationError) -> KafkaConfiguration {
        var kafka = KafkaConfiguration()
        for layer in kafkaLayers {
            do { try kafka.apply(overrides: KafkaConfiguration.splitPropertyList(layer.text)) } catch {
                throw ConfigurationError("\(layer.source): \(error.message)")
            }
        }
        try kafka.apply(overrides: properties)
        if let servers = pick(bootstrapServers, "KAFKA_BOOTSTRAP_SERVERS") { kafka.set("bootstrap.servers", servers) }
        return kafka
    }

    /// `--partitioner`, else `POLYGLOT_PARTITIONER`, else murmur2.
    func partitioner(_ flag: String?) throws(ConfigurationError) -> KafkaPartitioner {
        let text = pick(flag, "POLYGLOT_PARTITIONER") ?? KafkaPartitioner.murmur2.rawValue
        guard let value = KafkaPartitioner(rawValue: text) else {
            throw ConfigurationError("partitioner '\(text)' is not one of murmur2 (Java's, the default), crc32 (librdkafka's)")
        }
        return value
    }

    /// `--connect-timeout`, else `POLYGLOT_CONNECT_TIMEOUT`, else 15 s.
    func connectTimeout(_ flag: String?) throws(ConfigurationError) -> Duration {
        .milliseconds(try Durations.milliseconds(pick(flag, "POLYGLOT_CONNECT_TIMEOUT") ?? "15s", setting: "connect timeout"))
    }

    /// `--input-topic`, else `POLYGLOT_INPUT_TOPIC`, else financial-transactions.
    func inputTopic(_ flag: String?) -> String {
        pick(flag, "POLYGLOT_INPUT_TOPIC") ?? DevBrokerOptions.inputTopic
    }
}
