import Foundation
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import KafkaClient
@testable import StreamEngine
@testable import Roles

/// Hears every transaction the processor ends, with the records it wrote: what lets a test
/// drop the records of aborted transactions, which librdkafka's mock cluster (no transaction
/// markers) shows to read_committed readers.
final class TransactionRecorder: RuntimeObserver {
    private let ended = Mutex<[EndedTransaction]>([])

    func commitEnded(_ commit: CommitTiming) {}
    var observesTransactions: Bool { true }
    func transactionEnded(_ transaction: EndedTransaction) { ended.withLock { $0.append(transaction) } }

    var transactions: [EndedTransaction] { ended.withLock { $0 } }
    var aborted: [EndedTransaction] { transactions.filter { !$0.committed } }
    var committed: [EndedTransaction] { transactions.filter(\.committed) }

    /// The offsets aborted transactions wrote to `topic`, by partition.
    func abortedOffsets(_ topic: String) -> [Int32: Set<Int64>] {
        var out: [Int32: Set<Int64>] = [:]
        for t in aborted {
            for (tp, offsets) in t.written where tp.topic == topic { out[tp.partition, default: []].formUnion(offsets) }
        }
        return out
    }

    /// The last position committed transactions carried for `topic`, by partition.
    func committedPositions(_ topic: String) -> [Int32: Int64] {
        var out: [Int32: Int64] = [:]
        for t in committed {
            for p in t.positions where p.topicPartition.topic == topic {
                out[p.topicPartition.partition] = max(out[p.topicPartition.partition] ?? -1, p.offset)
            }
        }
        return out
    }
}

/// A random number generator with a seed a failing test prints, so the run can be repeated
/// (`POLYGLOT_TEST_SEED` fixes it).
struct SeededGenerator: RandomNumberGenerator {
    let seed: UInt64
    private var inner: SplitMix64

    init(seed: UInt64? = nil) {
        let chosen = seed ?? ProcessInfo.processInfo.environment["POLYGLOT_TEST_SEED"].flatMap { UInt64($0) }
            ?? UInt64.random(in: 1...UInt64.max)
        self.seed = chosen
        inner = SplitMix64(seed: chosen)
    }

    mutating func next() -> UInt64 { inner.next() }

    /// Names the seed in a failure message.
    var note: String { "seed \(seed) (repeat with POLYGLOT_TEST_SEED=\(seed))" }
}

extension ProcessorTopics {
    /// Every record of `topic` up to its end offsets (read_committed), with its position.
    func readToEnd(_ topic: String, timeout: Duration = .seconds(60)) async throws -> [KafkaMessage] {
        let consumer = try cluster.consumer(["isolation.level": "read_committed", "enable.partition.eof": "true"])
        let partitions = self.partitions
        let messages = try await offPool { () -> [KafkaMessage] in
            let tps = (0..<Int32(partitions)).map { KafkaTopicPartition(topic, $0) }
            let ends = try consumer.endOffsets(tps, timeout: .seconds(10))
            try consumer.assign(tps.map { KafkaTopicPartitionOffset($0, offset: KafkaOffset.beginning) })
            var all: [KafkaMessage] = []
            let deadline = ContinuousClock.now + timeout
            while ContinuousClock.now < deadline {
                all += try consumer.poll(maxMessages: 10_000, timeout: .milliseconds(100))
                if tps.allSatisfy({ (consumer.endOfPartition($0) ?? -1) >= (ends[$0] ?? 0) }) { break }
            }
            return all
        }
        await consumer.close()
        return messages
    }

    /// Exactly once: after dropping what aborted transactions wrote, every input has exactly
    /// one output and it is `expected`'s; the state covers every input (the last committed
    /// changelog record's positions), and the committed positions are the end offsets: in
    /// the transactions the processor committed, and in the group where the cluster stores
    /// transactional offsets. The mock stores none (``KafkaTests/transactionalOffsetsAreStored()``
    /// proves it), so there the group must show no offset at all: one would have been
    /// committed outside a transaction.
    func expectExactlyOnce(_ expected: [String: [UInt8]], recorder: TransactionRecorder, _ note: String = "") async throws {
        let aborted = recorder.abortedOffsets(output)
        var outputs: [String: [[UInt8]]] = [:]
        for m in try await readToEnd(output) where !(aborted[m.partition]?.contains(m.offset) ?? false) {
            outputs[try #require(transactionID(of: m.value)), default: []].append(m.value ?? [])
        }
        let missing = Set(expected.keys).subtracting(outputs.keys).sorted(), unexpected = Set(outputs.keys).subtracting(expected.keys).sorted()
        #expect(missing.isEmpty, "\(missing.count) inputs have no committed output, e.g. \(missing.prefix(3)); \(note)")
        #expect(unexpected.isEmpty, "\(unexpected.count) outputs of no valid input, e.g. \(unexpected.prefix(3)); \(note)")
        let duplicated = outputs.filter { $0.value.count > 1 }.keys.sorted()
        #expect(duplicated.isEmpty, "\(duplicated.count) inputs have more than one committed output, e.g. \(duplicated.prefix(3)); \(note)")
        var last: [String: [UInt8]] = [:]
        for (id, values) in outputs { last[id] = values.last }
        #expect(differences(last, expected) == [], "\(note)")

        let ends = try inputEndOffsets()
        let changelog = "\(applicationID)-windows-changelog"
        #expect(try await changelogInputPositions(skipping: recorder.abortedOffsets(changelog)) == ends, "\(note)")
        let carried = recorder.committedPositions(input).filter { ends[$0.key] != 0 }
        #expect(carried == ends.filter { $0.value != 0 }, "positions of the committed transactions; \(note)")
        let group = try committedInputOffsets()
        if cluster.isMock {
            #expect(group.values.allSatisfy { $0 < 0 }, "offsets committed outside a transaction: \(group)")
        } else {
            #expect(group.filter { ends[$0.key] != 0 } == ends.filter { $0.value != 0 }, "the group's committed offsets")
        }
    }
}
