import ArgumentParser
import Core

@main
struct Polyglot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "polyglot",
        abstract: "Card-fraud stream pipeline: one binary for the processor, the auditor and replay.",
        version: ProductVersion.description,
        subcommands: [
            ReplayCommand.self,
            AuditCommand.self,
            ProcessCommand.self,
            GenerateCommand.self,
            ImageCommand.self,
            DevCommand.self,
        ]
    )

    /// Errors end the process with one line, `polyglot: <reason>`, rather than the reason plus
    /// a usage block: a bad flag or an unreadable file in a script's log should read as one line.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let status as ExitCode {
            exit(withError: status)  // the command has said why, if it had to
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                exit(withError: error)  // --help, --version
            }
            StandardError.write("polyglot: \(message(for: error))\n")
            exit(withError: ExitCode(code.rawValue))
        }
    }
}
