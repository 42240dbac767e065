import ArgumentParser
import PolyglotSupport
import Roles

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write deterministic synthetic transactions as JSONL.",
        discussion: """
            The same arguments give the same bytes on every machine. Event times start at --start \
            (2026-01-01T00:00:00Z unless given) and advance --rate records per second on average; \
            a batch for a pipeline that already runs starts at `--start now`, else its records \
            are late. SIGINT or SIGTERM removes the unfinished output file and exits 130 or 143.
            """)

    @Argument(help: "Number of lines (0 or more).")
    var count: Int

    @Option(parsing: .unconditional, help: "Number of distinct cards.")
    var cards: Int = 10_000

    @Option(parsing: .unconditional, help: "Random seed.")
    var seed: UInt64 = 1

    @Option(parsing: .unconditional, help: "Mean transactions per second of event time.")
    var rate: Int = 100

    @Option(parsing: .unconditional, help: "Fraction of malformed lines, 0 to 1.")
    var bad: Double = 0

    @Option(parsing: .unconditional, help: "Shift event times back by up to this much, for out-of-order records.")
    var jitter: String = "0ms"

    @Option(parsing: .unconditional, help: ArgumentHelp(
        "Event time of the first record: now, or epoch milliseconds (default: \(GeneratorOptions.defaultStartTime), 2026-01-01T00:00:00Z).",
        valueName: "now|epoch-ms"))
    var start: String?

    @Option(name: .shortAndLong, help: "Output file, '-' for stdout.")
    var output: String = "-"

    func run() throws {
        let options: GeneratorOptions
        do {
            options = try GeneratorOptions(
                count: count, cards: cards, seed: seed, ratePerSecond: rate, badFraction: bad,
                jitter: Durations.milliseconds(jitter, setting: "--jitter"),
                startTime: start.map { text throws(ConfigurationError) in try GeneratorOptions.startTime(text) } ?? GeneratorOptions.defaultStartTime)
        } catch {
            throw ValidationError(error.message)
        }
        Interruption.install(command: "generate")
        do {
            try GeneratedFile.write(options: options, to: output)
        } catch {
            throw CommandFailure(error.description)
        }
    }
}
