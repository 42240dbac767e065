import Foundation
import Testing
@testable import FraudModel
@testable import Roles

@Suite("Audit", .brokerHeavy)
struct AuditTests {
    static let own = String(repeating: "a", count: 64)

    static func reconciler(expectsDeadLetters: Bool = true) -> BatchAuditReconciler {
        AuditReconciler(configuration: AuditConfiguration(fingerprintDigest: own, expectsDeadLetters: expectsDeadLetters))
    }

    static func input(_ r: BatchAuditReconciler, _ text: String, line: Int, readAt: Int64 = 0) {
        Array(text.utf8).withUnsafeBytes { r.input($0, position: .line(line), readAt: readAt) }
    }

    static func output(_ r: BatchAuditReconciler, _ text: String, line: Int, fingerprint: String? = own, receivedAt: Int64 = 0) {
        Array(text.utf8).withUnsafeBytes { r.output($0, position: .line(line), lane: 0, fingerprint: fingerprint, receivedAt: receivedAt) }
    }

    static func record(_ id: String, _ card: String, _ amount: String, _ t: Int64) -> String {
        "{\"transactionId\":\"\(id)\",\"cardId\":\"\(card)\",\"amount\":\(amount),\"timestamp\":\(t)}"
    }

    static func enriched(_ id: String, _ card: String, _ amount: String, _ t: Int64, count: Int, flagged: Bool = false) -> String {
        let reason = flagged ? "Flagged: \(count) transactions in 1 minute" : ""
        return "{\"transactionId\":\"\(id)\",\"cardId\":\"\(card)\",\"amount\":\(amount),\"isFlagged\":\(flagged),\"reason\":\"\(reason)\",\"timestamp\":\(t),\"windowStart\":\(t - t % 60_000),\"count\":\(count)}"
    }

    /// Every shared vector, replayed and then audited (and the vector's own output audited):
    /// nothing missing, duplicated, orphaned or different.
    @Test(arguments: VectorTests.cases)
    func replayedVectorAuditsClean(_ vector: VectorTests.Case) throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = vector.file("in.jsonl").path
        let output = dir.appendingPathComponent("out.jsonl").path
        let dlq = dir.appendingPathComponent("dlq.jsonl").path
        let replay = try Replay(options: ReplayOptions(input: input, output: output, deadLetters: dlq, parameters: vector.parameters)).run()
        for (out, deadLetters) in [(output, dlq), (vector.file("out.jsonl").path, dlq)] {
            var findings: [AuditFinding] = []
            let summary = try FileAudit(options: FileAuditOptions(
                input: input, output: out, deadLetters: deadLetters, configuration: AuditConfiguration(parameters: vector.parameters)))
                .run { findings += $0 }
            let c = summary.counts
            #expect(c.missing == 0 && c.duplicate == 0 && c.orphan == 0 && c.mismatch == 0 && c.drift == 0 && c.unreadable == 0,
                    "\(findings.filter { $0.kind != .flagged && $0.kind != .highValue }.prefix(3).map(\.logLine))")
            #expect(c.outputs == replay.records)
            #expect(c.inputs == replay.records + replay.rejectedTotal)
            #expect(c.deadLetters == replay.rejectedTotal)
            #expect(c.flagged == replay.flagged)
            #expect(c.flagged == findings.filter { $0.kind == .flagged }.count)
        }
    }

    /// One missing, one duplicate, one orphan, one wrong verdict, one foreign fingerprint and
    /// one high value, and nothing else.
    @Test func craftedDiscrepanciesAreCountedExactly() {
        let r = Self.reconciler()
        Self.input(r, Self.record("a", "c1", "10", 1_000), line: 1)
        Self.input(r, Self.record("b", "c1", "10000.0000000000000001", 2_000), line: 2)
        Self.input(r, Self.record("c", "c1", "10000", 3_000), line: 3)
        Self.input(r, Self.record("d", "c2", "1E4", 4_000), line: 4)
        Self.input(r, Self.record("e", "c2", "5", 5_000), line: 5)
        Self.output(r, Self.enriched("a", "c1", "10", 1_000, count: 1), line: 1)
        Self.output(r, Self.enriched("a", "c1", "10", 1_000, count: 1), line: 2)
        Self.output(r, Self.enriched("b", "c1", "10000.0000000000000001", 2_000, count: 2), line: 3)
        Self.output(r, Self.enriched("c", "c1", "10000", 3_000, count: 7), line: 4)
        Self.output(r, Self.enriched("d", "c2", "1E4", 4_000, count: 1), line: 5, fingerprint: String(repeating: "b", count: 64))
        Self.output(r, Self.enriched("z", "c9", "1", 9_000, count: 1), line: 6)
        r.finish()
        let findings = r.takeFindings()
        var expected = AuditCounts()
        expected.inputs = 5
        expected.outputs = 6
        expected.missing = 1
        expected.duplicate = 1
        expected.orphan = 1
        expected.mismatch = 1
        expected.highValue = 1
        expected.drift = 1
        #expect(r.counts == expected)
        #expect(findings.count == 6)
        let byKind = Dictionary(grouping: findings, by: \.kind)
        #expect(byKind[.missing]?.first?.transactionId == "e")
        #expect(byKind[.missing]?.first?.input == .line(5))
        #expect(byKind[.duplicate]?.first?.output == .line(2))
        #expect(byKind[.orphan]?.first?.transactionId == "z")
        #expect(byKind[.highValue]?.first?.transactionId == "b")
        #expect(byKind[.drift]?.first?.outputFingerprint == String(repeating: "b", count: 64))
        #expect(byKind[.drift]?.first?.auditorFingerprint == Self.own)
        let mismatch = byKind[.mismatch]?.first
        #expect(mismatch?.expected == Self.enriched("c", "c1", "10000", 3_000, count: 3))
        #expect(mismatch?.actual == Self.enriched("c", "c1", "10000", 3_000, count: 7))
        #expect(r.pendingInputCount == 0)
    }

    /// Outputs that arrive before their inputs (and inputs in another order than the outputs)
    /// are recomputed in the lane's order, which is the processor's.
    @Test func outputsBeforeInputsRecomputeInLaneOrder() {
        let r = Self.reconciler()
        let records = (1...5).map { Self.record("t\($0)", "c1", "1", Int64($0) * 1_000) }
        for i in 1...5 {
            Self.output(r, Self.enriched("t\(i)", "c1", "1", Int64(i) * 1_000, count: i, flagged: i > 3), line: i)
        }
        #expect(r.hasWaitingOutputs)
        for i in [5, 3, 4, 1, 2] { Self.input(r, records[i - 1], line: i) }
        #expect(!r.hasWaitingOutputs)
        r.finish()
        #expect(r.counts.mismatch == 0)
        #expect(r.counts.missing == 0 && r.counts.orphan == 0)
        #expect(r.counts.flagged == 2)
        let flagged = r.takeFindings().filter { $0.kind == .flagged }
        #expect(flagged.first?.logLine == "[AUDIT-OUTPUT] FRAUD FLAGGED: Transaction t4 for card c1. Reason: Flagged: 4 transactions in 1 minute")
    }

    /// An output waiting for an input that never comes holds its lane until the end, then is an
    /// orphan; the outputs behind it are still recomputed.
    @Test func unknownInputHoldsTheLaneUntilTheEnd() {
        let r = Self.reconciler()
        Self.output(r, Self.enriched("x", "c1", "1", 1_000, count: 1), line: 1)
        Self.output(r, Self.enriched("y", "c1", "1", 2_000, count: 1), line: 2)
        Self.input(r, Self.record("y", "c1", "1", 2_000), line: 1)
        #expect(r.hasWaitingOutputs)
        r.endOfInputs()
        #expect(!r.hasWaitingOutputs)
        r.finish()
        #expect(r.counts.orphan == 1 && r.counts.mismatch == 0 && r.counts.missing == 0)
    }

    @Test func unreadableOutputsAreFindings() {
        let r = Self.reconciler()
        Self.input(r, Self.record("a", "c1", "1", 1_000), line: 1)
        let bad = ["not json", "[1,2]", "{\"transactionId\":\"a\"}",
                   "{\"transactionId\":1,\"cardId\":\"c1\",\"amount\":1,\"isFlagged\":false,\"reason\":\"\",\"timestamp\":1000,\"windowStart\":0,\"count\":1}",
                   "{\"transactionId\":\"a\",\"cardId\":\"c1\",\"amount\":1,\"isFlagged\":\"no\",\"reason\":\"\",\"timestamp\":1000,\"windowStart\":0,\"count\":1}",
                   "\u{FF}"]
        for (i, text) in bad.enumerated() { Self.output(r, text, line: i + 1) }
        Array([0xFF, 0xFE]).withUnsafeBytes { r.output($0, position: .line(7)) }
        r.finish()
        let findings = r.takeFindings()
        let unreadable = findings.filter { $0.kind == .unreadableOutput }
        #expect(unreadable.map(\.output) == (1...7).map { .line($0) })
        #expect(unreadable.allSatisfy { $0.message != nil })
        #expect(r.counts.unreadable == 7)
        #expect(r.counts.outputs == 7)
        #expect(r.counts.missing == 1)
        #expect(r.counts.hasDiscrepancies)
    }

    @Test func deadLettersReconcileByCode() {
        let r = Self.reconciler()
        Self.input(r, Self.record("a", "c1", "1", 1_000), line: 1)
        Self.input(r, "{\"transactionId\":\"x\"}", line: 2)
        Self.input(r, "nope", line: 3)
        Self.input(r, "[1]", line: 4)
        Self.input(r, Self.record("b", "c1", "1", 2_000), line: 5)
        Self.output(r, Self.enriched("b", "c1", "1", 2_000, count: 1), line: 1)
        func letter(_ text: String, _ code: String?, _ source: Int) {
            Array(text.utf8).withUnsafeBytes { r.deadLetter($0, code: code, source: .line(source)) }
        }
        letter("{\"transactionId\":\"x\"}", "missing_field", 2)
        letter("nope", "not_object", 3)
        letter(Self.record("a", "c1", "1", 1_000), "invalid_json", 1)
        letter("{}", "missing_field", 9)
        r.finish()
        let findings = r.takeFindings()
        let mismatches = findings.filter { $0.kind == .deadLetterMismatch }
        #expect(mismatches.count == 3)
        #expect(mismatches.contains { $0.input == .line(3) && $0.expectedCode == "invalid_json" && $0.actualCode == "not_object" })
        #expect(mismatches.contains { $0.input == .line(4) && $0.expectedCode == "not_object" && $0.actualCode == nil })
        #expect(mismatches.contains { $0.input == .line(1) && $0.transactionId == "a" && $0.expectedCode == nil && $0.actualCode == "invalid_json" })
        #expect(findings.contains { $0.kind == .orphan && $0.input == .line(9) && $0.actualCode == "missing_field" })
        #expect(r.counts.mismatch == 3 && r.counts.orphan == 1 && r.counts.missing == 0 && r.counts.deadLetters == 4)
    }

    /// A dead letter read before its input (topics are read concurrently), and the Kafka
    /// timestamp's future-skew rule.
    @Test func deadLetterBeforeItsInputAndFutureSkew() {
        let r = Self.reconciler()
        let source = AuditPosition.record(topic: "financial-transactions", partition: 3, offset: 7)
        let future = Self.record("f", "c1", "1", 10_000_000)
        Array(future.utf8).withUnsafeBytes { r.deadLetter($0, code: "invalid_value", source: source) }
        Array(future.utf8).withUnsafeBytes { r.input($0, position: source, kafkaTimestamp: 1_000) }
        r.finish()
        #expect(r.takeFindings().isEmpty)
        #expect(r.counts.mismatch == 0 && r.counts.orphan == 0 && r.counts.missing == 0)
    }

    /// Continuous mode: an input is missing only once the settle time has passed.
    @Test func expiryReportsMissingAfterTheSettleTime() {
        let r = Self.reconciler()
        Self.input(r, Self.record("a", "c1", "1", 1_000), line: 1, readAt: 100)
        Self.input(r, Self.record("b", "c1", "1", 2_000), line: 2, readAt: 300)
        r.expire(olderThan: 50)
        #expect(r.counts.missing == 0)
        r.expire(olderThan: 200)
        #expect(r.counts.missing == 1)
        #expect(r.takeFindings().map(\.transactionId) == ["a"])
        Self.output(r, Self.enriched("b", "c1", "1", 2_000, count: 1), line: 1)
        r.expire(olderThan: 400)
        #expect(r.counts.missing == 1 && r.counts.mismatch == 0 && r.pendingInputCount == 0)
    }

    @Test func highValueIsExactDecimal() {
        let t = HighValueThreshold(DecimalText(unchecked: "10000"))
        func high(_ s: String) -> Bool { var s = s; return s.withUTF8 { t.isExceeded(by: $0.baseAddress!, $0.count) } }
        #expect(high("10000.0000000000000001"))
        #expect(high("1E5") && high("10001") && high("10000.01e0"))
        #expect(!high("10000") && !high("10000.00") && !high("1E4") && !high("9999.9999") && !high("-20000") && !high("0") && !high("-0"))
        let negative = HighValueThreshold(DecimalText(unchecked: "-5"))
        var text = "-4.9"
        #expect(text.withUTF8 { negative.isExceeded(by: $0.baseAddress!, $0.count) })
        text = "-6"
        #expect(!text.withUTF8 { negative.isExceeded(by: $0.baseAddress!, $0.count) })
    }

    @Test func findingJSONAndLogLines() {
        let f = AuditFinding(kind: .mismatch, transactionId: "t\"1", cardId: "c\n", input: .line(3),
                             output: .record(topic: "enriched-transactions", partition: 2, offset: 9),
                             expected: "{\"a\":1}", actual: "{\"a\":2}")
        #expect(f.json == #"{"kind":"mismatch","transactionId":"t\"1","cardId":"c\n","input":{"line":3},"output":{"topic":"enriched-transactions","partition":2,"offset":9},"expected":"{\"a\":1}","actual":"{\"a\":2}"}"#)
        let high = AuditFinding(kind: .highValue, transactionId: "t-1", input: .line(1), amount: "10000.0000000000000001")
        #expect(high.logLine == "[AUDIT-INPUT] High-value transaction detected: t-1, Amount: 10000.0000000000000001")
        #expect(AuditPosition(source: "financial-transactions/4/12") == .record(topic: "financial-transactions", partition: 4, offset: 12))
        #expect(AuditPosition(source: "nope") == nil)
    }

    @Test func reportFileHoldsCountsAndFindings() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("report.json").path
        let report = try AuditReport(path: path)
        var counts = AuditCounts()
        counts.inputs = 2
        counts.missing = 1
        try report.write([AuditFinding(kind: .missing, transactionId: "a", input: .line(1))])
        try report.finish(counts)
        let object = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as! [String: Any]
        let written = object["counts"] as! [String: Int]
        #expect(Set(written.keys) == Set(counts.entries.map(\.name)))
        #expect(written["inputs"] == 2 && written["missing"] == 1)
        #expect((object["findings"] as! [[String: Any]]).first?["transactionId"] as? String == "a")
    }

    /// Every audit mode closes with this line: clean, or the discrepancies by kind.
    @Test func verdictLineSaysCleanOrCountsDiscrepanciesByKind() {
        var c = AuditCounts()
        c.inputs = 3
        c.outputs = 3
        c.flagged = 2
        c.stalled = 1
        #expect(c.verdictLine == "audit: clean, 3 inputs, 3 outputs, 0 dead letters")
        c.missing = 1
        #expect(c.verdictLine == "audit: 1 discrepancy (missing 1), 3 inputs, 3 outputs, 0 dead letters")
        c.mismatch = 2
        #expect(c.verdictLine == "audit: 3 discrepancies (missing 1, mismatch 2), 3 inputs, 3 outputs, 0 dead letters")
    }
}
