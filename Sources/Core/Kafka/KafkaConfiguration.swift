import CRdKafka

/// librdkafka properties for one client, as a typed `Sendable` value.
///
/// Keys and values are librdkafka's own (`bootstrap.servers`, `linger.ms`, `sasl.password`, ...),
/// so any property, SASL and SSL included, passes through `-X key=value` unchanged. Secrets never
/// appear in ``redactedDescription`` or in errors.
public struct KafkaConfiguration: Sendable, Hashable, CustomStringConvertible {
    /// The properties, applied in key order (librdkafka accepts any order).
    public private(set) var properties: [String: String]

    public init(_ properties: [String: String] = [:]) {
        self.properties = properties
    }

    /// A configuration with `bootstrap.servers` set.
    public init(bootstrapServers: String) {
        self.properties = ["bootstrap.servers": bootstrapServers]
    }

    /// Sets (or replaces) one property.
    public mutating func set(_ key: String, _ value: String) {
        properties[key] = value
    }

    /// Sets `key` only when it is not already present: layer defaults under user settings.
    public mutating func setDefault(_ key: String, _ value: String) {
        if properties[key] == nil { properties[key] = value }
    }

    /// A copy with `key` set.
    public func with(_ key: String, _ value: String) -> KafkaConfiguration {
        var copy = self
        copy.set(key, value)
        return copy
    }

    /// A copy where `overrides` win over this configuration's values.
    public func merging(_ overrides: KafkaConfiguration) -> KafkaConfiguration {
        KafkaConfiguration(properties.merging(overrides.properties) { _, new in new })
    }

    public subscript(key: String) -> String? {
        get { properties[key] }
        set { properties[key] = newValue }
    }

    /// `bootstrap.servers`, if set.
    public var bootstrapServers: String? { properties["bootstrap.servers"] }

    /// Parses one `-X key=value` argument (the value may itself contain `=`).
    public static func parseOverride(_ argument: String) throws(ConfigurationError) -> (key: String, value: String) {
        guard let eq = argument.firstIndex(of: "=") else {
            throw ConfigurationError("-X \(argument): expected key=value")
        }
        let key = argument[..<eq].trimmingSpaces()
        let value = String(argument[argument.index(after: eq)...])
        guard !key.isEmpty else { throw ConfigurationError("-X \(argument): empty property name") }
        return (key, value)
    }

    /// Applies `-X key=value` arguments in order (later ones win).
    public mutating func apply(overrides: [String]) throws(ConfigurationError) {
        for argument in overrides {
            let (key, value) = try Self.parseOverride(argument)
            properties[key] = value
        }
    }

    /// True for keys whose values must never be printed or logged.
    public static func isSecret(_ key: String) -> Bool {
        let k = key.lowercased()
        return secretMarkers.contains { k.contains($0) }
    }

    static let secretMarkers = [
        "password", "secret", "sasl.oauthbearer.config", "ssl.key", "ssl.keystore",
        "jaas", "token", "credential", "sasl.kerberos.keytab", "private",
    ]

    /// `key=value` pairs sorted by key, secrets shown as `[redacted]`.
    public var redactedDescription: String {
        properties.keys.sorted().map { key in
            "\(key)=\(Self.isSecret(key) ? "[redacted]" : properties[key]!)"
        }.joined(separator: " ")
    }

    /// Same as ``redactedDescription``: printing a configuration never leaks a secret.
    public var description: String { redactedDescription }

    /// Builds an `rd_kafka_conf_t` (caller owns it). The error names the key, never a secret value.
    func makeNativeConfiguration() throws(ConfigurationError) -> OpaquePointer {
        let conf = rd_kafka_conf_new()!
        var errstr = [CChar](repeating: 0, count: 512)
        for key in properties.keys.sorted() {
            let value = properties[key]!
            let result = rd_kafka_conf_set(conf, key, value, &errstr, errstr.count)
            if result != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                let reason = String(decoding: errstr.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if Self.isSecret(key) {
                    throw ConfigurationError("Kafka property \(key): invalid value")
                }
                throw ConfigurationError("Kafka property \(key)=\(value): \(reason)")
            }
        }
        return conf
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}
