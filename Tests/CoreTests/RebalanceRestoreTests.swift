import Foundation
import Logging
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import KafkaClient
@testable import StreamEngine
@testable import Roles

/// Scaling a group in and out on the dev broker: instances join and leave while long-running
/// ones keep processing; every partition that comes back is restored from the changelog, and
/// every long-running instance ends healthy with every input's output equal to replay's.
@Suite("Rebalance restores", .brokerHeavy)
struct RebalanceRestoreTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.rebalance")
        l.logLevel = ProcessInfo.processInfo.environment["POLYGLOT_TEST_LOG"] == nil ? .warning : .info
        return l
    }()

    /// A short session: the dev broker waits the session timeout minus a second before it
    /// completes a rebalance, and this suite rebalances a dozen times.
    func configuration(_ topics: ProcessorTopics, state: URL, untilEnd: Bool) -> ProcessorConfiguration {
        var c = topics.configuration(stateDirectory: state, untilEnd: untilEnd)
        c.kafka.set("session.timeout.ms", "2500")
        c.kafka.set("heartbeat.interval.ms", "250")
        return c
    }

    /// One long-running instance, then three short-lived ones (`--until-end`, their own state
    /// directories) joining and leaving one after the other, then new records.
    @Test func oneLongRunningInstanceSurvivesThreeShortLivedOnes() async throws {
        try await churn(longRunning: 1)
    }

    /// The same with two long-running instances sharing the partitions.
    @Test func twoLongRunningInstancesSurviveThreeShortLivedOnes() async throws {
        try await churn(longRunning: 2)
    }

    /// Restores that start while another producer's transaction on the changelog is still open:
    /// each ends (at what a read_committed reader can reach) instead of waiting for the
    /// transaction, and the instances they belong to process what follows.
    @Test func restoreStartsWhileAChangelogTransactionIsOpen() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 6)
        // Every instance's transactions: what aborted ones wrote (the mock shows it) is dropped.
        let recorder = TransactionRecorder()
        let workload = Workload.valid(count: 480, cards: 24)
        let initial = 360
        let states = try (0..<3).map { _ in try TestPaths.temporaryDirectory() }
        defer { for s in states { try? FileManager.default.removeItem(at: s) } }
        let long = try StreamProcessor(configuration: configuration(topics, state: states[0], untilEnd: false), logger: logger, observer: recorder)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await long.runOnDedicatedThread() }
            try await topics.produce(Array(workload.kafkaRecords[..<initial]))
            try await waitForOutputs([long], count: initial)
            // Quiet: every output committed, so no changelog record follows the copies below.
            let committed = try await waitUntil(within: .seconds(30)) {
                recorder.committed.reduce(0) { $0 + $1.written.filter { $0.key.topic == topics.output }.values.reduce(0) { $0 + $1.count } } >= initial
            }
            #expect(committed, "the first \(initial) outputs were not committed within 30 s")
            // Another producer's transaction on every changelog partition, left open: a copy of
            // each partition's last record (applying it again changes nothing).
            let open = try await openChangelogTransaction(topics)
            for state in states.dropFirst() {
                let short = try StreamProcessor(configuration: configuration(topics, state: state, untilEnd: true), logger: logger, observer: recorder)
                try await run(short, timeout: .seconds(60))
            }
            try await open.abortTransaction(timeout: .seconds(10))
            _ = await open.close()
            try await topics.produce(Array(workload.kafkaRecords[initial...]))
            try await waitForOutputs([long], count: workload.records.count, healthy: true)
            long.requestStop()
            try await group.waitForAll()
        }
        try await topics.expectExactlyOnce(try Workload.expected(workload.records), recorder: recorder)
    }

    /// A restore whose fetches fail stops advancing: past the stall limit, `/healthz` names the
    /// changelog partition, its position, the end it waits for and why; once fetches answer
    /// again it finishes and the run ends with replay's outputs.
    @Test(.enabled(if: TestCluster.usesMock, TestCluster.needsMock))
    func aRestoreThatCannotAdvanceSaysWhy() async throws {
        let cluster = try TestCluster()
        let mock = try #require(cluster.mock)
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        let recorder = TransactionRecorder()
        let workload = Workload.valid(count: 200, cards: 8)
        try await topics.produce(Array(workload.kafkaRecords[..<150]))
        let states = try (0..<2).map { _ in try TestPaths.temporaryDirectory() }
        defer { for s in states { try? FileManager.default.removeItem(at: s) } }
        try await run(try StreamProcessor(configuration: configuration(topics, state: states[0], untilEnd: true), logger: logger, observer: recorder))
        try await topics.produce(Array(workload.kafkaRecords[150...]))
        // A fresh instance restores everything; every fetch fails for about 20 s (each failure
        // backs off 500 ms), so its restore stops advancing past a 1 s limit, and stays stalled
        // long enough to be seen by a check that other tests keep waiting for its turn.
        var c = configuration(topics, state: states[1], untilEnd: true)
        c.restoreStallLimit = .seconds(1)
        stallRestoreFetches(on: mock, reader: &c)
        let restoring = try StreamProcessor(configuration: c, logger: logger, observer: recorder)
        // The statistics while a restore stalled, if it ever did.
        let seen = try await withThrowingTaskGroup(of: RuntimeStatistics?.self) { group in
            group.addTask {
                try await run(restoring, timeout: .seconds(120))
                return nil
            }
            group.addTask {
                var seen: RuntimeStatistics?, last: RuntimeStatistics?
                _ = try await waitUntil(within: .seconds(90)) {
                    let s = restoring.statistics.runtime
                    last = s
                    // Stalled, and the lag of every assigned partition sampled.
                    guard s.restores.contains(where: { $0.stall != nil }), s.consumerLag.count == 4 else { return s.phase == .stopped }
                    seen = s
                    return true
                }
                if seen == nil, let s = last {
                    Issue.record("last seen: \(s.phase.rawValue), \(s.assignedPartitions) partitions, restores \(s.restores.map(\.summary)), lag of \(s.consumerLag.count) partitions")
                }
                return seen
            }
            var found: RuntimeStatistics?
            for try await s in group { found = found ?? s }
            return found
        }
        let stalled = try #require(seen, "no stall was reported (or no lag sampled while it lasted)")
        let reason = RoleHealth.evaluate(stalled).reason ?? ""
        // Lag while restoring: every assigned partition of the input and the repartition topic,
        // the input's from the group's committed offsets to the end. The mock keeps no offsets
        // committed through a transaction, so there it counts from the earliest record.
        let lagTopics = Set(stalled.consumerLag.keys.map(\.topic))
        #expect(lagTopics == [topics.input, "\(topics.applicationID)-repartition"], "\(stalled.consumerLag)")
        #expect(stalled.consumerLag.filter { $0.key.topic == topics.input }.values.reduce(0, +) == 200, "\(stalled.consumerLag)")
        let changelog = "\(topics.applicationID)-windows-changelog"
        #expect(reason.contains("\(changelog)/"), "\(reason)")
        #expect(reason.contains("no progress for"), "\(reason)")
        #expect(reason.contains(" of "), "\(reason)")
        #expect(restoring.statistics.restores.isEmpty)
        try await topics.expectExactlyOnce(try Workload.expected(workload.records), recorder: recorder)
    }

    func churn(longRunning: Int) async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 6)
        // Every instance's transactions: what aborted ones wrote (the mock shows it) is dropped.
        let recorder = TransactionRecorder()
        let workload = Workload.valid(count: 480, cards: 24)
        let initial = 360
        let states = try (0..<(longRunning + 3)).map { _ in try TestPaths.temporaryDirectory() }
        defer { for s in states { try? FileManager.default.removeItem(at: s) } }
        let long = try states.prefix(longRunning).map {
            try StreamProcessor(configuration: configuration(topics, state: $0, untilEnd: false), logger: logger, observer: recorder)
        }
        var shortLived: [StreamProcessor] = []
        try await withThrowingTaskGroup(of: Void.self) { group in
            for p in long { group.addTask { try await p.runOnDedicatedThread() } }
            try await topics.produce(Array(workload.kafkaRecords[..<initial]))
            try await waitForOutputs(long, count: initial, healthy: true)
            for state in states.dropFirst(longRunning) {
                let short = try StreamProcessor(configuration: configuration(topics, state: state, untilEnd: true), logger: logger, observer: recorder)
                try await run(short, timeout: .seconds(60))
                shortLived.append(short)
            }
            try await topics.produce(Array(workload.kafkaRecords[initial...]))
            try await waitForOutputs(long + shortLived, count: workload.records.count, healthy: true, of: long)
            for p in long { p.requestStop() }
            try await group.waitForAll()
        }
        try await topics.expectExactlyOnce(try Workload.expected(workload.records), recorder: recorder)
    }

    /// Waits until `processors` have produced `count` outputs together and (when `healthy`)
    /// each of `instances` (default: all) reports healthy, recording what it saw otherwise.
    func waitForOutputs(_ processors: [StreamProcessor], count: Int, healthy: Bool = false,
                        of instances: [StreamProcessor]? = nil, within timeout: Duration = .seconds(60)) async throws {
        let watched = instances ?? processors
        let done = try await waitUntil(within: timeout) {
            processors.reduce(0) { $0 + $1.statistics.outputs } >= count
                && (!healthy || watched.allSatisfy { RoleHealth.evaluate($0.statistics.runtime).isHealthy })
        }
        if !done {
            let states = watched.map { p -> String in
                let h = RoleHealth.evaluate(p.statistics.runtime)
                return "\(h.state.rawValue)\(h.reason.map { " (\($0))" } ?? "")"
            }
            Issue.record("\(processors.reduce(0) { $0 + $1.statistics.outputs }) of \(count) outputs after \(timeout); \(states.joined(separator: "; "))")
        }
    }

    /// A transactional producer with an open transaction holding a copy of every changelog
    /// partition's last record, without its positions header: it restores to the same state
    /// whether a reader sees it (the mock shows open and aborted records) or not.
    func openChangelogTransaction(_ topics: ProcessorTopics) async throws -> KafkaProducer {
        let changelog = "\(topics.applicationID)-windows-changelog", partitions = topics.partitions
        let consumer = try topics.cluster.consumer(["isolation.level": "read_committed"])
        // Each partition read to its end: an older record copied after the last would restore
        // an older state.
        let last = try await offPool { () -> [KafkaMessage] in
            var last: [KafkaMessage] = []
            for p in 0..<Int32(partitions) {
                let tp = KafkaTopicPartition(changelog, p)
                let high = try consumer.queryWatermarks(tp, timeout: .seconds(10)).high
                guard high > 0 else { continue }
                try consumer.assign([KafkaTopicPartitionOffset(tp, offset: KafkaOffset.beginning)])
                var latest: KafkaMessage?
                let deadline = ContinuousClock.now + .seconds(20)
                while ContinuousClock.now < deadline {
                    for m in try consumer.poll(maxMessages: 10_000, timeout: .milliseconds(100)) { latest = m }
                    if let position = try consumer.position([tp]).first?.offset, position >= high { break }
                }
                if let latest { last.append(latest) }
            }
            return last
        }
        await consumer.close()
        #expect(!last.isEmpty, "the changelog is empty")
        let producer = try topics.cluster.producer(["transactional.id": "open-\(UUID().uuidString.prefix(8))"])
        try await producer.initTransactions(timeout: .seconds(30))
        try producer.beginTransaction()
        for m in last {
            try producer.produce(topic: changelog, partition: m.partition, key: m.key, value: m.value, blockIfQueueFull: true)
        }
        try await producer.flush(timeout: .seconds(10))
        return producer
    }
}

/// Makes the next restore of a processor configured with `reader` stand still for about 20 s:
/// the dev broker fails the next 40 fetches (of any client; a restoring processor's group
/// consumer waits paused, so they are its restore's), each backing off 500 ms.
func stallRestoreFetches(on mock: MockCluster, reader: inout ProcessorConfiguration) {
    reader.kafka.set("fetch.error.backoff.ms", "500")
    mock.pushRequestErrors(apiKey: MockCluster.APIKey.fetch, errors: Array(repeating: KafkaError.Code.notLeaderForPartition, count: 40))
}

/// librdkafka keeps a partition paused by the application through unassign and assign: only
/// resume ends the pause. A client that pauses a partition it later assigns again must resume
/// it, or it never fetches (a librdkafka behaviour, not the mock's: pausing is client-side).
@Suite("librdkafka pause", .brokerHeavy)
struct KafkaPauseTests {
    @Test func aPausedPartitionStaysPausedThroughUnassignAndAssign() async throws {
        let cluster = try TestCluster()
        let topic = try await cluster.topic("pause", partitions: 1, recordsEach: 3)
        let consumer = try cluster.consumer()
        let tp = KafkaTopicPartition(topic, 0)
        let counts = try await offPool { () -> [Int] in
            func drain(_ within: Duration) throws -> Int { try poll(consumer, until: 3, within: within).count }
            try consumer.assign([KafkaTopicPartitionOffset(tp, offset: KafkaOffset.beginning)])
            let first = try drain(.seconds(10))
            try consumer.pause([tp])
            try consumer.unassign()
            try consumer.assign([KafkaTopicPartitionOffset(tp, offset: KafkaOffset.beginning)])
            let whilePaused = try drain(.seconds(2))
            try consumer.resume([tp])
            let resumed = try drain(.seconds(10))
            return [first, whilePaused, resumed]
        }
        await consumer.close()
        #expect(counts == [3, 0, 3])
    }
}

/// librdkafka refuses to seek a partition whose fetcher is not running (`_STATE`): one no
/// longer assigned, or one just assigned whose fetcher waits for the group's committed offsets.
/// The consumer's seek returns those partitions (the runtime keeps them paused and seeks them
/// again later) and still moves the others (a librdkafka behaviour, not the mock's: fetchers
/// are client-side).
@Suite("librdkafka seek", .brokerHeavy)
struct KafkaSeekTests {
    @Test func aSeekReturnsThePartitionsWithoutARunningFetcherAndMovesTheOthers() async throws {
        let cluster = try TestCluster()
        let topic = try await cluster.topic("seek", partitions: 2, recordsEach: 3)
        let consumer = try cluster.consumer()
        let (p0, p1) = (KafkaTopicPartition(topic, 0), KafkaTopicPartition(topic, 1))
        let (refused, reread) = try await offPool { () -> ([KafkaTopicPartition], [Int64]) in
            func read(_ count: Int) throws -> [Int64] { try poll(consumer, until: count, within: .seconds(10)).map(\.offset) }
            try consumer.assign([KafkaTopicPartitionOffset(p0, offset: KafkaOffset.beginning), KafkaTopicPartitionOffset(p1, offset: KafkaOffset.beginning)])
            _ = try read(6)
            // p1 is no longer assigned; p0's fetcher runs again once its records come back.
            try consumer.assign([KafkaTopicPartitionOffset(p0, offset: KafkaOffset.beginning)])
            _ = try read(3)
            let refused = try consumer.seek([KafkaTopicPartitionOffset(p0, offset: 1), KafkaTopicPartitionOffset(p1, offset: 0)],
                                            timeout: .seconds(10))
            return (refused, try read(2))
        }
        await consumer.close()
        #expect(refused == [p1])
        #expect(reread == [1, 2], "p0 moved back to offset 1")
    }
}
