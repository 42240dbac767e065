import Foundation
import Logging
import Testing
@testable import PolyglotSupport
@testable import KafkaClient
@testable import StreamEngine
@testable import Roles

/// The continuous auditor decides missing and orphan from positions: a stopped, lagging or
/// restarting processor and an auditor reading one topic far ahead of another give no false
/// finding, and inputs the processor committed past without output are exactly the missing ones.
@Suite("Continuous audit from positions", .brokerHeavy)
struct AuditPositionTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.audit.positions")
        l.logLevel = .error
        return l
    }()

    static let discrepancies = AuditorTests.discrepancies

    /// The processor's guarantee in these tests: librdkafka's mock drops the offsets a
    /// transaction commits (``MockTransactionOffsetTests``), so there the group's progress comes
    /// from at-least-once commits; a real cluster runs them exactly once.
    static let guarantee: ProcessingGuarantee = TestCluster.usesMock ? .atLeastOnce : .exactlyOnce

    /// An auditor whose settle time is far shorter than any wait in these tests: waiting decides nothing.
    /// `group`: an auditor group of its own (default: a new one).
    func auditor(_ topics: ProcessorTopics, state: URL, stallAfter: Duration = .seconds(300),
                 kafka extra: [String: String] = [:], processorGroup: String? = nil, group: String? = nil) throws -> ContinuousAuditor {
        let group = group ?? "audit-\(UUID().uuidString.prefix(8).lowercased())"
        for topic in ["\(group)-ledger-changelog", "\(group)-repartition", "\(group)-findings"] {
            try? topics.cluster.createExactTopic(topic, partitions: topics.partitions)
        }
        var runtime = topics.configuration(stateDirectory: state, untilEnd: false)
        runtime.applicationID = group
        runtime.instanceID = "a"
        for (k, v) in extra { runtime.kafka.set(k, v) }
        let configuration = AuditorConfiguration(
            pipeline: runtime, audit: AuditConfiguration(fingerprintDigest: runtime.fingerprintDigest),
            findingsTopic: "\(group)-findings", processorGroup: processorGroup ?? topics.applicationID, settle: .milliseconds(500),
            stallAfter: stallAfter, probeInterval: .milliseconds(200))
        return try ContinuousAuditor(configuration: configuration, logger: logger)
    }

    /// Runs `auditor` while `body` runs, then until `done` holds on its committed counts.
    func audit(_ auditor: ContinuousAuditor, timeout: Duration = .seconds(120),
               whileRunning body: @Sendable () async throws -> Void = {},
               until done: @escaping @Sendable (AuditCounts) -> Bool) async throws {
        try await AuditorTests().audit([auditor], timeout: timeout, whileRunning: body, until: done)
    }

    func kinds(_ topics: ProcessorTopics, _ auditor: ContinuousAuditor, count: Int) async throws -> [String] {
        try await topics.read(auditor.configuration.findingsTopic, count: count, timeout: .seconds(20)).compactMap { m in
            (try? JSONSerialization.jsonObject(with: Data(m.value ?? [])) as? [String: Any])?["kind"] as? String
        }
    }

    /// The processor stopped while inputs keep coming, for longer than the stall time, then
    /// started again and caught up: the auditor reports the partitions stalled and resumed, and
    /// nothing missing, orphan, duplicate or mismatched.
    @Test(.longOnTheBroker) func stoppedProcessorIsStalledNotMissing() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let workload = Workload.valid(count: 900, cards: 12)
        let records = workload.kafkaRecords
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        try await topics.produce(Array(records[..<300]))
        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState, guarantee: Self.guarantee), logger: logger))
        let auditor = try auditor(topics, state: auditorState, stallAfter: .seconds(2))
        let n = records.count
        let logger = self.logger
        try await audit(auditor, whileRunning: {
            // The processor is down: the rest arrives and waits longer than the stall time.
            try await topics.produce(Array(records[300...]))
            #expect(try await waitUntil(within: .seconds(60)) { auditor.counts.stalled >= 1 && auditor.counts.inputs == n })
            #expect(auditor.counts.missing == 0)
            // /metrics: the inputs waiting for the processor and the oldest one's age, per partition.
            let samples = auditor.role.metricSamples
            let waiting = samples.filter { $0.name == "polyglot_audit_waiting_inputs" }
            #expect(waiting.count == 3 && waiting.map(\.value).reduce(0, +) == Int64(n - 300), "\(waiting)")
            #expect(samples.contains { $0.name == "polyglot_audit_oldest_waiting_seconds" && $0.value >= 2 })
            try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState, guarantee: Self.guarantee), logger: logger))
        }) { $0.outputs == n && $0.resumed >= $0.stalled && $0.stalled >= 1 }
        let c = auditor.counts
        #expect(c.missing == 0 && c.orphan == 0 && c.duplicate == 0 && c.mismatch == 0 && c.drift == 0, "\(c)")
        let flagged = AuditorTests.flaggedCount(try Workload.expected(workload.records))
        let found = try await kinds(topics, auditor, count: flagged + c.stalled + c.resumed)
        #expect(found.filter { Self.discrepancies.contains($0) } == [])
        #expect(found.filter { $0 == "stalled" }.count == c.stalled)
        #expect(found.filter { $0 == "resumed" }.count == c.resumed)
    }

    /// A processor group that committed past 300 inputs whose outputs were never written:
    /// exactly those inputs are missing, and nothing else is reported.
    @Test func inputsCommittedPastWithoutOutputsAreExactlyMissing() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let workload = Workload.valid(count: 300, cards: 12)
        try await topics.produce(workload.kafkaRecords)
        // The group commits the end of every input partition, as a processor that lost its outputs would.
        let consumer = try cluster.consumer(group: topics.applicationID)
        let partitions = (0..<Int32(topics.partitions)).map { KafkaTopicPartition(topics.input, $0) }
        let ends = try consumer.endOffsets(partitions, timeout: .seconds(10))
        try await consumer.commit(partitions.map { KafkaTopicPartitionOffset($0, offset: ends[$0]!) })
        await consumer.close()
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let auditor = try auditor(topics, state: state)
        try await audit(auditor) { $0.missing == 300 }
        let c = auditor.counts
        #expect(c.inputs == 300 && c.missing == 300 && c.outputs == 0)
        #expect(c.orphan == 0 && c.duplicate == 0 && c.mismatch == 0)
        let found = try await kinds(topics, auditor, count: 300)
        #expect(found.count == 300 && found.allSatisfy { $0 == "missing" })
    }

    /// An auditor started from scratch over a processed backlog whose output partitions are
    /// read far behind the input (their broker answers slowly, a fetch at a time): clean.
    @Test(.longOnTheBroker, .enabled(if: TestCluster.usesMock, TestCluster.needsMock))
    func outputsReadFarBehindInputsIsClean() async throws {
        let cluster = try TestCluster(brokers: 2)
        let mock = try #require(cluster.mock)
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        for p in 0..<Int32(2) {
            for topic in [topics.input, topics.output, topics.deadLetters, "\(topics.applicationID)-repartition"] {
                try mock.setPartitionLeader(topic: topic, partition: p, brokerID: 1)
            }
        }
        let workload = Workload.valid(count: 1_000, cards: 16)
        let n = workload.records.count
        try await topics.produce(workload.kafkaRecords)
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        // Outputs in small batches, so a fetch of a few kilobytes returns a few of them.
        var processing = topics.configuration(stateDirectory: processorState, guarantee: Self.guarantee)
        processing.kafka.set("batch.num.messages", "10")
        processing.kafka.set("linger.ms", "0")
        try await run(StreamProcessor(configuration: processing, logger: logger))
        // Outputs now come from a slow broker, a small fetch at a time.
        for p in 0..<Int32(2) { try mock.setPartitionLeader(topic: topics.output, partition: p, brokerID: 2) }
        let auditor = try auditor(topics, state: auditorState, stallAfter: .seconds(1),
                                  kafka: ["max.partition.fetch.bytes": "8192"])
        // The auditor's and the processor's coordinators stay on the fast broker.
        let group = auditor.configuration.pipeline.applicationID
        try mock.setCoordinator(keyType: "group", key: group, brokerID: 1)
        try mock.setCoordinator(keyType: "group", key: topics.applicationID, brokerID: 1)
        try mock.setCoordinator(keyType: "transaction", key: "\(group)-a", brokerID: 1)
        try mock.setBrokerRTT(2, milliseconds: 500)
        try await audit(auditor, timeout: .seconds(150), whileRunning: {
            // The input is read through while most outputs are still to come.
            let readThrough = try await waitUntil(within: .seconds(60)) { auditor.counts.inputs == n }
            #expect(readThrough)
            #expect(auditor.counts.outputs < n / 2, "outputs were not read behind: \(auditor.counts.outputs) of \(n)")
        }) { $0.outputs == n }
        let c = auditor.counts
        #expect(c.inputs == n)
        #expect(c.missing == 0 && c.orphan == 0 && c.duplicate == 0 && c.mismatch == 0 && c.stalled == 0, "\(c)")
    }
}

/// librdkafka 2.0.2's mock cluster answers TxnOffsetCommit without storing the offsets, so a
/// group that commits only through transactions shows no committed offset there; a real cluster
/// keeps them. The continuous auditor reads the processor group's committed offsets, so on the
/// dev broker it learns an exactly-once processor's progress from nothing.
@Suite("Mock cluster: offsets committed in a transaction", .brokerHeavy)
struct MockTransactionOffsetTests {
    @Test func transactionalOffsetCommitsAreKeptOnlyByARealCluster() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        try await topics.produce(Workload.valid(count: 100, cards: 8).kafkaRecords)
        var logger = Logger(label: "polyglot.test.mock")
        logger.logLevel = .error
        let partitions = (0..<Int32(2)).map { KafkaTopicPartition(topics.input, $0) }
        for guarantee in [ProcessingGuarantee.exactlyOnce, .atLeastOnce] {
            let state = try TestPaths.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: state) }
            var configuration = topics.configuration(stateDirectory: state, guarantee: guarantee)
            configuration.applicationID = "\(topics.applicationID)-\(guarantee.rawValue)"
            for suffix in ["windows-changelog", "repartition"] {
                try? cluster.createExactTopic("\(configuration.applicationID)-\(suffix)", partitions: 2)
            }
            try await run(StreamProcessor(configuration: configuration, logger: logger))
            let consumer = try cluster.consumer(group: configuration.applicationID)
            let ends = try consumer.endOffsets(partitions, timeout: .seconds(10))
            let committed = try consumer.committed(partitions, timeout: .seconds(10))
            await consumer.close()
            let kept = committed.allSatisfy { $0.offset == ends[$0.topicPartition] }
            if guarantee == .exactlyOnce && cluster.isMock {
                #expect(committed.allSatisfy { $0.offset < 0 }, "the mock kept a transaction's offsets: \(committed)")
            } else {
                #expect(kept, "\(guarantee.rawValue): committed \(committed), ends \(ends)")
            }
        }
    }
}
