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
            let environment = ProcessInfo.processInfo.environment
            if let configured = command as? any SettingsCommand {
                // Read once: the level logging starts with and everything the command resolves
                // come from the same reading of the file.
                let settings = try configured.readSettings(environment: environment)
                LogOutput.bootstrap(level: try configured.startingLogLevel(settings: settings))
                try await configured.run(settings: settings)
                return
            }
            LogOutput.bootstrap(level: try logLevel(of: command, environment: environment))
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

/// A command with `--log-level` and no settings file: its level (flag, then `POLYGLOT_LOG_LEVEL`)
/// is the one logging starts with.
protocol LoggingCommand {
    func logLevel(environment: [String: String]) throws(ConfigurationError) -> Logger.Level
}

/// A command that reads a settings file (`--config`, else `POLYGLOT_CONFIG`). The file is read
/// once per start, before logging starts; the log level and every other setting resolve over
/// that one reading, so a file replaced meanwhile, or a pipe (`--config <(...)`, which can be
/// read only once), cannot give the command two different sets of settings.
protocol SettingsCommand: AsyncParsableCommand {
    /// `--config`; nil: `POLYGLOT_CONFIG`, else no file.
    var settingsFile: String? { get }
    /// The level logging starts with: `--log-level`, then `POLYGLOT_LOG_LEVEL` from the
    /// environment over the file.
    func logLevel(settings: SettingsLayers) throws(ConfigurationError) -> Logger.Level
    /// Runs over the settings read at start.
    func run(settings: SettingsLayers) async throws
}

extension SettingsCommand {
    /// The environment over the settings file, read now; a bad file is one line.
    func readSettings(environment: [String: String]) throws -> SettingsLayers {
        do throws(ConfigurationError) {
            return try SettingsLayers(configFile: settingsFile, environment: environment)
        } catch {
            throw ValidationError(error.message)
        }
    }

    func startingLogLevel(settings: SettingsLayers) throws -> Logger.Level {
        do throws(ConfigurationError) {
            return try logLevel(settings: settings)
        } catch {
            throw ValidationError(error.message)
        }
    }

    /// Reads the settings and runs: for a caller that is not the binary's entry point, which
    /// reads them before logging starts and calls ``run(settings:)`` itself.
    func run() async throws {
        try await run(settings: readSettings(environment: ProcessInfo.processInfo.environment))
    }
}
