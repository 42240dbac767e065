import ArgumentParser
import Foundation
import Logging
import PolyglotSupport
import KafkaClient
import Observability
import Roles

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
            ProduceCommand.self,
            GenerateCommand.self,
            ImageCommand.self,
            DevCommand.self,
            DemoCommand.self,
        ]
    )

    /// Logging is set up once, for every command, before it runs (``LogOutput``); errors end
    /// the process with one line, `polyglot: <reason>`, rather than the reason plus
    /// a usage block: a bad flag or an unreadable file in a script's log should read as one line.
    static func main() async {
        do {
            var command = try parseAsRoot()
            LogOutput.bootstrap(level: try logLevel(of: command, environment: ProcessInfo.processInfo.environment))
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
            let text = message(for: error)
            StandardError.write("polyglot: \(negativeNumberMessage(text, arguments: Array(CommandLine.arguments.dropFirst())) ?? text)\n")
            exit(withError: ExitCode(code.rawValue))
        }
    }
}

extension Polyglot {
    /// ArgumentParser reads `-5` as a short option, so `generate -5` would say that `<count>` is
    /// missing: a negative number among the arguments is named instead, with what it stood for.
    static func negativeNumberMessage(_ message: String, arguments: [String]) -> String? {
        guard let index = arguments.firstIndex(where: { $0.count > 1 && $0.hasPrefix("-") && Double($0) != nil }) else { return nil }
        let number = arguments[index]
        if let range = message.range(of: "Missing expected argument '"), let end = message[range.upperBound...].firstIndex(of: "'") {
            return "\(message[range.upperBound..<end]) must be 0 or more, got \(number)"
        }
        let misread = message.contains("Missing value for") || message.contains("Unknown option '\(number)'")
        if misread, index > 0, arguments[index - 1].hasPrefix("--") { return "\(arguments[index - 1]): \(number) is negative" }
        return nil
    }

    /// The level logging starts with: the command's (``LoggingCommand``), else `POLYGLOT_LOG_LEVEL`.
    static func logLevel(of command: any ParsableCommand, environment: [String: String]) throws -> Logger.Level {
        do throws(ConfigurationError) {
            if let logging = command as? any LoggingCommand { return try logging.logLevel(environment: environment) }
            return try ObservabilitySettings().resolveLogLevel(environment: environment)
        } catch {
            throw ValidationError(error.message)
        }
    }
}

/// A command with `--log-level`: its level (flag, then `POLYGLOT_LOG_LEVEL`, then its settings
/// file) is the one logging starts with.
protocol LoggingCommand {
    func logLevel(environment: [String: String]) throws(ConfigurationError) -> Logger.Level
}
