import Foundation
import Logging
import Testing
@testable import PolyglotSupport
@testable import KafkaClient
@testable import StreamEngine
@testable import Roles

extension TestCluster {
    /// Serves topic requests as `dev broker` does, on the mock cluster (nil on a real cluster,
    /// where the roles create their internal topics through the admin API). Stop it before the
    /// cluster goes.
    func serveTopicRequests() throws -> MockTopicRequestServer? {
        try mock.map { try MockTopicRequestServer(cluster: $0, logger: Self.quietLogger) }
    }
}

/// Internal topics of any application id or auditor group on the dev broker: the mock cluster
/// has no admin API, so a role asks the broker's host for them.
@Suite("Dev broker topics", .serialized, .brokerHeavy)
struct DevBrokerTopicTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.devbroker")
        l.logLevel = .error
        return l
    }()

    /// What the mock itself does, and why the roles do not rely on it: it refuses CreateTopics,
    /// and a client that names an unknown topic gets one the mock makes up with its default of
    /// 4 partitions, whatever the client needs. Reading metadata of all topics creates none.
    /// The request topic gives exactly the asked partition count; a refused request is not
    /// created, and a cluster without the request topic says so.
    @Test(.enabled(if: TestCluster.usesMock, TestCluster.needsMock))
    func mockMakesUpTopicsWithFourPartitionsRequestsGiveTheCountAsked() async throws {
        let cluster = try TestCluster()
        let id = UUID().uuidString.prefix(8).lowercased()
        let admin = try KafkaAdmin(configuration: cluster.configuration, logger: TestCluster.quietLogger)
        defer { admin.close() }
        await #expect(throws: KafkaAdminUnavailable.self) {
            try await admin.createTopics([KafkaTopicSpecification(name: "created-\(id)", partitions: 3)], timeout: .seconds(5))
        }
        #expect(try await admin.partitionCounts(["named-\(id)"]).isEmpty, "reading all topics' metadata creates none")

        let producer = try cluster.producer()
        try producer.produce(topic: "named-\(id)", key: nil, value: bytes("x"))
        try await producer.flush(timeout: .seconds(10))
        _ = await producer.close()
        #expect(try await admin.partitionCounts(["named-\(id)"]) == ["named-\(id)": 4], "the mock's made-up topic")

        let configuration = cluster.configuration
        let logger = self.logger
        let unserved = try await offPool {
            try MockTopicRequests.request([KafkaTopicSpecification(name: "asked-\(id)", partitions: 3)],
                                          configuration: configuration, timeout: .seconds(5), logger: logger)
        }
        #expect(!unserved, "no request topic: not a dev broker")

        let server = try #require(try cluster.serveTopicRequests())
        defer { server.stop() }
        let served = try await offPool {
            try MockTopicRequests.request([KafkaTopicSpecification(name: "asked-\(id)", partitions: 3),
                                           KafkaTopicSpecification(name: "wide-\(id)", partitions: 7)],
                                          configuration: configuration, timeout: .seconds(10), logger: logger)
        }
        #expect(served)
        #expect(try await admin.partitionCounts(["asked-\(id)", "wide-\(id)"]) == ["asked-\(id)": 3, "wide-\(id)": 7])
        #expect(server.created == ["asked-\(id)", "wide-\(id)"])

        let refused = await #expect(throws: KafkaError.self) {
            _ = try await offPool {
                try MockTopicRequests.request([KafkaTopicSpecification(name: "bad name \(id)", partitions: 3)],
                                              configuration: configuration, timeout: .seconds(2), logger: logger)
            }
        }
        #expect(refused?.code == KafkaError.Code.timedOut)
        #expect(server.created.count == 2)
        if case .success = MockTopicRequests.parse(key: bytes("t"), value: bytes("10001")) { Issue.record("10,001 partitions accepted") }
        if case .failure = MockTopicRequests.parse(key: bytes("a.b_c-1"), value: bytes("10000")) { Issue.record("a valid request refused") }
    }

    /// Two pipelines with application ids the dev broker did not know at start, on one broker,
    /// with 3 partitions (the mock's made-up topics would have 4): each gets its own changelog
    /// and repartition topics co-partitioned with its input, and both process every record right.
    @Test func twoPipelinesWithTheirOwnApplicationIDs() async throws {
        let cluster = try TestCluster()
        let server = try cluster.serveTopicRequests()
        defer { server?.stop() }
        let pipelines = try (0..<2).map { _ in try ProcessorTopics(cluster: cluster, partitions: 3, internalTopics: false) }
        let workload = Workload.valid(count: 400, cards: 12)
        let expected = try Workload.expected(workload.records)
        let states = try pipelines.map { _ in try TestPaths.temporaryDirectory() }
        defer { for s in states { try? FileManager.default.removeItem(at: s) } }
        for p in pipelines { try await p.produce(workload.kafkaRecords) }
        let processors = try zip(pipelines, states).map { p, state in
            try StreamProcessor(configuration: p.configuration(stateDirectory: state), logger: logger)
        }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for p in processors { group.addTask { try await run(p) } }
            try await group.waitForAll()
        }
        for (p, processor) in zip(pipelines, processors) {
            #expect(processor.statistics.repartitioned > 0, "\(p.applicationID) used its repartition topic")
            let admin = try KafkaAdmin(configuration: cluster.configuration, logger: TestCluster.quietLogger)
            let internalTopicNames = [PipelineNames.windowsChangelog(applicationID: p.applicationID), PipelineNames.repartitionTopic(group: p.applicationID)]
            #expect(try await admin.partitionCounts(internalTopicNames) == Dictionary(uniqueKeysWithValues: internalTopicNames.map { ($0, 3) }))
            admin.close()
            var seen: [String: [UInt8]] = [:]
            for m in try await p.read(p.output, count: workload.records.count) {
                let id = try #require(transactionID(of: m.value))
                #expect(seen[id] == nil, "duplicate output for \(id) in \(p.applicationID)")
                seen[id] = m.value
            }
            #expect(differences(seen, expected) == [], "\(p.applicationID)")
        }
    }

    /// Two auditor groups the dev broker did not know at start audit one pipeline at the same
    /// time: each gets its ledger changelog and repartition topics, and both find it clean.
    @Test func twoAuditorGroupsAuditConcurrently() async throws {
        let cluster = try TestCluster()
        let server = try cluster.serveTopicRequests()
        defer { server?.stop() }
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let workload = Workload.valid(count: 500, cards: 12)
        let n = workload.records.count
        let states = try (0..<3).map { _ in try TestPaths.temporaryDirectory() }
        defer { for s in states { try? FileManager.default.removeItem(at: s) } }
        try await topics.produce(workload.kafkaRecords)
        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: states[2]), logger: logger))

        let groups = (0..<2).map { _ in "group-\(UUID().uuidString.prefix(8).lowercased())" }
        let auditors = try zip(groups, states).map { group, state in
            try cluster.createExactTopic("\(group)-findings", partitions: 3)
            var runtime = topics.configuration(stateDirectory: state, untilEnd: false)
            runtime.applicationID = group
            runtime.instanceID = "a"
            return try ContinuousAuditor(configuration: AuditorConfiguration(
                pipeline: runtime, audit: AuditConfiguration(fingerprintDigest: runtime.fingerprintDigest),
                findingsTopic: "\(group)-findings", processorGroup: topics.applicationID, probeInterval: .milliseconds(200)), logger: logger)
        }
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for a in auditors { tasks.addTask { try await a.runtime.runOnDedicatedThread(threadName: "test-audit") } }
            let done = try await waitUntil(within: .seconds(90)) {
                auditors.allSatisfy { $0.counts.inputs == n && $0.counts.outputs == n }
            }
            for a in auditors { a.requestStop() }
            try await tasks.waitForAll()
            #expect(done, "auditors stopped at \(auditors.map(\.counts))")
        }
        for (group, a) in zip(groups, auditors) {
            #expect(!a.counts.hasDiscrepancies, "\(group): \(a.counts.verdictLine)")
            let admin = try KafkaAdmin(configuration: cluster.configuration, logger: TestCluster.quietLogger)
            let internalTopicNames = [PipelineNames.ledgerChangelog(auditorGroup: group), PipelineNames.repartitionTopic(group: group)]
            #expect(try await admin.partitionCounts(internalTopicNames) == Dictionary(uniqueKeysWithValues: internalTopicNames.map { ($0, 3) }))
            admin.close()
        }
    }
}
