import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import PolyglotSupport
import KafkaClient
import Observability
import Roles

struct ProcessCommand: SettingsCommand {
    static let configuration = CommandConfiguration(
        commandName: "process",
        abstract: "Run the fraud detector on Kafka, exactly once, with SQLite window state.",
        usage: """
            polyglot process --bootstrap-servers HOST:PORT [--application-id ID] [--state-dir DIR] [--until-end]
                             [--metrics-port PORT] [--metrics-address IP] [-X key=value ...] [<options>]
            """,
        discussion: """
            Joins the consumer group <application-id> on the input topic. Each assigned partition is a \
            task with its own SQLite window store under --state-dir, restored from the changelog topic \
            <application-id>-windows-changelog when missing, corrupt or behind. Outputs go to the output \
            topic keyed by cardId; rejected records to the dead-letter topic. A record whose key is not \
            its cardId goes through <application-id>-repartition first.

            Settings: flags win over environment variables, which win over the settings file (--config), \
            which wins over defaults. Environment and file names: \
            \(ProcessorSettings.environmentHelp).

            HTTP on --metrics-port (9464 unless given; 0: off) and --metrics-address: GET /metrics (Prometheus text), GET /healthz \
            (200 while every assigned partition is restored and polling; else 503 with a one-line JSON reason).

            Logs: one JSON object per line on stderr when it is not a terminal, readable text when it is.

            SIGTERM or SIGINT: finishes or aborts the open transaction, commits, leaves the group, exits 0.
            """)

    @Option(help: "Consumer group id and internal topic prefix (default: \(Setting.applicationID.defaultText)).")
    var applicationId: String?

    @OptionGroup var runtime: RuntimeOptions

    @OptionGroup var observability: ObservabilityOptions

    var settingsFile: String? { runtime.config }

    func logLevel(settings layers: SettingsLayers) throws(ConfigurationError) -> Logger.Level {
        try observability.logLevel(settings: layers)
    }

    func run(settings layers: SettingsLayers) async throws {
        var settings = runtime.settings
        settings.applicationID = applicationId
        let configuration: ProcessorConfiguration
        let endpoints: ObservabilityConfiguration
        let service: ProcessorService
        do {
            configuration = try settings.resolve(layers: layers)
            endpoints = try observability.settings.resolve(environment: layers.environment,
                                                           defaultMetricsPort: ObservabilitySettings.processMetricsPort)
        } catch {
            throw ValidationError(error.message)
        }
        try observability.checkAvailable(endpoints)
        var logger = Logger(label: "polyglot.process")
        logger.logLevel = endpoints.logLevel
        let metrics = RoleMetrics(role: "process", fingerprintDigest: configuration.fingerprintDigest,
                                  families: FraudDetectionRole.metricFamilies)
        do {
            service = try ProcessorService(configuration: configuration, logger: logger, observer: metrics)
        } catch {
            throw CommandFailure(error.message)
        }
        let processor = service.processor
        try await observability.run(service, endpoints: endpoints, metrics: metrics, logger: logger) { processor.snapshot }
    }
}
