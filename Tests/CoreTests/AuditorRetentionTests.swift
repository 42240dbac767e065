import Foundation
import Logging
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import KafkaClient
@testable import StreamEngine
@testable import Roles

/// The continuous auditor over topics whose records retention deleted before it read them: one
/// `truncated` finding per partition with the offsets lost, and no `missing` or `orphan` for
/// the records around the gap. The dev broker keeps about 5 MB per partition, so these tests
/// fill a one-partition topic past that; on a real cluster they check nothing was deleted.
@Suite("Continuous audit under retention", .brokerHeavy)
struct AuditorRetentionTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.audit.retention")
        l.logLevel = .error
        return l
    }()

    /// The first offset `topic`'s partition 0 still holds.
    func logStart(_ topics: ProcessorTopics, _ topic: String) async throws -> Int64 {
        let consumer = try topics.cluster.consumer()
        let low = try await offPool { try consumer.queryWatermarks(KafkaTopicPartition(topic, 0), timeout: .seconds(10)).low }
        await consumer.close()
        return low
    }

    /// The findings of `auditor` (read_committed) as JSON objects.
    func findings(_ topics: ProcessorTopics, _ auditor: ContinuousAuditor, count: Int) async throws -> [[String: Any]] {
        try await topics.read(auditor.configuration.findingsTopic, count: count, timeout: .seconds(20)).compactMap { m in
            try? JSONSerialization.jsonObject(with: Data(m.value ?? [])) as? [String: Any]
        }
    }

    /// The processor processed 30,000 inputs, then a group committed past 5 more whose outputs
    /// were never written; the dev broker dropped the oldest outputs. An auditor started from
    /// scratch reports the output partition truncated, exactly the 5 as missing, and none of
    /// the inputs whose outputs were deleted.
    /// Audits until the inputs `missing` (ids `t-N`) are reported missing and the outputs still
    /// held (`firstHeld` is the output partition's first offset held) are read; expects exactly
    /// those missing, no other discrepancy, and one `truncated` finding when outputs were
    /// deleted, from offset 0 to the one before `firstHeld`, which it returns.
    func auditExpectingExactlyMissing(_ missing: Range<Int>, inputs: Int, outputsHeld: Int, firstHeld first: Int64,
                                      topics: ProcessorTopics, state: URL, processorGroup: String) async throws -> [String: Any]? {
        let auditor = try AuditPositionTests().auditor(topics, state: state, processorGroup: processorGroup)
        try await AuditPositionTests().audit(auditor) { $0.missing >= missing.count && $0.outputs == outputsHeld }
        let c = auditor.counts
        #expect(c.inputs == inputs)
        #expect(c.missing == missing.count && c.orphan == 0 && c.duplicate == 0 && c.mismatch == 0 && c.drift == 0, "\(c)")
        #expect(c.truncated == (first > 0 ? 1 : 0), "\(c)")
        let found = try await findings(topics, auditor, count: c.missing + c.truncated + c.flagged)
        let truncated = found.filter { $0["kind"] as? String == "truncated" }
        #expect(truncated.count == c.truncated)
        if let finding = truncated.first {
            #expect(finding["firstDeleted"] as? Int == 0 && finding["lastDeleted"] as? Int == Int(first) - 1, "\(finding)")
        }
        #expect(found.filter { $0["kind"] as? String == "missing" }.compactMap { $0["transactionId"] as? String }.sorted()
                == missing.map { "t-\($0)" }.sorted())
        return truncated.first
    }

    @Test(.longOnTheBroker) func truncatedOutputIsTruncatedNotMissing() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        let n = 30_000
        // Event times well before the produce time, so that none is in the future.
        try await topics.produce(Workload.valid(count: n, cards: 400, start: Workload.epoch - 50_000_000).kafkaRecords)
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState, guarantee: AuditPositionTests.guarantee),
                                      logger: logger))
        // Five inputs the group commits past without outputs: the true findings after the gap.
        try await topics.produce(Workload.valid(count: 5, cards: 5, first: n, start: Workload.epoch - Int64(n) * 1_500 - 1_000_000).kafkaRecords)
        // What the auditor reads as the processor's progress: past the 30,005 inputs. (A group of
        // its own: librdkafka's mock refuses a commit from outside a group that had members.)
        let progressGroup = "\(topics.applicationID)-progress"
        let consumer = try cluster.consumer(group: progressGroup)
        try await consumer.commit([KafkaTopicPartitionOffset(KafkaTopicPartition(topics.input, 0), offset: Int64(n + 5))])
        await consumer.close()
        let first = try await logStart(topics, topics.output)
        if cluster.isMock { #expect(first > 0, "the dev broker kept every output: nothing to check") }
        if let finding = try await auditExpectingExactlyMissing(n..<(n + 5), inputs: n + 5, outputsHeld: n - Int(first),
                                                                 firstHeld: first, topics: topics, state: auditorState,
                                                                 processorGroup: progressGroup) {
            #expect((finding["output"] as? [String: Any])?["topic"] as? String == topics.output, "\(finding)")
        }
    }

    /// The processor processed 2,000 inputs, then further large inputs (not processed yet) pushed
    /// the first ones out of the dev broker. An auditor started from scratch reports the input
    /// partition truncated, and the outputs whose inputs were deleted are not orphans.
    @Test(.longOnTheBroker) func truncatedInputGivesNoOrphans() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        let processed = 2_000
        try await topics.produce(Workload.valid(count: processed, cards: 40, start: Workload.epoch - 10_000_000).kafkaRecords)
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState, guarantee: AuditPositionTests.guarantee),
                                      logger: logger))
        // 6,000 inputs of about 1 KB (ids of 1,000 bytes): over the 5 MB the dev broker keeps.
        let padding = String(repeating: "x", count: 1_000)
        let large: [(key: [UInt8]?, value: [UInt8]?)] = (0..<6_000).map { i in
            let value = "{\"transactionId\":\"\(padding)-\(i)\",\"cardId\":\"c\(i % 40)\",\"amount\":1.00,\"timestamp\":\(Workload.epoch + Int64(i))}"
            return (Array("c\(i % 40)".utf8), Array(value.utf8))
        }
        try await topics.produce(large)
        let first = try await logStart(topics, topics.input)
        if cluster.isMock { #expect(first > 0, "the dev broker kept every input: nothing to check") }
        let inputs = processed + large.count - Int(first)
        let auditor = try AuditPositionTests().auditor(topics, state: auditorState)
        try await AuditPositionTests().audit(auditor) { $0.outputs == processed && $0.inputs == inputs }
        let c = auditor.counts
        #expect(c.orphan == 0 && c.missing == 0 && c.duplicate == 0 && c.mismatch == 0 && c.drift == 0, "\(c)")
        #expect(c.truncated == (first > 0 ? 1 : 0), "\(c)")
        let found = try await findings(topics, auditor, count: c.truncated + c.flagged)
        let truncated = found.filter { $0["kind"] as? String == "truncated" }
        #expect(truncated.count == c.truncated)
        if let finding = truncated.first {
            #expect(finding["firstDeleted"] as? Int == 0 && finding["lastDeleted"] as? Int == Int(first) - 1, "\(finding)")
            #expect((finding["input"] as? [String: Any])?["topic"] as? String == topics.input, "\(finding)")
        }
    }

    /// `count` names `prefix0`, `prefix1`, ... whose murmur2 partition of `partitions` is `partition`.
    static func names(_ prefix: String, count: Int, partition: Int32, of partitions: Int) -> [String] {
        var found: [String] = []
        var i = 0
        while found.count < count {
            var name = "\(prefix)\(i)"
            if name.withUTF8({ KafkaPartitioner.murmur2.partition(of: $0, count: Int32(partitions)) }) == partition { found.append(name) }
            i += 1
        }
        return found
    }

    /// Inputs `first..<first + count` of `cards` (round robin), keyed by `keys` (round robin, or by
    /// card), with event times 1.5 s apart from `start`.
    static func inputs(_ first: Int, count: Int, cards: [String], keys: [String]? = nil, start: Int64) -> [(key: [UInt8]?, value: [UInt8]?)] {
        (first..<(first + count)).map { i in
            let card = cards[i % cards.count]
            let value = "{\"transactionId\":\"t-\(i)\",\"cardId\":\"\(card)\",\"amount\":\(i % 97).50,\"timestamp\":\(start + Int64(i) * 1_500)}"
            return (Array((keys.map { $0[i % $0.count] } ?? card).utf8), Array(value.utf8))
        }
    }

    /// Two partitions. 200 inputs read on input partition 1 whose cards belong to partition 0
    /// (forwarded there) were processed first; then 30,000 inputs of partition 0's other cards
    /// pushed all their outputs out of output partition 0, and no later output of partition 1's
    /// inputs reached it. The auditor read it all (one `truncated`), was stopped, and the
    /// processor's group then committed past everything, 5 more inputs of partition 0 without
    /// outputs included. The restarted auditor knows what it learned of the gap: the 200 are
    /// not missing, the 5 are (partition 0's deleted outputs were accounted for before the
    /// restart, so they are not excused), and the gap is not reported again.
    @Test(.longOnTheBroker) func restartedAuditorKeepsWhatItLearnedOfAGap() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        let home = Self.names("card-", count: 80, partition: 0, of: 2)
        let (forwardedCards, directCards) = (Array(home[..<40]), Array(home[40...]))
        let awayKeys = Self.names("account-", count: 4, partition: 1, of: 2)
        let start = Workload.epoch - 60_000_000, forwarded = 200, direct = 30_000
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        let processing = topics.configuration(stateDirectory: processorState, guarantee: AuditPositionTests.guarantee)
        try await topics.produce(Self.inputs(0, count: forwarded, cards: forwardedCards, keys: awayKeys, start: start))
        try await run(StreamProcessor(configuration: processing, logger: logger))
        try await topics.produce(Self.inputs(forwarded, count: direct, cards: directCards, start: start))
        try await run(StreamProcessor(configuration: processing, logger: logger))
        let first = try await logStart(topics, topics.output)
        if cluster.isMock { #expect(first > Int64(forwarded), "the dev broker kept outputs of the forwarded inputs: nothing to check") }
        guard first > Int64(forwarded) else { return }
        // Five inputs the group commits past without outputs: the true findings after the restart.
        try await topics.produce(Self.inputs(forwarded + direct, count: 5, cards: directCards, start: start))

        // What the auditor reads as the processor's progress: a group of its own, committed
        // only once the first auditor stopped (its repartition topic is empty: nothing forwarded
        // is still on its way).
        let progressGroup = "\(topics.applicationID)-progress"
        try cluster.createExactTopic("\(progressGroup)-repartition", partitions: 2)
        let auditorGroup = "audit-\(UUID().uuidString.prefix(8).lowercased())"
        let positions = AuditPositionTests()
        let before = try positions.auditor(topics, state: auditorState, processorGroup: progressGroup, group: auditorGroup)
        let outputs = forwarded + direct - Int(first), inputs = forwarded + direct + 5
        try await positions.audit(before) { $0.truncated == 1 && $0.outputs == outputs && $0.inputs == inputs }
        let b = before.counts
        #expect(b.missing == 0 && b.orphan == 0 && b.duplicate == 0 && b.mismatch == 0 && b.drift == 0, "\(b)")

        let consumer = try cluster.consumer(group: progressGroup)
        try await consumer.commit([KafkaTopicPartitionOffset(KafkaTopicPartition(topics.input, 0), offset: Int64(direct + 5)),
                                   KafkaTopicPartitionOffset(KafkaTopicPartition(topics.input, 1), offset: Int64(forwarded))])
        await consumer.close()
        let after = try positions.auditor(topics, state: auditorState, processorGroup: progressGroup, group: auditorGroup)
        // The forwarded inputs are due one probe after partition 0's own: once the 5 are missing,
        // a few more probes (and the punctuation and commit after them) decide them too.
        let probesThen = Mutex<Int?>(nil)
        try await positions.audit(after) { c in
            guard c.missing >= 5, let probes = after.runtime.role.progress?.probes else { return false }
            let then = probesThen.withLock { t in
                if t == nil { t = probes }
                return t!
            }
            return probes >= then + 10
        }
        let c = after.counts
        #expect(c.missing == 5 && c.truncated == 0 && c.orphan == 0 && c.duplicate == 0 && c.mismatch == 0 && c.drift == 0, "\(c)")
        let found = try await findings(topics, after, count: b.truncated + b.flagged + c.missing + c.flagged)
        #expect(found.filter { $0["kind"] as? String == "truncated" }.count == 1)
        #expect(found.filter { $0["kind"] as? String == "missing" }.compactMap { $0["transactionId"] as? String }.sorted()
                == ((forwarded + direct)..<(forwarded + direct + 5)).map { "t-\($0)" }.sorted())
    }

    /// Three partitions; only output partition 0 lost records (30,000 outputs of its cards
    /// against 300 in each other lane). The processor's group then committed past 5 more inputs
    /// of partition 0's cards and 5 of partition 1's without outputs. An auditor from scratch
    /// reports partition 0 truncated and nothing else about it, and still checks the other lanes:
    /// exactly the 10 are missing (the 5 of the truncated lane come after its gap), none of the
    /// inputs whose outputs were deleted.
    @Test(.longOnTheBroker) func onlyTheTruncatedLaneIsExcused() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let cards = (0..<3).map { Self.names("card-\($0)-", count: 20, partition: Int32($0), of: 3) }
        let start = Workload.epoch - 60_000_000, large = 30_000, small = 300
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        try await topics.produce(Self.inputs(0, count: large, cards: cards[0], start: start)
            + Self.inputs(large, count: small, cards: cards[1], start: start)
            + Self.inputs(large + small, count: small, cards: cards[2], start: start))
        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState, guarantee: AuditPositionTests.guarantee),
                                      logger: logger))
        let processed = large + 2 * small
        let first = try await logStart(topics, topics.output)
        if cluster.isMock { #expect(first > 0, "the dev broker kept every output: nothing to check") }
        let unprocessed = Self.inputs(processed, count: 5, cards: cards[0], start: start) + Self.inputs(processed + 5, count: 5, cards: cards[1], start: start)
        try await topics.produce(unprocessed)
        let progressGroup = "\(topics.applicationID)-progress"
        try cluster.createExactTopic("\(progressGroup)-repartition", partitions: 3)
        let consumer = try cluster.consumer(group: progressGroup)
        let partitions = (0..<Int32(3)).map { KafkaTopicPartition(topics.input, $0) }
        let ends = try consumer.endOffsets(partitions, timeout: .seconds(10))
        try await consumer.commit(partitions.map { KafkaTopicPartitionOffset($0, offset: ends[$0]!) })
        await consumer.close()

        if let finding = try await auditExpectingExactlyMissing(processed..<(processed + 10), inputs: processed + 10,
                                                                 outputsHeld: processed - Int(first), firstHeld: first, topics: topics,
                                                                 state: auditorState, processorGroup: progressGroup) {
            #expect((finding["output"] as? [String: Any])?["partition"] as? Int == 0, "\(finding)")
        }
    }

    /// Three partitions. 6,000 inputs of about 1 KB read on input partitions 1 and 2 belong to
    /// partition 0's cards; the processor processed them. An auditor forwarded them all to
    /// partition 0 of its repartition topic and committed past them on partitions 1 and 2, but
    /// its task 0 had not read them yet when the dev broker dropped the oldest (its instance was
    /// down, say). The auditor reports that partition truncated (on the repartition topic), and
    /// the outputs of the forwarded inputs it lost are not orphans.
    @Test(.longOnTheBroker) func lostForwardedInputsAreTruncatedNotOrphans() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let cards = Self.names("card-", count: 40, partition: 0, of: 3)
        let start = Workload.epoch - 60_000_000, half = 3_000
        // A member the processor ignores makes each input about 1 KB, its output a third of that.
        let note = String(repeating: "n", count: 1_000)
        func padded(_ records: [(key: [UInt8]?, value: [UInt8]?)]) -> [(key: [UInt8]?, value: [UInt8]?)] {
            records.map { ($0.key, Array($0.value!.dropLast()) + Array(",\"note\":\"\(note)\"}".utf8)) }
        }
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        // In two runs, so that the processor's own repartition partition never holds more than
        // the dev broker keeps.
        let processing = topics.configuration(stateDirectory: processorState, guarantee: AuditPositionTests.guarantee)
        var forwarded: [(partition: Int32, records: [(key: [UInt8]?, value: [UInt8]?)])] = []
        for (i, partition) in [Int32(1), 2].enumerated() {
            let keys = Self.names("account-", count: 4, partition: partition, of: 3)
            let records = padded(Self.inputs(i * half, count: half, cards: cards, keys: keys, start: start))
            forwarded.append((partition, records))
            try await topics.produce(records)
            try await run(StreamProcessor(configuration: processing, logger: logger))
        }
        // What the auditor's tasks 1 and 2 did before: forwarded each input, unchanged, keyed by
        // its card, with its position, and committed past it.
        let auditor = try AuditPositionTests().auditor(topics, state: auditorState)
        let group = auditor.configuration.pipeline.applicationID, repartition = auditor.configuration.repartitionTopic
        let committer = try cluster.consumer(group: group)
        try await committer.commit([1, 2].map { KafkaTopicPartitionOffset(KafkaTopicPartition(topics.input, $0), offset: Int64(half)) })
        await committer.close()
        let producer = try cluster.producer(["message.max.bytes": "4194304"])
        var decoder = TransactionDecoder()
        for (partition, records) in forwarded {
            for (offset, record) in records.enumerated() {
                let card = try decoder.decode(record.value!).cardId
                try producer.produce(topic: repartition, partition: 0, key: Array(card.utf8), value: record.value,
                                     headers: [KafkaHeader(HeaderName.source, "\(topics.input)/\(partition)/\(offset)")], blockIfQueueFull: true)
            }
        }
        try await producer.flush(timeout: .seconds(30))
        _ = await producer.close()
        let first = try await logStart(topics, repartition)
        if cluster.isMock { #expect(first > 0, "the dev broker kept every forwarded input: nothing to check") }

        // The partition is full: each record the running auditor sends to it (its read progress)
        // can make the dev broker drop another of the oldest batches before task 0 reads there.
        // The finding names what was gone when it did; it reads every input after that.
        let lostUpTo = Mutex<Int?>(first > 0 ? nil : 0)
        try await AuditPositionTests().audit(auditor, whileRunning: {
            guard first > 0 else { return }
            guard try await waitUntil(within: .seconds(60), { auditor.counts.truncated > 0 }) else { return }
            let c = auditor.counts
            let found = try await self.findings(topics, auditor, count: c.truncated + c.flagged + c.orphan + c.missing)
            let last = found.first { $0["kind"] as? String == "truncated" }?["lastDeleted"] as? Int
            lostUpTo.withLock { $0 = last.map { $0 + 1 } }
        }) { c in
            lostUpTo.withLock { $0 }.map { c.outputs == 2 * half && c.inputs == 2 * half - $0 } ?? false
        }
        let c = auditor.counts
        let found = try await findings(topics, auditor, count: c.truncated + c.flagged + c.orphan + c.missing)
        let truncated = found.filter { $0["kind"] as? String == "truncated" }
        #expect(c.orphan == 0 && c.missing == 0 && c.duplicate == 0 && c.mismatch == 0 && c.drift == 0, "\(c)")
        #expect(c.truncated == (first > 0 ? 1 : 0), "\(c) \(truncated)")
        #expect(truncated.count == c.truncated)
        if let finding = truncated.first {
            #expect((finding["output"] as? [String: Any])?["topic"] as? String == repartition, "\(finding)")
            // At least what was gone before the auditor started.
            #expect(finding["firstDeleted"] as? Int == 0 && (finding["lastDeleted"] as? Int).map { $0 >= Int(first) - 1 } == true, "\(finding)")
        }
    }
}
