import ArgumentParser
import Core

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
            """)

    /// Exit status for an operational failure: 1 means the audit found discrepancies.
    static let failureStatus: Int32 = 2

    @Option(parsing: .upToNextOption, help: ArgumentHelp("Audit a replay run's input and output files.", valueName: "IN.jsonl OUT.jsonl"))
    var files: [String] = []

    @Option(help: "replay's dead-letter file, to check rejected lines by code.")
    var dlq: String?

    @Option(help: "Write the findings and counts as JSON to this file ('-' for stdout).")
    var report: String?

    @Option(name: .customLong("high-value"), help: "Report inputs whose amount is above this, compared exactly as decimals.")
    var highValue: String = "10000"

    @Flag(help: "Print each finding's log line on stderr.")
    var log = false

    @OptionGroup var detector: DetectorOptions

    func validate() throws {
        guard files.count == 2 else {
            throw ValidationError("audit needs --files IN.jsonl OUT.jsonl (got \(files.count) file\(files.count == 1 ? "" : "s"))")
        }
        guard DecimalText(highValue) != nil else {
            throw ValidationError("--high-value must be a JSON number, got '\(highValue)'")
        }
    }

    func run() throws {
        let options = FileAuditOptions(
            input: files[0], output: files[1], deadLetters: dlq,
            configuration: AuditConfiguration(parameters: try detector.parameters(), highValueThreshold: DecimalText(highValue)!))
        let summary: FileAuditSummary
        do {
            let reportFile = try report.map { path throws(FileIOError) in try AuditReport(path: path) }
            let log = self.log
            summary = try FileAudit(options: options).run { findings throws(FileIOError) in
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
}
