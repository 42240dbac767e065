import PolyglotSupport
import KafkaClient

/// Delivery guarantee of a role on the runtime.
public enum ProcessingGuarantee: String, Sendable, Hashable, CaseIterable {
    /// One Kafka transaction per commit interval holds outputs, changelog records, dead letters
    /// and consumed offsets; the SQLite store commits only after Kafka does.
    case exactlyOnce = "exactly-once"
    /// Outputs and changelog are flushed, then the store and the offsets commit: a crash may
    /// repeat the outputs of the last interval, never lose one.
    case atLeastOnce = "at-least-once"
}

/// What the stream runtime needs to run any role, already validated.
public struct RuntimeConfiguration: Sendable {
    /// librdkafka properties shared by every client (bootstrap servers, SASL, SSL, `-X` ones).
    public var kafka: KafkaConfiguration
    /// The consumer group.
    public var groupID: String
    /// Where this group's task stores live: one directory per task below it.
    public var stateDirectory: String
    public var guarantee: ProcessingGuarantee
    /// How often the open transaction commits.
    public var commitInterval: Duration
    /// Stop after reaching the end offsets of the (non-internal) sources seen at start.
    public var untilEnd: Bool
    /// The transactional id (exactly-once): stable for one instance, unique among instances.
    public var transactionalID: String
    /// How long start-up waits for the cluster to answer before it fails.
    public var connectTimeout: Duration
    /// Upper bound of records in one transaction, whatever the interval.
    public var maxRecordsPerTransaction: Int
    /// Fails transaction calls on purpose (tests that abort transactions on any cluster).
    public var transactionFaults: TransactionFaultInjector?
    /// How long a partition's restore may go without advancing before it looks for the
    /// changelog's end again and, still short of it, reports why it waits (log, `/healthz`).
    public var restoreStallLimit: Duration = .seconds(30)
    /// Stream threads of the instance (``StreamThreadGroup``): each is a group member with its
    /// own partitions, clients and role instance.
    public var streamThreads = 1

    public init(kafka: KafkaConfiguration, groupID: String, stateDirectory: String, guarantee: ProcessingGuarantee,
                commitInterval: Duration, untilEnd: Bool, transactionalID: String, connectTimeout: Duration = .seconds(15),
                maxRecordsPerTransaction: Int = 50_000) {
        self.kafka = kafka
        self.groupID = groupID
        self.stateDirectory = stateDirectory
        self.guarantee = guarantee
        self.commitInterval = commitInterval
        self.untilEnd = untilEnd
        self.transactionalID = transactionalID
        self.connectTimeout = connectTimeout
        self.maxRecordsPerTransaction = maxRecordsPerTransaction
    }

    /// The settings of stream thread `index` (from 0) of `count`: thread 1 keeps the instance's
    /// transactional id, so an instance with one thread has the id it always had; thread n's
    /// ends in `-n`. An instance restarted with fewer threads leaves the others' ids unused:
    /// an open transaction of theirs is aborted by the broker after `transaction.timeout.ms`.
    public func forThread(_ index: Int, of count: Int) -> RuntimeConfiguration {
        var c = self
        c.streamThreads = count
        if index > 0 { c.transactionalID += "-\(index + 1)" }
        return c
    }

    /// The prefetch of one thread's consumers, unless `-X queued.max.messages.kbytes` sets it:
    /// an equal share of one consumer's default, so more threads do not hold more memory.
    var consumerPrefetchKilobytes: String {
        String(max(1_024, KafkaConfiguration.defaultPrefetchKilobytes / max(1, streamThreads)))
    }

    /// The group's members must assign partition p of every source to one member; `range` does
    /// for co-partitioned topics, the others do not.
    public static func checkAssignmentStrategy(_ kafka: KafkaConfiguration) throws(ConfigurationError) {
        guard let strategy = kafka["partition.assignment.strategy"] else { return }
        let names = strategy.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard names == ["range"] else {
            throw ConfigurationError("partition.assignment.strategy=\(strategy) is not supported: partition p of the input and of the internal topics must go to one instance, which only 'range' guarantees (leave it unset)")
        }
    }
}

/// Counters of one runtime run.
public struct RuntimeStatistics: Sendable, Hashable {
    /// Records handled (committed or not; a rewind counts them again).
    public var records = 0
    /// ``records`` per source, by its ``SourceTopic/label`` (every source once a poll is done).
    public var recordsBySource: [String: Int] = [:]
    public var transactionsCommitted = 0
    public var transactionsAborted = 0
    /// Transaction calls repeated after a retriable error.
    public var transactionRetries = 0
    /// Rewinds to the last commit after an abort.
    public var rewinds = 0
    public var changelogRecords = 0
    public var restoredRecords = 0
    /// Changelog records still to restore, and tasks restoring.
    public var restoreRemaining: Int64 = 0
    public var restoringTasks = 0
    /// Each restoring partition: position, end and, once it stops advancing, why.
    public var restores: [PartitionRestore] = []
    public var tasks = 0
    /// Time spent restoring stores from the changelog.
    public var restoreSeconds = 0.0
    /// From the first record handled to the last commit (excludes joining the group and restoring).
    public var processingSeconds = 0.0
    /// When the first record was handled (the start of ``processingSeconds``).
    public var firstRecordAt: ContinuousClock.Instant?
    /// Of which: waiting in poll, and committing (changelog, offsets, Kafka and SQLite commits).
    public var pollSeconds = 0.0
    public var commitSeconds = 0.0
    /// Of the commit time: writing changelog records, the Kafka transaction's offsets and
    /// commit, and the stores' commits (with their periodic SQLite writes).
    public var changelogSeconds = 0.0
    public var kafkaCommitSeconds = 0.0
    public var storeCommitSeconds = 0.0

    /// Where the run stands, for health checks and the progress line.
    public var phase: RuntimePhase = .starting
    /// Partitions the group gave this member (restoring or running).
    public var assignedPartitions = 0
    /// When the run loop last returned from a consumer poll: a loop stuck elsewhere stops it.
    public var lastPollAt: ContinuousClock.Instant?
    /// When a transaction last committed, and how many aborted in a row since then.
    public var lastCommitAt: ContinuousClock.Instant?
    public var consecutiveAborts = 0
    /// Records left to read per source partition, of every assigned partition, sampled about
    /// once a second: high watermark minus position for running tasks (transaction markers
    /// count: a transactional topic read to its end shows 1), end minus the group's committed
    /// offset for partitions still restoring.
    public var consumerLag: [KafkaTopicPartition: Int64] = [:]
    /// Bytes of each task's store files, sampled every few seconds.
    public var storeBytes: [Int32: Int64] = [:]
    /// The group consumer's view of its brokers.
    public var broker = KafkaBrokerReachability()
    /// From each record's Kafka timestamp to the commit that made its outputs visible.
    public var recordLatency = RecordLatencyHistogram()
}

/// The stages of a runtime's run.
public enum RuntimePhase: String, Sendable, Hashable {
    /// Checking topics, initialising the transactional producer, opening clients.
    case starting
    /// Subscribed: waiting for partitions, restoring them or processing.
    case running
    /// Finishing the open transaction and leaving the group.
    case stopping
    case stopped
}

/// Hears of each commit as it ends, for what a snapshot of counters cannot give (latency
/// distributions). Called on the runtime's thread, at most once per commit: must not block.
public protocol RuntimeObserver: Sendable {
    func commitEnded(_ commit: CommitTiming)
    /// Whether ``transactionEnded(_:)`` is wanted. Its reports name every record a transaction
    /// wrote, which costs a topic name per delivered record: for tests, not production.
    var observesTransactions: Bool { get }
    /// An exactly-once transaction committed or aborted, with what it wrote and the positions it
    /// carried. Called once per transaction, on the runtime's thread or its commit thread (one
    /// at a time): must not block.
    func transactionEnded(_ transaction: EndedTransaction)
}

extension RuntimeObserver {
    public var observesTransactions: Bool { false }
    public func transactionEnded(_ transaction: EndedTransaction) {}
}

/// How long one successful commit took.
public struct CommitTiming: Sendable, Hashable {
    /// From the start of the commit (changelog records, offsets) to the stores' commit.
    public var total: Duration
    /// Of which the Kafka transaction's commit (exactly-once) or flush and offset commit.
    public var transaction: Duration

    public init(total: Duration, transaction: Duration) {
        self.total = total
        self.transaction = transaction
    }
}

/// A failure that stops the run: the message is one line for the operator.
public struct RuntimeError: Error, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
