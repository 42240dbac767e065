/// The decisions of the commit lifecycle, apart from the I/O that carries them out: what ends
/// a cycle, what a finished or failed Kafka commit leads to, how an abort, a revocation, a
/// failing run and a shutdown treat a commit in flight.
///
/// A value: ``StreamRuntime`` feeds it events and performs the ``Action``s it returns, in
/// order; an action that reports back (``Action/reportsBack``) is always the last of its list,
/// and its report is the next event. Tests drive it without a broker.
///
/// ```
/// idle ──commitDue / endCycle──▶ sealing ──sealed──▶ committing ──finished ok──▶ beginningNext ──▶ idle
///   ▲                               │ nothingToSeal      │ finished failed: abort, rewind ───────────▶ idle
///   └───────────────────────────────┘                    │ abortRequired / revoked lost
///                                                        ▼
///                                         finishingBeforeAbort ──finished: its stores commit if ok,
///                                                                 then abort, rewind──▶ idle
/// any state ──failing──▶ failing (a revocation then only abandons: nothing commits)
/// ```
public struct CommitLifecycle: Sendable, Equatable {
    public enum State: Sendable, Equatable, CustomStringConvertible {
        /// No commit in flight; records handled go into the open cycle.
        case idle
        /// The cycle is being sealed into the transaction (records drained, changelog, offsets).
        case sealing
        /// The sealed cycle's Kafka commit runs on the commit thread.
        case committing
        /// The commit succeeded; the next transaction begins for the records held meanwhile.
        case beginningNext
        /// An abort is due while a commit is in flight: the commit ends first.
        case finishingBeforeAbort
        /// The run is leaving on an error: nothing commits any more. `commitInFlight` when a
        /// commit may still run on the commit thread.
        case failing(commitInFlight: Bool)

        public var description: String {
            switch self {
            case .idle: "idle"
            case .sealing: "sealing"
            case .committing: "committing"
            case .beginningNext: "beginning the next transaction"
            case .finishingBeforeAbort: "finishing a commit before an abort"
            case .failing: "failing"
            }
        }
    }

    public enum Event: Sendable, Equatable {
        /// The open cycle is due (its interval passed); `full` when it holds the most records a
        /// transaction may, so a commit in flight is waited for rather than let it grow.
        case commitDue(full: Bool)
        /// The cycle must end and its commit finish before the run goes on: partitions leave
        /// (`leaving`, which a rewind then skips), the run shuts down or reached its end.
        case endCycle(leaving: Set<Int32>)
        /// The run loop looks at the commit in flight (waiting for it with `wait`).
        case checkCommit(wait: Bool)
        /// Reports of ``Action/sealCycle``.
        case sealed(holdsRecordsDuringCommit: Bool)
        case nothingToSeal
        /// Report of ``Action/collectKafkaCommit(wait:)``.
        case kafkaCommitFinished(succeeded: Bool)
        /// Report of ``Action/beginNextTransaction``.
        case nextTransactionBegun
        /// An abortable error: a refused record, a failed transaction call, a store read.
        case abortRequired
        /// The group took partitions away; `lost` when another member may own them already.
        case partitionsRevoked(Set<Int32>, lost: Bool)
        /// The run is leaving on an error.
        case failing
    }

    public enum Action: Sendable, Equatable {
        /// Drains the cycle's records into the producer, begins the transaction, writes the
        /// changelog, sends the consumed offsets and seals the stores. Reports ``Event/sealed(holdsRecordsDuringCommit:)``,
        /// ``Event/nothingToSeal`` or ``Event/abortRequired``.
        case sealCycle
        /// Starts the Kafka commit on the commit thread.
        case startKafkaCommit
        /// Collects the Kafka commit's result; reports ``Event/kafkaCommitFinished(succeeded:)``
        /// unless `wait` is false and it still runs.
        case collectKafkaCommit(wait: Bool)
        /// Commits the stores of the cycle whose Kafka commit succeeded (with its statistics
        /// when `recordingStatistics`).
        case commitStores(recordingStatistics: Bool)
        /// Begins the next transaction if records are held for it; reports
        /// ``Event/nextTransactionBegun`` or ``Event/abortRequired``.
        case beginNextTransaction
        /// Hands the held records to the producer.
        case releaseHeldRecords
        /// Drops the records not yet sent: they are handled again after the rewind.
        case discardHeldRecords
        /// Aborts the transaction; a failure stops the run.
        case abortTransaction
        /// Rolls every store back and seeks the consumer to the committed positions, except on
        /// the partitions leaving.
        case rollBackAndRewind(skipping: Set<Int32>)
        /// Leaving on an error: waits for the commit in flight and ignores its result.
        case abandonKafkaCommit
        /// Leaving on an error: aborts what is open, ignoring any failure.
        case abortTransactionQuietly

        /// Whether the action reports an event back (the last action of a list, if any).
        public var reportsBack: Bool {
            switch self {
            case .sealCycle, .collectKafkaCommit, .beginNextTransaction: true
            default: false
            }
        }
    }

    /// What follows once the commit in flight has finished.
    enum FollowUp: Sendable, Equatable {
        case nothing
        /// Seal the open cycle (a full cycle waited for the commit in flight).
        case seal
        /// Seal the open cycle and wait for its commit (``Event/endCycle(leaving:)``).
        case sealAndWait
    }

    public private(set) var state: State = .idle
    var followUp: FollowUp = .nothing
    /// The partitions leaving, during a revocation: a rewind does not seek them.
    public private(set) var leaving: Set<Int32> = []

    public init() {}

    /// Whether a Kafka commit is in flight.
    public var isCommitting: Bool { state == .committing }

    /// The actions `event` leads to, in order. Throws ``CommitLifecycleError`` for an event the
    /// state cannot take (and then nothing changes).
    public mutating func handle(_ event: Event) throws(CommitLifecycleError) -> [Action] {
        switch (state, event) {
        case (.failing, .failing):
            return []
        case (_, .failing):
            state = .failing(commitInFlight: state == .committing || state == .finishingBeforeAbort)
            followUp = .nothing
            leaving = []
            return []

        case (.failing(let inFlight), .partitionsRevoked):
            // The failure interrupted whatever is open: never abort while a commit runs on the
            // commit thread, let it end first; then abort, ignoring failures.
            state = .failing(commitInFlight: false)
            return (inFlight ? [.abandonKafkaCommit] : []) + [.discardHeldRecords, .abortTransactionQuietly]

        case (.idle, .commitDue):
            state = .sealing
            return [.sealCycle]
        case (.committing, .commitDue(let full)):
            // One commit in flight at a time; a full cycle waits for it rather than hold more.
            guard full else { return [] }
            followUp = .seal
            return [.collectKafkaCommit(wait: true)]

        case (.idle, .endCycle(let leaving)):
            self.leaving = leaving
            followUp = .sealAndWait
            state = .sealing
            return [.sealCycle]
        case (.committing, .endCycle(let leaving)):
            self.leaving = leaving
            followUp = .sealAndWait
            return [.collectKafkaCommit(wait: true)]
        case (.idle, .partitionsRevoked(let leaving, lost: false)), (.committing, .partitionsRevoked(let leaving, lost: false)):
            return try handle(.endCycle(leaving: leaving))

        case (.idle, .checkCommit):
            return []
        case (.committing, .checkCommit(let wait)):
            return [.collectKafkaCommit(wait: wait)]

        case (.sealing, .nothingToSeal):
            state = .idle
            followUp = .nothing
            leaving = []
            return []
        case (.sealing, .sealed(let holds)):
            state = .committing
            // Without held records nothing may go on meanwhile (at-least-once flushes), and an
            // ending cycle waits anyway.
            let wait = !holds || followUp == .sealAndWait
            followUp = .nothing
            return wait ? [.startKafkaCommit, .collectKafkaCommit(wait: true)] : [.startKafkaCommit]

        case (.committing, .kafkaCommitFinished(succeeded: true)):
            state = .beginningNext
            // What was handled meanwhile goes into the next transaction, which begins first.
            return [.commitStores(recordingStatistics: true), .beginNextTransaction]
        case (.beginningNext, .nextTransactionBegun):
            return [.releaseHeldRecords] + settle()
        case (.committing, .kafkaCommitFinished(succeeded: false)):
            return abortAndRewind()

        case (.idle, .abortRequired), (.sealing, .abortRequired), (.beginningNext, .abortRequired):
            return abortAndRewind()
        case (.committing, .abortRequired):
            state = .finishingBeforeAbort
            return [.collectKafkaCommit(wait: true)]
        case (.idle, .partitionsRevoked(let leaving, lost: true)), (.committing, .partitionsRevoked(let leaving, lost: true)):
            // Another member owns them already: whatever is open cannot commit.
            self.leaving = leaving
            return try handle(.abortRequired)
        case (.finishingBeforeAbort, .kafkaCommitFinished(let succeeded)):
            // The commit may have succeeded: its stores commit before the rest rolls back.
            return (succeeded ? [.commitStores(recordingStatistics: false)] : []) + abortAndRewind()

        default:
            throw CommitLifecycleError(state: state, event: event)
        }
    }

    /// Abort, roll back and rewind; the cycle (and any ending of it) is over.
    private mutating func abortAndRewind() -> [Action] {
        let skipping = leaving
        state = .idle
        followUp = .nothing
        leaving = []
        return [.discardHeldRecords, .abortTransaction, .rollBackAndRewind(skipping: skipping)]
    }

    /// Back to idle once a commit is done, or on to the seal that waited for it.
    private mutating func settle() -> [Action] {
        switch followUp {
        case .nothing:
            state = .idle
            leaving = []
            return []
        case .seal:
            followUp = .nothing
            state = .sealing
            return [.sealCycle]
        case .sealAndWait:
            // Kept: the cycle's own commit is waited for once sealed.
            state = .sealing
            return [.sealCycle]
        }
    }
}

/// An event the commit lifecycle's state cannot take: a defect of the runtime, reported as the
/// one line the run stops with.
public struct CommitLifecycleError: Error, Sendable, Equatable, CustomStringConvertible {
    public let state: CommitLifecycle.State
    public let event: CommitLifecycle.Event
    public var description: String { "internal error: the commit lifecycle cannot take \(event) while \(state)" }
}
