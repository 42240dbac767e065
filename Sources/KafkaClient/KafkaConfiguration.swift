internal import CRdKafka
import PolyglotSupport

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

    /// True for keys whose values are secrets (passwords, tokens, keys): never printed or
    /// logged. Usernames, mechanism names, paths and the like are not: they are what an
    /// operator needs to see to tell why a connection fails.
    public static func isSecret(_ key: String) -> Bool {
        let parts = key.lowercased().split(separator: ".")
        if parts.contains("key") && !key.lowercased().hasSuffix(".location") { return true }  // ssl.key.pem, ssl.key.password
        if key.lowercased() == "sasl.oauthbearer.config" { return true }  // may carry a client secret
        return parts.contains { part in secretMarkers.contains { part.contains($0) } }
    }

    /// Name parts that mark a secret value: `sasl.password`, `ssl.keystore.password`,
    /// `sasl.oauthbearer.client.secret`, `api.token`, `jaas.config`, `private.key`.
    static let secretMarkers = ["password", "secret", "token", "credential", "jaas", "private"]

    /// True for keys whose values are never shown: secret-looking ones, and names librdkafka
    /// does not know, since a misspelt secret (`sasl.pasword`) is still a secret.
    public static func isRedacted(_ key: String) -> Bool {
        isSecret(key) || !isKnownProperty(key)
    }

    /// Whether librdkafka knows the property, as a client or a default topic property: it
    /// answers "unknown" to setting it, with any value, only for a name it does not know.
    /// (`rd_kafka_conf_get` cannot tell: it says "unknown" for a known property not set yet.)
    public static func isKnownProperty(_ key: String) -> Bool {
        // Setting these loads shared libraries; they are librdkafka's own names anyway.
        if key.hasPrefix("plugin.") { return true }
        let conf = rd_kafka_conf_new()!
        defer { rd_kafka_conf_destroy(conf) }
        var errstr = [CChar](repeating: 0, count: 512)
        return rd_kafka_conf_set(conf, key, "", &errstr, errstr.count) != RD_KAFKA_CONF_UNKNOWN
    }

    /// `text` with the value of every redacted property replaced by `[redacted]`: for
    /// librdkafka's own messages, which may quote a value they reject.
    public func redacting(_ text: String) -> String {
        Self.redacting(text, values: redactedValues)
    }

    /// The values ``redacting(_:)`` hides, longest first (so a value holding another goes whole).
    var redactedValues: [String] {
        properties.filter { !$0.value.isEmpty && Self.isRedacted($0.key) }.map(\.value).sorted { $0.count > $1.count }
    }

    /// Replaces each of `values` where it stands whole: not where it is part of a longer word
    /// (a one-letter password `u` leaves "authentication" alone).
    static func redacting(_ text: String, values: [String]) -> String {
        values.reduce(text) { $0.replacingWhole($1, with: "[redacted]") }
    }

    /// Splits a list of `key=value` properties (``POLYGLOT_KAFKA_PROPERTIES``, a settings file's
    /// lines) at newlines, and at a `;` only where a property librdkafka knows follows it as
    /// `name=`: a value such as a password may itself hold `;`.
    public static func splitPropertyList(_ text: String) -> [String] {
        var pairs: [String] = []
        for line in text.split(whereSeparator: \.isNewline) {
            var current = ""
            var rest = Substring(line)
            while let semicolon = rest.firstIndex(of: ";") {
                let after = rest[rest.index(after: semicolon)...]
                let candidate = after.drop { $0 == " " || $0 == "\t" }
                if let eq = candidate.firstIndex(of: "="), isKnownProperty(String(candidate[..<eq])) {
                    current += rest[..<semicolon]
                    pairs.append(current)
                    current = ""
                    rest = candidate
                } else {
                    current += rest[...semicolon]
                    rest = after
                }
            }
            current += rest
            pairs.append(current)
        }
        return pairs.filter { !$0.allSatisfy(\.isWhitespace) }
    }

    /// `key=value` pairs sorted by key, redacted values (``isRedacted(_:)``) shown as `[redacted]`.
    public var redactedDescription: String {
        properties.keys.sorted().map { key in
            "\(key)=\(Self.isRedacted(key) ? "[redacted]" : properties[key]!)"
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
                let reason = redacting(String(decoding: errstr.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
                if Self.isRedacted(key) {
                    throw ConfigurationError("Kafka property \(key): \(reason)")
                }
                throw ConfigurationError("Kafka property \(key)=\(redacting(value)): \(reason)")
            }
        }
        return conf
    }
}

extension String {
    /// `self` with every occurrence of `target` that is not flanked by a letter or digit
    /// replaced.
    fileprivate func replacingWhole(_ target: String, with replacement: String) -> String {
        guard !target.isEmpty else { return self }
        func isWordCharacter(_ c: Character?) -> Bool { c.map { $0.isLetter || $0.isNumber } ?? false }
        // A value that starts or ends with a separator is bounded by it.
        let checksBefore = isWordCharacter(target.first), checksAfter = isWordCharacter(target.last)
        var result = ""
        var rest = Substring(self)
        while let range = rest.firstRange(of: target) {
            let before = range.lowerBound > startIndex ? self[index(before: range.lowerBound)] : nil
            let after = range.upperBound < endIndex ? self[range.upperBound] : nil
            let whole = !(checksBefore && isWordCharacter(before)) && !(checksAfter && isWordCharacter(after))
            result += rest[..<range.lowerBound]
            result += whole ? replacement : String(rest[range])
            rest = rest[range.upperBound...]
        }
        return result + rest
    }
}

extension Substring {
    fileprivate func trimmingSpaces() -> String {
        String(drop { $0 == " " }.reversed().drop { $0 == " " }.reversed())
    }
}

extension KafkaConfiguration {
    /// How much a consumer fetches ahead. In librdkafka 2.0.2 both limits count the whole
    /// consumer queue (every partition's fetch queue forwards to it), and a consumer that
    /// reaches either stops fetching for a full second before it looks again. With the default
    /// 100,000 messages, a consumer that drained the queue in half a second then waited the
    /// other half: a third of a benchmark run. So the count limit is off and the byte limit
    /// holds well over a second of input, so the pause never empties it.
    public mutating func setConsumerPrefetchDefaults() {
        setDefault("queued.min.messages", "10000000")
        setDefault("queued.max.messages.kbytes", String(Self.defaultPrefetchKilobytes))
    }

    /// The byte limit of ``setConsumerPrefetchDefaults()``: 128 MiB.
    public static let defaultPrefetchKilobytes = 131_072
}
