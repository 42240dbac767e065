import Foundation
import Synchronization
import Testing
@testable import StreamEngine
@testable import Roles

extension ProcessorTests {
    /// A seeded random schedule of abortable failures over the first transactions (failed
    /// begins, offsets and commits, injected from the Swift side so it runs on any cluster), with
    /// records that go through the repartition topic: whatever the schedule, each input has
    /// exactly one committed output, replay's, and the committed positions reach the end.
    @Test func randomFaultScheduleKeepsExactlyOnce() async throws {
        var random = SeededGenerator()
        let note = random.note
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 3)
        let workload = Workload.valid(count: 1_500, cards: 20, misKeyedCards: 4)

        // The first commit always fails, holding repartitioned records; of the transactions
        // after it, up to the twelfth begun, about four in ten fail in one call.
        var plan: [Int: TransactionOperation] = [:]
        for transaction in 2...12 where Double.random(in: 0..<1, using: &random) < 0.4 {
            plan[transaction] = [TransactionOperation.begin, .sendOffsets, .commit].randomElement(using: &random)!
        }
        let schedule = plan
        let fired = Mutex<(firstCommit: Bool, transactions: Set<Int>)>((false, []))
        let faults = TransactionFaultInjector { operation, transaction in
            let fire = fired.withLock { f -> Bool in
                if operation == .commit, !f.firstCommit { f.firstCommit = true; return true }
                return schedule[transaction] == operation && f.transactions.insert(transaction).inserted
            }
            return fire ? TransactionFaultInjector.abortable(operation) : nil
        }
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let recorder = TransactionRecorder()
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, untilEnd: false), logger: logger,
                                            observer: recorder, transactionFaults: faults)
        // Ten batches, each fed once a transaction ended after the previous one: the schedule
        // spans many transactions.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await processor.runOnDedicatedThread() }
            let batch = workload.records.count / 10
            for start in stride(from: 0, to: workload.records.count, by: batch) {
                let ended = recorder.transactions.count
                try await topics.produce(Array(workload.kafkaRecords[start..<min(start + batch, workload.records.count)]))
                let moved = try await waitUntil(within: .seconds(30)) { recorder.transactions.count > ended }
                #expect(moved, "no transaction ended within 30 s of a batch; \(note)")
            }
            let ends = try topics.inputEndOffsets().filter { $0.value > 0 }
            let caughtUp = try await waitUntil(within: .seconds(90)) { recorder.committedPositions(topics.input) == ends }
            #expect(caughtUp, "committed positions \(recorder.committedPositions(topics.input)), end offsets \(ends); \(note)")
            processor.requestStop()
            try await group.waitForAll()
        }
        let misplaced = try await topics.misplacedInputRecords(count: workload.records.count)
        #expect(misplaced > 0, "no record goes through the repartition topic; \(note)")

        let s = processor.statistics
        let injected = fired.withLock { ($0.firstCommit ? 1 : 0) + $0.transactions.count }
        #expect(injected >= 1, "no fault fired; \(note)")
        #expect(s.rewinds >= injected, "\(s.rewinds) rewinds for \(injected) injected faults; \(note)")
        #expect(recorder.aborted.count == s.transactionsAborted, "\(note)")
        let repartition = "\(topics.applicationID)-repartition"
        #expect(recorder.aborted.contains { $0.written.keys.contains { $0.topic == repartition } },
                "no aborted transaction wrote a repartitioned record; \(note)")
        try await topics.expectExactlyOnce(try Workload.expected(workload.records), recorder: recorder, "\(note)")
    }
}
