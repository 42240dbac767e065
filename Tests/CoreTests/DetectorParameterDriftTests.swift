import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

/// SEMANTICS.md §2c: the detector's parameters travel with its verdicts, the auditor reports a
/// difference as drift, and state written under other parameters is refused.
@Suite("Detector parameters")
struct DetectorParameterDriftTests {
    @Test func theHeaderNamesEveryParameterInMilliseconds() throws {
        #expect(DetectorParameters.default.header == "kind=tumbling;window=60000;threshold=3;grace=0;retention=3600000")
        let p = try DetectorParameters(kind: .sliding, window: 30_000, threshold: 2, grace: 5_000, retention: 600_000)
        #expect(p.header == "kind=sliding;window=30000;threshold=2;grace=5000;retention=600000")
        #expect(p.differences(fromHeader: p.header).isEmpty)
        #expect(p.differences(fromHeader: DetectorParameters.default.header)
            == ["kind=tumbling (sliding)", "window=60000 (30000)", "threshold=3 (2)", "grace=0 (5000)", "retention=3600000 (600000)"])
        #expect(p.differences(fromHeader: "garbage") == ["polyglot-detector=garbage (\(p.header))"])
    }

    static func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

    /// An output whose header differs from the auditor's parameters is one drift finding with
    /// both values, never a mismatch, even though its verdict differs from the auditor's; an
    /// output with the auditor's own header and a wrong verdict is still a mismatch.
    @Test func aDifferentDetectorHeaderIsDriftNotMismatch() throws {
        let sliding = try DetectorParameters(kind: .sliding)
        let r = BatchAuditReconciler(configuration: AuditConfiguration(parameters: .default))
        let base: Int64 = 1_700_000_040_000
        let times = [50_000, 55_000, 65_000, 70_000].map { base + Int64($0) }
        let encoder = EnrichedRecordEncoder(parameters: sliding)
        let producer = InMemoryDetector(parameters: sliding)
        for (i, t) in times.enumerated() {
            let record = AuditTests.record("t\(i)", "c", "1", t)
            Self.bytes(record).withUnsafeBytes { r.input($0, position: .line(i + 1)) }
            var decoder = TransactionDecoder()
            let transaction = try decoder.decode(Self.bytes(record))
            let output = encoder.encode(transaction, producer.process(card: "c", eventTime: t))
            output.withUnsafeBytes { r.output($0, position: .line(i + 1), detector: sliding.header) }
        }
        // The auditor's own parameters, a wrong count: a mismatch.
        let wrong = AuditTests.record("t9", "d", "1", base)
        Self.bytes(wrong).withUnsafeBytes { r.input($0, position: .line(9)) }
        Self.bytes(AuditTests.enriched("t9", "d", "1", base, count: 5, flagged: true)).withUnsafeBytes {
            r.output($0, position: .line(9), detector: DetectorParameters.default.header)
        }
        r.finish()
        let findings = r.takeFindings().filter { $0.kind != .flagged }
        #expect(r.counts.drift == 4)
        #expect(r.counts.mismatch == 1)
        let drift = findings.filter { $0.kind == .drift }
        #expect(drift.map(\.transactionId) == ["t0", "t1", "t2", "t3"])
        #expect(drift.allSatisfy { $0.outputDetector == sliding.header && $0.auditorDetector == DetectorParameters.default.header })
        #expect(drift.allSatisfy { $0.outputFingerprint == nil })
        #expect(drift[0].json.contains("\"outputDetector\":\"kind=sliding;window=60000;threshold=3;grace=0;retention=3600000\""))
        #expect(drift[0].logLine.contains("detector kind=sliding;"))
        #expect(findings.filter { $0.kind == .mismatch }.map(\.transactionId) == ["t9"])
    }

    /// A foreign fingerprint and foreign parameters on one output: one finding with both.
    @Test func oneDriftFindingPerOutput() throws {
        let own = String(repeating: "a", count: 64), other = String(repeating: "b", count: 64)
        let r = BatchAuditReconciler(configuration: AuditConfiguration(fingerprintDigest: own))
        Self.bytes(AuditTests.record("x", "c", "1", 1_000)).withUnsafeBytes { r.input($0, position: .line(1)) }
        Self.bytes(AuditTests.enriched("x", "c", "1", 1_000, count: 1)).withUnsafeBytes {
            r.output($0, position: .line(1), fingerprint: other, detector: "kind=tumbling;window=1000;threshold=3;grace=0;retention=3600000")
        }
        r.finish()
        let drift = r.takeFindings().filter { $0.kind == .drift }
        #expect(drift.count == 1)
        #expect(drift.first?.outputFingerprint == other && drift.first?.auditorFingerprint == own)
        #expect(drift.first?.outputDetector?.contains("window=1000") == true)
    }

    /// A state directory written with other parameters is refused at open, naming the parameter.
    @Test(arguments: WindowKind.allCases)
    func aStateDirectoryOfOtherParametersIsRefused(kind: WindowKind) throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let written = try DetectorParameters(kind: kind)
        let store = try SQLiteDetectorStore(directory: dir.path, parameters: written)
        _ = store.process(card: "c", eventTime: 1_000)
        var batch = ChangelogBatch()
        try store.pendingChanges(into: &batch)
        try store.commit(checkpoint: StoreCheckpoint(positions: [1], changelogOffset: 1))
        try store.close()

        let otherKind: WindowKind = kind == .tumbling ? .sliding : .tumbling
        for (parameters, named) in [(try DetectorParameters(kind: otherKind), "kind=\(kind.rawValue) (\(otherKind.rawValue))"),
                                    (try DetectorParameters(kind: kind, window: 30_000), "window=60000 (30000)"),
                                    (try DetectorParameters(kind: kind, retention: 60_000), "retention=3600000 (60000)")] {
            let error = #expect(throws: SQLiteError.self) { try SQLiteDetectorStore(directory: dir.path, parameters: parameters) }
            #expect(error?.code == .otherParameters)
            #expect(error?.requiresRebuild == false, "the state must not be rebuilt over")
            #expect(error?.description.contains(named) == true, "\(error?.description ?? "")")
            #expect(error?.description.contains("new application id") == true)
        }
        // The same parameters open it, state intact.
        let again = try SQLiteDetectorStore(directory: dir.path, parameters: written)
        #expect(again.process(card: "c", eventTime: 1_001).count == 2)
        try again.close()
    }

    /// A changelog written with other parameters, or holding the other kind's cards, stops the
    /// restore naming the parameter.
    @Test(arguments: WindowKind.allCases)
    func aChangelogOfOtherParametersIsRefused(kind: WindowKind) throws {
        let root = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        let otherKind: WindowKind = kind == .tumbling ? .sliding : .tumbling
        let writer = try SQLiteDetectorStore(directory: root.appendingPathComponent("writer").path,
                                             parameters: try DetectorParameters(kind: otherKind, threshold: 5))
        _ = writer.process(card: "c", eventTime: 1_000)
        var batch = ChangelogBatch()
        try writer.pendingChanges(into: &batch)
        try writer.close()
        let records = batch.records
        let parametersRecord = try #require(records.first { $0.key == [ChangelogRecord.version, ChangelogRecord.parametersTag] })
        let card = try #require(records.first { $0.key.count > 2 })

        let reader = try SQLiteDetectorStore(directory: root.appendingPathComponent("reader").path,
                                             parameters: try DetectorParameters(kind: kind))
        defer { try? reader.close() }
        func apply(_ record: ChangelogRecord) throws {
            try record.key.withUnsafeBytes { key in try record.value!.withUnsafeBytes { try reader.apply(key: key, value: $0) } }
        }
        let byParameters = #expect(throws: SQLiteError.self) { try apply(parametersRecord) }
        #expect(byParameters?.description.contains("kind=\(otherKind.rawValue) (\(kind.rawValue)), threshold=5 (3)") == true,
                "\(byParameters?.description ?? "")")
        let byCard = #expect(throws: SQLiteError.self) { try apply(card) }
        #expect(byCard?.description.contains("kind=\(otherKind.rawValue) (\(kind.rawValue))") == true, "\(byCard?.description ?? "")")
        // Its own parameters apply.
        try apply(ChangelogRecord(key: parametersRecord.key, value: Array(try DetectorParameters(kind: kind).header.utf8)))
    }
}
