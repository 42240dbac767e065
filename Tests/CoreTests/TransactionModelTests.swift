import Foundation
import Synchronization
import Testing
@testable import KafkaClient
@testable import StreamEngine

/// A client whose calls fail as the test says next, and which records the coordinator's state
/// while each call runs (the `aborting` state exists only during the abort call).
final class ModelTransactionClient: TransactionClient, @unchecked Sendable {
    // @unchecked: used from the test's thread and the coordinator's commit thread, which the
    // test waits for; the fields are locked anyway.
    private let state = Mutex<(next: [KafkaError], calls: [ScriptedTransactionClient.Operation], seen: [TransactionCoordinator.State])>(([], [], []))
    weak var coordinator: TransactionCoordinator?

    /// The errors the next calls throw, in order (then they succeed).
    func failNext(_ errors: [KafkaError]) { state.withLock { $0.next = errors } }
    var calls: [ScriptedTransactionClient.Operation] { state.withLock { $0.calls } }
    var statesSeen: [TransactionCoordinator.State] { state.withLock { $0.seen } }

    private func call(_ operation: ScriptedTransactionClient.Operation) throws(KafkaError) {
        // The commit runs on the commit thread while the run loop waits: reading the state is safe.
        let during = operation == .commit ? TransactionCoordinator.State.committing : coordinator?.state
        let error: KafkaError? = state.withLock { s in
            s.calls.append(operation)
            if let during { s.seen.append(during) }
            return s.next.isEmpty ? nil : s.next.removeFirst()
        }
        if let error { throw error }
    }

    func begin() throws(KafkaError) { try call(.begin) }
    func sendOffsets(_ offsets: [KafkaTopicPartitionOffset]) throws(KafkaError) { try call(.offsets) }
    func commit() throws(KafkaError) { try call(.commit) }
    func abort() throws(KafkaError) { try call(.abort) }
    var fatalError: KafkaError? { nil }
    var holdsRecordsDuringCommit: Bool { true }
}

/// The transaction coordinator against a model: random operations, each call failing at random
/// (retriable a few times, retriable past the limit, abortable or fatal), checked against a
/// transition table. Fatal is terminal; every begun transaction ends in exactly one commit or
/// abort (or is open when the producer became unusable).
@Suite("Transaction coordinator model")
struct TransactionModelTests {
    enum Outcome: CaseIterable { case success, retriedThenSuccess, retriesExhausted, abortable, fatal }
    enum Step: CaseIterable { case begin, sendOffsets, recordFailed, commit, abort }
    typealias State = TransactionCoordinator.State

    static let maxRetries = 2

    static func errors(for outcome: Outcome) -> [KafkaError] {
        switch outcome {
        case .success: []
        case .retriedThenSuccess: [.retriable, .retriable]
        case .retriesExhausted: Array(repeating: .retriable, count: maxRetries + 1)
        case .abortable: [.abortable]
        case .fatal: [.fenced]
        }
    }

    /// The state after `step` from `state` when its client call ends as `outcome`; nil where
    /// the coordinator refuses the step without calling the client (the state stays).
    static func expected(_ step: Step, from state: State, _ outcome: Outcome) -> State {
        let failed = outcome == .retriesExhausted || outcome == .abortable
        switch (step, state) {
        case (_, .fatal): return .fatal
        case (.begin, .idle): return outcome == .fatal ? .fatal : failed ? .idle : .open
        case (.begin, _): return state
        case (.sendOffsets, .open): return outcome == .fatal ? .fatal : failed ? .mustAbort : .open
        case (.recordFailed, .open):
            // The error handed over is the outcome's first one; a retriable one changes nothing.
            return outcome == .fatal ? .fatal : outcome == .abortable ? .mustAbort : .open
        case (.commit, .open): return outcome == .fatal ? .fatal : failed ? .mustAbort : .idle
        case (.abort, .idle): return .idle
        case (.abort, .open), (.abort, .mustAbort): return outcome == .fatal || failed ? .fatal : .idle
        default: return state
        }
    }

    @Test func randomOperationsFollowTheTransitionTable() throws {
        var random = SeededGenerator()
        let note = random.note
        var reached: Set<String> = []
        for _ in 0..<300 {
            let client = ModelTransactionClient()
            let coordinator = TransactionCoordinator(client: client, maxRetries: Self.maxRetries)
            client.coordinator = coordinator
            var state: State = .idle
            var open = false, begun = 0, ended = 0
            for _ in 0..<Int.random(in: 1...12, using: &random) {
                // Steps whose precondition holds (offsets and commits need an open transaction).
                let steps = Step.allCases.filter { state == .open || ($0 != .sendOffsets && $0 != .commit && $0 != .recordFailed) }
                let step = steps.randomElement(using: &random)!
                let outcome = Outcome.allCases.randomElement(using: &random)!
                let callsBefore = client.calls.count
                client.failNext(Self.errors(for: outcome))
                var threw: (any Error)?
                do {
                    switch step {
                    case .begin: try coordinator.beginIfNeeded()
                    case .sendOffsets: try coordinator.sendOffsets([])
                    case .recordFailed: try coordinator.recordFailed(Self.errors(for: outcome).first ?? .retriable)
                    case .commit:
                        coordinator.startCommit()
                        if case .failure(let abort)? = try coordinator.finishCommit(wait: true) { threw = abort }
                    case .abort: try coordinator.abort()
                    }
                } catch {
                    threw = error
                }
                client.failNext([])
                let after = Self.expected(step, from: state, outcome)
                let called = client.calls.count > callsBefore
                #expect(coordinator.state == after, "\(step) from \(state) with \(outcome): \(coordinator.state), expected \(after); \(note)")
                if state == .fatal {
                    #expect(threw is TransactionFatalError && !called, "fatal must stay terminal: \(step) called the client or did not throw; \(note)")
                }
                if after == .fatal { #expect(threw is TransactionFatalError, "\(step) into fatal must throw it; \(note)") }
                if step == .begin, state == .idle, after == .idle { reached.insert("failed begin") }
                if step == .abort, after == .fatal, state != .fatal { reached.insert("failed abort") }
                // Transactions begun and ended, by what the client did.
                if step == .begin, state == .idle, after == .open { open = true; begun += 1 }
                if (step == .commit && after == .idle) || (step == .abort && state != .idle && state != .fatal && after == .idle) {
                    #expect(open, "\(step) ended a transaction that was not open; \(note)")
                    open = false
                    ended += 1
                }
                state = coordinator.state
            }
            if client.statesSeen.contains(.aborting) { reached.insert("aborting") }
            if state != .fatal, open || state == .mustAbort {
                try coordinator.abort()
                if open { ended += 1 }
                open = false
            }
            // Every begun transaction ended once, unless the producer became unusable with it open.
            #expect(begun == ended + (open ? 1 : 0), "\(begun) begun, \(ended) ended; \(note)")
            if state != .fatal {
                #expect(coordinator.counters.begun == coordinator.counters.committed + coordinator.counters.aborted, "\(coordinator.counters); \(note)")
            }
        }
        #expect(reached == ["failed begin", "failed abort", "aborting"], "states not reached: \(reached); \(note)")
    }
}
