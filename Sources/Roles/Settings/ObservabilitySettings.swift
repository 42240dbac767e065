import Foundation
import Logging
import PolyglotSupport
import KafkaClient
import StreamEngine
import Observability

/// The observability settings of a long-running command as given on its command line (nil: not
/// given), resolved like the processor's: flags win over `POLYGLOT_*` variables, which win over
/// the settings file, which wins over the defaults.
public struct ObservabilitySettings: Sendable {
    /// The port of `/metrics` and `/healthz`; `0` turns them off.
    public var metricsPort: String?
    /// trace, debug, info, notice, warning, error or critical.
    public var logLevel: String?
    /// How long the broker may be unreachable before `/healthz` answers 503 (a duration).
    public var brokerTimeout: String?
    /// The IP address `/metrics` and `/healthz` listen on.
    public var metricsAddress: String?

    public init() {}

    /// The default ports: one per long-running role, so both can run on one host.
    public static let processMetricsPort = 9464
    public static let auditMetricsPort = 9465
    /// The address of every IPv4 interface: the endpoints' default, for a load balancer's checks.
    public static let everyInterface = ObservabilityServer.everyInterface

    /// Resolves over `environment`: the process environment layered over the settings file
    /// (``SettingsLayers/environment``).
    public func resolve(environment: [String: String], defaultMetricsPort: Int) throws(ConfigurationError) -> ObservabilityConfiguration {
        func pick(_ flag: String?, _ setting: Setting) -> (text: String, source: String)? { setting.pick(flag, in: environment) }
        var port: Int? = defaultMetricsPort
        if let (text, setting) = pick(metricsPort, .metricsPort) {
            guard let n = Int(text.trimmingCharacters(in: .whitespaces)), (0...65_535).contains(n) else {
                throw ConfigurationError("\(setting): '\(text)' is not a port (0 to 65535; 0 turns /metrics and /healthz off)")
            }
            port = n == 0 ? nil : n
        }
        var address = Self.everyInterface
        if let (text, setting) = pick(metricsAddress, .metricsAddress) {
            address = text.trimmingCharacters(in: .whitespaces)
            guard PortProbe.isIPAddress(address) else {
                throw ConfigurationError("\(setting): '\(text)' is not an IP address (\(Self.everyInterface) for every interface, 127.0.0.1 for this host only)")
            }
        }
        var health = HealthPolicy()
        if let (text, setting) = pick(brokerTimeout, .healthBrokerTimeout) {
            let ms = try Durations.milliseconds(text, setting: setting)
            guard ms > 0 else { throw ConfigurationError("\(setting): must be more than 0") }
            health.brokerUnreachableLimit = .milliseconds(ms)
        }
        return ObservabilityConfiguration(metricsPort: port, metricsAddress: address, health: health,
                                          logLevel: try resolveLogLevel(environment: environment))
    }

    /// The log level alone (the binary sets up logging before anything else is resolved).
    public func resolveLogLevel(environment: [String: String]) throws(ConfigurationError) -> Logger.Level {
        let text: String, setting: String
        if let logLevel {
            (text, setting) = (logLevel, Setting.logLevel.flag)
        } else if let value = environment[Setting.logLevel.variable], !value.isEmpty {
            (text, setting) = (value, Setting.logLevel.variable)
        } else {
            return .info
        }
        guard let level = Logger.Level(rawValue: text.trimmingCharacters(in: .whitespaces).lowercased()) else {
            throw ConfigurationError("\(setting): unknown level '\(text)' (trace, debug, info, notice, warning, error, critical)")
        }
        return level
    }
}

/// Resolved observability settings.
public struct ObservabilityConfiguration: Sendable, Hashable {
    /// nil: the endpoints are off.
    public var metricsPort: Int?
    /// The IP address they listen on.
    public var metricsAddress: String = ObservabilitySettings.everyInterface
    public var health: HealthPolicy
    public var logLevel: Logger.Level
}
