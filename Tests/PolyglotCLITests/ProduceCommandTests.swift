import Foundation
import Testing

@Suite("Produce command", .serialized,
       PolyglotBinary.enabled)
struct ProduceCommandTests {
    @Test func loadsAFileOrStdinAndPrintsOneSummaryLine() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let topics = try ProcessTopics(partitions: 3)
        try Data(lines.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        let arguments = ["--bootstrap-servers", topics.bootstrap, "--input-topic", topics.input]
        let fromFile = try polyglot(["produce", "in.jsonl"] + arguments, in: directory)
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        #expect(fromFile.stderrLines.count == 1, "\(fromFile.stderr)")
        #expect(fromFile.stderr.hasPrefix("produce: 3 records to \(topics.input) (3 partitions) in "), "\(fromFile.stderr)")
        #expect(fromFile.stderr.hasSuffix(": 2 keyed, 1 unkeyed\n"), "\(fromFile.stderr)")
        let fromStdin = try polyglot(["produce", "-", "--partitioner", "crc32"] + arguments, in: directory, stdin: Data(lines.utf8))
        #expect(fromStdin.status == 0, "\(fromStdin.stderr)")
        #expect(fromStdin.stderrLines.count == 1, "\(fromStdin.stderr)")
        #expect(fromStdin.stderr.contains(": 2 keyed, 1 unkeyed"), "\(fromStdin.stderr)")
    }

    @Test(arguments: [
        (["produce", "in.jsonl", "--no-such-flag"], "Unknown option '--no-such-flag'"),
        (["produce", "in.jsonl", "--partitioner", "random"], "partitioner 'random' is not one of murmur2"),
        (["produce", "in.jsonl", "--connect-timeout", "-1s"], "connect timeout: '-1s' is negative"),
        (["produce", "in.jsonl", "-X", "transactional.id=x"], "-X transactional.id"),
        (["produce"], "Missing expected argument '<input>'"),
    ])
    func usageErrorsExit64WithOneLine(arguments: [String], reason: String) throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data(lines.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        let run = try polyglot(arguments + ["--bootstrap-servers", "127.0.0.1:1"], in: directory)
        #expect(run.status == 64)
        #expect(run.stderrLines.count == 1, "\(run.stderr)")
        #expect(run.stderr.hasPrefix("polyglot: "))
        #expect(run.stderr.contains(reason), "\(run.stderr)")
    }

    @Test func anUnreadableFileExitsOneWithOneLine() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let run = try polyglot(["produce", "missing.jsonl", "--bootstrap-servers", "127.0.0.1:1"], in: directory)
        #expect(run.status == 1)
        #expect(run.stderr == "polyglot: cannot open 'missing.jsonl': No such file or directory\n")
    }
}
