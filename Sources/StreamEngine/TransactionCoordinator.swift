import Foundation
import Synchronization
import PolyglotSupport
import KafkaClient

/// What the runtime needs of a transaction's Kafka side. ``ExactlyOnceClient`` and
/// ``AtLeastOnceClient`` implement it over a producer and the consumer whose offsets commit;
/// tests drive the ``TransactionCoordinator`` with a scripted one, no broker needed.
public protocol TransactionClient: AnyObject, Sendable {
    /// Opens a transaction (local, quick).
    func begin() throws(KafkaError)
    /// Adds the consumed positions (next offsets) to the open transaction.
    func sendOffsets(_ offsets: [KafkaTopicPartitionOffset]) throws(KafkaError)
    /// Commits the open transaction. Blocking; runs on the coordinator's commit thread.
    func commit() throws(KafkaError)
    /// Aborts the open transaction. Blocking.
    func abort() throws(KafkaError)
    /// The client's fatal error, once it has one (it is unusable from then on).
    var fatalError: KafkaError? { get }
    /// Whether records handled while a commit is in flight must wait for the next transaction.
    var holdsRecordsDuringCommit: Bool { get }
}

/// A failure that ends the run: the client is fenced or otherwise unusable. The message is one
/// line for the operator.
public struct TransactionFatalError: Error, Sendable, CustomStringConvertible {
    public let underlying: KafkaError
    public let operation: String
    public var description: String {
        let fenced = TransactionCoordinator.isFencing(underlying)
        return fenced
            ? "another instance with the same transactional id took over (\(operation): \(underlying)); this one stops"
            : "fatal Kafka error in \(operation), stopping: \(underlying)"
    }
}

/// The open transaction must be aborted before anything else is sent (a record was refused, or
/// the commit failed in a way a new transaction can recover from).
public struct TransactionAbortRequired: Error, Sendable, CustomStringConvertible {
    public let underlying: any Error
    public let operation: String
    public var description: String { "\(operation) failed, the transaction must abort: \(underlying)" }
}

/// The states of one producer's transactions, and the only place that moves between them.
///
/// ```
/// idle ──begin──▶ open ──startCommit──▶ committing ──success──▶ idle
///                  │                        │
///                  │ abortable error         │ abortable error
///                  ▼                        ▼
///               mustAbort ◀─────────────────┘ ──abort──▶ aborting ──▶ idle
/// any state ──fatal error (fenced, unusable producer)──▶ fatal
/// ```
/// Every librdkafka error class maps to one transition (``disposition(of:)``): retriable errors
/// retry the same call (a bounded number of times, then they count as abortable), abortable
/// ones move to `mustAbort`, fatal ones (and fencing) to `fatal`, from which nothing leaves.
/// The commit runs on a commit thread (one per coordinator, kept from commit to commit) so the
/// run loop keeps handling the next cycle meanwhile; the coordinator is otherwise used from the
/// run loop's thread only.
public final class TransactionCoordinator: @unchecked Sendable {
    // @unchecked: `state`, the counters and `committer` are touched on the owning (run-loop)
    // thread only; the commit thread communicates through `CommitOutcome`, which is locked.

    public enum State: Sendable, Equatable, CustomStringConvertible {
        case idle, open, committing, mustAbort, aborting, fatal

        public var description: String {
            switch self {
            case .idle: "idle"
            case .open: "open"
            case .committing: "committing"
            case .mustAbort: "must abort"
            case .aborting: "aborting"
            case .fatal: "fatal"
            }
        }
    }

    /// What an error means for the transaction.
    public enum Disposition: Sendable, Equatable {
        case retry, abort, fatal
    }

    /// Counters for logs, metrics and tests.
    public struct Counters: Sendable, Hashable {
        public var begun = 0
        public var committed = 0
        public var aborted = 0
        /// Calls repeated after a retriable error.
        public var retries = 0
    }

    /// What the commit thread reports: the result (nil while it runs) and the retries it made.
    private typealias CommitOutcome = ConditionLock<(result: Result<Void, KafkaError>?, retries: Int)>

    public let client: any TransactionClient
    /// How often a retriable error is retried before it counts as abortable.
    public let maxRetries: Int
    public private(set) var state: State = .idle
    public private(set) var counters = Counters()
    private var outcome: CommitOutcome?
    private var fatal: TransactionFatalError?
    /// The thread commits run on, started with the first one and kept for the next.
    private var committer: DedicatedWorker?

    public init(client: any TransactionClient, maxRetries: Int = 5) {
        self.client = client
        self.maxRetries = maxRetries
    }

    /// Ends the commit thread, after the commit in flight (if any) has returned.
    public func close() {
        committer?.stop()
        committer = nil
    }

    deinit {
        // Not a C handle: only a parked thread to end, when the owner did not call close().
        committer?.stop()
    }

    /// The error class of `error`: fencing and fatal errors are fatal; abortable ones abort;
    /// retriable ones retry; anything else aborts, the safe default.
    public static func disposition(of error: KafkaError) -> Disposition {
        if error.isFatal || isFencing(error) { return .fatal }
        switch error.transactionAction {
        case .fatal: return .fatal
        case .abort: return .abort
        case .retry: return .retry
        }
    }

    /// Errors meaning another producer with the same transactional id took over.
    static func isFencing(_ error: KafkaError) -> Bool {
        [KafkaError.Code.fenced, KafkaError.Code.producerFenced, KafkaError.Code.invalidProducerEpoch].contains(error.code)
    }

    /// Whether a transaction is open or committing (records handled now belong to one).
    public var isActive: Bool { state == .open || state == .committing }

    /// Opens a transaction unless one is open or committing (records handled during a commit
    /// belong to the next transaction, which begins when the commit finishes). Throws
    /// ``TransactionAbortRequired`` in `mustAbort` and ``TransactionFatalError`` in `fatal`.
    public func beginIfNeeded() throws {
        switch state {
        case .open, .committing: return
        case .idle: break
        case .mustAbort, .aborting: throw TransactionAbortRequired(underlying: KafkaError.stateError("begin"), operation: "begin")
        case .fatal: throw fatal!
        }
        try perform("begin_transaction") { () throws(KafkaError) in try client.begin() }
        state = .open
        counters.begun += 1
    }

    /// Adds offsets to the open transaction, retrying retriable errors.
    public func sendOffsets(_ offsets: [KafkaTopicPartitionOffset]) throws {
        precondition(state == .open, "offsets outside an open transaction")
        try perform("send_offsets_to_transaction") { () throws(KafkaError) in try client.sendOffsets(offsets) }
    }

    /// A record of the open transaction was refused: it must abort.
    public func recordFailed(_ error: KafkaError) throws {
        try classify(error, operation: "produce")
    }

    /// Starts committing the open transaction on the commit thread; ``finishCommit(wait:)``
    /// collects the result.
    public func startCommit() {
        precondition(state == .open, "commit outside an open transaction")
        state = .committing
        let outcome = CommitOutcome((nil, 0))
        self.outcome = outcome
        let client = self.client
        let maxRetries = self.maxRetries
        let committer = self.committer ?? DedicatedWorker(queueLimit: 1)
        self.committer = committer
        committer.submit {
            var attempt = 0
            var result: Result<Void, KafkaError>
            while true {
                do throws(KafkaError) {
                    try client.commit()
                    result = .success(())
                } catch {
                    result = .failure(error)
                    if Self.disposition(of: error) == .retry, attempt < maxRetries {
                        attempt += 1
                        continue
                    }
                }
                break
            }
            let retried = attempt
            outcome.withLock { $0 = (result, retried) }
        }
    }

    /// The commit in flight: nil when none is, or (with `wait` false) it is still running.
    /// `.success` moves to idle; an abortable failure to `mustAbort` (the caller aborts and
    /// rewinds); a fatal one throws ``TransactionFatalError``.
    public func finishCommit(wait: Bool) throws -> Result<Void, TransactionAbortRequired>? {
        guard state == .committing, let outcome else { return nil }
        let reported = wait ? outcome.wait(until: { $0.result != nil }, then: { $0 }) : outcome.withLock { $0 }
        guard let result = reported.result else { return nil }
        self.outcome = nil
        counters.retries += reported.retries
        switch result {
        case .success:
            state = .idle
            counters.committed += 1
            return .success(())
        case .failure(let error):
            state = .open
            do {
                try classify(error, operation: "commit_transaction")
            } catch let abort as TransactionAbortRequired {
                return .failure(abort)
            }
            // A retriable error that ran out of retries: abort, a new transaction may succeed.
            state = .mustAbort
            return .failure(TransactionAbortRequired(underlying: error, operation: "commit_transaction"))
        }
    }

    /// Aborts the open (or failed) transaction; afterwards the state is idle. A commit in
    /// flight is waited for first: if it succeeded there is nothing to abort and the result
    /// says so (`false`).
    @discardableResult
    public func abort() throws -> Bool {
        if state == .committing {
            if case .success = try finishCommit(wait: true) { return false }
        }
        switch state {
        case .idle: return false
        case .fatal: throw fatal!
        case .open, .mustAbort, .aborting: break
        case .committing: preconditionFailure("unreachable")
        }
        state = .aborting
        do {
            try perform("abort_transaction") { () throws(KafkaError) in try client.abort() }
        } catch let abort as TransactionAbortRequired {
            // Abort itself failing in an abortable way leaves nothing to recover: stop.
            let error = (abort.underlying as? KafkaError) ?? KafkaError.stateError("abort_transaction")
            fatal = TransactionFatalError(underlying: error, operation: "abort_transaction")
            state = .fatal
            throw fatal!
        }
        state = .idle
        counters.aborted += 1
        return true
    }

    /// Runs `call`, retrying retriable errors; maps the last error to a transition.
    private func perform(_ operation: String, _ call: () throws(KafkaError) -> Void) throws {
        var attempt = 0
        while true {
            do throws(KafkaError) {
                try call()
                return
            } catch {
                if Self.disposition(of: error) == .retry, attempt < maxRetries {
                    attempt += 1
                    counters.retries += 1
                    continue
                }
                try classify(error, operation: operation)
                // Out of retries: abortable.
                state = state == .idle ? .idle : .mustAbort
                throw TransactionAbortRequired(underlying: error, operation: operation)
            }
        }
    }

    /// Moves to `fatal` or `mustAbort` for `error`, and throws accordingly; returns for a
    /// retriable error (the caller decides).
    private func classify(_ error: KafkaError, operation: String) throws {
        if let existing = client.fatalError {
            fatal = TransactionFatalError(underlying: existing, operation: operation)
            state = .fatal
            throw fatal!
        }
        switch Self.disposition(of: error) {
        case .fatal:
            fatal = TransactionFatalError(underlying: error, operation: operation)
            state = .fatal
            throw fatal!
        case .abort:
            if state != .idle { state = .mustAbort }
            throw TransactionAbortRequired(underlying: error, operation: operation)
        case .retry:
            return
        }
    }
}

extension KafkaError {
    /// A local state error, for a call the state machine refuses.
    static func stateError(_ operation: String) -> KafkaError {
        KafkaError(code: Code.state, name: "_STATE", message: "\(operation) in the wrong transaction state")
    }
}

/// Exactly-once: a transactional producer, with the consumer's group metadata for the offsets.
public final class ExactlyOnceClient: TransactionClient {
    let producer: KafkaProducer
    let consumer: KafkaConsumer
    let timeout: Duration

    public init(producer: KafkaProducer, consumer: KafkaConsumer, timeout: Duration = .seconds(30)) {
        self.producer = producer
        self.consumer = consumer
        self.timeout = timeout
    }

    public func begin() throws(KafkaError) { try producer.beginTransaction() }
    public func sendOffsets(_ offsets: [KafkaTopicPartitionOffset]) throws(KafkaError) {
        try producer.sendOffsetsToTransaction(offsets, consumer: consumer, timeout: timeout)
    }
    public func commit() throws(KafkaError) { try producer.commitTransaction(timeout: timeout) }
    public func abort() throws(KafkaError) { try producer.abortTransaction(timeout: timeout) }
    public var fatalError: KafkaError? { producer.fatalError }
    public var holdsRecordsDuringCommit: Bool { true }
}

/// At-least-once: no Kafka transaction. The commit flushes the producer, fails if any record of
/// the cycle was not delivered, then commits the offsets for the group; an abort only forgets
/// the offsets (the records already sent stay, and the rewind repeats them).
public final class AtLeastOnceClient: TransactionClient, @unchecked Sendable {
    // @unchecked: `offsets` and `failedAtBegin` are used from one thread at a time (the run
    // loop, then the commit thread it waits for).
    let producer: KafkaProducer
    let consumer: KafkaConsumer
    private var offsets: [KafkaTopicPartitionOffset] = []
    private var failedAtBegin = 0

    public init(producer: KafkaProducer, consumer: KafkaConsumer) {
        self.producer = producer
        self.consumer = consumer
    }

    public func begin() throws(KafkaError) {
        offsets = []
        failedAtBegin = producer.deliveryCounts.failed
    }
    public func sendOffsets(_ offsets: [KafkaTopicPartitionOffset]) throws(KafkaError) { self.offsets += offsets }
    public func commit() throws(KafkaError) {
        try producer.flush(timeout: .seconds(60))
        let counts = producer.deliveryCounts
        if counts.failed != failedAtBegin {
            failedAtBegin = counts.failed
            throw KafkaError(code: KafkaError.Code.transport, name: "DELIVERY_FAILED",
                             message: "\(counts.failures.last.map { "\($0)" } ?? "a record was not delivered")",
                             txnRequiresAbort: true)
        }
        try consumer.commit(offsets)
        offsets = []
    }
    public func abort() throws(KafkaError) { offsets = [] }
    public var fatalError: KafkaError? { producer.fatalError }
    public var holdsRecordsDuringCommit: Bool { false }
}
