import Foundation
import Testing

/// `--help` as a new user reads it: defaults written one way, usage lines that show the
/// options, the audit's modes apart, every command the README names listed.
@Suite("Help text", PolyglotBinary.enabled)
final class HelpTextTests {
    let directory: URL
    init() throws { directory = try temporaryDirectory() }
    deinit { try? FileManager.default.removeItem(at: directory) }

    static let commands: [[String]] = [
        ["replay"], ["audit"], ["process"], ["produce"], ["generate"], ["demo"],
        ["dev", "broker"], ["dev", "kafka-bench"], ["dev", "store-bench"], ["image", "render"], ["image", "fingerprint"], ["image", "verify"],
    ]

    /// The help with its line wrapping undone.
    func help(_ command: [String]) throws -> String {
        let run = try polyglot(command + ["--help"], in: directory)
        #expect(run.status == 0, "\(command): \(run.stderr)")
        return run.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
    }

    @Test(arguments: commands)
    func defaultsAreWrittenOneWay(command: [String]) throws {
        let text = try help(command)
        var rest = Substring(text)
        while let range = rest.range(of: "default") {
            let before = rest[..<range.lowerBound].last
            let after = rest[range.upperBound...].prefix(1)
            // "(default: X)", or the word in running text: never "(default X)" or "X (default)".
            if before == "(" { #expect(after == ":", "\(command): \(rest[range.lowerBound...].prefix(40))") }
            #expect(after != ")", "\(command): \(rest[..<range.upperBound].suffix(40))")
            rest = rest[range.upperBound...]
        }
    }

    @Test(arguments: commands)
    func usageShowsTheOptions(command: [String]) throws {
        let run = try polyglot(command + ["--help"], in: directory)
        let usage = try #require(run.stdout.range(of: "USAGE: ").map { run.stdout[$0.upperBound...] })
        let line = usage.prefix { $0 != "\n" }
        #expect(line.contains("--") || line.contains("-o "), "\(command): \(line)")
        #expect(!line.hasSuffix("<options>") || line.contains("--"), "\(command): \(line)")
    }

    @Test func auditHelpGroupsTheOptionsOfEachMode() throws {
        let text = try help(["audit"])
        for title in ["AUDIT A REPLAY RUN (--FILES)", "AUDIT ONCE (--FILES AND --ONCE)", "CONTINUOUS AUDITOR (NEITHER --FILES NOR --ONCE)",
                      "KAFKA, TOPICS AND STATE (CONTINUOUS, --ONCE); DETECTOR (EVERY MODE)"] {
            #expect(text.contains(title), "no section \(title)")
        }
        let files = try #require(text.range(of: "AUDIT A REPLAY RUN"))
        let continuous = try #require(text.range(of: "CONTINUOUS AUDITOR ("))
        #expect(text[files.upperBound..<continuous.lowerBound].contains("--dlq"))
        #expect(text[continuous.upperBound...].contains("--settle"))
        #expect(text.contains("polyglot audit --files IN.jsonl OUT.jsonl") && text.contains("polyglot audit --once"))
    }

    /// Each `polyglot <command>` the README shows is one `--help` lists.
    @Test func everyCommandTheReadmeNamesIsInHelp() throws {
        let readme = try String(contentsOf: URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("README.md"), encoding: .utf8)
        var named: Set<[String]> = []
        // In running text (`polyglot demo`) and in code blocks (a line that starts with it).
        for match in readme.matches(of: /(?:^|`)polyglot ([a-z-]+)(?: ([a-z][a-z-]*))?/.anchorsMatchLineEndings()) {
            named.insert([String(match.output.1)] + (match.output.2.map { [String($0)] } ?? []))
        }
        #expect(named.count >= 8)
        let top = try help([])
        for words in named {
            #expect(top.contains(" \(words[0]) "), "polyglot --help lacks \(words[0])")
            guard words.count == 2, ["dev", "image"].contains(words[0]) else { continue }
            #expect(try help([words[0]]).contains(" \(words[1]) "), "polyglot \(words[0]) --help lacks \(words[1])")
        }
    }

    @Test func imageVerifyFailuresStartLikeEveryOtherError() throws {
        let missing = try polyglot(["image", "verify", "--fingerprint", "missing.json"], in: directory)
        #expect(missing.status == 2)
        #expect(missing.stderr.hasPrefix("polyglot: ") && missing.stderrLines.count == 1, "\(missing.stderr)")
        let fingerprint = try polyglot(["image", "fingerprint"], in: directory)
        let drifted = fingerprint.stdout.replacingOccurrences(of: #""arch":""#, with: #""arch":"other-"#)
        try Data(drifted.utf8).write(to: directory.appendingPathComponent("drifted.json"))
        let drift = try polyglot(["image", "verify", "--fingerprint", "drifted.json"], in: directory)
        #expect(drift.status == 1)
        #expect(drift.stderr.hasPrefix("polyglot: the environment drifted from drifted.json: 1 field differs"), "\(drift.stderr)")
    }
}
