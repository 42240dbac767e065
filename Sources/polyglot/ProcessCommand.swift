import ArgumentParser
import Core
import Logging
import ServiceLifecycle

struct ProcessCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "process",
        abstract: "Run the fraud detector on Kafka, exactly once, with SQLite window state.",
        discussion: """
            Joins the consumer group <application-id> on the input topic. Each assigned partition is a \
            task with its own SQLite window store under --state-dir, restored from the changelog topic \
            <application-id>-windows-changelog when missing, corrupt or behind. Outputs go to the output \
            topic keyed by cardId; rejected records to the dead-letter topic. A record whose key is not \
            its cardId goes through <application-id>-repartition first.

            Settings: flags win over environment variables, which win over the settings file (--config), \
            which wins over defaults. Environment and file names: \
            \(ProcessorSettings.environmentHelp).

            SIGTERM or SIGINT: finishes or aborts the open transaction, commits, leaves the group, exits 0.
            """)

    @Option(help: "Consumer group id and internal topic prefix (default fraud-detector-processor).")
    var applicationId: String?

    @OptionGroup var runtime: RuntimeOptions

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func run() async throws {
        var settings = runtime.settings
        settings.applicationID = applicationId
        guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level: unknown level '\(logLevel)'") }
        let configuration: ProcessorConfiguration
        let service: ProcessorService
        var logger = Logger(label: "polyglot.process") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = level
        do {
            configuration = try settings.resolve()
        } catch {
            throw ValidationError(error.message)
        }
        do {
            service = try ProcessorService(configuration: configuration, logger: logger)
        } catch {
            throw CommandFailure(error.message)
        }
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch let error as ProcessorError {
            throw CommandFailure(error.message)
        } catch let error as KafkaError {
            throw CommandFailure("Kafka: \(error)")
        }
    }
}
