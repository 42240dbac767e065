import Foundation
import Logging
import Testing
@testable import FraudModel
@testable import KafkaClient
@testable import Roles

extension AuditTests {
    static let auditorDigest = String(repeating: "ab", count: 32)

    func topicAudit(_ topics: ProcessorTopics, parameters: DetectorParameters = .default,
                    findings: (([AuditFinding]) -> Void)? = nil) throws -> FileAuditSummary {
        var logger = Logger(label: "polyglot.test.audit")
        logger.logLevel = .warning
        let options = TopicAuditOptions(
            kafka: topics.cluster.configuration, inputTopic: topics.input, outputTopic: topics.output, deadLetterTopic: topics.deadLetters,
            configuration: AuditConfiguration(parameters: parameters, fingerprintDigest: AuditTests.auditorDigest))
        return try TopicAudit(options: options, logger: logger).run { findings?($0) }
    }

    /// `audit --once` over a clean pipeline run (repartitioned and rejected records included)
    /// finds nothing to report, with either window kind; an auditor with the other kind reports
    /// every output once as drift with both headers, and nothing as a mismatch.
    @Test(arguments: WindowKind.allCases)
    func onceOverACleanPipelineRunFindsNothing(kind: WindowKind) async throws {
        let parameters = try DetectorParameters(kind: kind)
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        var workload = Workload.valid(count: 600, cards: 12)
        workload.records.append(Workload.Record(key: Array("k".utf8), value: Array("{not json".utf8), transactionId: nil))
        workload.records.append(Workload.Record(key: nil, value: Array(#"{"transactionId":"x","cardId":"y","amount":1}"#.utf8), transactionId: nil))
        try await topics.produce(workload.kafkaRecords)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        var logger = Logger(label: "polyglot.test.process")
        logger.logLevel = .warning
        var configuration = topics.configuration(stateDirectory: state, parameters: parameters)
        configuration.fingerprintDigest = AuditTests.auditorDigest
        let processor = try StreamProcessor(configuration: configuration, logger: logger)
        try await run(processor)
        let summary = try await offPool { try topicAudit(topics, parameters: parameters) }
        let c = summary.counts
        #expect(c.inputs == 602)
        #expect(c.outputs == 600)
        #expect(c.deadLetters == 2)
        #expect(!c.hasDiscrepancies, "\(c)")

        let other = try DetectorParameters(kind: kind == .tumbling ? .sliding : .tumbling)
        let (drifted, drift) = try await offPool {
            var all: [AuditFinding] = []
            let counts = try topicAudit(topics, parameters: other) { all += $0 }.counts
            return (counts, all.filter { $0.kind == .drift })
        }
        #expect(drifted.drift == 600 && drifted.mismatch == 0 && drifted.missing == 0 && drifted.orphan == 0, "\(drifted)")
        #expect(drift.allSatisfy { $0.outputDetector == parameters.header && $0.auditorDetector == other.header })
    }

    /// `audit --once` after retention deleted the oldest outputs (the dev broker keeps about 5 MiB
    /// a partition: 30,000 outputs are more, their inputs less): one `truncated` finding for the
    /// output partition, and nothing missing, orphaned or mismatched around the gap.
    @Test func onceAfterRetentionReportsTruncatedNotMissing() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        // Event times well before the produce time, so that none is in the future (45,000 s of them).
        try await topics.produce(Workload.valid(count: 30_000, cards: 400, start: Workload.epoch - 50_000_000).kafkaRecords)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        var logger = Logger(label: "polyglot.test.process")
        logger.logLevel = .warning
        var configuration = topics.configuration(stateDirectory: state)
        configuration.fingerprintDigest = AuditTests.auditorDigest
        try await run(try StreamProcessor(configuration: configuration, logger: logger))
        let (summary, truncated) = try await offPool {
            var all: [AuditFinding] = []
            let summary = try topicAudit(topics) { all += $0 }
            return (summary, all.filter { $0.kind == .truncated })
        }
        let c = summary.counts
        #expect(c.inputs == 30_000)
        #expect(!c.hasDiscrepancies, "\(c)")
        if cluster.isMock {
            #expect(c.truncated == 1 && truncated.count == 1, "\(truncated.map(\.logLine))")
            guard case .record(let topic, 0, let first)? = truncated.first?.output else {
                Issue.record("no truncated output partition: \(truncated.map(\.logLine))")
                return
            }
            #expect(topic == topics.output, "\(truncated.map(\.logLine))")
            #expect(c.outputs == 30_000 - Int(first))
            #expect(truncated.first?.message?.contains("(\(first) inputs whose outputs were among them") == true)
        }
    }

    /// A crafted output topic with one missing, one duplicate, one orphan, one wrong verdict,
    /// one foreign fingerprint and one high value just above 10,000 reports exactly those.
    @Test func onceCountsCraftedDiscrepanciesExactly() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        try await produceCraftedDiscrepancies(topics)
        let c = try await offPool { try topicAudit(topics) }.counts
        #expect(c.inputs == 10)
        #expect(c.outputs == 11)
        #expect(c.missing == 1)
        #expect(c.duplicate == 1)
        #expect(c.orphan == 1)
        #expect(c.mismatch == 1)
        #expect(c.drift == 1)
        #expect(c.highValue == 1)
        #expect(c.flagged == 0)
        #expect(c.deadLetters == 0)
        #expect(c.hasDiscrepancies)
    }
}

/// Inputs on a one-partition input topic, and the outputs a processor would write for them
/// (replay's), damaged: one missing, one duplicate, one orphan, one wrong verdict, one foreign
/// fingerprint; one input's amount is just above 10,000.
func produceCraftedDiscrepancies(_ topics: ProcessorTopics) async throws {
    let start = Workload.epoch
    func record(_ id: String, _ card: String, _ amount: String, _ minute: Int64) -> [UInt8] {
        Array(#"{"transactionId":"\#(id)","cardId":"\#(card)","amount":\#(amount),"timestamp":\#(start + minute * 61_000)}"#.utf8)
    }
    let inputs: [(id: String, value: [UInt8])] = (0..<5).map { ("t-\($0)", record("t-\($0)", "c1", "1.00", Int64($0))) } + [
        ("t-miss", record("t-miss", "cm", "2.00", 0)), ("t-dup", record("t-dup", "cd", "3.00", 0)),
        ("t-bad", record("t-bad", "cb", "4.00", 0)), ("t-drift", record("t-drift", "cf", "5.00", 0)),
        ("t-high", record("t-high", "ch", "10000.0000000000000001", 0)),
    ]
    try await topics.produce(inputs.map { (key: nil, value: $0.value) })
    // The outputs a processor would write (replay's), then the damage.
    let expected = try Workload.expected(inputs.map { Workload.Record(key: nil, value: $0.value, transactionId: $0.id) })
    var outputs: [(id: String, value: [UInt8], fingerprint: String)] = []
    for input in inputs where input.id != "t-miss" {
        var value = expected[input.id]!
        if input.id == "t-bad" { value = Array(String(decoding: value, as: UTF8.self).replacingOccurrences(of: "\"count\":1", with: "\"count\":7").utf8) }
        let fingerprint = input.id == "t-drift" ? String(repeating: "cd", count: 32) : AuditTests.auditorDigest
        outputs.append((input.id, value, fingerprint))
        if input.id == "t-dup" { outputs.append((input.id, value, fingerprint)) }
    }
    let orphan = try Workload.expected([Workload.Record(key: nil, value: record("t-orphan", "co", "6.00", 0), transactionId: "t-orphan")])
    outputs.append(("t-orphan", orphan["t-orphan"]!, AuditTests.auditorDigest))
    let producer = try topics.cluster.producer()
    for o in outputs {
        let source = inputs.firstIndex { $0.id == o.id }.map { "\(topics.input)/0/\($0)" } ?? "\(topics.input)/0/999"
        try producer.produce(topic: topics.output, partition: 0, key: nil, value: o.value,
                             headers: [KafkaHeader("polyglot-source", Array(source.utf8)),
                                       KafkaHeader("polyglot-fingerprint", Array(o.fingerprint.utf8))])
    }
    try await producer.flush(timeout: .seconds(10))
    _ = await producer.close()
}
