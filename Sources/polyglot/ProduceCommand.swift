import ArgumentParser
import Foundation
import Logging
import PolyglotSupport
import KafkaClient
import Roles

struct ProduceCommand: SettingsCommand {
    static let configuration = CommandConfiguration(
        commandName: "produce",
        abstract: "Load a JSONL file into the input topic, each record on its card's partition.",
        discussion: """
            Sends each line as one record, its bytes unchanged (without the LF or CRLF ending), keyed by \
            its cardId and placed explicitly on the partition `process` computes for that card with the \
            same --partitioner, so the processor never moves it through the repartition topic. A line \
            whose cardId cannot be read is sent without a key (librdkafka places it; the processor \
            dead-letters or repartitions it). Blank lines are skipped, as replay skips them. \
            Idempotent producer; flushes before it exits.

            Settings: flags win over environment variables, which win over the settings file (--config), \
            as for process. Environment and file names: \(InputLoaderSettings.environmentHelp).

            Prints a one-line summary on stderr. Exits 0 when every record was delivered, 64 on a usage \
            error, 1 when the input cannot be read, the cluster or topic is missing, or a record was not \
            delivered.
            """)

    @Argument(help: "Input JSONL file ('-' for stdin).")
    var input: String

    @Option(help: "Kafka bootstrap servers, required; env KAFKA_BOOTSTRAP_SERVERS.")
    var bootstrapServers: String?

    @Option(help: "Input topic (default: \(Setting.inputTopic.defaultText)).")
    var inputTopic: String?

    @Option(help: "Which partition a card belongs to: murmur2 or crc32, the processor's setting (default: \(Setting.partitioner.defaultText)).")
    var partitioner: String?

    @Option(parsing: .unconditional, help: "How long start-up waits for the Kafka cluster to answer (default: \(Setting.connectTimeout.defaultText)).")
    var connectTimeout: String?

    @Option(name: .customShort("X"), parsing: .unconditionalSingleValue,
            help: ArgumentHelp("librdkafka property, repeatable (SASL and SSL included; secrets are never logged).",
                               valueName: "key=value"))
    var properties: [String] = []

    @Option(help: "Settings file of NAME=value lines with the environment variables' names (env POLYGLOT_CONFIG).")
    var config: String?

    @Option(help: "Log level of the Kafka client's lines: trace, debug, info, notice, warning, error or critical; env or settings file POLYGLOT_LOG_LEVEL (default: none, only the summary or the failure).")
    var logLevel: String?

    var settingsFile: String? { config }

    func logLevel(settings layers: SettingsLayers) throws(ConfigurationError) -> Logger.Level {
        let environment = layers.environment
        // librdkafka's lines repeat what the one-line failure says: shown only when asked for.
        guard logLevel != nil || !(environment[Setting.logLevel.variable] ?? "").isEmpty else { return .critical }
        var settings = ObservabilitySettings()
        settings.logLevel = logLevel
        return try settings.resolveLogLevel(environment: environment)
    }

    func run(settings layers: SettingsLayers) async throws {
        var settings = InputLoaderSettings(input: input)
        settings.bootstrapServers = bootstrapServers
        settings.inputTopic = inputTopic
        settings.partitioner = partitioner
        settings.connectTimeout = connectTimeout
        settings.kafkaProperties = properties
        settings.configFile = config
        let configuration: InputLoaderConfiguration
        var logger = Logger(label: "polyglot.produce")
        do {
            configuration = try settings.resolve(layers: layers)
            logger.logLevel = try logLevel(settings: layers)
        } catch {
            throw ValidationError(error.message)
        }
        do {
            let summary = try await InputLoader(configuration: configuration, logger: logger).runOnDedicatedThread()
            StandardError.write(summary.line + "\n")
        } catch {
            throw CommandFailure(error.message)
        }
    }
}
