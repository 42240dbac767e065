import ArgumentParser
import PolyglotSupport
import Observability
import Roles

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Run the fraud detector over a JSONL file, no broker.",
        discussion: """
            Writes one enriched record per valid input line, in input order. Rejected lines go to \
            --dlq (or are only counted). Output files are written beside their target and renamed \
            into place when the run succeeds; neither may be the input. Prints a one-line summary \
            on stderr. Exits 0 even when lines were rejected, 64 on a usage error, 1 when a file \
            cannot be read or written. SIGINT (Ctrl-C) or SIGTERM removes the unfinished output \
            files, leaves the files they were to replace as they were, says so in one line and \
            exits 130 or 143 (128 plus the signal's number, as shells report it).
            """)

    @Argument(help: "Input JSONL file ('-' for stdin).")
    var input: String

    @Option(name: .shortAndLong, help: "Output JSONL file ('-' for stdout).")
    var output: String = "-"

    @Option(help: "Dead-letter JSONL file for rejected lines.")
    var dlq: String?

    @OptionGroup var detector: DetectorOptions

    @Flag(inversion: .prefixedNo, help: "Show a progress bar when stderr is a terminal.")
    var progress = true

    func run() throws {
        let options = ReplayOptions(
            input: input, output: output, deadLetters: dlq,
            parameters: try detector.parameters(),
            showProgress: progress && ProgressBar.stderrIsTerminal)
        do {
            try options.validate()
        } catch {
            throw ValidationError(error.message)
        }
        Interruption.install(command: "replay")
        do {
            let summary = try Replay(options: options).run()
            StandardError.write(summary.line + "\n")
        } catch {
            throw CommandFailure(error.description)
        }
    }
}
