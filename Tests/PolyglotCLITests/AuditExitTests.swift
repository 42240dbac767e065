import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif
@testable import KafkaClient

/// The continuous auditor ends as `--files` and `--once` do: the verdict line last on stdout,
/// 0 when its run found nothing wrong, 1 when it found a discrepancy (stopped by SIGTERM or
/// by `--until-end`), 2 when it could not audit.
@Suite("Continuous audit exit", .serialized, PolyglotBinary.enabled)
struct AuditExitTests {
    func auditArguments(_ topics: ProcessTopics, group: String, findings: String, in directory: URL) -> [String] {
        ["audit", "--bootstrap-servers", topics.bootstrap, "--group", group, "--application-id", topics.applicationID,
         "--input-topic", topics.input, "--output-topic", topics.output, "--dlq-topic", topics.deadLetters,
         "--findings-topic", findings, "--state-dir", directory.appendingPathComponent("state-\(group)").path,
         "--log-level", "info", "--metrics-port", "0",
         "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"]
    }

    /// Starts an auditor of a new group, waits until its log shows `line`, stops it with SIGTERM.
    func auditUntil(_ line: String, _ topics: ProcessTopics, in directory: URL) async throws -> BackgroundPolyglot {
        let group = "audit-\(UUID().uuidString.prefix(8).lowercased())"
        try topics.createTopics(["\(group)-ledger-changelog", "\(group)-repartition", "\(group)-findings"])
        let auditor = try BackgroundPolyglot(auditArguments(topics, group: group, findings: "\(group)-findings", in: directory), in: directory)
        let deadline = ContinuousClock.now + .seconds(90)
        while !auditor.stderr.contains(line), auditor.isRunning, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        try #require(auditor.stderr.contains(line), "no \(line) in the auditor's log: \(auditor.stderr)")
        auditor.send(SIGTERM)
        let exited = await auditor.waitForExit(within: .seconds(30))
        try #require(exited, "still running 30 s after SIGTERM: \(auditor.stderr)")
        return auditor
    }

    @Test func stopExitsOneAfterADiscrepancyZeroWhenCleanTwoWhenItCannotAudit() async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let topics = try ProcessTopics(partitions: 2)
        let lines = transactionLines(count: 600, cards: 20)
        try await topics.produce(lines[...], in: directory)
        let processed = try polyglot(topics.processArguments(stateDirectory: directory.appendingPathComponent("state").path) + ["--until-end"],
                                     in: directory)
        try #require(processed.status == 0, "\(processed.stderr)")

        let clean = try await auditUntil("FRAUD FLAGGED", topics, in: directory)
        #expect(clean.exitedNormally && clean.status == 0, "status \(clean.status): \(clean.stderr)")
        let cleanVerdict = clean.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(cleanVerdict.hasPrefix("audit: clean, "), "stdout: \(clean.stdout)")

        // An output that names no input: an orphan as soon as it is read.
        let outputs = try await topics.readAll(topics.output)
        let model = try #require(outputs.first { $0.value != nil })
        let value = String(decoding: model.value ?? [], as: UTF8.self)
        let id = try #require(value.firstMatch(of: /"transactionId":"([^"]+)"/)).1
        let producer = try KafkaProducer(configuration: KafkaConfiguration(["bootstrap.servers": topics.bootstrap]))
        try producer.produce(topic: topics.output, partition: model.partition, key: model.key,
                             value: Array(value.replacingOccurrences(of: "\"transactionId\":\"\(id)\"", with: "\"transactionId\":\"orphan-1\"").utf8),
                             headers: model.headers.filter { $0.name != "polyglot-source" })
        try await producer.flush(timeout: .seconds(10))
        _ = await producer.close()

        let wrong = try await auditUntil("[AUDIT-ORPHAN]", topics, in: directory)
        #expect(wrong.exitedNormally && wrong.status == 1, "status \(wrong.status): \(wrong.stderr)")
        let verdict = wrong.stdout.split(separator: "\n").last.map(String.init) ?? ""
        #expect(verdict.hasPrefix("audit: 1 discrepancy (orphan 1), "), "stdout: \(wrong.stdout)")

        // --until-end ends the same way.
        let group = "until-\(UUID().uuidString.prefix(8).lowercased())"
        try topics.createTopics(["\(group)-ledger-changelog", "\(group)-repartition", "\(group)-findings"])
        let untilEnd = try polyglot(auditArguments(topics, group: group, findings: "\(group)-findings", in: directory) + ["--until-end"],
                                    in: directory)
        #expect(untilEnd.status == 1, "\(untilEnd.stderr)")
        #expect(untilEnd.stdout.split(separator: "\n").last?.hasPrefix("audit: 1 discrepancy (orphan 1), ") == true, "stdout: \(untilEnd.stdout)")

        // No findings topic: it cannot audit, says why in one line, and prints no verdict.
        let absent = try polyglot(auditArguments(topics, group: group, findings: "absent-\(group)", in: directory), in: directory)
        #expect(absent.status == 2, "\(absent.stderr)")
        #expect(absent.stderrLines.last?.hasPrefix("polyglot: ") == true && absent.stderr.contains("absent-\(group)"), "\(absent.stderr)")
        #expect(!absent.stdout.contains("audit: "), "\(absent.stdout)")
    }
}
