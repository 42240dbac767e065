import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import PolyglotSupport
import KafkaClient
import StateStore
import Roles

struct DevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev",
        abstract: "Development helpers (not for production).",
        subcommands: [DevBrokerCommand.self, DevKafkaBenchCommand.self, DevStoreBenchCommand.self, DevLatencyBenchCommand.self]
    )
}

struct DevBrokerCommand: AsyncParsableCommand, LoggingCommand {
    static let configuration = CommandConfiguration(
        commandName: "broker",
        abstract: "Run an in-memory Kafka cluster on loopback, for development only.",
        discussion: """
        For development and tests only: librdkafka's mock cluster. Everything is kept in memory \
        and lost on exit; each partition keeps only about 5 MB (older records are dropped); there \
        is no admin API, no compaction, and aborted transactional records stay visible.

        Creates financial-transactions, enriched-transactions, financial-transactions.dlq and the \
        internal topics of the default application id (fraud-detector-processor-windows-changelog, \
        fraud-detector-processor-repartition) and of the default auditor group, each with \
        --partitions partitions. The internal topics of any other --application-id or audit \
        --group are created when the role starts, with as many partitions as its input topic, \
        so several pipelines and auditor groups can share one dev broker. Prints the \
        bootstrap list as the first line of standard output (and writes it to --bootstrap-file) \
        once ready. Stops on SIGINT or SIGTERM.
        """
    )

    @Option(help: "Number of brokers.")
    var brokers: Int = 1

    @Option(help: "Partitions of every topic it creates.")
    var partitions: Int = 6

    @Option(help: "Write the bootstrap list to this file once ready (replaced atomically, removed on exit).")
    var bootstrapFile: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error or critical; env POLYGLOT_LOG_LEVEL (default: info).")
    var logLevel: String?

    func logLevel(environment: [String: String]) throws(ConfigurationError) -> Logger.Level {
        var settings = ObservabilitySettings()
        settings.logLevel = logLevel
        return try settings.resolveLogLevel(environment: environment)
    }

    func validate() throws {
        do {
            try DevBrokerOptions(brokers: brokers, partitions: partitions, bootstrapFile: bootstrapFile).validate()
        } catch {
            throw ValidationError(error.message)
        }
    }

    func run() async throws {
        // Logs go to stderr: stdout's first line is the bootstrap list, for scripts to read.
        let logger = Logger(label: "polyglot.dev.broker")
        let service = DevBrokerService(
            options: DevBrokerOptions(brokers: brokers, partitions: partitions, bootstrapFile: bootstrapFile),
            logger: logger
        ) { bootstrap in
            // Unbuffered: a reader of a pipe sees the line at once.
            FileHandle.standardOutput.write(Data((bootstrap + "\n").utf8))
        }
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

struct DevKafkaBenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kafka-bench",
        abstract: "Measure produce and consume throughput of the Kafka layer."
    )

    @Option(help: "Bootstrap servers; without it an in-process mock cluster is used.")
    var bootstrapServers: String?

    @Option(help: "Brokers of the in-process mock cluster.")
    var brokers: Int = 1

    @Option(help: "Records to produce and then consume.")
    var records: Int = 500_000

    @Option(help: "Partitions of the benchmark topic.")
    var partitions: Int = 32

    @Option(help: "Use this existing topic (needed on a cluster without an admin API, such as `dev broker`).")
    var topic: String?

    @Option(help: "Value size in bytes.")
    var valueSize: Int = 100

    @Option(name: .customShort("X"), parsing: .unconditionalSingleValue, help: ArgumentHelp("librdkafka property (repeatable).", valueName: "key=value"))
    var properties: [String] = []

    func run() async throws {
        var options = KafkaBenchmark.Options()
        options.bootstrapServers = bootstrapServers
        options.brokers = brokers
        options.records = records
        options.partitions = partitions
        options.valueSize = valueSize
        options.topic = topic
        var overrides = KafkaConfiguration()
        do { try overrides.apply(overrides: properties) } catch { throw ValidationError(error.message) }
        options.overrides = overrides
        var logger = Logger(label: "polyglot.dev.kafka-bench")
        logger.logLevel = .warning
        let result = try await KafkaBenchmark(options: options, logger: logger).run()
        print(result)
    }
}

struct DevLatencyBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "latency-bench",
        abstract: "Measure output latency: produce at fixed rates, read the outputs read_committed.",
        discussion: """
        Produces generated transactions to the input topic at each --rates value in turn, for \
        --seconds each, with event time set to the wall clock at produce, and reads the output \
        topic read_committed: each output's latency is the wall clock when read minus its \
        timestamp. Prints one line per rate with p50, p95, p99 and max in milliseconds. With \
        --floor it reads the input topic itself: the same clients with no processor between them.
        """
    )

    @Option(help: "Bootstrap servers of a cluster where the topics exist (a running process reads the input).")
    var bootstrapServers: String

    @Option(help: "Records per second of each phase, comma-separated.")
    var rates: String = "5000,20000,50000,100000"

    @Option(help: "Seconds per rate.")
    var seconds: Int = 20

    @Option(help: "Distinct cards.")
    var cards: Int = 10_000

    @Flag(help: "Read the input topic itself instead of the output topic: the latency floor.")
    var floor = false

    @Option(name: .customShort("X"), parsing: .unconditionalSingleValue, help: ArgumentHelp("librdkafka property (repeatable).", valueName: "key=value"))
    var properties: [String] = []

    func run() throws {
        var options = OutputLatencyBenchmark.Options(bootstrapServers: bootstrapServers)
        let parsed = rates.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parsed.isEmpty, parsed.allSatisfy({ ($0 ?? 0) > 0 }) else {
            throw ValidationError("--rates takes positive whole numbers separated by commas, not '\(rates)'")
        }
        guard seconds > 0 else { throw ValidationError("--seconds must be positive, not \(seconds)") }
        guard cards > 0 else { throw ValidationError("--cards must be positive, not \(cards)") }
        options.rates = parsed.compactMap { $0 }
        options.secondsPerRate = seconds
        options.cards = cards
        if floor { options.outputTopic = nil }
        do { try options.overrides.apply(overrides: properties) } catch { throw ValidationError(error.message) }
        var logger = Logger(label: "polyglot.dev.latency-bench")
        logger.logLevel = .warning
        do {
            for phase in try OutputLatencyBenchmark(options: options, logger: logger).run() {
                print("\(floor ? "floor" : "process"): \(phase)")
            }
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}

struct DevStoreBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store-bench",
        abstract: "Measure the SQLite window store: detect and commit cycles, a large commit, restore."
    )

    @Option(help: "Records run through the detector and the store.")
    var records: Int = 500_000

    @Option(help: "Distinct cards.")
    var cards: Int = 50_000

    @Option(help: "Records per commit cycle.")
    var recordsPerCommit: Int = 20_000

    @Option(help: "Changed cards in the large commit.")
    var commitKeys: Int = 20_000

    @Option(help: "Folder for the store (default: a temporary one, deleted afterwards).")
    var directory: String?

    func run() throws {
        let directory = self.directory ?? FileManager.default.temporaryDirectory
            .appendingPathComponent("polyglot-store-bench-\(UUID().uuidString)").path
        defer { if self.directory == nil { try? FileManager.default.removeItem(atPath: directory) } }
        let configuration = WindowStoreBenchmark.Configuration(
            records: records, cards: cards, recordsPerCommit: recordsPerCommit, commitKeys: commitKeys)
        do {
            print(try WindowStoreBenchmark.run(directory: directory, configuration: configuration))
        } catch {
            throw CommandFailure("\(error)")
        }
    }
}
