import Testing
@testable import StreamEngine

/// The commit lifecycle's decisions, driven by event sequences without a broker: each test
/// feeds the events the runtime would (including the reports of the actions it performs) and
/// checks the actions and states.
@Suite("Commit lifecycle")
struct CommitLifecycleTests {
    typealias Event = CommitLifecycle.Event
    typealias Action = CommitLifecycle.Action

    /// Feeds `event`, checks that only the last action reports back, returns the actions.
    @discardableResult
    static func feed(_ machine: inout CommitLifecycle, _ event: Event,
                     sourceLocation: SourceLocation = #_sourceLocation) throws -> [Action] {
        let actions = try machine.handle(event)
        let reportingEarly = actions.dropLast().filter(\.reportsBack)
        #expect(reportingEarly.isEmpty, "\(actions)", sourceLocation: sourceLocation)
        return actions
    }

    static let abortAndRewind: [Action] = [.discardHeldRecords, .abortTransaction, .rollBackAndRewind(skipping: [])]

    @Test("a cycle seals, commits on the commit thread, then its stores commit and held records go")
    func normalCycle() throws {
        var m = CommitLifecycle()
        #expect(try Self.feed(&m, .checkCommit(wait: false)) == [])
        #expect(try Self.feed(&m, .commitDue(full: false)) == [.sealCycle])
        #expect(m.state == .sealing)
        #expect(try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true)) == [.startKafkaCommit])
        #expect(m.isCommitting)
        #expect(try Self.feed(&m, .checkCommit(wait: false)) == [.collectKafkaCommit(wait: false)])
        #expect(try Self.feed(&m, .kafkaCommitFinished(succeeded: true)) == [.commitStores(recordingStatistics: true), .beginNextTransaction])
        #expect(m.state == .beginningNext)
        #expect(try Self.feed(&m, .nextTransactionBegun) == [.releaseHeldRecords])
        #expect(m.state == .idle)
    }

    @Test("an empty cycle closes without a transaction")
    func emptyCycle() throws {
        var m = CommitLifecycle()
        #expect(try Self.feed(&m, .commitDue(full: false)) == [.sealCycle])
        #expect(try Self.feed(&m, .nothingToSeal) == [])
        #expect(m.state == .idle)
    }

    @Test("at-least-once: nothing is held, so the commit is waited for at once")
    func commitWithoutHeldRecords() throws {
        var m = CommitLifecycle()
        try Self.feed(&m, .commitDue(full: false))
        #expect(try Self.feed(&m, .sealed(holdsRecordsDuringCommit: false)) == [.startKafkaCommit, .collectKafkaCommit(wait: true)])
    }

    @Test("the next cycle is handled while a commit is in flight; a due one waits, a full one waits for it and then seals")
    func commitOverlappedWithTheNextCycle() throws {
        var m = CommitLifecycle()
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        // Due by time while the previous commit runs: it waits for a later loop.
        #expect(try Self.feed(&m, .commitDue(full: false)) == [])
        #expect(m.isCommitting)
        // Full: the commit in flight is waited for, then the full cycle seals.
        #expect(try Self.feed(&m, .commitDue(full: true)) == [.collectKafkaCommit(wait: true)])
        #expect(try Self.feed(&m, .kafkaCommitFinished(succeeded: true)) == [.commitStores(recordingStatistics: true), .beginNextTransaction])
        #expect(try Self.feed(&m, .nextTransactionBegun) == [.releaseHeldRecords, .sealCycle])
        #expect(m.state == .sealing)
        #expect(try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true)) == [.startKafkaCommit])
        #expect(m.isCommitting)
    }

    @Test("a failed commit aborts, rolls back and rewinds; the full cycle that waited for it is gone with it")
    func failedCommitAbortsAndRewinds() throws {
        var m = CommitLifecycle()
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        #expect(try Self.feed(&m, .commitDue(full: true)) == [.collectKafkaCommit(wait: true)])
        #expect(try Self.feed(&m, .kafkaCommitFinished(succeeded: false)) == Self.abortAndRewind)
        #expect(m.state == .idle)
        // The next cycle starts afresh.
        #expect(try Self.feed(&m, .commitDue(full: false)) == [.sealCycle])
    }

    @Test("an abortable error while a commit is in flight: the commit ends first, and if it succeeded its stores commit before the rollback")
    func abortWhileCommitInFlight() throws {
        var m = CommitLifecycle()
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        #expect(try Self.feed(&m, .abortRequired) == [.collectKafkaCommit(wait: true)])
        #expect(m.state == .finishingBeforeAbort)
        // Neither counted as a commit nor followed by a begin: the transaction aborts.
        #expect(try Self.feed(&m, .kafkaCommitFinished(succeeded: true)) == [.commitStores(recordingStatistics: false)] + Self.abortAndRewind)
        #expect(m.state == .idle)

        var failed = CommitLifecycle()
        try Self.feed(&failed, .commitDue(full: false))
        try Self.feed(&failed, .sealed(holdsRecordsDuringCommit: true))
        try Self.feed(&failed, .abortRequired)
        #expect(try Self.feed(&failed, .kafkaCommitFinished(succeeded: false)) == Self.abortAndRewind)
    }

    @Test("an abortable error while sealing, or while beginning the next transaction, aborts and rewinds")
    func abortWithoutCommitInFlight() throws {
        var m = CommitLifecycle()
        #expect(try Self.feed(&m, .abortRequired) == Self.abortAndRewind)
        try Self.feed(&m, .commitDue(full: false))
        #expect(try Self.feed(&m, .abortRequired) == Self.abortAndRewind)
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        try Self.feed(&m, .kafkaCommitFinished(succeeded: true))
        // The commit's stores committed already; the held records are dropped, not released.
        #expect(try Self.feed(&m, .abortRequired) == Self.abortAndRewind)
        #expect(m.state == .idle)
    }

    @Test("revocation during a commit in flight: it finishes, then the cycle seals and its commit is waited for")
    func revocationDuringCommit() throws {
        var m = CommitLifecycle()
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        #expect(try Self.feed(&m, .partitionsRevoked([3, 5], lost: false)) == [.collectKafkaCommit(wait: true)])
        try Self.feed(&m, .kafkaCommitFinished(succeeded: true))
        #expect(try Self.feed(&m, .nextTransactionBegun) == [.releaseHeldRecords, .sealCycle])
        #expect(try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true)) == [.startKafkaCommit, .collectKafkaCommit(wait: true)])
        // The ending cycle's commit fails: the rewind skips the leaving partitions.
        #expect(try Self.feed(&m, .kafkaCommitFinished(succeeded: false))
            == [.discardHeldRecords, .abortTransaction, .rollBackAndRewind(skipping: [3, 5])])
        #expect(m.state == .idle && m.leaving.isEmpty)
        // Later aborts seek every partition again.
        #expect(try Self.feed(&m, .abortRequired) == Self.abortAndRewind)
    }

    @Test("revocation with nothing in flight: the cycle ends and commits; with nothing to seal it is done")
    func revocationWhenIdle() throws {
        var m = CommitLifecycle()
        #expect(try Self.feed(&m, .partitionsRevoked([1], lost: false)) == [.sealCycle])
        #expect(try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true)) == [.startKafkaCommit, .collectKafkaCommit(wait: true)])
        try Self.feed(&m, .kafkaCommitFinished(succeeded: true))
        #expect(try Self.feed(&m, .nextTransactionBegun) == [.releaseHeldRecords])
        #expect(m.state == .idle)
        #expect(try Self.feed(&m, .partitionsRevoked([1], lost: false)) == [.sealCycle])
        #expect(try Self.feed(&m, .nothingToSeal) == [])
        #expect(m.state == .idle && m.leaving.isEmpty)
    }

    @Test("lost partitions: nothing open may commit; a commit in flight ends first, then abort and a rewind that skips them")
    func lostPartitions() throws {
        var m = CommitLifecycle()
        #expect(try Self.feed(&m, .partitionsRevoked([2], lost: true))
            == [.discardHeldRecords, .abortTransaction, .rollBackAndRewind(skipping: [2])])
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        #expect(try Self.feed(&m, .partitionsRevoked([2, 7], lost: true)) == [.collectKafkaCommit(wait: true)])
        #expect(try Self.feed(&m, .kafkaCommitFinished(succeeded: true))
            == [.commitStores(recordingStatistics: false), .discardHeldRecords, .abortTransaction, .rollBackAndRewind(skipping: [2, 7])])
        #expect(m.state == .idle && m.leaving.isEmpty)
    }

    @Test("failing: a revocation commits nothing; a commit in flight is abandoned first, then what is open aborts quietly")
    func failing() throws {
        var m = CommitLifecycle()
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        #expect(try Self.feed(&m, .failing) == [])
        #expect(m.state == .failing(commitInFlight: true))
        #expect(try Self.feed(&m, .partitionsRevoked([0, 1], lost: false)) == [.abandonKafkaCommit, .discardHeldRecords, .abortTransactionQuietly])
        #expect(try Self.feed(&m, .partitionsRevoked([2], lost: true)) == [.discardHeldRecords, .abortTransactionQuietly])
        // Nothing commits any more.
        #expect(throws: CommitLifecycleError.self) { try m.handle(.commitDue(full: false)) }
        #expect(throws: CommitLifecycleError.self) { try m.handle(.endCycle(leaving: [])) }

        var idle = CommitLifecycle()
        try Self.feed(&idle, .failing)
        #expect(try Self.feed(&idle, .partitionsRevoked([0], lost: false)) == [.discardHeldRecords, .abortTransactionQuietly])
    }

    @Test("shutdown and --until-end: the commit in flight finishes, the last cycle seals and is waited for")
    func shutdown() throws {
        var m = CommitLifecycle()
        try Self.feed(&m, .commitDue(full: false))
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        // --until-end waits for the commit in flight before it looks at the end offsets.
        #expect(try Self.feed(&m, .checkCommit(wait: true)) == [.collectKafkaCommit(wait: true)])
        try Self.feed(&m, .kafkaCommitFinished(succeeded: true))
        #expect(try Self.feed(&m, .nextTransactionBegun) == [.releaseHeldRecords])
        #expect(try Self.feed(&m, .endCycle(leaving: [])) == [.sealCycle])
        #expect(try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true)) == [.startKafkaCommit, .collectKafkaCommit(wait: true)])
        try Self.feed(&m, .kafkaCommitFinished(succeeded: true))
        #expect(try Self.feed(&m, .nextTransactionBegun) == [.releaseHeldRecords])
        #expect(m.state == .idle)
        // A shutdown racing a failed seal: the abort ends the cycle, nothing is sealed again.
        try Self.feed(&m, .endCycle(leaving: []))
        #expect(try Self.feed(&m, .abortRequired) == Self.abortAndRewind)
        #expect(m.state == .idle)
    }

    @Test("events the state cannot take are refused with a clear error, and change nothing")
    func refusedEvents() throws {
        var m = CommitLifecycle()
        let refusals: [(CommitLifecycle, Event)] = [
            (m, .kafkaCommitFinished(succeeded: true)),
            (m, .sealed(holdsRecordsDuringCommit: true)),
            (m, .nextTransactionBegun),
        ]
        try Self.feed(&m, .commitDue(full: false))
        let sealing = m
        try Self.feed(&m, .sealed(holdsRecordsDuringCommit: true))
        let committing = m
        for (machine, event) in refusals + [(sealing, .commitDue(full: false)), (sealing, .endCycle(leaving: [])),
                                            (committing, .sealed(holdsRecordsDuringCommit: true))] {
            var copy = machine
            let error = #expect(throws: CommitLifecycleError.self) { try copy.handle(event) }
            #expect(copy == machine)
            #expect(error?.description.contains("cannot take") == true)
        }
        // A commit cannot start while one is in flight.
        var twice = committing
        #expect(try twice.handle(.commitDue(full: false)) == [])
        #expect(twice.isCommitting)
    }
}
