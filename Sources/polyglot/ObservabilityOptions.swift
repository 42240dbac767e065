import ArgumentParser
import Logging
import ServiceLifecycle
import PolyglotSupport
import KafkaClient
import Observability
import Roles

/// The observability flags of a long-running role on the stream runtime (`process`, `audit`):
/// the log level and the HTTP endpoints. Nil is "not given": the environment, then the settings
/// file, then the default decide.
struct ObservabilityOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical; env POLYGLOT_LOG_LEVEL (default: info).")
    var logLevel: String?

    @Option(help: "Port of GET /metrics and GET /healthz; 0 turns them off; env POLYGLOT_METRICS_PORT (default: 9464 for process, 9465 for audit).")
    var metricsPort: String?

    @Option(help: "Address GET /metrics and GET /healthz listen on: 127.0.0.1 for this host only; env POLYGLOT_METRICS_ADDRESS (default: \(Setting.metricsAddress.defaultText), every interface).")
    var metricsAddress: String?

    @Option(help: "How long the broker may be unreachable before /healthz answers 503; env POLYGLOT_HEALTH_BROKER_TIMEOUT (default: \(Setting.healthBrokerTimeout.defaultText)).")
    var healthBrokerTimeout: String?

    var settings: ObservabilitySettings {
        var settings = ObservabilitySettings()
        settings.metricsPort = metricsPort
        settings.metricsAddress = metricsAddress
        settings.logLevel = logLevel
        settings.brokerTimeout = healthBrokerTimeout
        return settings
    }

    /// The level, over the environment merged with the role's settings file.
    func logLevel(settings layers: SettingsLayers) throws(ConfigurationError) -> Logger.Level {
        try settings.resolveLogLevel(environment: layers.environment)
    }

    /// The endpoints' service for a role, nil when they are off.
    func server(_ configuration: ObservabilityConfiguration, metrics: RoleMetrics,
                snapshot: @escaping @Sendable () -> RoleSnapshot) -> ObservabilityServer? {
        guard let port = configuration.metricsPort else { return nil }
        var logger = Logger(label: "polyglot.http")
        logger.logLevel = configuration.logLevel
        return ObservabilityServer(host: configuration.metricsAddress, port: port, metrics: metrics, policy: configuration.health,
                                   logger: logger, snapshot: snapshot)
    }

    /// Fails in one line when the endpoints' port cannot be listened on: called before the role
    /// is made, so nothing of it starts (or logs) first.
    func checkAvailable(_ configuration: ObservabilityConfiguration) throws {
        guard let port = configuration.metricsPort else { return }
        do {
            try PortProbe.checkAvailable(address: configuration.metricsAddress, port: port, flag: Setting.metricsPort.flag)
        } catch {
            throw CommandFailure(error.message)
        }
    }

    /// Runs a long-running role's service with its endpoints in one service group, until the
    /// role ends or SIGTERM or SIGINT stops it. The group stops its services in reverse order:
    /// the role first, while `/healthz` still answers (503, stopping).
    func run(_ service: some Service, endpoints: ObservabilityConfiguration, metrics: RoleMetrics, logger: Logger,
             snapshot: @escaping @Sendable () -> RoleSnapshot) async throws {
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let server = server(endpoints, metrics: metrics, snapshot: snapshot) {
            do { try server.checkAvailable() } catch { throw CommandFailure(error.message) }
            services.append(.init(service: server))
        }
        services.append(.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup))
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await failingInOneLine { try await group.run() }
    }
}
