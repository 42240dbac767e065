import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import PolyglotSupport
import FraudModel
import KafkaClient
import Observability
import Roles

struct AuditCommand: SettingsCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Recompute every verdict and report drift (SEMANTICS.md §5).",
        usage: """
            polyglot audit --files IN.jsonl OUT.jsonl [--dlq DLQ.jsonl] [--report FILE] [--log] [--high-value N]
            polyglot audit --once --bootstrap-servers HOST:PORT [--report FILE] [--log] [<kafka-options>]
            polyglot audit --bootstrap-servers HOST:PORT [--group ID] [--application-id ID] [--stall-after DURATION] [--until-end] [<kafka-options>]
            """,
        discussion: """
            Without --files or --once: the continuous auditor. Joins the consumer group --group \
            on the input, output and dead-letter topics, exactly once, with its own state under \
            --state-dir restored from <group>-ledger-changelog, and writes one JSON record per \
            finding to --findings-topic, keyed by transactionId, and one log line per finding \
            once committed. A valid input is missing once the processor's group \
            (--application-id) has committed past it and the outputs and dead letters committed \
            up to there hold none for it; an output is an orphan once the auditor has read its \
            input partition past the position its polyglot-source names without finding that \
            transaction. A partition whose oldest input waits for the processor longer than \
            --stall-after is reported stalled, then resumed. --settle is how long a matched id is \
            remembered to tell a duplicate from an orphan. The output and \
            dead-letter topics must have as many partitions as the input topic. SIGTERM or SIGINT \
            commits and stops; --until-end stops at the end offsets seen at start. On stopping it \
            prints the verdict line and exits as the other modes do: 0 when the run found no \
            missing, duplicate, orphan, mismatch, drift or unreadable finding, 1 when it did, 2 \
            when it could not audit (Kafka, state or a port failed), 64 on a usage error. Settings as \
            for process (POLYGLOT_APPLICATION_ID is the processor's; the auditor's group is \
            POLYGLOT_AUDIT_GROUP); environment and file names: \(AuditorSettings.environmentHelp).

            --files audits a replay run: IN.jsonl, replay's OUT.jsonl and, with --dlq, its \
            dead-letter file; positions are line numbers. Prints the counts on stdout and writes \
            every finding to --report. Exits 0 when there is no missing, duplicate, orphan, \
            mismatch, drift or unreadable finding, 1 when there is, 2 when a file cannot be read, \
            64 when a flag is invalid.

            --once audits the processor's topics: every partition of the input, output and \
            dead-letter topics from its start to the end offsets seen at start, independent of \
            any consumer group or state; an input without output at the end is missing. Kafka \
            settings as for process (flags over KAFKA_BOOTSTRAP_SERVERS and POLYGLOT_* \
            variables over --config). Same exit statuses.
            """)

    /// Exit status for an operational failure: 1 means the audit found discrepancies.
    static let failureStatus: Int32 = 2

    @Flag(help: "Audit the processor's Kafka topics once, from their start to the end offsets seen at start.")
    var once = false

    @Option(name: .customLong("high-value"), help: "Report inputs whose amount is above this, compared exactly as decimals (default: \(Setting.auditHighValue.defaultText)).")
    var highValue: String?

    @OptionGroup(title: "Audit a replay run (--files)") var replayRun: AuditFilesOptions

    @OptionGroup(title: "Audit once (--files and --once)") var batch: AuditBatchOptions

    @OptionGroup(title: "Continuous auditor (neither --files nor --once)") var continuous: ContinuousAuditOptions

    @OptionGroup(title: "Kafka, topics and state (continuous, --once); detector (every mode)") var runtime: RuntimeOptions

    @OptionGroup(title: "Logs, metrics and health (continuous)") var observability: ObservabilityOptions

    var files: [String] { replayRun.files }
    var dlq: String? { replayRun.dlq }
    var report: String? { batch.report }
    var log: Bool { batch.log }
    var group: String? { continuous.group }
    var findingsTopic: String? { continuous.findingsTopic }
    var settle: String? { continuous.settle }
    var applicationId: String? { continuous.applicationId }
    var stallAfter: String? { continuous.stallAfter }

    var settingsFile: String? { runtime.config }

    func logLevel(settings layers: SettingsLayers) throws(ConfigurationError) -> Logger.Level {
        try observability.logLevel(settings: layers)
    }

    func validate() throws {
        if once, !files.isEmpty { throw ValidationError("--once audits Kafka topics: it takes no --files") }
        if !files.isEmpty, files.count != 2 {
            throw ValidationError("--files needs IN.jsonl OUT.jsonl (got \(files.count) file\(files.count == 1 ? "" : "s"))")
        }
        if files.isEmpty, dlq != nil { throw ValidationError("--dlq is a file of --files") }
        if let highValue, DecimalText(highValue) == nil { throw ValidationError("--high-value must be a JSON number, got '\(highValue)'") }
        if !once, files.isEmpty, report != nil { throw ValidationError("--report is for --files and --once; the continuous auditor writes to --findings-topic") }
    }

    /// The settings of the Kafka modes, resolved the way process resolves its own.
    private func auditorSettings() -> AuditorSettings {
        var settings = AuditorSettings()
        settings.processor = runtime.settings
        if let applicationId { settings.processor.applicationID = applicationId }
        settings.group = group
        settings.findingsTopic = findingsTopic
        settings.settle = settle
        settings.stallAfter = stallAfter
        settings.highValue = highValue
        return settings
    }

    func run(settings layers: SettingsLayers) async throws {
        if once { return try runOnce(layers) }
        if files.isEmpty { return try await runContinuously(layers) }
        let parameters: DetectorParameters
        do throws(ConfigurationError) {
            parameters = try runtime.settings.detectorParameters(environment: layers.environment)
        } catch {
            throw ValidationError(error.message)
        }
        let options = FileAuditOptions(
            input: files[0], output: files[1], deadLetters: dlq,
            configuration: AuditConfiguration(parameters: parameters,
                                              highValueThreshold: highValue.flatMap(DecimalText.init) ?? AuditConfiguration.defaultHighValueThreshold))
        try reporting { sink in try FileAudit(options: options).run { findings throws(FileIOError) in try sink(findings) } }
    }

    private func runContinuously(_ layers: SettingsLayers) async throws {
        let settings = auditorSettings()
        let configuration: AuditorConfiguration
        let endpoints: ObservabilityConfiguration
        do {
            configuration = try settings.resolve(layers: layers)
            endpoints = try observability.settings.resolve(environment: layers.environment,
                                                           defaultMetricsPort: ObservabilitySettings.auditMetricsPort)
        } catch {
            throw ValidationError(error.message)
        }
        var logger = Logger(label: "polyglot.audit")
        logger.logLevel = endpoints.logLevel
        let metrics = RoleMetrics(role: "audit", fingerprintDigest: configuration.pipeline.fingerprintDigest,
                                  families: AuditRole.metricFamilies)
        let counts: AuditCounts
        do {
            try observability.checkAvailable(endpoints)
            let service: AuditorService
            do {
                service = try AuditorService(configuration: configuration, logger: logger, observer: metrics)
            } catch {
                throw CommandFailure(error.message)
            }
            let auditor = service.auditor
            try await observability.run(service, endpoints: endpoints, metrics: metrics, logger: logger) { auditor.snapshot }
            counts = auditor.counts
        } catch {
            // Could not audit (or stopped auditing): 2, as --files and --once; 1 is kept for
            // discrepancies, which a supervisor may count as a clean stop.
            StandardError.write("polyglot: \(Self.message(for: error))\n")
            throw ExitCode(Self.failureStatus)
        }
        StandardError.write(counts.entries.map { "\($0.name) \($0.value)" }.joined(separator: ", ") + "\n")
        print(counts.verdictLine)
        if counts.hasDiscrepancies { throw ExitCode(1) }
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
        // The verdict closes stdout, unless stdout carries the JSON report.
        if report == "-" { StandardError.write(summary.counts.verdictLine + "\n") } else { print(summary.counts.verdictLine) }
        if summary.counts.hasDiscrepancies { throw ExitCode(1) }
    }

    /// The auditor's settings, resolved as process resolves its own, give the topics, the Kafka
    /// properties and the detector.
    private func runOnce(_ layers: SettingsLayers) throws {
        let auditor: AuditorConfiguration
        do {
            auditor = try auditorSettings().resolve(layers: layers)
        } catch {
            throw ValidationError(error.message)
        }
        let r = auditor.pipeline
        let options = TopicAuditOptions(
            kafka: r.kafka, inputTopic: r.inputTopic, outputTopic: r.outputTopic, deadLetterTopic: r.deadLetterTopic,
            configuration: auditor.audit, partitioner: r.partitioner, connectTimeout: r.connectTimeout)
        var logger = Logger(label: "polyglot.audit")
        logger.logLevel = .warning
        try reporting { sink in try TopicAudit(options: options, logger: logger).run { findings in try sink(findings) } }
    }
}

/// `audit --files`: a replay run's files.
struct AuditFilesOptions: ParsableArguments {
    @Option(parsing: .upToNextOption, help: ArgumentHelp("Audit a replay run's input and output files.", valueName: "IN.jsonl OUT.jsonl"))
    var files: [String] = []

    @Option(help: ArgumentHelp("replay's dead-letter file, to check rejected lines by code.", valueName: "DLQ.jsonl"))
    var dlq: String?
}

/// What `audit --files` and `audit --once` write.
struct AuditBatchOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Write the findings and counts as JSON to this file ('-' for stdout).", valueName: "FILE"))
    var report: String?

    @Flag(help: "Print each finding's log line on stderr.")
    var log = false
}

/// The continuous auditor's own settings.
struct ContinuousAuditOptions: ParsableArguments {
    @Option(help: "The continuous auditor's consumer group and internal topic prefix (default: \(Setting.auditGroup.defaultText)).")
    var group: String?

    @Option(help: "The processor's application id, whose committed offsets say which inputs are due (default: \(Setting.applicationID.defaultText)).")
    var applicationId: String?

    @Option(help: "Topic of the continuous auditor's findings (default: \(Setting.auditFindingsTopic.defaultText)).")
    var findingsTopic: String?

    @Option(parsing: .unconditional, help: "How long the continuous auditor remembers a matched transaction id, to tell a duplicate from an orphan (default: \(Setting.auditSettle.defaultText)).")
    var settle: String?

    @Option(parsing: .unconditional, help: "How long the oldest input the processor has not committed past may wait before its partition is reported stalled (default: \(Setting.auditStallAfter.defaultText)).")
    var stallAfter: String?
}
