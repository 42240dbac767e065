import Foundation
import PolyglotSupport
import FraudModel
import KafkaClient
import StateStore
import StreamEngine

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
    /// A whole number; nil: environment, file, else the role's default.
    public var streamThreads: String?
    public var instanceID: String?
    public var untilEnd: Bool = false
    /// `murmur2` (Java's, the default) or `crc32` (librdkafka's): which partition a card belongs to.
    public var partitioner: String?
    /// How long start-up waits for the cluster (a duration).
    public var connectTimeout: String?
    /// `-X key=value` librdkafka properties (after those from `POLYGLOT_KAFKA_PROPERTIES`).
    public var kafkaProperties: [String] = []
    /// Detector parameters: the window kind, durations (`60s`) and a count; nil: environment,
    /// file or default.
    public var windowKind: String?
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
    public static let environmentHelp = Setting.environmentHelp(for: .process)

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
            guard Setting.fileNames.contains(name) else {
                throw ConfigurationError("\(path):\(index + 1): unknown setting \(name)")
            }
            if name == Setting.kafkaProperties.variable, let previous = values[name] {
                values[name] = previous + "\n" + value
            } else {
                values[name] = value
            }
        }
        return values
    }

    /// The detector's parameters from the flags over `environment` (already merged with the
    /// settings file, as ``SettingsLayers/environment`` holds it) over the defaults.
    public func detectorParameters(environment: [String: String]) throws(ConfigurationError) -> DetectorParameters {
        func pick(_ flag: String?, _ setting: Setting) -> String? { setting.pick(flag, in: environment)?.text }
        func milliseconds(_ flag: String?, _ setting: Setting, _ fallback: Int64) throws(ConfigurationError) -> Int64 {
            guard let text = pick(flag, setting) else { return fallback }
            return try Durations.milliseconds(text, setting: flag != nil ? setting.flag : setting.variable)
        }
        let d = DetectorParameters.default
        let thresholdText = pick(threshold, .threshold)
        let thresholdValue: Int64
        if let thresholdText {
            guard let n = Int64(thresholdText.trimmingCharacters(in: .whitespaces)) else {
                throw ConfigurationError("\(threshold != nil ? Setting.threshold.flag : Setting.threshold.variable): '\(thresholdText)' is not an integer")
            }
            thresholdValue = n
        } else {
            thresholdValue = d.threshold
        }
        let kindText = pick(windowKind, .windowKind)
        let kind = try kindText.map { (text) throws(ConfigurationError) in
            try WindowKind(parsing: text, setting: windowKind != nil ? Setting.windowKind.flag : Setting.windowKind.variable)
        } ?? d.kind
        let parameters = try DetectorParameters(
            kind: kind,
            window: milliseconds(window, .window, d.window),
            threshold: thresholdValue,
            grace: milliseconds(grace, .grace, d.grace),
            retention: milliseconds(retention, .retention, d.retention),
            maxFutureSkew: milliseconds(maxFutureSkew, .maxFutureSkew, d.maxFutureSkew))
        return parameters
    }

    /// Resolves and validates; a bad setting gives a one-line ``ConfigurationError``.
    public func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> ProcessorConfiguration {
        try resolve(layers: SettingsLayers(configFile: configFile, environment: environment))
    }

    /// Resolves over settings already read (the file is read once per start); ``configFile``
    /// is not read again.
    public func resolve(layers: SettingsLayers) throws(ConfigurationError) -> ProcessorConfiguration {
        let environment = layers.environment
        func pick(_ flag: String?, _ setting: Setting) -> String? { layers.pick(flag, setting) }
        let parameters = try detectorParameters(environment: environment)
        let kafka = try layers.kafka(properties: kafkaProperties, bootstrapServers: bootstrapServers,
                                     refusing: RuntimeConfiguration.ownedProperties)

        let guaranteeText = pick(guarantee, .guarantee) ?? Setting.guarantee.defaultText
        guard let guaranteeValue = ProcessingGuarantee(rawValue: guaranteeText) else {
            throw ConfigurationError("guarantee '\(guaranteeText)' is not one of exactly-once, at-least-once")
        }
        let intervalMs = try Durations.milliseconds(pick(commitInterval, .commitInterval) ?? Setting.commitInterval.defaultText, setting: "commit interval")
        let partitionerValue = try layers.partitioner(partitioner)
        let connectTimeoutValue = try layers.connectTimeout(connectTimeout)
        let threadsText = pick(streamThreads, .streamThreads)
        let threads = try threadsText.map { text throws(ConfigurationError) in
            guard let n = Int(text.trimmingCharacters(in: .whitespaces)), (1...64).contains(n) else {
                throw ConfigurationError("\(streamThreads != nil ? Setting.streamThreads.flag : Setting.streamThreads.variable) must be a whole number from 1 to 64, got '\(text)'")
            }
            return n
        }
        let untilEndValue = untilEnd || ["1", "true", "yes"].contains(environment[Setting.untilEnd.variable]?.lowercased() ?? "")
        // The header carries the real environment's digest, computed once per process (hashing
        // the binary takes a fraction of a second), so the auditor's drift check means something.
        let digest: String
        do {
            digest = try fingerprintDigest ?? EnvironmentFingerprint.runningDigest()
        } catch {
            throw ConfigurationError("cannot compute the environment fingerprint: \(error)")
        }

        // Absolute from here on: the path logged at start is the one used, whatever later
        // changes the working directory.
        let workingDirectory = FileManager.default.currentDirectoryPath
        let stateDirectoryValue = pick(stateDirectory, .stateDirectory).map {
            StateDirectory.absolute($0, workingDirectory: workingDirectory)
        } ?? StateDirectory.defaultPath(environment: environment, workingDirectory: workingDirectory)
        // Flag, environment, then the id kept in the state directory, then a new one, which the
        // service keeps there at start: an instance's restarts share one transactional id, and
        // two instances never do, wherever they run.
        let instanceIDValue: String
        if let given = pick(instanceID, .instanceID) {
            guard StateDirectory.isValidInstanceID(given) else {
                throw ConfigurationError("instance id '\(given)' must be 1 to 200 of [a-zA-Z0-9._-]")
            }
            instanceIDValue = given
        } else {
            instanceIDValue = try StateDirectory.storedInstanceID(in: stateDirectoryValue) ?? StateDirectory.newInstanceID()
        }

        var configuration = ProcessorConfiguration(
            kafka: kafka,
            applicationID: pick(applicationID, .applicationID) ?? Setting.applicationID.defaultText,
            inputTopic: layers.inputTopic(inputTopic),
            outputTopic: pick(outputTopic, .outputTopic) ?? Setting.outputTopic.defaultText,
            deadLetterTopic: pick(deadLetterTopic, .deadLetterTopic) ?? Setting.deadLetterTopic.defaultText,
            stateDirectory: stateDirectoryValue,
            guarantee: guaranteeValue,
            commitInterval: .milliseconds(intervalMs),
            parameters: parameters,
            fingerprintDigest: digest,
            untilEnd: untilEndValue,
            instanceID: instanceIDValue,
            partitioner: partitionerValue,
            connectTimeout: connectTimeoutValue)
        configuration.streamThreads = threads ?? Setting.processStreamThreads
        try configuration.validate()
        return configuration
    }
}

/// The layers every Kafka command's settings resolve through: the settings file under the
/// environment under the flags, and librdkafka properties added up from the file, then
/// `POLYGLOT_KAFKA_PROPERTIES`, then `-X`, each later one winning per property.
///
/// A command reads its layers once at start and resolves every group of settings (the role's,
/// the endpoints') over them.
public struct SettingsLayers: Sendable {
    /// The environment with the settings file's values under it.
    public let environment: [String: String]
    private let kafkaLayers: [(source: String, text: String)]

    /// Reads the settings file (`configFile`, else `POLYGLOT_CONFIG`), if there is one.
    public init(configFile: String?, environment: [String: String]) throws(ConfigurationError) {
        var environment = environment
        var kafkaLayers: [(source: String, text: String)] = []
        if let path = configFile ?? environment[Setting.configFileVariable].flatMap({ $0.isEmpty ? nil : $0 }) {
            let file = try ProcessorSettings.readFile(path)
            if let text = file[Setting.kafkaProperties.variable] { kafkaLayers.append((path, text)) }
            environment = file.merging(environment) { _, env in env }
        }
        if let text = environment[Setting.kafkaProperties.variable], kafkaLayers.last?.text != text {
            kafkaLayers.append((Setting.kafkaProperties.variable, text))
        }
        self.environment = environment
        self.kafkaLayers = kafkaLayers
    }

    /// The flag's value, else the setting's variable's when it is set and not empty.
    func pick(_ flag: String?, _ setting: Setting) -> String? { setting.pick(flag, in: environment)?.text }

    /// The librdkafka properties of every layer, `-X` `properties` last, and the bootstrap servers.
    /// A property of `refusing` (or `bootstrap.servers`) in any layer is refused, naming the
    /// setting to use instead.
    func kafka(properties: [String], bootstrapServers: String?,
               refusing owned: [String: String] = [:]) throws(ConfigurationError) -> KafkaConfiguration {
        var kafka = KafkaConfiguration()
        for layer in kafkaLayers {
            do { try kafka.apply(overrides: KafkaConfiguration.splitPropertyList(layer.text)) } catch {
                throw ConfigurationError("\(layer.source): \(error.message)")
            }
        }
        try kafka.apply(overrides: properties)
        // Checked before the bootstrap servers are set below: only a property given as one is refused.
        var refused = owned
        refused["bootstrap.servers"] = RuntimeConfiguration.ownedProperties["bootstrap.servers"]
        for property in refused.keys.sorted() where kafka[property] != nil {
            throw ConfigurationError("-X \(property) is set by polyglot itself; use \(refused[property]!) instead")
        }
        if let servers = pick(bootstrapServers, .bootstrapServers) { kafka.set("bootstrap.servers", servers) }
        return kafka
    }

    /// `--partitioner`, else `POLYGLOT_PARTITIONER`, else murmur2.
    func partitioner(_ flag: String?) throws(ConfigurationError) -> KafkaPartitioner {
        let text = pick(flag, .partitioner) ?? Setting.partitioner.defaultText
        guard let value = KafkaPartitioner(rawValue: text) else {
            throw ConfigurationError("partitioner '\(text)' is not one of murmur2 (Java's, the default), crc32 (librdkafka's)")
        }
        return value
    }

    /// `--connect-timeout`, else `POLYGLOT_CONNECT_TIMEOUT`, else 15 s.
    func connectTimeout(_ flag: String?) throws(ConfigurationError) -> Duration {
        .milliseconds(try Durations.milliseconds(pick(flag, .connectTimeout) ?? Setting.connectTimeout.defaultText, setting: "connect timeout"))
    }

    /// `--input-topic`, else `POLYGLOT_INPUT_TOPIC`, else financial-transactions.
    func inputTopic(_ flag: String?) -> String {
        pick(flag, .inputTopic) ?? Setting.inputTopic.defaultText
    }
}
