import Foundation
import Logging
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import KafkaClient
@testable import StateStore
@testable import StreamEngine
@testable import Roles

/// A transaction failure injected into the processor: a request error the mock cluster
/// returns (`api`, `code`), or a call failed from the Swift side before it reaches Kafka
/// (`operation`), which works on any cluster.
struct InjectedFault: CustomStringConvertible, Sendable {
    let name: String
    var api: Int16 = 0
    var code: Int32 = 0
    var operation: TransactionOperation? = nil
    var description: String { name }
}

extension ProcessorTopics {
    /// The group's committed offsets of the input topic, by partition.
    func committedInputOffsets() throws -> [Int32: Int64] {
        let consumer = try cluster.consumer(group: applicationID)
        defer { consumer.close() }
        let committed = try consumer.committed((0..<Int32(partitions)).map { KafkaTopicPartition(input, $0) }, timeout: .seconds(10))
        return Dictionary(uniqueKeysWithValues: committed.map { ($0.topicPartition.partition, $0.offset) })
    }

    /// The input positions the state covers, by partition: from the last changelog record of
    /// each partition (the last committed transaction's), which carries them; `skipping` are
    /// records of aborted transactions.
    func changelogInputPositions(skipping: [Int32: Set<Int64>] = [:]) async throws -> [Int32: Int64] {
        let consumer = try cluster.consumer(["isolation.level": "read_committed"])
        let topic = "\(applicationID)-windows-changelog", partitions = self.partitions
        let positions = try await offPool { () -> [Int32: Int64] in
            var last: [Int32: Int64] = [:]
            for p in 0..<Int32(partitions) {
                let tp = KafkaTopicPartition(topic, p)
                let high = try consumer.queryWatermarks(tp, timeout: .seconds(10)).high
                try consumer.assign([KafkaTopicPartitionOffset(tp, offset: KafkaOffset.beginning)])
                let deadline = ContinuousClock.now + .seconds(20)
                while ContinuousClock.now < deadline {
                    for m in try consumer.poll(maxMessages: 10_000, timeout: .milliseconds(100)) where !(skipping[p]?.contains(m.offset) ?? false) {
                        if let h = m.headers.first(where: { $0.name == ChangelogPositions.header })?.value,
                           let decoded = h.withUnsafeBytes({ ChangelogPositions.decode($0) }) {
                            last[p] = decoded[0]
                        }
                    }
                    if let position = try consumer.position([tp]).first?.offset, position >= high { break }
                }
            }
            return last
        }
        await consumer.close()
        return positions
    }

    /// The input topic's end offsets, by partition.
    func inputEndOffsets() throws -> [Int32: Int64] {
        let consumer = try cluster.consumer()
        defer { consumer.close() }
        var ends: [Int32: Int64] = [:]
        for p in 0..<Int32(partitions) { ends[p] = try consumer.queryWatermarks(KafkaTopicPartition(input, p), timeout: .seconds(10)).high }
        return ends
    }
}

extension ProcessorTests {
    /// Request errors the mock returns (it alone can inject them), and calls failed from the
    /// Swift side (any cluster).
    static let abortableFaults: [InjectedFault] = (TestCluster.usesMock ? [
        InjectedFault(name: "EndTxn UNKNOWN_PRODUCER_ID", api: MockCluster.APIKey.endTxn, code: KafkaError.Code.unknownProducerID),
        InjectedFault(name: "TxnOffsetCommit UNKNOWN_MEMBER_ID", api: MockCluster.APIKey.txnOffsetCommit, code: 25),
        InjectedFault(name: "AddPartitionsToTxn TOPIC_AUTHORIZATION_FAILED", api: MockCluster.APIKey.addPartitionsToTxn,
                      code: KafkaError.Code.topicAuthorizationFailed),
        InjectedFault(name: "Produce INVALID_RECORD", api: MockCluster.APIKey.produce, code: KafkaError.Code.invalidRecord),
    ] : []) + [
        InjectedFault(name: "begin fails", operation: .begin),
        InjectedFault(name: "sendOffsets fails", operation: .sendOffsets),
        InjectedFault(name: "commit fails", operation: .commit),
    ]

    /// An abortable error in a transaction aborts it, rolls the stores back, rewinds and handles
    /// the same records again, repartitioned ones included; `--until-end` exits only once every
    /// input record is committed, exactly once.
    /// Each fault runs with one window kind, the kinds taking turns: both meet aborts.
    @Test(arguments: zip(abortableFaults, abortableFaults.indices.map { WindowKind.allCases[$0 % WindowKind.allCases.count] }))
    func abortableFaultAbortsRewindsAndProcessesAgain(_ fault: InjectedFault, kind: WindowKind) async throws {
        let parameters = try DetectorParameters(kind: kind)
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let workload = Workload.valid(count: 900, cards: 15, misKeyedCards: 3)
        try await topics.produce(workload.kafkaRecords)
        let misplaced = try await topics.misplacedInputRecords(count: workload.records.count)
        try #require(misplaced > 0, "no record goes through the repartition topic: the test proves less than it says")
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        // Injected after the input is written, so the processor's own requests meet it; the
        // Swift-side fault fails the second transaction's call once.
        if let mock = cluster.mock, fault.operation == nil { mock.pushRequestErrors(apiKey: fault.api, errors: [fault.code]) }
        let failed = Mutex(false)
        let faults = fault.operation.map { operation in
            TransactionFaultInjector { op, transaction in
                guard op == operation, transaction == 2, !failed.withLock({ f in defer { f = true }; return f }) else { return nil }
                return TransactionFaultInjector.abortable(op)
            }
        }
        let recorder = TransactionRecorder()
        // Several transactions whatever the machine's speed: the Swift-side fault needs a second.
        var configuration = topics.configuration(stateDirectory: state, parameters: parameters)
        configuration.maxRecordsPerTransaction = 150
        let processor = try StreamProcessor(configuration: configuration, logger: logger,
                                            observer: recorder, transactionFaults: faults)
        try await run(processor, timeout: .seconds(60))
        let s = processor.statistics
        #expect(s.rewinds >= 1, "the processor never saw \(fault)")
        #expect(s.records > workload.records.count, "the rewound records were not handled again")
        // A failed begin leaves nothing to abort; every other fault aborts a transaction.
        if fault.operation != .begin {
            #expect(s.transactionsAborted >= 1)
            #expect(recorder.aborted.count == s.transactionsAborted)
        }
        #expect(s.repartitioned >= misplaced)
        try await topics.expectExactlyOnce(try Workload.expected(workload.records, parameters: parameters), recorder: recorder, "\(fault)")
    }

    /// A fenced producer (another instance took the transactional id) or an unusable one stops
    /// the run with a one-line reason, nothing committed after it.
    @Test(arguments: [
        (InjectedFault(name: "EndTxn PRODUCER_FENCED", api: MockCluster.APIKey.endTxn, code: KafkaError.Code.producerFenced),
         "another instance with the same transactional id took over"),
        (InjectedFault(name: "EndTxn INVALID_TXN_STATE", api: MockCluster.APIKey.endTxn, code: KafkaError.Code.invalidTransactionState),
         "fatal Kafka error"),
    ])
    func fatalFaultStopsTheRunWithItsReason(_ fault: InjectedFault, _ reason: String) async throws {
        let cluster = try TestCluster()
        guard let mock = cluster.mock else { try Test.cancel("fault injection needs the mock cluster (POLYGLOT_TEST_BOOTSTRAP is set)") }
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        let workload = Workload.valid(count: 300, cards: 7)
        try await topics.produce(workload.kafkaRecords)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        mock.pushRequestErrors(apiKey: fault.api, errors: [fault.code])
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state), logger: logger)
        let started = ContinuousClock.now
        let error = await #expect(throws: RuntimeError.self) { try await processor.runOnDedicatedThread() }
        #expect(error?.message.contains(reason) == true, "\(error?.message ?? "no error")")
        #expect(error?.message.contains("\n") == false)
        #expect(ContinuousClock.now - started < .seconds(30))
        #expect(processor.statistics.transactionsCommitted == 0)
    }

    /// A card's state lives in one task whatever partitioner wrote its records: records that a
    /// CRC32 producer put on another partition than murmur2 would go through the repartition
    /// topic, so the verdicts equal replay's over the card's records in order.
    @Test func mixedPartitionersGiveReplaysVerdicts() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 4)
        let workload = Workload.valid(count: 800, cards: 20, misKeyedCards: 0)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        // First half from a librdkafka-default (CRC32) producer, processed; then the second half
        // from a Java-compatible (murmur2) one: each card's records stay in order.
        let half = workload.records.count / 2
        let crc32 = try cluster.producer(["partitioner": KafkaPartitioner.crc32.librdkafkaName])
        for r in workload.records[..<half] { try crc32.produce(topic: topics.input, key: r.key, value: r.value, blockIfQueueFull: true) }
        try await crc32.flush(timeout: .seconds(30))
        _ = await crc32.close()
        let misplaced = try await topics.misplacedInputRecords(count: half)
        #expect(misplaced > 0, "the CRC32 producer put every card where murmur2 would: the test proves nothing")
        let recorder = TransactionRecorder()
        let first = try StreamProcessor(configuration: topics.configuration(stateDirectory: state), logger: logger, observer: recorder)
        try await run(first)
        #expect(first.statistics.repartitioned == misplaced)
        try await topics.produce(Array(workload.kafkaRecords[half...]))
        let second = try StreamProcessor(configuration: topics.configuration(stateDirectory: state), logger: logger, observer: recorder)
        try await run(second)
        #expect(second.statistics.repartitioned == 0)
        try await topics.expectExactlyOnce(try Workload.expected(workload.records), recorder: recorder)
    }

    /// A changelog record no version of the store writes stops that task's restore with a
    /// message naming the topic, partition and offset, and what to do.
    @Test func malformedChangelogRecordStopsTheRestoreWithItsPosition() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        let changelog = "\(topics.applicationID)-windows-changelog"
        let producer = try cluster.producer()
        try producer.produce(topic: changelog, partition: 0, key: [0x02, 0x63] + Array("card".utf8), value: [1, 2, 3], blockIfQueueFull: true)
        try await producer.flush(timeout: .seconds(10))
        _ = await producer.close()
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state), logger: logger)
        let error = await #expect(throws: RuntimeError.self) { try await processor.runOnDedicatedThread() }
        #expect(error?.message.contains("changelog \(changelog)/0 offset 0 cannot be restored") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("delete the state directory and the changelog topic") == true)
    }

    /// An unreachable cluster fails start-up within the connect timeout, naming the servers;
    /// a stop request during start-up ends it at once, without an error.
    @Test func unreachableClusterFailsWithinTheConnectTimeout() async throws {
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        var configuration = ProcessorConfiguration(kafka: KafkaConfiguration(bootstrapServers: "127.0.0.1:9"), stateDirectory: state.path,
                                                   fingerprintDigest: String(repeating: "0", count: 64), untilEnd: true)
        configuration.connectTimeout = .seconds(2)
        let processor = try StreamProcessor(configuration: configuration, logger: logger)
        // Timed on the thread that runs it: a busy test pool must not count.
        let (failure, elapsed) = try await offPool { () -> (String?, Duration) in
            let started = ContinuousClock.now
            do { try processor.run() } catch { return ("\(error)", ContinuousClock.now - started) }
            return (nil, ContinuousClock.now - started)
        }
        #expect(failure?.contains("cannot reach Kafka at 127.0.0.1:9 within") == true, "\(failure ?? "no error")")
        #expect(elapsed >= .seconds(2) && elapsed < .seconds(6), "\(elapsed)")

        configuration.connectTimeout = .seconds(60)
        let stopped = try StreamProcessor(configuration: configuration, logger: logger)
        // The end is taken on the thread that runs it, from the request on: a busy test pool
        // (other tests side by side) must not count.
        async let ended = offPool { () -> ContinuousClock.Instant in
            try stopped.run()
            return ContinuousClock.now
        }
        try await Task.sleep(for: .milliseconds(300))
        let requested = ContinuousClock.now
        stopped.requestStop()
        #expect(try await ended - requested < .seconds(5))
    }
}

extension ProcessorTests {
    /// A store ahead of its changelog (here: the state of one application under another whose
    /// changelog is empty, as after a recreated topic) is rebuilt, not trusted: the verdicts are
    /// replay's, not a continuation of the stale state.
    @Test func storeAheadOfItsChangelogIsRebuilt() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        let workload = Workload.valid(count: 300, cards: 6, misKeyedCards: 0)
        try await topics.produce(workload.kafkaRecords)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        try await run(try StreamProcessor(configuration: topics.configuration(stateDirectory: state), logger: logger))

        // The same input under another application id, with that application's stores set to
        // the first one's.
        let other = "\(topics.applicationID)-b"
        let output = "\(topics.output)-b"
        for topic in [output, "\(other)-windows-changelog", "\(other)-repartition"] {
            try cluster.createExactTopic(topic, partitions: topics.partitions)
        }
        try FileManager.default.copyItem(at: state.appendingPathComponent(topics.applicationID), to: state.appendingPathComponent(other))
        var configuration = topics.configuration(stateDirectory: state)
        configuration.applicationID = other
        configuration.outputTopic = output
        let processor = try StreamProcessor(configuration: configuration, logger: logger)
        try await run(processor)
        #expect(processor.statistics.outputs == workload.records.count)
        let outputs = try await topics.read(output, count: workload.records.count)
        var seen: [String: [UInt8]] = [:]
        var perID: [String: Int] = [:]
        for m in outputs {
            let id = try #require(transactionID(of: m.value))
            seen[id] = m.value
            perID[id, default: 0] += 1
        }
        #expect(perID.values.allSatisfy { $0 == 1 }, "duplicate outputs")
        #expect(differences(seen, try Workload.expected(workload.records)) == [])
    }
}
