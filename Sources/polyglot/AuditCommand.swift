import ArgumentParser
import Core
import Logging

struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Recompute every verdict and report drift (SEMANTICS.md §5).",
        discussion: """
            --files audits a replay run: IN.jsonl, replay's OUT.jsonl and, with --dlq, its \
            dead-letter file; positions are line numbers. Prints the counts on stdout and writes \
            every finding to --report. Exits 0 when there is no missing, duplicate, orphan, \
            mismatch, drift or unreadable finding, 1 when there is, 2 when a file cannot be read \
            or a flag is invalid.

            --once audits the processor's topics: every partition of the input, output and \
            dead-letter topics from its start to the end offsets seen at start, independent of \
            any consumer group or state; an input without output at the end is missing. Kafka \
            settings as for process (flags over KAFKA_BOOTSTRAP_SERVERS and POLYGLOT_* \
            variables over --config). Same exit statuses.
            """)

    /// Exit status for an operational failure: 1 means the audit found discrepancies.
    static let failureStatus: Int32 = 2

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Audit a replay run's input and output files.", valueName: "IN.jsonl OUT.jsonl"))
    var files: [String] = []

    @Option(help: "replay's dead-letter file, to check rejected lines by code.")
    var dlq: String?

    @Flag(help: "Audit the processor's Kafka topics once, from their start to the end offsets seen at start.")
    var once = false

    @Option(help: "Kafka bootstrap servers (env KAFKA_BOOTSTRAP_SERVERS), with --once.")
    var bootstrapServers: String?

    @Option(help: "Input topic (default financial-transactions), with --once.")
    var inputTopic: String?

    @Option(help: "Output topic (default enriched-transactions), with --once.")
    var outputTopic: String?

    @Option(help: "Dead-letter topic (default financial-transactions.dlq), with --once.")
    var dlqTopic: String?

    @Option(name: .customShort("X"), parsing: .unconditionalSingleValue,
            help: ArgumentHelp("librdkafka property, repeatable, with --once.", valueName: "key=value"))
    var properties: [String] = []

    @Option(help: "Settings file of NAME=value lines (env POLYGLOT_CONFIG), with --once.")
    var config: String?

    @Option(help: "How long --once waits for the Kafka cluster to answer (default 15s).")
    var connectTimeout: String?

    @Option(help: "Write the findings and counts as JSON to this file ('-' for stdout).")
    var report: String?

    @Option(name: .customLong("high-value"), help: "Report inputs whose amount is above this, compared exactly as decimals.")
    var highValue: String = "10000"

    @Flag(help: "Print each finding's log line on stderr.")
    var log = false

    @OptionGroup var detector: DetectorOptions

    func validate() throws {
        if once {
            guard files.isEmpty else { throw ValidationError("--once audits Kafka topics: it takes no --files") }
            guard DecimalText(highValue) != nil else { throw ValidationError("--high-value must be a JSON number, got '\(highValue)'") }
            return
        }
        guard files.count == 2 else {
            throw ValidationError("audit needs --files IN.jsonl OUT.jsonl (got \(files.count) file\(files.count == 1 ? "" : "s"))")
        }
        guard DecimalText(highValue) != nil else {
            throw ValidationError("--high-value must be a JSON number, got '\(highValue)'")
        }
    }

    func run() throws {
        if once { return try runOnce() }
        let options = FileAuditOptions(
            input: files[0], output: files[1], deadLetters: dlq,
            configuration: AuditConfiguration(parameters: try detector.parameters(), highValueThreshold: DecimalText(highValue)!))
        try reporting { sink in try FileAudit(options: options).run { findings throws(FileIOError) in try sink(findings) } }
    }

    /// Runs an audit whose findings go to `sink`: each finding's log line (with --log) and the
    /// report file; then the counts and the exit status, the same for every mode.
    private func reporting(_ audit: (_ sink: ([AuditFinding]) throws(FileIOError) -> Void) throws -> FileAuditSummary) throws {
        let summary: FileAuditSummary
        do {
            let reportFile = try report.map { path throws(FileIOError) in try AuditReport(path: path) }
            let log = self.log
            summary = try audit { findings throws(FileIOError) in
                if log { for finding in findings { StandardError.write(finding.logLine + "\n") } }
                try reportFile?.write(findings)
            }
            try reportFile?.finish(summary.counts)
        } catch {
            StandardError.write("polyglot: \(error)\n")
            throw ExitCode(Self.failureStatus)
        }
        if report != "-" { print(AuditReport.summary(summary.counts), terminator: "") }
        StandardError.write(summary.line + "\n")
        if summary.counts.hasDiscrepancies { throw ExitCode(1) }
    }

    /// The processor's settings, resolved the same way, give the topics and the Kafka properties.
    private func runOnce() throws {
        var settings = ProcessorSettings()
        settings.bootstrapServers = bootstrapServers
        settings.inputTopic = inputTopic
        settings.outputTopic = outputTopic
        settings.deadLetterTopic = dlqTopic
        settings.kafkaProperties = properties
        settings.configFile = config
        settings.connectTimeout = connectTimeout
        let processor: ProcessorConfiguration
        do {
            processor = try settings.resolve()
        } catch {
            throw ValidationError(error.message)
        }
        let options = TopicAuditOptions(
            kafka: processor.kafka, inputTopic: processor.inputTopic, outputTopic: processor.outputTopic,
            deadLetterTopic: processor.deadLetterTopic,
            configuration: AuditConfiguration(parameters: try detector.parameters(), highValueThreshold: DecimalText(highValue)!,
                                              fingerprintDigest: processor.fingerprintDigest),
            connectTimeout: processor.connectTimeout)
        var logger = Logger(label: "polyglot.audit") { StreamLogHandler.standardError(label: $0) }
        logger.logLevel = .warning
        try reporting { sink in try TopicAudit(options: options, logger: logger).run { findings in try sink(findings) } }
    }
}
