import KafkaClient
import StateStore

/// A role on the stream runtime: the topics it reads, the state its tasks keep and what a task
/// does with one record. Everything else (the consumer group, tasks per partition, restore from
/// the changelog, transactions, `--until-end`, stopping) is the runtime's, shared by every role,
/// so two roles cannot drift apart in how they handle a rebalance or an aborted commit.
///
/// Used from the runtime's thread only.
public protocol StreamRole: AnyObject, SendableMetatype {
    associatedtype Task: StreamTask

    /// Topics the tasks read, co-partitioned: partition p of each belongs to task p. A task's
    /// positions are indexed in this order. The first one names the tasks' state directories.
    var sources: [SourceTopic] { get }
    /// The changelog topic of the tasks' stores.
    var changelogTopic: String { get }
    /// Topics the role writes to (besides its changelog): they must exist at start.
    var sinkTopics: [String] { get }

    /// Opens a task's store in `directory` (created when missing). An ``SQLiteError`` whose
    /// ``SQLiteError/requiresRebuild`` is true makes the runtime delete the store
    /// (``destroyStore(directory:)``) and restore it from the changelog.
    func openStore(directory: String) throws(SQLiteError) -> Task.Store
    /// Deletes a task's store files.
    func destroyStore(directory: String) throws(SQLiteError)
    /// A task for `partition` (of `partitionCount`) over its restored store. `collector` is
    /// where it sends records.
    func makeTask(partition: Int32, partitionCount: Int, store: Task.Store, collector: RecordCollector) throws -> Task
    /// Called once per poll, after its records: the place to publish counters gathered per
    /// record without a lock.
    func didHandleBatch()
    /// The role's counters for the run's final log line, beside the runtime's.
    var summary: [String: String] { get }
    /// How often the runtime calls each running task's ``StreamTask/punctuate(wallClock:)``
    /// (nil: never), for work driven by wall time rather than records, as Kafka Streams'
    /// wall-clock punctuators.
    var punctuationInterval: Duration? { get }
    /// Whether the role must hear of records deleted (by retention) before its tasks read them,
    /// through ``StreamTask/recordsDeleted(source:from:to:)``, rather than have the consumer skip
    /// to the log start without a word (`auto.offset.reset=earliest`): on the first record read
    /// after the gap. A task without a position then starts at offset 0, so a new group hears of
    /// what was deleted before it too.
    var reportsDeletedRecords: Bool { get }
}

extension StreamRole {
    public var punctuationInterval: Duration? { nil }
    public var reportsDeletedRecords: Bool { false }
}

/// One topic a role reads.
public struct SourceTopic: Sendable, Hashable {
    public var name: String
    /// Written by the role itself (a repartition topic): `--until-end` waits until what this run
    /// wrote there is processed, rather than stopping at the end offsets seen at start. Its
    /// partition count must equal the first source's, and it is created where the cluster can.
    public var isInternal: Bool
    /// What the role reads there (`input`, `repartition`, ...): the `source` label of
    /// `polyglot_records_in_total`.
    public var label: String

    /// - Parameter label: the metric label (default: the topic's name).
    public init(_ name: String, isInternal: Bool = false, label: String? = nil) {
        self.name = name
        self.isInternal = isInternal
        self.label = label ?? name
    }
}

/// One partition's work: it handles records; the runtime keeps its positions and commits.
public protocol StreamTask: AnyObject {
    associatedtype Store: TaskStore
    var store: Store { get }
    /// Handles one record from `sources[source]`. Sends what it produces through the task's
    /// ``RecordCollector``; changes its store. Records of one partition come in offset order,
    /// each once per cycle (a rewind after an abort replays them after ``rolledBack()``).
    /// A thrown error stops the run.
    func handle(_ record: borrowing KafkaRecordView, source: Int) throws
    /// The store was rolled back to its last commit: forget anything derived from the records
    /// since then.
    func rolledBack()
    /// The offset of the first record of `sources[source]` the task has read but holds back,
    /// unhandled, until a record of another source arrives (nil: none). Commits stop there, so a
    /// restart or a rewind reads it again: what the task holds in memory is never state.
    func heldBack(source: Int) -> Int64?
    /// The cycle's changes are sealed for the commit that starts now: what the task derived from
    /// them (log lines, counters) belongs to that commit, and ``committed()`` or
    /// ``rolledBack()`` follows.
    func sealed()
    /// The sealed cycle is committed in Kafka and in the store.
    func committed()
    /// Wall-clock work (epoch milliseconds), every ``StreamRole/punctuationInterval``: it may
    /// send records and change the store like ``handle(_:source:)``. Returns whether it did.
    func punctuate(wallClock: Int64) throws -> Bool
    /// Records `from` to `to - 1` of `sources[source]` were deleted before the task read them
    /// (only for a role that ``StreamRole/reportsDeletedRecords``): its next record of that
    /// source is at `to` or later. Runs in the open cycle, like ``handle(_:source:)``.
    func recordsDeleted(source: Int, from: Int64, to: Int64) throws
}

extension StreamTask {
    public func heldBack(source: Int) -> Int64? { nil }
    public func sealed() {}
    public func committed() {}
    public func punctuate(wallClock: Int64) throws -> Bool { false }
    public func recordsDeleted(source: Int, from: Int64, to: Int64) throws {}
}

/// What the runtime needs of a task's store: a write-back store whose changes become changelog
/// records at each commit and are committed locally only after Kafka committed them.
public protocol TaskStore: AnyObject {
    /// Where the store stands (nil: never committed).
    var checkpoint: StoreCheckpoint? { get }
    /// The stream time, rewritten unchanged when only positions moved in a cycle: the changelog
    /// record that carries them.
    var streamTime: Int64? { get }
    /// The open cycle's changes as changelog records (emptying `batch` first).
    func pendingChanges(into batch: inout ChangelogBatch) throws(SQLiteError)
    /// Closes the open cycle while its Kafka commit is in flight.
    func seal() throws(SQLiteError)
    /// Makes the sealed cycle committed, after Kafka committed it.
    func commit(checkpoint: StoreCheckpoint) throws(SQLiteError)
    /// Forgets uncommitted changes (sealed and open) and an unfinished restore.
    func rollback()
    /// Applies one changelog record (restore).
    func apply(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws
    /// Writes what the restore applied, with `checkpoint`.
    func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError)
    /// Writes committed changes and closes.
    func close() throws(SQLiteError)
}

