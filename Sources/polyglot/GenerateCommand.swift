import ArgumentParser
import Core

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write deterministic synthetic transactions as JSONL.",
        discussion: "The same arguments give the same bytes on every machine.")

    @Argument(help: "Number of lines.")
    var count: Int

    @Option(parsing: .unconditional, help: "Number of distinct cards.")
    var cards: Int = 10_000

    @Option(parsing: .unconditional, help: "Random seed.")
    var seed: UInt64 = 1

    @Option(parsing: .unconditional, help: "Mean transactions per second of event time.")
    var rate: Int = 100

    @Option(parsing: .unconditional, help: "Fraction of malformed lines, 0 to 1.")
    var bad: Double = 0

    @Option(parsing: .unconditional, help: "Shift event times back by up to this much (out-of-order records).")
    var jitter: String = "0ms"

    @Option(name: .shortAndLong, help: "Output file ('-' for stdout).")
    var output: String = "-"

    func run() throws {
        let options: GeneratorOptions
        do {
            options = try GeneratorOptions(
                count: count, cards: cards, seed: seed, ratePerSecond: rate, badFraction: bad,
                jitter: Durations.milliseconds(jitter, setting: "--jitter"))
        } catch {
            throw ValidationError(error.message)
        }
        do {
            try GeneratedFile.write(options: options, to: output)
        } catch {
            throw CommandFailure(error.description)
        }
    }
}
