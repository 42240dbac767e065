import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import KafkaClient
@testable import StreamEngine
@testable import Observability
@testable import Roles

/// The continuous auditor on the dev broker: a role on the stream runtime with its own group,
/// state and findings topic.
@Suite("Continuous audit", .brokerHeavy)
struct AuditorTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.audit")
        l.logLevel = .error
        return l
    }()

    /// Kinds that mean the processor is wrong (or the auditor is).
    static let discrepancies: Set<String> = ["missing", "duplicate", "orphan", "mismatch", "drift", "unreadableOutput", "deadLetterMismatch"]

    /// An auditor of `topics` in `group`, its internal and findings topics created.
    func auditor(_ topics: ProcessorTopics, group: String, findings: String, state: URL, instance: String = "a",
                 settle: Duration = .seconds(120)) throws -> ContinuousAuditor {
        for topic in ["\(group)-ledger-changelog", "\(group)-repartition"] {
            try? topics.cluster.createExactTopic(topic, partitions: topics.partitions)
        }
        try? topics.cluster.createExactTopic(findings, partitions: topics.partitions)
        var runtime = topics.configuration(stateDirectory: state, untilEnd: false)
        runtime.applicationID = group
        runtime.instanceID = instance
        let configuration = AuditorConfiguration(
            pipeline: runtime, audit: AuditConfiguration(fingerprintDigest: runtime.fingerprintDigest),
            findingsTopic: findings, processorGroup: topics.applicationID, settle: settle, probeInterval: .milliseconds(200))
        return try ContinuousAuditor(configuration: configuration, logger: logger)
    }

    /// Runs `auditors` until their committed counts, added up, satisfy `done`, then stops them.
    func audit(_ auditors: [ContinuousAuditor], timeout: Duration = .seconds(90),
             whileRunning: @Sendable () async throws -> Void = {},
             until done: @escaping @Sendable (AuditCounts) -> Bool) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for a in auditors { group.addTask { try await a.runtime.runOnDedicatedThread(threadName: "test-audit") } }
            try await whileRunning()
            let deadline = ContinuousClock.now + timeout
            while !done(Self.total(auditors)), ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            for a in auditors { a.requestStop() }
            try await group.waitForAll()
        }
        #expect(done(Self.total(auditors)), "auditors stopped at \(Self.total(auditors))")
    }

    static func total(_ auditors: [ContinuousAuditor]) -> AuditCounts {
        var c = AuditCounts()
        for a in auditors { c.add(a.counts) }
        return c
    }

    /// The findings on `topic` (read_committed), as (kind, transaction id, output position).
    func findings(_ topics: ProcessorTopics, _ topic: String, count: Int) async throws -> [String] {
        try await topics.read(topic, count: count, timeout: .seconds(20)).map { m in
            let object = try #require(try JSONSerialization.jsonObject(with: Data(m.value ?? [])) as? [String: Any])
            let output = (object["output"] as? [String: Any]).map { "\($0["partition"] ?? "")/\($0["offset"] ?? "")" } ?? "-"
            return "\(object["kind"] ?? "?") \(object["transactionId"] ?? "-") \(output)"
        }.sorted()
    }

    static func flaggedCount(_ expected: [String: [UInt8]]) -> Int {
        expected.values.filter { String(decoding: $0, as: UTF8.self).contains("\"isFlagged\":true") }.count
    }

    /// An auditor stopped while inputs wait for their outputs, then restarted on an empty state
    /// directory (the ledger comes back from its changelog) after the processor caught up: every
    /// pending input meets its output, nothing is missing, and no finding is reported twice.
    @Test func restartNeitherForgetsAPendingInputNorReportsTwice() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        var workload = Workload.valid(count: 600, cards: 12)
        workload.records.insert(Workload.Record(key: Array("k".utf8), value: Array("{not json".utf8), transactionId: nil), at: 10)
        let records = workload.kafkaRecords
        let firstHalf = 301
        let processorState = try TestPaths.temporaryDirectory()
        let auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        try await topics.produce(Array(records[..<firstHalf]))
        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState), logger: logger))
        // The second half is read by the auditor before the processor has handled it.
        try await topics.produce(Array(records[firstHalf...]))
        let group = "audit-\(UUID().uuidString.prefix(8).lowercased())", findingsTopic = "\(group)-findings"
        let first = try auditor(topics, group: group, findings: findingsTopic, state: auditorState)
        try await audit([first]) { $0.inputs == records.count && $0.outputs == firstHalf - 1 && $0.deadLetters == 1 }
        #expect(first.counts.missing == 0)

        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState), logger: logger))
        try FileManager.default.removeItem(at: auditorState)
        let second = try auditor(topics, group: group, findings: findingsTopic, state: auditorState)
        try await audit([second]) { $0.outputs == records.count - firstHalf }
        #expect(second.runtime.statistics.restoredRecords > 0, "the second auditor restored its ledger from the changelog")
        #expect(second.counts.inputs == 0, "inputs are not read again")

        let expected = try Workload.expected(workload.records)
        let flagged = Self.flaggedCount(expected)
        let found = try await findings(topics, findingsTopic, count: flagged)
        #expect(found.filter { Self.discrepancies.contains(String($0.prefix { $0 != " " })) } == [])
        #expect(found.count == flagged, "one finding per flagged output, none twice")
        #expect(Set(found).count == found.count)
    }

    /// Two auditors in one group share the partitions and report what one auditor reports.
    @Test func twoAuditorsReportWhatOneDoes() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 4)
        let workload = Workload.valid(count: 800, cards: 16)
        let states = try (0..<4).map { _ in try TestPaths.temporaryDirectory() }
        defer { for s in states { try? FileManager.default.removeItem(at: s) } }
        let pair = "pair-\(UUID().uuidString.prefix(8).lowercased())"
        let a = try auditor(topics, group: pair, findings: "\(pair)-findings", state: states[0], instance: "a")
        let b = try auditor(topics, group: pair, findings: "\(pair)-findings", state: states[1], instance: "b")
        let n = workload.records.count
        let processorState = states[3]
        try await audit([a, b], timeout: .seconds(120), whileRunning: {
            // Both members hold partitions before any record exists, so both have work.
            let deadline = ContinuousClock.now + .seconds(60)
            while a.runtime.statistics.tasks == 0 || b.runtime.statistics.tasks == 0 || a.runtime.statistics.tasks + b.runtime.statistics.tasks != 4,
                  ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
            try await topics.produce(workload.kafkaRecords)
            try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState), logger: logger))
        }) { $0.inputs == n && $0.outputs == n }
        #expect(a.counts.inputs > 0 && b.counts.inputs > 0, "both auditors audited: \(a.counts.inputs) and \(b.counts.inputs)")

        let single = "one-\(UUID().uuidString.prefix(8).lowercased())"
        let one = try auditor(topics, group: single, findings: "\(single)-findings", state: states[2])
        try await audit([one]) { $0.inputs == n && $0.outputs == n }
        #expect(Self.total([a, b]) == one.counts)

        let flagged = Self.flaggedCount(try Workload.expected(workload.records))
        let fromPair = try await findings(topics, "\(pair)-findings", count: flagged)
        let fromOne = try await findings(topics, "\(single)-findings", count: flagged)
        #expect(fromPair.count == flagged)
        #expect(fromPair == fromOne)
    }

    /// The crafted topics of the batch audit's test, audited continuously once the processor's
    /// group has committed past every input: the same counts, the missing input and the orphan
    /// (its source names an input that did not exist), and one JSON record per finding on the
    /// findings topic, the mismatch with both versions.
    @Test func continuousAuditCountsCraftedDiscrepanciesExactly() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        try await produceCraftedDiscrepancies(topics)
        let committer = try cluster.consumer(group: topics.applicationID)
        try await committer.commit([KafkaTopicPartitionOffset(KafkaTopicPartition(topics.input, 0), offset: 10)])
        await committer.close()
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let group = "craft-\(UUID().uuidString.prefix(8).lowercased())"
        let auditor = try auditor(topics, group: group, findings: "\(group)-findings", state: state, settle: .seconds(2))
        // With its endpoints, as `polyglot audit` serves them: the counts are on /metrics too.
        let metrics = RoleMetrics(role: "audit", fingerprintDigest: auditor.configuration.pipeline.fingerprintDigest,
                                  families: AuditRole.metricFamilies)
        let server = ObservabilityServer(host: "127.0.0.1", port: 0, metrics: metrics, policy: HealthPolicy(), logger: logger) {
            auditor.snapshot
        }
        let endpoints = ServiceGroup(configuration: ServiceGroupConfiguration(services: [.init(service: server)],
                                                                              logger: Logger(label: "polyglot.test.group")))
        let scraped = Mutex<PrometheusText?>(nil)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await endpoints.run() }
            try await audit([auditor], whileRunning: {
                let client = HTTPTestClient(port: await server.listeningPort())
                try await client.waitForHealth(200)
                let text = try await client.waitForMetrics { $0["polyglot_audit_findings_total", ["kind": "missing"]] == 1 }
                scraped.withLock { $0 = text }
            }) { $0.missing == 1 && $0.orphan == 1 && $0.outputs == 11 }
            await endpoints.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        let text = try #require(scraped.withLock { $0 })
        // Records in, each topic under its own source label.
        let final = try PrometheusText(metrics.exposition(of: auditor.snapshot))
        #expect(final["polyglot_records_in_total", ["source": "input"]] == 10)
        #expect(final["polyglot_records_in_total", ["source": "output"]] == 11)
        #expect(final["polyglot_records_in_total", ["source": "dead_letter"]] == Double(auditor.counts.deadLetters))
        #expect(final["polyglot_records_in_total", ["source": "repartition"]] != nil)
        #expect(text["polyglot_audit_findings_total", ["kind": "mismatch"]] == 1)
        #expect(text["polyglot_audit_findings_total", ["kind": "highValue"]] == 1)
        #expect(text["polyglot_audit_records_total", ["record": "input"]] == 10)
        let c = auditor.counts
        #expect(c.inputs == 10)
        #expect(c.duplicate == 1)
        #expect(c.mismatch == 1)
        #expect(c.drift == 1)
        #expect(c.highValue == 1)
        #expect(c.flagged == 0)
        let records = try await topics.read("\(group)-findings", count: 6, timeout: .seconds(20))
        let kinds = records.compactMap { m -> String? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(m.value ?? [])) as? [String: Any] else { return nil }
            return object["kind"] as? String
        }
        #expect(kinds.sorted() == ["drift", "duplicate", "highValue", "mismatch", "missing", "orphan"])
        let mismatch = records.first { String(decoding: $0.value ?? [], as: UTF8.self).contains("\"kind\":\"mismatch\"") }
        let mismatchText = String(decoding: mismatch?.value ?? [], as: UTF8.self)
        #expect(mismatchText.contains("\"expected\":") && mismatchText.contains("\"actual\":"))
        #expect(mismatch?.key == Array("t-bad".utf8))
    }
}
