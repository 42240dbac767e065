import Foundation
import Testing
@testable import KafkaClient
@testable import Observability

/// What the README promises of the binary, checked on the binary: `audit --files` exit
/// statuses, `--report` and `--log`, `--version`, and `produce`'s exit when a record is not
/// delivered.
@Suite("README claims", PolyglotBinary.enabled)
final class ReadmeClaimTests {
    let directory: URL
    init() throws { directory = try temporaryDirectory() }
    deinit { try? FileManager.default.removeItem(at: directory) }

    static let input = """
        {"transactionId":"t-1","cardId":"c-1","amount":12.30,"timestamp":1700000000000}
        {"transactionId":"t-2","cardId":"c-1","amount":20000,"timestamp":1700000001000}
        {"transactionId":"t-3","cardId":"c-2","amount":5,"timestamp":1700000002000}

        """

    /// A replay's output of `input`, as the audit checks it.
    func replayed() throws {
        try Data(Self.input.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        let replay = try polyglot(["replay", "in.jsonl", "-o", "out.jsonl", "--no-progress"], in: directory)
        try #require(replay.status == 0, "\(replay.stderr)")
    }

    /// Clean: exit 0, a report with every count zero but the informational ones.
    @Test func auditFilesExitsZeroOnACleanRunAndWritesItsReport() throws {
        try replayed()
        let run = try polyglot(["audit", "--files", "in.jsonl", "out.jsonl", "--report", "report.json"], in: directory)
        #expect(run.status == 0, "\(run.stdout) \(run.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("report.json"))) as? [String: Any]
        let counts = try #require(report?["counts"] as? [String: Any], "no counts in the report")
        for kind in ["missing", "duplicate", "orphan", "mismatch"] {
            #expect((counts[kind] as? NSNumber)?.intValue == 0, "\(kind): \(counts[kind] ?? "absent")")
        }
        #expect((counts["highValue"] as? NSNumber)?.intValue == 1, "the 20000 amount is above --high-value 10000")
        #expect((report?["findings"] as? [Any]) != nil)
    }

    /// A duplicated output and a missing one: exit 1, both in the report, each logged with `--log`.
    @Test func auditFilesExitsOneOnFindingsAndLogsEach() throws {
        try replayed()
        let outputs = try String(contentsOf: directory.appendingPathComponent("out.jsonl"), encoding: .utf8).split(separator: "\n")
        try #require(outputs.count == 3)
        // t-1 twice, t-3 never.
        try Data(([outputs[0], outputs[0], outputs[1]].joined(separator: "\n") + "\n").utf8).write(to: directory.appendingPathComponent("bad.jsonl"))
        let run = try polyglot(["audit", "--files", "in.jsonl", "bad.jsonl", "--report", "report.json", "--log"], in: directory)
        #expect(run.status == 1, "\(run.stdout) \(run.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(contentsOf: directory.appendingPathComponent("report.json"))) as? [String: Any]
        let counts = try #require(report?["counts"] as? [String: Any])
        #expect((counts["duplicate"] as? NSNumber)?.intValue == 1, "\(counts)")
        #expect((counts["missing"] as? NSNumber)?.intValue == 1, "\(counts)")
        let findings = try #require(report?["findings"] as? [[String: Any]])
        #expect(findings.count >= 2)
        // --log: a line per finding on stderr, naming the transaction.
        let logged = run.stderr.split(separator: "\n")
        #expect(logged.contains { $0.contains("t-1") && $0.lowercased().contains("duplicate") }, "\(run.stderr)")
        #expect(logged.contains { $0.contains("t-3") && $0.lowercased().contains("missing") }, "\(run.stderr)")
        // Without --log the findings are not logged.
        let quiet = try polyglot(["audit", "--files", "in.jsonl", "bad.jsonl"], in: directory)
        #expect(quiet.status == 1)
        #expect(!quiet.stderr.contains("t-3"), "\(quiet.stderr)")
    }

    /// A file that cannot be read: exit 2 with one line.
    @Test func auditFilesExitsTwoWhenAFileCannotBeRead() throws {
        try replayed()
        let run = try polyglot(["audit", "--files", "in.jsonl", "no-such.jsonl"], in: directory)
        #expect(run.status == 2, "\(run.stderr)")
        #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.hasPrefix("polyglot: "), "\(run.stderr)")
    }

    /// `--version`: the version and the librdkafka and SQLite versions, exit 0.
    @Test func versionNamesTheLibraries() throws {
        let run = try polyglot(["--version"], in: directory)
        #expect(run.status == 0, "\(run.stderr)")
        #expect(run.stdout.contains(ProductVersion.version), "\(run.stdout)")
        #expect(run.stdout.contains("librdkafka"), "\(run.stdout)")
        #expect(run.stdout.contains("SQLite") || run.stdout.contains("sqlite"), "\(run.stdout)")
    }

    /// A record the broker refuses for good: `produce` exits 1 with one line.
    @Test(.enabled(if: ProcessTopics.usesMock, "needs the mock cluster's request-error injection"))
    func produceExitsOneWhenARecordIsNotDelivered() async throws {
        let topics = try ProcessTopics(partitions: 1)
        let mock = try #require(topics.mock)
        try Data(Self.input.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        // MESSAGE_TOO_LARGE is not retried: every produce request fails for good.
        mock.pushRequestErrors(apiKey: MockCluster.APIKey.produce, errors: Array(repeating: 10, count: 20))
        let run = try polyglot(["produce", "in.jsonl", "--bootstrap-servers", topics.bootstrap, "--input-topic", topics.input], in: directory)
        #expect(run.status == 1, "\(run.stderr)")
        #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.hasPrefix("polyglot: "), "\(run.stderr)")
    }
}
