import Foundation
import Logging
import Testing
@testable import PolyglotSupport
@testable import KafkaClient
@testable import StreamEngine
@testable import Roles

/// Several stream threads in one instance: when they agree to stop under `--until-end`, how
/// their statistics add up, their settings, and whole runs on the dev broker.
@Suite("Stream threads")
struct StreamThreadTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.threads")
        l.logLevel = .warning
        return l
    }()

    // MARK: - When the threads stop

    /// One report (`#expect` cannot call a mutating method).
    private func step(_ agreement: inout UntilEndAgreement, _ thread: Int, _ atEnd: Bool) -> Bool {
        agreement.report(thread: thread, atEnd: atEnd)
    }

    @Test func aLoneThreadStopsAtItsFirstEnd() {
        var agreement = UntilEndAgreement(threads: 1)
        #expect(!step(&agreement, 0, false))
        #expect(step(&agreement, 0, true))
    }

    @Test func threadsStopOnlyAfterEachConfirmedItsEndOnceAllWereThere() {
        var agreement = UntilEndAgreement(threads: 2)
        #expect(!step(&agreement, 0, true))
        #expect(!step(&agreement, 0, true), "one thread at its end twice is not agreement")
        #expect(!step(&agreement, 1, true), "thread 0's check may predate what thread 1 sent it")
        #expect(agreement.phase == .confirming)
        #expect(!step(&agreement, 1, true))
        #expect(step(&agreement, 0, true))
        #expect(step(&agreement, 1, false), "once agreed, every thread stops")
    }

    @Test func workArrivingWhileConfirmingStartsTheRoundOver() {
        var agreement = UntilEndAgreement(threads: 3)
        for t in 0..<3 { #expect(!step(&agreement, t, true)) }
        #expect(!step(&agreement, 0, true))
        // Thread 2 was sent records after its first check.
        #expect(!step(&agreement, 2, false))
        #expect(agreement.phase == .collecting)
        #expect(!step(&agreement, 1, true), "a confirmation from before the reset does not count")
        #expect(!step(&agreement, 2, true))
        #expect(agreement.phase == .confirming)
        #expect(!step(&agreement, 0, true))
        #expect(!step(&agreement, 1, true))
        #expect(step(&agreement, 2, true))
    }

    /// Random reports against the rule itself: the threads stop exactly when every thread has
    /// reported its end since the moment all of them last were at their end together.
    @Test func agreementMatchesItsRuleOverRandomReports() {
        var random = SeededGenerator()
        for _ in 0..<200 {
            let n = Int.random(in: 1...4, using: &random)
            var agreement = UntilEndAgreement(threads: n)
            var atEnd = Array(repeating: false, count: n)
            var confirmedSinceAll: [Bool]? = n == 1 ? Array(repeating: false, count: n) : nil
            for _ in 0..<60 {
                let t = Int.random(in: 0..<n, using: &random), end = Int.random(in: 0..<4, using: &random) > 0
                let stop = agreement.report(thread: t, atEnd: end)
                var expected = false
                if var confirmed = confirmedSinceAll {
                    if end {
                        confirmed[t] = true
                        expected = confirmed.allSatisfy { $0 }
                        confirmedSinceAll = confirmed
                    } else if n > 1 {
                        atEnd[t] = false
                        confirmedSinceAll = nil
                    }
                } else {
                    atEnd[t] = end
                    if atEnd.allSatisfy({ $0 }) { confirmedSinceAll = Array(repeating: false, count: n) }
                }
                #expect(stop == expected, "\(random.note)")
                if stop { break }
            }
        }
    }

    // MARK: - Statistics

    @Test func statisticsAddUpAndTheProcessingSpanIsTheUnion() {
        let t0 = ContinuousClock.now
        var a = RuntimeStatistics(), b = RuntimeStatistics()
        a.records = 100; b.records = 50
        a.recordsBySource = ["input": 60, "output": 40]; b.recordsBySource = ["input": 50]
        a.firstRecordAt = t0; a.processingSeconds = 2
        b.firstRecordAt = t0 + .seconds(1); b.processingSeconds = 3
        a.phase = .running; b.phase = .starting
        a.assignedPartitions = 2; b.assignedPartitions = 1
        a.lastPollAt = t0 + .seconds(5); b.lastPollAt = t0 + .seconds(4)
        a.lastCommitAt = t0 + .seconds(2); b.lastCommitAt = t0 + .seconds(4)
        a.consecutiveAborts = 1; b.consecutiveAborts = 3
        a.restoreSeconds = 1.5; b.restoreSeconds = 0.5
        let merged = RuntimeStatistics.merging([a, b])
        #expect(merged.records == 150)
        #expect(merged.recordsBySource == ["input": 110, "output": 40])
        #expect(abs(merged.processingSeconds - 4) < 1e-9, "from a's first record to b's last commit")
        #expect(merged.phase == .starting)
        #expect(merged.assignedPartitions == 3)
        #expect(merged.lastPollAt == t0 + .seconds(4), "the thread that polled longest ago")
        #expect(merged.lastCommitAt == t0 + .seconds(4))
        #expect(merged.consecutiveAborts == 3)
        #expect(merged.restoreSeconds == 1.5)
        #expect(RuntimeStatistics.merging([a]) == a)
    }

    @Test func phasesMergeFromTheLeastAdvanced() {
        #expect(RuntimePhase.running.merged(with: .running) == .running)
        #expect(RuntimePhase.running.merged(with: .starting) == .starting)
        #expect(RuntimePhase.stopped.merged(with: .running) == .stopping)
        #expect(RuntimePhase.stopped.merged(with: .stopped) == .stopped)
    }

    // MARK: - Settings

    @Test func threadsAfterTheFirstHaveTransactionalIdsOfTheirOwn() {
        let base = RuntimeConfiguration(kafka: KafkaConfiguration(), groupID: "g", stateDirectory: "/tmp/x", guarantee: .exactlyOnce,
                                        commitInterval: .milliseconds(100), untilEnd: false, transactionalID: "g-abc")
        #expect((0..<3).map { base.forThread($0, of: 3).transactionalID } == ["g-abc", "g-abc-2", "g-abc-3"])
        #expect(base.forThread(0, of: 1).consumerPrefetchKilobytes == "131072")
        #expect(base.forThread(1, of: 2).consumerPrefetchKilobytes == "65536", "the instance's prefetch is shared")
    }

    @Test func streamThreadsComeFromFlagEnvironmentOrTheRolesDefault() throws {
        let environment = ["KAFKA_BOOTSTRAP_SERVERS": "localhost:9092", "POLYGLOT_STATE_DIR": "/tmp/polyglot-threads-test",
                           "POLYGLOT_INSTANCE_ID": "i"]
        var process = ProcessorSettings()
        process.fingerprintDigest = String(repeating: "ab", count: 32)
        #expect(try process.resolve(environment: environment).streamThreads == Setting.processStreamThreads)
        var audit = AuditorSettings()
        audit.processor = process
        #expect(try audit.resolve(environment: environment).pipeline.streamThreads == Setting.auditStreamThreads)
        #expect(try audit.resolve(environment: environment.merging(["POLYGLOT_STREAM_THREADS": "3"]) { $1 }).pipeline.streamThreads == 3)
        process.streamThreads = "4"
        #expect(try process.resolve(environment: environment.merging(["POLYGLOT_STREAM_THREADS": "3"]) { $1 }).streamThreads == 4)
        for bad in ["0", "65", "two", ""] where !bad.isEmpty {
            process.streamThreads = bad
            #expect(throws: ConfigurationError.self) { try process.resolve(environment: environment) }
        }
        process.streamThreads = nil
        let error = #expect(throws: ConfigurationError.self) {
            try process.resolve(environment: environment.merging(["POLYGLOT_STREAM_THREADS": "x"]) { $1 })
        }
        #expect(error?.description == "POLYGLOT_STREAM_THREADS must be a whole number from 1 to 64, got 'x'")
    }

    // MARK: - Whole runs

    /// Three threads over four partitions, every record keyed by its card's account, which
    /// mostly lands on another partition than the card's: those records go through the
    /// repartition topic, often to a partition another thread owns (in order, since a card's
    /// records share one account). `--until-end` still ends, and only once every forwarded
    /// record is handled: each input has exactly one committed output, equal to replay's.
    @Test(.brokerHeavy) func threadsProcessExactlyOnceAndEndTogether() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 4)
        let workload = Workload.valid(count: 400, cards: 16)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        try await topics.produce(workload.records.map { (key: Array("account-".utf8) + ($0.key ?? []), value: $0.value) })
        var configuration = topics.configuration(stateDirectory: state)
        configuration.streamThreads = 3
        let recorder = TransactionRecorder()
        let processor = try StreamProcessor(configuration: configuration, logger: logger, observer: recorder)
        #expect(processor.runtime.runtimes.count == 3)
        try await run(processor, timeout: .seconds(90))
        let stats = processor.statistics
        #expect(stats.outputs == 400)
        #expect(stats.repartitioned > 0)
        #expect(processor.runtime.runtimes.filter { $0.statistics.records > 0 }.count >= 2, "the partitions were shared")
        #expect(stats.records == processor.runtime.runtimes.map(\.statistics.records).reduce(0, +))
        try await topics.expectExactlyOnce(try Workload.expected(workload.records), recorder: recorder)
    }

    /// More threads than partitions: the idle ones do not hold `--until-end` up.
    @Test(.brokerHeavy) func idleThreadsDoNotHoldTheEndUp() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        let workload = Workload.valid(count: 50, cards: 5)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        try await topics.produce(workload.kafkaRecords)
        var configuration = topics.configuration(stateDirectory: state)
        configuration.streamThreads = 2
        let processor = try StreamProcessor(configuration: configuration, logger: logger)
        try await run(processor, timeout: .seconds(60))
        #expect(processor.statistics.outputs == 50)
        #expect(processor.runtime.runtimes.map { $0.statistics.assignedPartitions }.sorted() == [0, 0], "both threads stopped")
    }

    /// The continuous auditor on two threads, its read progress crossing between them, over a
    /// processed backlog: every input matched, nothing found.
    @Test(.brokerHeavy) func anAuditorOnTwoThreadsMatchesEveryRecord() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 4)
        let workload = Workload.valid(count: 400, cards: 16)
        let processorState = try TestPaths.temporaryDirectory(), auditorState = try TestPaths.temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(at: processorState)
            try? FileManager.default.removeItem(at: auditorState)
        }
        try await topics.produce(workload.records.map { (key: Array("account-".utf8) + ($0.key ?? []), value: $0.value) })
        try await run(StreamProcessor(configuration: topics.configuration(stateDirectory: processorState), logger: logger))
        let group = "audit-\(UUID().uuidString.prefix(8).lowercased())"
        for topic in ["\(group)-ledger-changelog", "\(group)-repartition", "\(group)-findings"] {
            try? cluster.createExactTopic(topic, partitions: 4)
        }
        var pipeline = topics.configuration(stateDirectory: auditorState, untilEnd: true)
        pipeline.applicationID = group
        pipeline.instanceID = "a"
        pipeline.streamThreads = 2
        let auditor = try ContinuousAuditor(configuration: AuditorConfiguration(
            pipeline: pipeline, audit: AuditConfiguration(fingerprintDigest: pipeline.fingerprintDigest),
            findingsTopic: "\(group)-findings", processorGroup: topics.applicationID, settle: .seconds(120),
            probeInterval: .milliseconds(200)), logger: logger)
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await auditor.runtime.runOnDedicatedThread(threadName: "test-audit") }
            tasks.addTask {
                try await Task.sleep(for: .seconds(90))
                auditor.requestStop()
                Issue.record("the auditor did not reach its end within 90 s")
            }
            try await tasks.next()
            tasks.cancelAll()
        }
        let counts = auditor.counts
        #expect(counts.inputs == 400)
        #expect(counts.outputs == 400)
        #expect(counts.missing + counts.orphan + counts.duplicate + counts.mismatch + counts.drift == 0, "\(counts)")
        #expect(auditor.runtime.runtimes.allSatisfy { $0.statistics.records > 0 }, "both threads audited")
    }
}
