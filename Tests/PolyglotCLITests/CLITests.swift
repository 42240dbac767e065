import Foundation
import Testing

/// The built `polyglot` binary: `POLYGLOT_BINARY`, else next to the test bundle in the build
/// products directory (on macOS the bundle's executable sits a few folders deeper).
enum PolyglotBinary {
    static let url: URL? = {
        let manager = FileManager.default
        if let override = ProcessInfo.processInfo.environment["POLYGLOT_BINARY"] {
            return manager.isExecutableFile(atPath: override) ? URL(fileURLWithPath: override) : nil
        }
        var folder = (Bundle.main.executableURL ?? URL(fileURLWithPath: CommandLine.arguments[0])).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = folder.appendingPathComponent("polyglot")
            if manager.isExecutableFile(atPath: candidate.path) { return candidate }
            folder.deleteLastPathComponent()
        }
        return nil
    }()

    /// Under `CI=true` a missing binary is a failure, not a skip: a green run must have run
    /// the command-line suites.
    static let isCI = ProcessInfo.processInfo.environment["CI"] == "true"

    /// Runs a suite when the binary is there, or under CI (where its tests then fail).
    static var enabled: ConditionTrait {
        .enabled(if: url != nil || isCI, "the polyglot binary was not found next to the test bundle (set POLYGLOT_BINARY)")
    }

    /// The binary, or an error naming what is missing.
    static func required() throws -> URL {
        guard let url else {
            throw MissingBinary()
        }
        return url
    }

    struct MissingBinary: Error, CustomStringConvertible {
        var description: String { "the polyglot binary was not found next to the test bundle (set POLYGLOT_BINARY)" }
    }
}

/// One run of the binary.
struct Run {
    let status: Int32
    let stdout: String
    let stderr: String
    var stderrLines: [Substring] { stderr.split(separator: "\n") }
}

/// Runs `polyglot` with `arguments` in `directory`, with an environment free of POLYGLOT_*.
func polyglot(_ arguments: [String], in directory: URL, stdin: Data? = nil) throws -> Run {
    let process = Process()
    // The suite runs only when the binary was found.
    process.executableURL = try PolyglotBinary.required()
    process.arguments = arguments
    process.currentDirectoryURL = directory
    process.environment = ["PATH": "/usr/bin:/bin", "HOME": directory.path]
    let out = Pipe(), err = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    // Read both pipes while the process runs, so a full pipe never blocks it.
    let group = DispatchGroup()
    nonisolated(unsafe) var outData = Data(), errData = Data()
    DispatchQueue.global().async(group: group) { outData = out.fileHandleForReading.readDataToEndOfFile() }
    DispatchQueue.global().async(group: group) { errData = err.fileHandleForReading.readDataToEndOfFile() }
    if let stdin { input.fileHandleForWriting.write(stdin) }
    try input.fileHandleForWriting.close()
    process.waitUntilExit()
    group.wait()
    return Run(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
               stderr: String(decoding: errData, as: UTF8.self))
}

func temporaryDirectory() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("polyglot-cli-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

let lines = """
    {"transactionId":"t-1","cardId":"c-1","amount":12.30,"timestamp":1700000000000}
    not json
    {"transactionId":"t-2","cardId":"c-1","amount":1E3,"timestamp":1700000000001}

    """

@Suite("Command line", PolyglotBinary.enabled)
final class CommandLineTests {
    let directory: URL
    init() throws { directory = try temporaryDirectory() }
    deinit { try? FileManager.default.removeItem(at: directory) }

    func file(_ name: String, _ text: String) throws -> String {
        let url = directory.appendingPathComponent(name)
        try Data(text.utf8).write(to: url)
        return url.path
    }

    func text(_ name: String) throws -> String {
        try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }

    @Test func replayExitsZeroWithRejectedLines() throws {
        _ = try file("in.jsonl", lines)
        let run = try polyglot(["replay", "in.jsonl", "-o", "out.jsonl", "--dlq", "dlq.jsonl", "--no-progress"], in: directory)
        #expect(run.status == 0)
        #expect(run.stderrLines.count == 1)
        #expect(run.stderr.hasPrefix("replay: 2 records in "))
        #expect(run.stderr.contains("1 rejected (invalid_json 1)"))
        #expect(try text("out.jsonl").split(separator: "\n").count == 2)
        #expect(try text("dlq.jsonl").hasPrefix(#"{"line":2,"error":"invalid_json""#))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == ["dlq.jsonl", "in.jsonl", "out.jsonl"])
    }

    @Test func replayReadsStdinAndWritesStdout() throws {
        let run = try polyglot(["replay", "-", "-o", "-"], in: directory, stdin: Data(lines.utf8))
        #expect(run.status == 0)
        #expect(run.stdout.hasPrefix(#"{"transactionId":"t-1","cardId":"c-1","amount":12.30,"isFlagged":false"#))
        #expect(run.stdout.split(separator: "\n").count == 2)
    }

    @Test func anUnreadableInputExitsOneWithOneLine() throws {
        let run = try polyglot(["replay", "missing.jsonl"], in: directory)
        #expect(run.status == 1)
        #expect(run.stderr == "polyglot: cannot open 'missing.jsonl': No such file or directory\n")
    }

    @Test(arguments: [
        (["replay", "in.jsonl", "--no-such-flag"], "Unknown option '--no-such-flag'"),
        (["replay", "in.jsonl", "--window", "-5s"], "--window: '-5s' is negative"),
        (["replay", "in.jsonl", "--threshold", "-1"], "threshold must be 0 or more, got -1"),
        (["replay", "in.jsonl", "-o", "./in.jsonl"], "-o ./in.jsonl is the input file"),
        (["replay", "in.jsonl", "-o", "x.jsonl", "--dlq", "x.jsonl"], "-o and --dlq are the same file"),
        (["generate", "10", "--jitter", "-1s"], "--jitter: '-1s' is negative"),
        (["process", "--bootstrap-servers", "h:1", "--guarantee", "twice"], "guarantee 'twice' is not one of"),
        (["process", "--bootstrap-servers", "h:1", "--window", "-5s"], "--window: '-5s' is negative"),
        (["process", "--bootstrap-servers", "h:1", "--threshold", "-1"], "threshold must be 0 or more, got -1"),
        (["process", "--bootstrap-servers", "h:1", "--config", "missing.env"], "settings file: cannot open 'missing.env': No such file or directory"),
        (["dev", "broker", "--partitions", "0"], "--partitions must be between 1 and 10000"),
    ])
    func usageErrorsExit64WithOneLine(arguments: [String], reason: String) throws {
        _ = try file("in.jsonl", lines)
        let run = try polyglot(arguments, in: directory)
        #expect(run.status == 64)
        #expect(run.stderrLines.count == 1)
        #expect(run.stderr.hasPrefix("polyglot: "))
        #expect(run.stderr.contains(reason))
        #expect(try text("in.jsonl") == lines)
    }

    @Test func fileSystemErrorsAreOneLineWithoutFoundationsDump() throws {
        let notADirectory = try file("plain", "")
        let state = try polyglot(["process", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", notADirectory + "/state", "--log-level", "error"], in: directory)
        #expect(state.status == 1)
        #expect(state.stderr == "polyglot: state directory: cannot create directory '\(notADirectory)/state': Not a directory\n")
        let broker = try polyglot(["dev", "broker", "--bootstrap-file", "missing/dir/bootstrap"], in: directory)
        #expect(broker.status == 1)
        #expect(broker.stderrLines.last?.hasPrefix("polyglot: cannot create 'missing/dir/bootstrap': No such file or directory") == true)
        for run in [state, broker] { #expect(!run.stderr.contains("Error Domain")) }
    }

    @Test func aMisspeltSecretPropertyIsNeverEchoed() throws {
        let run = try polyglot(["process", "--bootstrap-servers", "127.0.0.1:1", "--until-end", "--state-dir", "state",
                                "--metrics-port", "0", "-X", "sasl.pasword=hunter2"], in: directory)
        #expect(run.status == 1)
        #expect(run.stderr.contains("sasl.pasword"))
        #expect(!run.stderr.contains("hunter2"))
        // The state directory was made private, and its absolute path logged.
        // stderr is a pipe: one JSON object per line.
        #expect(run.stderr.contains("\"path\":\"\(directory.path)/state\""))
        let attributes = try FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent("state").path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o700)
    }

    @Test func imageVerifyExitsZeroOneOrTwoWithoutAStrayLine() throws {
        let fingerprint = try polyglot(["image", "fingerprint"], in: directory)
        #expect(fingerprint.status == 0)
        let baked = try file("fingerprint.json", fingerprint.stdout)
        let match = try polyglot(["image", "verify", "--fingerprint", baked], in: directory)
        #expect(match.status == 0)
        let drifted = fingerprint.stdout.replacingOccurrences(of: #""arch":""#, with: #""arch":"other-"#)
        #expect(drifted != fingerprint.stdout)
        let drift = try polyglot(["image", "verify", "--fingerprint", try file("drifted.json", drifted)], in: directory)
        #expect(drift.status == 1)
        #expect(drift.stderr.contains("arch"))
        let missing = try polyglot(["image", "verify", "--fingerprint", "missing.json"], in: directory)
        #expect(missing.status == 2)
        #expect(missing.stderrLines.count == 1)
        for run in [match, drift, missing] { #expect(!run.stderr.split(separator: "\n").contains { $0.trimmingCharacters(in: .whitespaces) == "polyglot:" }) }
    }
}
