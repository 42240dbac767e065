import Dispatch
import Foundation
import Logging
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import KafkaClient
@testable import StateStore
@testable import StreamEngine
@testable import Observability
@testable import Roles

/// A processor's topics on a test cluster, with unique names.
struct ProcessorTopics {
    let cluster: TestCluster
    let applicationID: String
    let input: String
    let output: String
    let deadLetters: String
    let partitions: Int

    /// - Parameter internalTopics: create the changelog and repartition topics too (else the
    ///   processor creates them at start).
    init(cluster: TestCluster, partitions: Int, internalTopics: Bool = true) throws {
        self.cluster = cluster
        self.partitions = partitions
        let id = UUID().uuidString.prefix(8).lowercased()
        applicationID = "app-\(id)"
        input = "in-\(id)"
        output = "out-\(id)"
        deadLetters = "dlq-\(id)"
        let internalNames = internalTopics ? ["\(applicationID)-windows-changelog", "\(applicationID)-repartition"] : []
        for topic in [input, output, deadLetters] + internalNames {
            try cluster.createExactTopic(topic, partitions: partitions)
        }
    }

    func configuration(stateDirectory: URL, untilEnd: Bool = true, guarantee: ProcessingGuarantee = .exactlyOnce,
                       parameters: DetectorParameters = .default) -> ProcessorConfiguration {
        var kafka = cluster.configuration
        kafka.set("session.timeout.ms", "6000")
        kafka.set("heartbeat.interval.ms", "500")
        return ProcessorConfiguration(
            kafka: kafka, applicationID: applicationID, inputTopic: input, outputTopic: output, deadLetterTopic: deadLetters,
            stateDirectory: stateDirectory.path, guarantee: guarantee, commitInterval: .milliseconds(100), parameters: parameters,
            fingerprintDigest: String(repeating: "ab", count: 32), untilEnd: untilEnd,
            storeOptions: SQLiteWindowStore.Options(integrityCheck: .quick))
    }

    /// Produces records keyed as given, with the Java-compatible partitioner the processor uses.
    func produce(_ records: [(key: [UInt8]?, value: [UInt8]?)]) async throws {
        let producer = try cluster.producer(["partitioner": "murmur2_random", "message.max.bytes": "4194304"])
        for r in records { try producer.produce(topic: input, key: r.key, value: r.value, blockIfQueueFull: true) }
        try await producer.flush(timeout: .seconds(30))
        #expect(producer.deliveryCounts.failed == 0)
        _ = await producer.close()
    }

    /// How many input records are not on their card's partition by `partitioner` (those go
    /// through the repartition topic), read back from the input topic.
    func misplacedInputRecords(count: Int, partitioner: KafkaPartitioner = .murmur2) async throws -> Int {
        var decoder = TransactionDecoder()
        var misplaced = 0
        for m in try await read(input, count: count) {
            guard let value = m.value, var card = try? decoder.decode(value).cardId else { continue }
            let home = card.withUTF8 { partitioner.partition(of: $0, count: Int32(partitions)) }
            if home != m.partition { misplaced += 1 }
        }
        return misplaced
    }

    /// Reads a topic's committed records until `count` arrived (then a little longer, to catch
    /// duplicates) or the timeout.
    func read(_ topic: String, count: Int, timeout: Duration = .seconds(60)) async throws -> [KafkaMessage] {
        let consumer = try cluster.consumer(["isolation.level": "read_committed"])
        let partitions = self.partitions
        let messages = try await offPool { () -> [KafkaMessage] in
            var all = try readAll(consumer, topic: topic, partitions: partitions, count: count, timeout: timeout)
            all += try consumer.poll(maxMessages: 100_000, timeout: .milliseconds(300))
            return all
        }
        await consumer.close()
        return messages
    }
}

extension TestCluster {
    /// Creates a topic with exactly this name.
    func createExactTopic(_ name: String, partitions: Int) throws {
        if let mock {
            try mock.createTopic(name, partitions: partitions)
        } else {
            let admin = try KafkaAdmin(configuration: configuration, logger: Self.quietLogger)
            defer { admin.close() }
            try admin.createTopics([KafkaTopicSpecification(name: name, partitions: partitions)])
            created.withLock { $0.append(name) }
        }
    }
}

/// Test input: transactions of a few cards, close in time so windows fill and flag.
struct Workload {
    struct Record { var key: [UInt8]?; var value: [UInt8]; var transactionId: String? }
    var records: [Record] = []

    /// Event times start at the beginning of the hour before the current one. Records get a
    /// Kafka CreateTime of now, and an event time more than an hour past it is rejected as future
    /// skew, so a fixed date would fail on a host whose clock is behind it.
    static let epoch: Int64 = {
        let hour: Int64 = 3_600_000
        return (Int64(Date().timeIntervalSince1970 * 1000) / hour - 1) * hour
    }()

    /// `count` valid records over `cards` cards (keyed by card id) starting at id `first`;
    /// cards named `m…` are keyed by something else, so they go through the repartition topic.
    static func valid(count: Int, cards: Int, first: Int = 0, start: Int64 = Workload.epoch, misKeyedCards: Int = 2) -> Workload {
        var w = Workload()
        for i in first..<(first + count) {
            let cardIndex = (i * 7) % cards
            let card = cardIndex < misKeyedCards ? "m\(cardIndex)" : "c\(cardIndex)"
            let t = start + Int64(i) * 1_500
            let id = "t-\(i)"
            let value = "{\"transactionId\":\"\(id)\",\"cardId\":\"\(card)\",\"amount\":\(i % 97).\(i % 10)0,\"timestamp\":\(t)}"
            // A wrong key, but the same for all of a card's records: they stay in one input
            // partition, in order (records of one card spread over partitions have no order).
            let key: [UInt8]? = card.hasPrefix("m") ? Array("account-\(card)".utf8) : Array(card.utf8)
            w.records.append(Record(key: key, value: Array(value.utf8), transactionId: id))
        }
        return w
    }

    var kafkaRecords: [(key: [UInt8]?, value: [UInt8]?)] { records.map { ($0.key, $0.value) } }

    /// Expected output value per transaction id: the detector over the records in order, one
    /// partition (verdicts depend only on each card's own order while retention is not reached).
    static func expected(_ records: [Record], parameters: DetectorParameters = .default) throws -> [String: [UInt8]] {
        var decoder = TransactionDecoder()
        let detector = InMemoryDetector(parameters: parameters)
        let encoder = EnrichedRecordEncoder(parameters: parameters)
        var out: [String: [UInt8]] = [:]
        for r in records {
            guard let t = try? decoder.decode(r.value) else { continue }
            let verdict = detector.process(card: t.cardId, eventTime: t.timestamp)
            out[t.transactionId] = encoder.encode(t, verdict)
        }
        return out
    }
}

/// Differences between actual and expected outputs, readable (at most five).
func differences(_ actual: [String: [UInt8]], _ expected: [String: [UInt8]]) -> [String] {
    var out: [String] = []
    for id in Set(actual.keys).union(expected.keys).sorted() where actual[id] != expected[id] {
        let a = actual[id].map { String(decoding: $0, as: UTF8.self) } ?? "none"
        let e = expected[id].map { String(decoding: $0, as: UTF8.self) } ?? "none"
        out.append("\(id): got \(a) expected \(e)")
    }
    return Array(out.prefix(5)) + (out.count > 5 ? ["... \(out.count) differences"] : [])
}

func transactionID(of value: [UInt8]?) -> String? {
    var decoder = TransactionDecoder()
    return value.flatMap { try? decoder.decode($0).transactionId }
}

/// Checks `condition` every few milliseconds until it holds (true) or `timeout` passes (false).
func waitUntil(within timeout: Duration, _ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else { return false }
        try await Task.sleep(for: .milliseconds(20))
    }
    return true
}

func run(_ processor: StreamProcessor, timeout: Duration = .seconds(120)) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask { try await processor.runOnDedicatedThread() }
        group.addTask {
            try await Task.sleep(for: timeout)
            // Where it stood, for a failure seen only in a log.
            let s = processor.statistics.runtime
            let health = RoleHealth.evaluate(s)
            processor.requestStop()
            Issue.record("""
                processor did not finish within \(timeout): \(s.phase.rawValue), \(health.state.rawValue)\(health.reason.map { " (\($0))" } ?? ""); \
                \(s.assignedPartitions) partitions assigned, \(s.tasks) tasks, \(s.records) records, \(s.transactionsCommitted) commits, \
                lag \(s.consumerLag.sorted { ($0.key.topic, $0.key.partition) < ($1.key.topic, $1.key.partition) }.map { "\($0.key.topic)/\($0.key.partition)=\($0.value)" })
                """)
        }
        try await group.next()
        group.cancelAll()
    }
}

@Suite("Processor", .brokerHeavy)
struct ProcessorTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.process")
        l.logLevel = .warning
        return l
    }()

    @Test(arguments: WindowKind.allCases)
    func multiPartitionRunEqualsReplayAndDeadLettersEveryCode(kind: WindowKind) async throws {
        let parameters = try DetectorParameters(kind: kind)
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 4)
        let workload = Workload.valid(count: 600, cards: 20)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        // One record per rejection code.
        let bad: [(RejectionCode, [UInt8]?)] = [
            (.tooLarge, Array(("{\"transactionId\":\"big\",\"pad\":\"" + String(repeating: "x", count: 1 << 20) + "\"}").utf8)),
            (.invalidUTF8, [0x7b, 0xff, 0x7d]),
            (.invalidJSON, Array("{\"transactionId\":".utf8)),
            (.invalidJSON, nil),
            (.notObject, Array("[1,2]".utf8)),
            (.duplicateField, Array("{\"a\":1,\"a\":2}".utf8)),
            (.missingField, Array("{\"transactionId\":\"x\"}".utf8)),
            (.wrongType, Array("{\"transactionId\":1,\"cardId\":\"c\",\"amount\":1,\"timestamp\":1}".utf8)),
            (.invalidValue, Array("{\"transactionId\":\"\",\"cardId\":\"c\",\"amount\":1,\"timestamp\":1}".utf8)),
            (.invalidValue, Array("{\"transactionId\":\"f\",\"cardId\":\"c\",\"amount\":1,\"timestamp\":\(now + 7_200_000)}".utf8)),
        ]
        var input = workload.kafkaRecords
        for (i, b) in bad.enumerated() { input.insert((Array("bad-\(i)".utf8), b.1), at: 50 * i + 7) }
        try await topics.produce(input)

        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, parameters: parameters), logger: logger)
        try await run(processor)
        let stats = processor.statistics
        #expect(stats.outputs == 600)
        #expect(stats.deadLetters == bad.count)
        #expect(stats.repartitioned > 0)
        #expect(stats.transactionsAborted == 0)

        let outputs = try await topics.read(topics.output, count: 600)
        #expect(outputs.count == 600)
        let expected = try Workload.expected(workload.records, parameters: parameters)
        var seen: [String: [UInt8]] = [:]
        for m in outputs {
            let id = try #require(transactionID(of: m.value))
            #expect(seen[id] == nil, "duplicate output for \(id)")
            seen[id] = m.value
            #expect(m.key == Array((try TransactionDecoder().decodeCard(m.value!)).utf8))
            #expect(m.header("polyglot-fingerprint") == Array(String(repeating: "ab", count: 32).utf8))
            #expect(m.header("polyglot-version") == Array(ProductVersion.version.utf8))
            let source = String(decoding: m.header("polyglot-source") ?? [], as: UTF8.self)
            #expect(source.hasPrefix("\(topics.input)/"))
        }
        #expect(differences(seen, expected) == [])

        let deadLetters = try await topics.read(topics.deadLetters, count: bad.count)
        #expect(deadLetters.count == bad.count)
        let codes = deadLetters.compactMap { $0.header("polyglot-error").map { String(decoding: $0, as: UTF8.self) } }.sorted()
        #expect(codes == bad.map(\.0.rawValue).sorted())
        #expect(Set(codes) == Set(RejectionCode.allCases.map(\.rawValue)))
        for m in deadLetters {
            #expect(m.header("polyglot-error-message") != nil)
            #expect(String(decoding: m.header("polyglot-source") ?? [], as: UTF8.self).hasPrefix("\(topics.input)/"))
            // Original key and value bytes (a null value is dead-lettered as empty).
            let index = Int(String(decoding: m.key ?? [], as: UTF8.self).dropFirst(4))!
            #expect((m.value ?? []) == (bad[index].1 ?? []))
        }
    }

    /// Records without keys land anywhere, and those not on their card's partition go through
    /// the repartition topic, whose last offset is then a transaction marker: --until-end must
    /// still see the end and exit.
    @Test func untilEndFinishesWhenUnkeyedRecordsAreRepartitioned() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let workload = Workload.valid(count: 200, cards: 10)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        try await topics.produce(workload.records.map { (key: nil, value: $0.value) })
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state), logger: logger)
        try await run(processor, timeout: .seconds(60))
        #expect(processor.statistics.outputs == 200)
        let misplaced = try await topics.misplacedInputRecords(count: 200)
        #expect(misplaced > 0)
        #expect(processor.statistics.repartitioned == misplaced)
    }

    /// Ids with escapes take the decoding path (the hot path copies unescaped ids in place):
    /// the output, its key and the repartitioned records must still equal replay's.
    @Test func escapedIdsEqualReplay() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        var workload = Workload()
        let start = Workload.epoch
        func home(_ key: String) -> Int32 { Array(key.utf8).withUnsafeBufferPointer { KafkaPartitioner.murmur2.partition(of: $0, count: 2) } }
        // Card 2 is keyed by an account whose partition is not the card's: its records go
        // through the repartition topic.
        let card2 = "c\u{e9}\"2"
        let account = try #require((0..<50).map { "account-\($0)" }.first { home($0) != home(card2) })
        for i in 0..<12 {
            // JSON `t\\<i>` and `c\u00e9\"<n>`: decoded, `t\<i>` and `cé"<n>`.
            let value = "{\"transactionId\":\"t\\\\\(i)\",\"cardId\":\"c\\u00e9\\\"\(i % 3)\",\"amount\":1.50,\"timestamp\":\(start + Int64(i) * 1_000)}"
            let card = "c\u{e9}\"\(i % 3)"
            let key = i % 3 == 2 ? Array(account.utf8) : Array(card.utf8)
            workload.records.append(Workload.Record(key: key, value: Array(value.utf8), transactionId: "t\\\(i)"))
        }
        try await topics.produce(workload.kafkaRecords)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let recorder = TransactionRecorder()
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state), logger: logger, observer: recorder)
        try await run(processor)
        #expect(processor.statistics.outputs == 12)
        #expect(try await topics.misplacedInputRecords(count: 12) == 4, "card 2's four records must be off their partition")
        #expect(processor.statistics.repartitioned == 4)
        var perID: [String: Int] = [:]
        for m in try await topics.readToEnd(topics.output) {
            perID[try #require(transactionID(of: m.value)), default: 0] += 1
            #expect(m.key == Array((try TransactionDecoder().decodeCard(m.value!)).utf8))
        }
        #expect(perID == Dictionary(uniqueKeysWithValues: (0..<12).map { ("t\\\($0)", 1) }))
        try await topics.expectExactlyOnce(try Workload.expected(workload.records), recorder: recorder)
    }

    @Test(.longOnTheBroker, arguments: WindowKind.allCases)
    func restoresAfterStateDirectoryIsDeleted(kind: WindowKind) async throws {
        let parameters = try DetectorParameters(kind: kind)
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let first = Workload.valid(count: 300, cards: 12)
        let second = Workload.valid(count: 300, cards: 12, first: 300)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }

        try await topics.produce(first.kafkaRecords)
        try await run(try StreamProcessor(configuration: topics.configuration(stateDirectory: state, parameters: parameters), logger: logger))
        try FileManager.default.removeItem(at: state)

        try await topics.produce(second.kafkaRecords)
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, parameters: parameters), logger: logger)
        try await run(processor)
        #expect(processor.statistics.restoredRecords > 0)
        // Only the new records were processed: positions came from the changelog.
        #expect(processor.statistics.outputs == 300)

        let outputs = try await topics.read(topics.output, count: 600)
        let expected = try Workload.expected(first.records + second.records, parameters: parameters)
        var seen: [String: [UInt8]] = [:]
        for m in outputs {
            let id = try #require(transactionID(of: m.value))
            #expect(seen[id] == nil, "duplicate output for \(id)")
            seen[id] = m.value
        }
        #expect(seen.count == 600)
        #expect(differences(seen, expected) == [])
    }

    @Test(.longOnTheBroker, arguments: WindowKind.allCases)
    func atLeastOnceRunAndRestart(kind: WindowKind) async throws {
        let parameters = try DetectorParameters(kind: kind)
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        let first = Workload.valid(count: 200, cards: 9)
        let second = Workload.valid(count: 200, cards: 9, first: 200)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        try await topics.produce(first.kafkaRecords)
        let a = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, guarantee: .atLeastOnce, parameters: parameters), logger: logger)
        try await run(a)
        #expect(a.statistics.outputs == 200)
        // A restart on the same state resumes after the committed records.
        try await topics.produce(second.kafkaRecords)
        let b = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, guarantee: .atLeastOnce, parameters: parameters), logger: logger)
        try await run(b)
        #expect(b.statistics.outputs == 200)
        #expect(b.statistics.restoredRecords <= 2 * topics.partitions)
        let outputs = try await topics.read(topics.output, count: 400)
        var seen: [String: [UInt8]] = [:]
        for m in outputs {
            let id = try #require(transactionID(of: m.value))
            #expect(seen[id] == nil, "duplicate output for \(id)")
            seen[id] = m.value
        }
        #expect(differences(seen, try Workload.expected(first.records + second.records, parameters: parameters)) == [])
    }

    @Test(.longOnTheBroker, arguments: WindowKind.allCases)
    func twoInstancesOneStoppedMidway(kind: WindowKind) async throws {
        let parameters = try DetectorParameters(kind: kind)
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 4)
        let workload = Workload.valid(count: 800, cards: 16)
        let stateA = try TestPaths.temporaryDirectory()
        let stateB = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: stateA)
            try? FileManager.default.removeItem(at: stateB)
        }
        let a = try StreamProcessor(configuration: topics.configuration(stateDirectory: stateA, untilEnd: false, parameters: parameters), logger: logger)
        let b = try StreamProcessor(configuration: topics.configuration(stateDirectory: stateB, untilEnd: false, parameters: parameters), logger: logger)
        let half = workload.kafkaRecords.count / 2
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await a.runOnDedicatedThread() }
            group.addTask { try await b.runOnDedicatedThread() }
            try await topics.produce(Array(workload.kafkaRecords[..<half]))
            // Wait until both have worked, then stop A while the second half arrives.
            let worked = try await waitUntil(within: .seconds(60)) { a.statistics.outputs + b.statistics.outputs >= half - 100 }
            #expect(worked, "\(a.statistics.outputs + b.statistics.outputs) outputs of the first half after 60 s")
            a.requestStop()
            try await topics.produce(Array(workload.kafkaRecords[half...]))
            let finished = try await waitUntil(within: .seconds(90)) { a.statistics.outputs + b.statistics.outputs >= workload.records.count }
            #expect(finished, "\(a.statistics.outputs + b.statistics.outputs) of \(workload.records.count) outputs after 90 s")
            b.requestStop()
            try await group.waitForAll()
        }
        #expect(a.statistics.outputs > 0)
        #expect(b.statistics.outputs > 0)
        #expect(a.statistics.outputs + b.statistics.outputs == workload.records.count)
        let outputs = try await topics.read(topics.output, count: workload.records.count)
        var seen: [String: [UInt8]] = [:]
        for m in outputs {
            let id = try #require(transactionID(of: m.value))
            #expect(seen[id] == nil, "duplicate output for \(id)")
            seen[id] = m.value
        }
        #expect(differences(seen, try Workload.expected(workload.records, parameters: parameters)) == [])
    }

    @Test(.enabled(if: TestCluster.usesMock, TestCluster.needsMock), arguments: WindowKind.allCases)
    func recoversFromInjectedFaults(kind: WindowKind) async throws {
        let parameters = try DetectorParameters(kind: kind)
        let cluster = try TestCluster(brokers: 3)
        let mock = try #require(cluster.mock)
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let workload = Workload.valid(count: 900, cards: 15)
        // The mock picks each partition's leader at random, so the processor's consumer may
        // never connect to broker 3, and then never see it go down. Broker 3 leads every input
        // partition: the consumer must fetch from it.
        for p in 0..<Int32(topics.partitions) { try mock.setPartitionLeader(topic: topics.input, partition: p, brokerID: 3) }
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let recorder = TransactionRecorder()
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, untilEnd: false, parameters: parameters), logger: logger,
                                            observer: recorder)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await processor.runOnDedicatedThread() }
            try await topics.produce(Array(workload.kafkaRecords[..<300]))
            // Request errors the producer retries by itself.
            mock.pushRequestErrors(apiKey: MockCluster.APIKey.produce, errors: [
                KafkaError.Code.notEnoughReplicas, KafkaError.Code.requestTimedOut, KafkaError.Code.notLeaderForPartition])
            try await topics.produce(Array(workload.kafkaRecords[300..<600]))
            // A leader moves, and a broker goes down for a moment.
            try mock.setPartitionLeader(topic: topics.output, partition: 0, brokerID: 2)
            try mock.setPartitionLeader(topic: "\(topics.applicationID)-windows-changelog", partition: 1, brokerID: 3)
            // The outage lasts until the processor has seen it: its group consumer's view of
            // the brokers (librdkafka's statistics, once a second, and its error callback) shows
            // broker 3 gone. Not a probe client's call: librdkafka 2.0.2's
            // query_watermark_offsets, for one, waits past its timeout while a partition's
            // leader is down, so a wait on it never ends.
            let connected = try await waitUntil(within: .seconds(30)) {
                let view = processor.statistics.broker
                // Outputs mean the consumer fetched from broker 3 (it may need no other broker).
                return view.statisticsReports > 0 && view.brokersUp > 0 && processor.statistics.outputs > 0
            }
            #expect(connected, "the processor's consumer reported no connected brokers: \(processor.statistics.broker)")
            let before = processor.statistics.broker
            // librdkafka names a broker host:port/id, its coordinator connection host:port; the
            // mock lists its brokers in id order.
            let broker3 = try #require(mock.bootstrapServers.split(separator: ",").last.map(String.init))
            try mock.setBrokerDown(3)
            let outageSeen = try await waitUntil(within: .seconds(30)) {
                let now = processor.statistics.broker
                let named = now.lastError != before.lastError
                    && (now.lastError?.contains("/3:") == true || now.lastError?.contains("\(broker3):") == true)
                let fewerUp = now.statisticsReports > before.statisticsReports && now.brokersUp < before.brokersUp
                return named || fewerUp
            }
            try mock.setBrokerUp(3)
            #expect(outageSeen, "the processor did not see broker 3 go down within 30 s: \(processor.statistics.broker)")
            try await topics.produce(Array(workload.kafkaRecords[600...]))
            let finished = try await waitUntil(within: .seconds(90)) { processor.statistics.outputs >= workload.records.count }
            #expect(finished, "\(processor.statistics.outputs) of \(workload.records.count) outputs after 90 s")
            processor.requestStop()
            try await group.waitForAll()
        }
        // Nothing lost, nothing twice once the aborted transactions' records are dropped,
        // every verdict right.
        try await topics.expectExactlyOnce(try Workload.expected(workload.records, parameters: parameters), recorder: recorder)
    }

    @Test func startUpChecksInternalTopics() async throws {
        let cluster = try TestCluster()
        let id = UUID().uuidString.prefix(8).lowercased()
        let app = "app-\(id)"
        for (topic, n) in [("in-\(id)", 4), ("out-\(id)", 4), ("dlq-\(id)", 4), ("\(app)-windows-changelog", 3), ("\(app)-repartition", 4)] {
            try cluster.createExactTopic(topic, partitions: n)
        }
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let configuration = ProcessorConfiguration(
            kafka: cluster.configuration, applicationID: app, inputTopic: "in-\(id)", outputTopic: "out-\(id)", deadLetterTopic: "dlq-\(id)",
            stateDirectory: state.path, fingerprintDigest: String(repeating: "0", count: 64), untilEnd: true)
        let processor = try StreamProcessor(configuration: configuration, logger: logger)
        let error = await #expect(throws: RuntimeError.self) { try await processor.runOnDedicatedThread() }
        #expect(error?.message.contains("has 3 partitions but input topic in-\(id) has 4") == true)

        // Settings resolve flags over environment and reject bad values with one line.
        var settings = ProcessorSettings()
        settings.inputTopic = "flag-topic"
        let env = ["KAFKA_BOOTSTRAP_SERVERS": "h:1", "POLYGLOT_INPUT_TOPIC": "env-topic", "POLYGLOT_OUTPUT_TOPIC": "env-out",
                   "POLYGLOT_GUARANTEE": "at-least-once", "POLYGLOT_KAFKA_PROPERTIES": "sasl.password=s3cret;client.id=x"]
        let resolved = try settings.resolve(environment: env)
        #expect(resolved.inputTopic == "flag-topic")
        #expect(resolved.outputTopic == "env-out")
        #expect(resolved.guarantee == .atLeastOnce)
        #expect(resolved.kafka.bootstrapServers == "h:1")
        #expect(!resolved.kafka.redactedDescription.contains("s3cret"))
        // The settings file is the lowest layer; unknown names in it are errors.
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("process.env")
        try "# comment\nPOLYGLOT_OUTPUT_TOPIC=file-out\nPOLYGLOT_DLQ_TOPIC=file-dlq\nPOLYGLOT_WINDOW=30s\nPOLYGLOT_KAFKA_PROPERTIES=linger.ms=7\n"
            .write(to: file, atomically: true, encoding: .utf8)
        var fromFile = settings
        fromFile.configFile = file.path
        fromFile.threshold = "5"
        let layered = try fromFile.resolve(environment: env)
        #expect(layered.outputTopic == "env-out")
        #expect(layered.deadLetterTopic == "file-dlq")
        #expect(layered.parameters.window == 30_000)
        #expect(layered.parameters.threshold == 5)
        #expect(layered.kafka["linger.ms"] == "7")
        try "POLYGLOT_WINDOWS=30s\n".write(to: file, atomically: true, encoding: .utf8)
        let unknown = #expect(throws: ConfigurationError.self) { try fromFile.resolve(environment: env) }
        #expect(unknown?.message.contains("unknown setting POLYGLOT_WINDOWS") == true)
        settings.guarantee = "twice"
        #expect(throws: ConfigurationError.self) { try settings.resolve(environment: env) }
        #expect(throws: ConfigurationError.self) { try ProcessorSettings().resolve(environment: [:]) }
    }
}

extension TransactionDecoder {
    func decodeCard(_ value: [UInt8]) throws -> String {
        var d = self
        return try d.decode(value).cardId
    }
}
