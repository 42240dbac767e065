import Synchronization
import KafkaClient

/// One transaction as it ended, for an observer that asked for them
/// (``RuntimeObserver/observesTransactions``).
public struct EndedTransaction: Sendable, Hashable {
    /// Committed, or aborted (then nothing in `written` counts: a read_committed reader of a
    /// real cluster never sees those records; librdkafka's mock cluster shows them).
    public var committed: Bool
    /// Every record the transaction wrote (outputs, dead letters, repartitioned records,
    /// changelog records), by partition: the offsets from their delivery reports.
    public var written: [KafkaTopicPartition: [Int64]]
    /// The consumed positions (next offsets) the transaction carried for the group.
    public var positions: [KafkaTopicPartitionOffset]

    public init(committed: Bool, written: [KafkaTopicPartition: [Int64]], positions: [KafkaTopicPartitionOffset]) {
        self.committed = committed
        self.written = written
        self.positions = positions
    }
}

/// A transaction call, as a ``TransactionFaultInjector`` sees it.
public enum TransactionOperation: String, Sendable, Hashable, CaseIterable {
    case begin, sendOffsets, commit, abort
}

/// Makes transaction calls fail from the Swift side, before they reach Kafka, so a test can
/// abort transactions on any cluster (a real one has no request-error injection). The
/// decision runs on the thread making the call (the run loop, or the commit thread); the
/// transaction number counts begins, from 1.
public final class TransactionFaultInjector: Sendable {
    public typealias Decision = @Sendable (_ operation: TransactionOperation, _ transaction: Int) -> KafkaError?
    let decide: Decision

    public init(_ decide: @escaping Decision) { self.decide = decide }

    /// An error librdkafka would return for `operation` when the transaction can be aborted
    /// and retried, not the producer lost.
    public static func abortable(_ operation: TransactionOperation) -> KafkaError {
        KafkaError(code: KafkaError.Code.state, name: "INJECTED_ABORTABLE",
                   message: "\(operation.rawValue) failed (injected)", txnRequiresAbort: true)
    }
}

/// Records the runtime's own aborted transactions wrote to topics it also reads. A real
/// cluster hides them from read_committed readers; librdkafka's mock writes no transaction
/// markers and shows them, so under an observer that asked for transactions the runtime skips
/// them itself, as a real cluster would.
@usableFromInline
final class AbortedRecords: Sendable {
    private let records = Mutex<[KafkaTopicPartition: Set<Int64>]>([:])

    func add(_ written: [KafkaTopicPartition: [Int64]]) {
        records.withLock { r in for (tp, offsets) in written { r[tp, default: []].formUnion(offsets) } }
    }

    @usableFromInline
    func contains(_ tp: KafkaTopicPartition, _ offset: Int64) -> Bool {
        records.withLock { $0[tp]?.contains(offset) ?? false }
    }
}

/// A transaction client that tells an observer how each transaction ended, with the records it
/// wrote, and lets a ``TransactionFaultInjector`` fail its calls.
final class ObservedTransactionClient: TransactionClient, @unchecked Sendable {
    // @unchecked: `positions` and `transaction` are used by one thread at a time (the run
    // loop, then the commit thread it waits for), like the client it wraps.
    let base: any TransactionClient
    let producer: KafkaProducer?
    let observer: (any RuntimeObserver)?
    let faults: TransactionFaultInjector?
    let aborted = AbortedRecords()
    private var positions: [KafkaTopicPartitionOffset] = []
    private var transaction = 0

    init(base: any TransactionClient, producer: KafkaProducer?, observer: (any RuntimeObserver)?, faults: TransactionFaultInjector?) {
        self.base = base
        self.producer = producer
        self.observer = observer
        self.faults = faults
    }

    /// The client the runtime uses: `base`, wrapped when the observer asked for transactions
    /// or faults are injected (exactly-once only: at-least-once has no transaction to abort).
    static func attach(to base: any TransactionClient, configuration: RuntimeConfiguration, observer: (any RuntimeObserver)?,
                       aborted: (AbortedRecords) -> Void) -> any TransactionClient {
        guard let exactlyOnce = base as? ExactlyOnceClient,
              observer?.observesTransactions == true || configuration.transactionFaults != nil else { return base }
        let client = ObservedTransactionClient(base: base, producer: observer?.observesTransactions == true ? exactlyOnce.producer : nil,
                                               observer: observer, faults: configuration.transactionFaults)
        if client.producer != nil {
            exactlyOnce.producer.keepDeliveryJournal()
            aborted(client.aborted)
        }
        return client
    }

    private func inject(_ operation: TransactionOperation) throws(KafkaError) {
        if let error = faults?.decide(operation, transaction) { throw error }
    }

    func begin() throws(KafkaError) {
        transaction += 1
        try inject(.begin)
        try base.begin()
        positions = []
    }

    func sendOffsets(_ offsets: [KafkaTopicPartitionOffset]) throws(KafkaError) {
        try inject(.sendOffsets)
        try base.sendOffsets(offsets)
        positions += offsets
    }

    func commit() throws(KafkaError) {
        try inject(.commit)
        try base.commit()
        // The commit flushed: every record of the transaction has its delivery report, and the
        // next transaction's records are held until it returns.
        report(committed: true)
    }

    func abort() throws(KafkaError) {
        try inject(.abort)
        try base.abort()
        // The abort purged what was queued and served the delivery reports of what was sent.
        report(committed: false)
    }

    private func report(committed: Bool) {
        guard let producer else { return }
        let written = producer.takeDeliveryJournal()
        if !committed { aborted.add(written) }
        observer?.transactionEnded(EndedTransaction(committed: committed, written: written, positions: positions))
        positions = []
    }

    var fatalError: KafkaError? { base.fatalError }
    var holdsRecordsDuringCommit: Bool { base.holdsRecordsDuringCommit }
}
