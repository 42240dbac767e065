import Foundation
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import KafkaClient
@testable import StateStore
@testable import StreamEngine
@testable import Roles

/// A transaction client that answers from a script: each call takes the next scripted error
/// for its operation, or succeeds.
final class ScriptedTransactionClient: TransactionClient, @unchecked Sendable {
    // @unchecked: the script and the call log are locked.
    enum Operation: Hashable { case begin, offsets, commit, abort }
    private let state = Mutex<(script: [Operation: [KafkaError]], calls: [Operation], fatal: KafkaError?)>(([:], [], nil))

    func fail(_ operation: Operation, with errors: KafkaError...) {
        state.withLock { $0.script[operation, default: []] += errors }
    }
    func setFatal(_ error: KafkaError) { state.withLock { $0.fatal = error } }
    var calls: [Operation] { state.withLock { $0.calls } }

    private func call(_ operation: Operation) throws(KafkaError) {
        let next: KafkaError? = state.withLock { s in
            s.calls.append(operation)
            guard var errors = s.script[operation], !errors.isEmpty else { return nil }
            let e = errors.removeFirst()
            s.script[operation] = errors
            return e
        }
        if let next { throw next }
    }

    func begin() throws(KafkaError) { try call(.begin) }
    func sendOffsets(_ offsets: [KafkaTopicPartitionOffset]) throws(KafkaError) { try call(.offsets) }
    func commit() throws(KafkaError) { try call(.commit) }
    func abort() throws(KafkaError) { try call(.abort) }
    var fatalError: KafkaError? { state.withLock { $0.fatal } }
    var holdsRecordsDuringCommit: Bool { true }
}

extension KafkaError {
    static let retriable = KafkaError(code: KafkaError.Code.timedOut, name: "_TIMED_OUT", message: "timed out", isRetriable: true)
    static let abortable = KafkaError(code: KafkaError.Code.unknownProducerID, name: "UNKNOWN_PRODUCER_ID", message: "unknown producer", txnRequiresAbort: true)
    static let fenced = KafkaError(code: KafkaError.Code.fenced, name: "_FENCED", message: "fenced by a newer instance", isFatal: true)
}

@Suite("Runtime")
struct RuntimeTests {
    // MARK: Transaction coordinator (no broker)

    @Test func commitCycleMovesIdleOpenCommittingIdle() throws {
        let client = ScriptedTransactionClient()
        let coordinator = TransactionCoordinator(client: client)
        #expect(coordinator.state == .idle)
        try coordinator.beginIfNeeded()
        try coordinator.beginIfNeeded()  // already open: no second begin
        #expect(coordinator.state == .open)
        try coordinator.sendOffsets([])
        coordinator.startCommit()
        #expect(coordinator.state == .committing)
        let result = try coordinator.finishCommit(wait: true)
        #expect(throws: Never.self) { try result?.get() }
        #expect(coordinator.state == .idle)
        #expect(coordinator.counters == .init(begun: 1, committed: 1, aborted: 0, retries: 0))
        #expect(client.calls == [.begin, .offsets, .commit])
        #expect(try coordinator.finishCommit(wait: true) == nil)
    }

    @Test func retriableCommitErrorsAreRetriedThenCommit() throws {
        let client = ScriptedTransactionClient()
        client.fail(.commit, with: .retriable, .retriable)
        let coordinator = TransactionCoordinator(client: client)
        try coordinator.beginIfNeeded()
        coordinator.startCommit()
        let result = try #require(try coordinator.finishCommit(wait: true))
        #expect(throws: Never.self) { try result.get() }
        #expect(coordinator.counters.retries == 2)
        #expect(client.calls == [.begin, .commit, .commit, .commit])
    }

    @Test func abortableCommitErrorMustAbortBeforeTheNextBegin() throws {
        let client = ScriptedTransactionClient()
        client.fail(.commit, with: .abortable)
        let coordinator = TransactionCoordinator(client: client)
        try coordinator.beginIfNeeded()
        coordinator.startCommit()
        let result = try #require(try coordinator.finishCommit(wait: true))
        #expect(throws: TransactionAbortRequired.self) { try result.get() }
        #expect(coordinator.state == .mustAbort)
        // Nothing begins until the failed transaction is aborted.
        #expect(throws: TransactionAbortRequired.self) { try coordinator.beginIfNeeded() }
        #expect(try coordinator.abort())
        #expect(coordinator.state == .idle)
        try coordinator.beginIfNeeded()
        #expect(client.calls == [.begin, .commit, .abort, .begin])
        #expect(coordinator.counters.aborted == 1)
    }

    @Test func retriesRunOutIntoAnAbort() throws {
        let client = ScriptedTransactionClient()
        let coordinator = TransactionCoordinator(client: client, maxRetries: 2)
        client.fail(.offsets, with: .retriable, .retriable, .retriable)
        try coordinator.beginIfNeeded()
        #expect(throws: TransactionAbortRequired.self) { try coordinator.sendOffsets([]) }
        #expect(coordinator.state == .mustAbort)
        #expect(client.calls == [.begin, .offsets, .offsets, .offsets])
    }

    @Test func fencedProducerIsFatalAndStaysFatal() throws {
        let client = ScriptedTransactionClient()
        client.fail(.commit, with: .fenced)
        let coordinator = TransactionCoordinator(client: client)
        try coordinator.beginIfNeeded()
        coordinator.startCommit()
        let error = #expect(throws: TransactionFatalError.self) { _ = try coordinator.finishCommit(wait: true) }
        #expect(error?.description.contains("another instance with the same transactional id took over") == true)
        #expect(coordinator.state == .fatal)
        #expect(throws: TransactionFatalError.self) { try coordinator.beginIfNeeded() }
        #expect(throws: TransactionFatalError.self) { try coordinator.abort() }
    }

    @Test func aClientThatTurnedFatalWinsOverTheErrorsClass() throws {
        let client = ScriptedTransactionClient()
        client.fail(.offsets, with: .abortable)
        client.setFatal(.fenced)
        let coordinator = TransactionCoordinator(client: client)
        try coordinator.beginIfNeeded()
        #expect(throws: TransactionFatalError.self) { try coordinator.sendOffsets([]) }
        #expect(coordinator.state == .fatal)
    }

    @Test func aFailedRecordMakesTheTransactionAbortable() throws {
        let client = ScriptedTransactionClient()
        let coordinator = TransactionCoordinator(client: client)
        try coordinator.beginIfNeeded()
        #expect(throws: TransactionAbortRequired.self) { try coordinator.recordFailed(.abortable) }
        #expect(coordinator.state == .mustAbort)
        try coordinator.abort()
        #expect(coordinator.state == .idle)
    }

    @Test func abortWaitsForACommitInFlightThatSucceeded() throws {
        let client = ScriptedTransactionClient()
        let coordinator = TransactionCoordinator(client: client)
        try coordinator.beginIfNeeded()
        coordinator.startCommit()
        // The commit succeeded: nothing is left to abort.
        #expect(try coordinator.abort() == false)
        #expect(coordinator.state == .idle)
        #expect(!client.calls.contains(.abort))
    }

    @Test func dispositionOfEachErrorClass() {
        #expect(TransactionCoordinator.disposition(of: .retriable) == .retry)
        #expect(TransactionCoordinator.disposition(of: .abortable) == .abort)
        #expect(TransactionCoordinator.disposition(of: .fenced) == .fatal)
        // Fencing codes are fatal even without the fatal flag; unclassified errors abort.
        let epoch = KafkaError(code: KafkaError.Code.invalidProducerEpoch, name: "INVALID_PRODUCER_EPOCH", message: "")
        #expect(TransactionCoordinator.disposition(of: epoch) == .fatal)
        let plain = KafkaError(code: KafkaError.Code.invalidRecord, name: "INVALID_RECORD", message: "")
        #expect(TransactionCoordinator.disposition(of: plain) == .abort)
    }

    // MARK: Partitioners

    /// Java's `Utils.murmur2` on the cases of Kafka's own unit test.
    @Test func murmur2MatchesJava() {
        let cases: [(String, Int32)] = [
            ("21", -973_932_308), ("foobar", -790_332_482), ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829), ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            ("abc", 479_470_107),
        ]
        for (text, expected) in cases {
            var s = text
            let hash = s.withUTF8 { KafkaPartitioner.murmur2($0) }
            #expect(Int32(bitPattern: hash) == expected, "\(text)")
        }
    }

    /// Each partitioner puts keys where librdkafka's producer with the matching `partitioner`
    /// property does.
    @Test(arguments: KafkaPartitioner.allCases)
    func partitionerAgreesWithLibrdkafka(_ partitioner: KafkaPartitioner) async throws {
        let cluster = try TestCluster()
        let partitions = 7
        let topic = try cluster.topic("partitioner", partitions: partitions)
        let producer = try cluster.producer(["partitioner": partitioner.librdkafkaName])
        let keys = (0..<300).map { "card-\($0 * 7919)" } + ["", "é", "a", "ab", "abc", "abcd", "abcde"]
        for key in keys where !key.isEmpty { try producer.produce(topic: topic, key: Array(key.utf8), value: Array(key.utf8)) }
        try await producer.flush(timeout: .seconds(20))
        _ = await producer.close()
        let consumer = try cluster.consumer()
        let messages = try await offPool {
            try readAll(consumer, topic: topic, partitions: partitions, count: keys.count - 1, timeout: .seconds(30))
        }
        await consumer.close()
        #expect(messages.count == keys.count - 1)
        for m in messages {
            let expected = m.key!.withUnsafeBufferPointer { partitioner.partition(of: $0, count: Int32(partitions)) }
            #expect(m.partition == expected, "\(String(decoding: m.key!, as: UTF8.self))")
        }
    }

    /// The classes librdkafka 2.0.2 gives the broker errors the fault tests inject, as the
    /// coordinator maps them: retried inside librdkafka, abortable, or fatal.
    @Test(arguments: [
        (MockCluster.APIKey.endTxn, KafkaError.Code.unknownProducerID, TransactionCoordinator.Disposition.abort),
        (MockCluster.APIKey.endTxn, KafkaError.Code.producerFenced, .fatal),
        (MockCluster.APIKey.endTxn, KafkaError.Code.invalidTransactionState, .fatal),
        (MockCluster.APIKey.txnOffsetCommit, Int32(25), .abort),  // UNKNOWN_MEMBER_ID
        (MockCluster.APIKey.addPartitionsToTxn, KafkaError.Code.topicAuthorizationFailed, .abort),
        (MockCluster.APIKey.produce, KafkaError.Code.invalidRecord, .abort),
    ])
    func librdkafkaClassifiesInjectedErrors(api: Int16, code: Int32, expected: TransactionCoordinator.Disposition) throws {
        let cluster = try TestCluster()
        guard let mock = cluster.mock else { try Test.cancel("fault injection needs the mock cluster (POLYGLOT_TEST_BOOTSTRAP is set)") }
        let topic = try cluster.topic("txn-errors", partitions: 1)
        let producer = try cluster.producer(["transactional.id": "t-\(UUID().uuidString)"])
        defer { _ = producer.close(flushTimeout: .seconds(1)) }
        try producer.initTransactions(timeout: .seconds(10))
        let consumer = try cluster.consumer(group: "g-\(UUID().uuidString)")
        defer { consumer.close() }
        try producer.beginTransaction()
        mock.pushRequestErrors(apiKey: api, errors: [code])
        var failure: KafkaError?
        do {
            try producer.produce(topic: topic, partition: 0, key: nil, value: Array("v".utf8))
            try producer.sendOffsetsToTransaction([KafkaTopicPartitionOffset(topic, 0, offset: 1)], consumer: consumer, timeout: .seconds(10))
            try producer.commitTransaction(timeout: .seconds(10))
        } catch {
            failure = error
        }
        let error = try #require(failure)
        #expect(TransactionCoordinator.disposition(of: error) == expected, "\(error)")
    }

    // MARK: Tasks

    @Test func anAssignmentThatSplitsAPartitionGroupIsRefused() throws {
        final class NoRole: StreamRole {
            typealias Task = FraudDetectionTask
            let sources = [SourceTopic("in"), SourceTopic("in-repartition", isInternal: true)]
            let changelogTopic = "changelog"
            let sinkTopics: [String] = []
            func openStore(directory: String) throws(SQLiteError) -> SQLiteDetectorStore { fatalError() }
            func destroyStore(directory: String) throws(SQLiteError) {}
            func makeTask(partition: Int32, partitionCount: Int, store: SQLiteDetectorStore, collector: RecordCollector) throws -> FraudDetectionTask { fatalError() }
            func didHandleBatch() {}
            var summary: [String: String] { [:] }
        }
        let manager = TaskManager(role: NoRole(), stateRoot: "/nonexistent")
        let both = try manager.assigned([KafkaTopicPartition("in", 0), KafkaTopicPartition("in-repartition", 0)])
        #expect(both.map(\.partition) == [0])
        #expect(both[0].directory.hasSuffix("/in-0"))
        let error = #expect(throws: RuntimeError.self) {
            try manager.assigned([KafkaTopicPartition("in", 1), KafkaTopicPartition("in-repartition", 2)])
        }
        #expect(error?.message.contains("without in-repartition/1") == true)
        #expect(error?.message.contains("partition.assignment.strategy=range") == true)
    }

    @Test func onlyTheRangeAssignorIsAccepted() throws {
        for strategy in ["roundrobin", "cooperative-sticky", "range,roundrobin"] {
            let error = #expect(throws: ConfigurationError.self) {
                try RuntimeConfiguration.checkAssignmentStrategy(KafkaConfiguration(["partition.assignment.strategy": strategy]))
            }
            #expect(error?.message.contains("only 'range' guarantees") == true)
        }
        try RuntimeConfiguration.checkAssignmentStrategy(KafkaConfiguration(["partition.assignment.strategy": "range"]))
        try RuntimeConfiguration.checkAssignmentStrategy(KafkaConfiguration())
    }

    @Test func changelogPositionsRoundTripAndRejectGarbage() {
        for positions: [Int64] in [[0], [-1, 5], [Int64.max, -1, 3]] {
            let bytes = ChangelogPositions.encode(positions)
            #expect(bytes.withUnsafeBytes { ChangelogPositions.decode($0) } == positions)
        }
        for bad in [",", "1,", "-2", "x", "12a", "99999999999999999999", String(repeating: "1,", count: 20) + "1"] {
            #expect(Array(bad.utf8).withUnsafeBytes { ChangelogPositions.decode($0) } == nil, "\(bad)")
        }
    }
}
