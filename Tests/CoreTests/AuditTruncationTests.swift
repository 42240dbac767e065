import Foundation
import Testing
@testable import FraudModel
@testable import PolyglotSupport
@testable import StateStore
@testable import Roles

/// A batch audit of topics whose oldest records retention deleted before the audit read them:
/// one `truncated` finding per partition, nothing missing, orphaned or mismatched around the gap,
/// and true findings after it still found.
@Suite("Audit under retention")
struct AuditTruncationTests {
    /// 60 inputs of three cards within a few windows, so most verdicts depend on earlier records,
    /// and the outputs the processor writes for them (one lane), in input order.
    static func pipeline() throws -> (inputs: [[UInt8]], outputs: [[UInt8]], ids: [String]) {
        var decoder = TransactionDecoder()
        let encoder = EnrichedRecordEncoder(parameters: .default)
        let detector = InMemoryDetector(parameters: .default)
        var inputs: [[UInt8]] = [], outputs: [[UInt8]] = [], ids: [String] = []
        for i in 0..<60 {
            let id = "t\(i)"
            let text = "{\"transactionId\":\"\(id)\",\"cardId\":\"c\(i % 3)\",\"amount\":\(i + 1),\"timestamp\":\(1_700_000_000_000 + Int64(i) * 4_000)}"
            let transaction = try decoder.decode(Array(text.utf8))
            let out = ByteBuffer(capacity: 256)
            encoder.append(transaction, detector.process(card: transaction.cardId, eventTime: transaction.timestamp), to: out)
            inputs.append(Array(text.utf8))
            outputs.append(Array(out.bytes))
            ids.append(id)
        }
        return (inputs, outputs, ids)
    }

    /// Audits `inputs` (from input offset `firstInput`) and `outputs` (from output offset
    /// `firstOutput`, leaving out `skipping`), telling the reconciler what was deleted when `truncation` is set.
    static func audit(firstInput: Int = 0, firstOutput: Int = 0, skipping: Set<Int> = [], truncation: Bool = true) throws
        -> (counts: AuditCounts, findings: [AuditFinding]) {
        let (inputs, outputs, _) = try pipeline()
        let r = BatchAuditReconciler(configuration: AuditConfiguration())
        if truncation {
            var t = AuditTruncation(outputTopic: "out", deadLetterTopic: "dlq")
            if firstInput > 0 { t.inputs[0] = Int64(firstInput) }
            if firstOutput > 0 { t.outputs[0] = Int64(firstOutput) }
            r.setTruncation(t, inputTopic: "in") { _ in 0 }
        }
        // Inputs a little ahead of outputs, as a topic audit reads them.
        var nextInput = firstInput
        for i in firstOutput..<outputs.count {
            while nextInput < inputs.count && nextInput <= i + 2 {
                inputs[nextInput].withUnsafeBytes { r.input($0, position: .record(topic: "in", partition: 0, offset: Int64(nextInput))) }
                nextInput += 1
            }
            guard !skipping.contains(i) else { continue }
            outputs[i].withUnsafeBytes {
                r.output($0, position: .record(topic: "out", partition: 0, offset: Int64(i)), lane: 0,
                         source: .record(topic: "in", partition: 0, offset: Int64(i)))
            }
        }
        while nextInput < inputs.count {
            inputs[nextInput].withUnsafeBytes { r.input($0, position: .record(topic: "in", partition: 0, offset: Int64(nextInput))) }
            nextInput += 1
        }
        r.finish()
        return (r.counts, r.takeFindings())
    }

    @Test func deletedOutputsAreTruncatedNotMissingAndLaterVerdictsStillMatch() throws {
        let (counts, findings) = try Self.audit(firstOutput: 27)
        #expect(counts.missing == 0 && counts.mismatch == 0 && counts.orphan == 0 && counts.duplicate == 0,
                "\(findings.filter { $0.kind != .flagged }.prefix(3).map(\.logLine))")
        #expect(counts.truncated == 1)
        let truncated = findings.filter { $0.kind == .truncated }
        #expect(truncated.count == 1)
        #expect(truncated.first?.output == .record(topic: "out", partition: 0, offset: 27))
        #expect(truncated.first?.message?.contains("output offsets 0 to 26") == true)
        #expect(truncated.first?.message?.contains("(27 inputs") == true)
        #expect(counts.outputs == 33)
        #expect(!counts.hasDiscrepancies)
        #expect(counts.verdictLine.hasPrefix("audit: clean, 60 inputs, 33 outputs, 0 dead letters; 1 partition truncated"))
    }

    /// Without the truncation known, the same topics read as 27 missing and wrong verdicts (the
    /// gap ends inside a window): what the audit reported before it looked at where each
    /// partition starts.
    @Test func theSameGapUnknownReadsAsMissingAndMismatch() throws {
        let (counts, _) = try Self.audit(firstOutput: 27, truncation: false)
        #expect(counts.missing == 27)
        #expect(counts.mismatch > 0)
    }

    @Test func anOutputLostAfterTheGapIsStillMissing() throws {
        let (counts, findings) = try Self.audit(firstOutput: 27, skipping: [40])
        #expect(counts.missing == 1)
        #expect(findings.first { $0.kind == .missing }?.transactionId == "t40")
        #expect(counts.orphan == 0 && counts.duplicate == 0)
        #expect(counts.truncated == 1)
    }

    @Test func outputsOfDeletedInputsAreNotOrphans() throws {
        let (counts, findings) = try Self.audit(firstInput: 20)
        #expect(counts.orphan == 0 && counts.missing == 0 && counts.mismatch == 0,
                "\(findings.filter { $0.kind != .flagged }.prefix(3).map(\.logLine))")
        #expect(counts.truncated == 1)
        #expect(counts.outputs == 60)
        let truncated = findings.first { $0.kind == .truncated }
        #expect(truncated?.input == .record(topic: "in", partition: 0, offset: 20))
        #expect(truncated?.message?.contains("20 outputs") == true)
    }

    @Test func bothSidesTruncated() throws {
        let (counts, _) = try Self.audit(firstInput: 10, firstOutput: 30)
        #expect(!counts.hasDiscrepancies)
        #expect(counts.truncated == 2)
    }

    @Test func truncatedLogLineNamesNoTransaction() {
        let finding = AuditFinding(kind: .truncated, output: .record(topic: "out", partition: 3, offset: 7), message: "output offsets 0 to 6 were deleted")
        #expect(finding.logLine == "[AUDIT-TRUNCATED] output out/3/7: output offsets 0 to 6 were deleted")
    }
}

/// The batch audit's read balance, without a consumer.
@Suite("Audit read balance")
struct ReadBalanceTests {
    @Test func pausesTheSideAheadAndResumesItWhenTheOtherCatchesUp() {
        var b = ReadBalance(high: 100, low: 10)
        #expect(b.update(pendingInputs: 50, waitingOutputs: 0, inputsRead: 5, outputsRead: 5, inputsDone: false, outputsDone: false) == nil)
        #expect(b.update(pendingInputs: 0, waitingOutputs: 101, inputsRead: 5, outputsRead: 5, inputsDone: false, outputsDone: false) == .pause(.outputs))
        #expect(b.update(pendingInputs: 0, waitingOutputs: 50, inputsRead: 5, outputsRead: 0, inputsDone: false, outputsDone: false) == nil)
        #expect(b.update(pendingInputs: 0, waitingOutputs: 10, inputsRead: 5, outputsRead: 0, inputsDone: false, outputsDone: false) == .resume(.outputs))
        #expect(b.update(pendingInputs: 101, waitingOutputs: 3, inputsRead: 5, outputsRead: 5, inputsDone: false, outputsDone: false) == .pause(.inputs))
        #expect(b.update(pendingInputs: 9, waitingOutputs: 3, inputsRead: 0, outputsRead: 5, inputsDone: false, outputsDone: false) == .resume(.inputs))
    }

    /// A paused side is resumed as soon as the other makes no progress or ends, and nothing is
    /// paused when both sides wait or one has ended: the audit can be slowed, never stopped.
    @Test func neverStopsTheAudit() {
        var b = ReadBalance(high: 100, low: 10)
        #expect(b.update(pendingInputs: 500, waitingOutputs: 500, inputsRead: 5, outputsRead: 5, inputsDone: false, outputsDone: false) == nil)
        #expect(b.update(pendingInputs: 500, waitingOutputs: 0, inputsRead: 5, outputsRead: 5, inputsDone: false, outputsDone: true) == nil)
        #expect(b.update(pendingInputs: 500, waitingOutputs: 0, inputsRead: 5, outputsRead: 5, inputsDone: false, outputsDone: false) == .pause(.inputs))
        #expect(b.update(pendingInputs: 500, waitingOutputs: 0, inputsRead: 0, outputsRead: 0, inputsDone: false, outputsDone: false) == .resume(.inputs))
        #expect(b.update(pendingInputs: 0, waitingOutputs: 500, inputsRead: 5, outputsRead: 5, inputsDone: false, outputsDone: false) == .pause(.outputs))
        #expect(b.update(pendingInputs: 0, waitingOutputs: 500, inputsRead: 5, outputsRead: 0, inputsDone: true, outputsDone: false) == .resume(.outputs))
        #expect(b.paused == nil)
    }

    /// What a continuous auditor task learned of gaps comes back from its changelog record as it
    /// was, and a damaged record is refused with a clear error rather than read wrong.
    @Test func knownGapsComeBackFromTheirChangelogRecord() throws {
        let gaps = KnownGaps(inputs: [2: 40], outputs: [0: 1_234], deadLetters: [1: 7], repartition: [0: 12], accounted: [0: [0, 2]],
                             firstDeadLetterSource: [1: 99], forwardedAfterGap: [1: 5, 2: 8])
        var bytes: [UInt8] = []
        LedgerEntry.gaps(gaps).encode(into: &bytes)
        let back = try bytes.withUnsafeBytes { try LedgerEntry.decode($0) }
        #expect(back == .gaps(gaps))
        #expect(back.rank == .max, "known gaps never expire")
        for cut in [1, 5, bytes.count - 1] {
            #expect(throws: ChangelogDecodingError.self) { try Array(bytes[..<cut]).withUnsafeBytes { try LedgerEntry.decode($0) } }
        }
        var negative: [UInt8] = []
        LedgerEntry.gaps(KnownGaps(outputs: [0: -1])).encode(into: &negative)
        let error = #expect(throws: ChangelogDecodingError.self) { try negative.withUnsafeBytes { try LedgerEntry.decode($0) } }
        #expect(error?.message.contains("negative") == true)
    }
}
