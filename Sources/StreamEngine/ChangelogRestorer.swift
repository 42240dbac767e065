import Logging
import PolyglotSupport
import KafkaClient
import StateStore

/// Replays changelog partitions into task stores, a slice at a time, from the run loop.
///
/// Restoring inside the rebalance callback would hold the group's poll for as long as the
/// restore takes (a long one breaks `max.poll.interval.ms` and the member is thrown out); here
/// the run loop calls ``step(budget:)`` between polls of the group consumer, whose restoring
/// partitions stay paused. Every restoring partition is assigned to the restore consumer at
/// once, so they fetch in parallel. A partition is done when its position reaches the end a
/// read_committed reader could see when its restore began: the last stable offset, which stops
/// before another producer's open transaction (transaction markers move the position past the
/// last record).
///
/// A restore that does not advance for longer than ``stallLimit`` looks for the end again: at
/// or before its position, it is done; otherwise it reports why it waits (``RestoreStall``),
/// in the log, the runtime's statistics and `/healthz`, until it advances.
final class ChangelogRestorer<Role: StreamRole> {
    /// Restore progress, for logs, metrics and health.
    struct Progress: Sendable, Hashable {
        var restoring = 0
        var restored = 0
        var remaining: Int64 = 0
    }

    /// A class: the poll callback looks its job up per record and updates it in place.
    private final class Job {
        let slot: TaskSlot<Role>
        let store: Role.Task.Store
        /// Where the restore ends (see ``PartitionRestore/end``).
        var end: Int64
        var next: Int64
        /// The checkpoint's offset when the restore began: a restore stopped before it applied
        /// anything leaves the checkpoint as it was.
        let checkpointed: Int64?
        var positions: [Int64]
        var applied = 0
        var sinceCommit = 0
        let began: ContinuousClock.Instant
        /// When `next` last moved, and when the end was last looked for again.
        var advancedAt: ContinuousClock.Instant
        var advancedFrom: Int64
        var checkedAt: ContinuousClock.Instant?
        var stall: RestoreStall?

        init(slot: TaskSlot<Role>, store: Role.Task.Store, end: Int64, next: Int64, checkpointed: Int64?, positions: [Int64],
             began: ContinuousClock.Instant) {
            self.slot = slot
            self.store = store
            self.end = end
            self.next = next
            self.checkpointed = checkpointed
            self.positions = positions
            self.began = began
            advancedAt = began
            advancedFrom = next
        }
    }

    let consumer: KafkaConsumer
    let topic: String
    let sourceCount: Int
    private let logger: Logger
    private var jobs: [Int32: Job] = [:]
    /// The restore consumer's assignment lags `jobs` (a restore began since it was set).
    private var assignmentIsStale = false
    /// Since when some job has been fetching: restore time is wall time, however many
    /// partitions restore at once.
    private var busySince: ContinuousClock.Instant?
    private var lastLog = ContinuousClock.now
    /// Totals over the run.
    private(set) var restoredRecords = 0
    private(set) var restoreSeconds = 0.0

    /// Records applied between intermediate commits of a long restore: bounds what a restore
    /// holds in memory and what a crash during it repeats.
    static var commitEvery: Int { 200_000 }

    /// How long a restore may go without advancing before it looks for its end again and,
    /// still short of it, reports why it waits.
    let stallLimit: Duration

    /// `consumer` must read with `isolation.level=read_committed`: its view of the end is what
    /// a restore targets.
    init(consumer: KafkaConsumer, topic: String, sourceCount: Int, stallLimit: Duration = .seconds(30), logger: Logger) {
        self.consumer = consumer
        self.topic = topic
        self.sourceCount = sourceCount
        self.stallLimit = stallLimit
        self.logger = logger
    }

    var isIdle: Bool { jobs.isEmpty }

    var progress: Progress {
        Progress(restoring: jobs.count, restored: restoredRecords,
                 remaining: jobs.values.reduce(0) { $0 + max($1.end - $1.next, 0) })
    }

    /// Each restoring partition, by partition.
    var partitions: [PartitionRestore] {
        jobs.values.sorted { $0.slot.partition < $1.slot.partition }.map {
            PartitionRestore(changelog: KafkaTopicPartition(topic, $0.slot.partition), position: $0.next, end: $0.end, stall: $0.stall)
        }
    }

    /// Decides where `slot`'s restore starts. Returns false when the store is current (nothing
    /// to replay); `slot.restoredPositions` then holds its checkpoint's positions. `rebuild`
    /// deletes and reopens a store that cannot be trusted.
    func begin(_ slot: TaskSlot<Role>, store: inout Role.Task.Store,
               rebuild: () throws -> Role.Task.Store) throws -> Bool {
        let tp = KafkaTopicPartition(topic, slot.partition)
        // A read_committed client's ListOffsets answers the last stable offset as the end.
        let marks = try consumer.queryWatermarks(tp, timeout: .seconds(30))
        // From the last record already applied: its headers give the exact source positions
        // (applying it again changes nothing).
        var start = store.checkpoint.map { $0.changelogOffset - 1 } ?? marks.low
        if start > marks.high {
            logger.warning("store is ahead of its changelog (the topic was recreated?); rebuilding it from the changelog",
                           metadata: ["partition": .number(Int(slot.partition)), "checkpoint_offset": .number(Int(start)), "high_offset": .number(Int(marks.high))])
            store = try rebuild()
            start = marks.low
        }
        if start < marks.low {
            if store.checkpoint != nil {
                logger.warning("the changelog no longer holds the store's checkpoint; restoring from its earliest offset",
                               metadata: ["partition": .number(Int(slot.partition)), "checkpoint_offset": .number(Int(start)), "earliest_offset": .number(Int(marks.low))])
            }
            start = marks.low
        }
        slot.restoredPositions = Self.positions(of: store.checkpoint, count: sourceCount)
        guard start < marks.high else { return false }
        logger.info("restoring", metadata: ["partition": .number(Int(slot.partition)), "from_offset": .number(Int(start)), "to_offset": .number(Int(marks.high))])
        jobs[slot.partition] = Job(slot: slot, store: store, end: marks.high, next: start, checkpointed: store.checkpoint?.changelogOffset,
                                   positions: slot.restoredPositions, began: .now)
        // Assigned at the next step, together with the others that begin now: every assign
        // resets the fetch state of all partitions.
        assignmentIsStale = true
        return true
    }

    /// Applies what arrives within about `budget`; returns the slots whose restore finished
    /// (their stores committed, `restoredPositions` set).
    func step(budget: Duration) throws -> [TaskSlot<Role>] {
        guard !jobs.isEmpty else { return [] }
        if assignmentIsStale { try reassign() }
        // Restore time runs from the first fetch: opening the stores and finding where each
        // restore starts came before, as they do for a store that needs no restore.
        if busySince == nil { busySince = .now }
        let deadline = ContinuousClock.now + budget
        var finished: [TaskSlot<Role>] = []
        repeat {
            _ = try consumer.pollBorrowing(maxMessages: 10_000, timeout: .milliseconds(50)) { m in
                guard let job = jobs[m.partition] else { return }
                do {
                    try job.store.apply(key: m.key ?? UnsafeRawBufferPointer(start: nil, count: 0), value: m.value)
                } catch {
                    throw RuntimeError("changelog \(topic)/\(m.partition) offset \(m.offset) cannot be restored: \(error). The changelog is internal: delete the state directory and the changelog topic to rebuild the state from the input, or run the version that wrote it")
                }
                if let h = m.header(ChangelogPositions.header) {
                    guard let positions = ChangelogPositions.decode(h), positions.count == sourceCount else {
                        throw RuntimeError("changelog \(topic)/\(m.partition) offset \(m.offset) has a malformed \(ChangelogPositions.header) header. The changelog is internal: delete the state directory and the changelog topic to rebuild the state from the input")
                    }
                    job.positions = positions
                }
                job.next = m.offset + 1
                job.applied += 1
                job.sinceCommit += 1
            }
            let now = ContinuousClock.now
            for (p, job) in jobs {
                // Transaction markers advance the position without a record.
                if let position = try consumer.position([KafkaTopicPartition(topic, p)]).first?.offset, position > job.next {
                    job.next = position
                }
                if job.next > job.advancedFrom {
                    if let stall = job.stall {
                        logger.notice("restore advances again", metadata: [
                            "partition": "\(p)", "position": "\(job.next)", "end": "\(job.end)", "stalledSeconds": "\(stall.seconds)"])
                    }
                    job.advancedFrom = job.next
                    job.advancedAt = now
                    job.stall = nil
                } else if job.next < job.end, now - job.advancedAt >= stallLimit,
                          job.checkedAt.map({ now - $0 >= stallLimit }) ?? true {
                    checkStalled(job, now: now)
                }
                if job.stall != nil { job.stall?.seconds = (now - job.advancedAt).components.seconds }
                if job.next >= job.end || job.sinceCommit >= Self.commitEvery {
                    try job.store.commitRestore(checkpoint: StoreCheckpoint(positions: job.positions, changelogOffset: job.next))
                    job.sinceCommit = 0
                }
                if job.next >= job.end {
                    let elapsed = (ContinuousClock.now - job.began).inSeconds
                    restoredRecords += job.applied
                    // Paused rather than unassigned: reassigning would restart every other
                    // partition's fetch.
                    try consumer.pause([KafkaTopicPartition(topic, p)])
                    logger.info("restored", metadata: [
                        "partition": .number(Int(p)), "records": .number(job.applied), "seconds": .number(elapsed, decimals: 3),
                        "rate_per_second": .number(Int(Double(job.applied) / max(elapsed, 1e-6))),
                    ])
                    job.slot.restoredPositions = job.positions
                    jobs[p] = nil
                    finished.append(job.slot)
                }
            }
        } while !jobs.isEmpty && ContinuousClock.now < deadline
        if jobs.isEmpty { try idle() }
        if !jobs.isEmpty, ContinuousClock.now - lastLog >= .seconds(5) {
            lastLog = .now
            let p = progress
            logger.info("restoring", metadata: ["tasks": .number(p.restoring), "remaining_records": .number(Int(p.remaining))])
        }
        return finished
    }

    /// Stops restoring `partition` (revoked): what it applied so far is committed, so a later
    /// restore of it continues from there.
    func cancel(_ partition: Int32) {
        guard let job = jobs.removeValue(forKey: partition) else { return }
        // Only what was applied moves the checkpoint: the restore starts at the record before
        // the checkpoint's offset, so a checkpoint of the start would move it back one record
        // per cancelled restore.
        if job.applied > 0 || job.next > job.checkpointed ?? -1 {
            do {
                try job.store.commitRestore(checkpoint: StoreCheckpoint(positions: job.positions, changelogOffset: job.next))
            } catch {
                job.store.rollback()
            }
        } else {
            job.store.rollback()
        }
        if jobs.isEmpty { try? idle() } else { try? consumer.pause([KafkaTopicPartition(topic, partition)]) }
    }

    private func reassign() throws {
        let partitions = jobs.values.map { KafkaTopicPartitionOffset(topic, $0.slot.partition, offset: $0.next) }
        try consumer.assign(partitions)
        // librdkafka keeps a partition the application paused paused through unassign and
        // assign, and this consumer pauses each partition whose restore ends: one restored
        // before would never fetch again.
        try consumer.resume(partitions.map(\.topicPartition))
        assignmentIsStale = false
    }

    /// A restore that has not advanced for ``stallLimit``: done if the end a read_committed
    /// reader sees now is at or before its position; otherwise it says why it waits.
    private func checkStalled(_ job: Job, now: ContinuousClock.Instant) {
        job.checkedAt = now
        let tp = KafkaTopicPartition(topic, job.slot.partition)
        let seconds = (now - job.advancedAt).components.seconds
        let reason: RestoreStall.Reason
        do {
            let marks = try consumer.queryWatermarks(tp, timeout: .seconds(5))
            if marks.high <= job.next {
                logger.notice("restore ends at the changelog's end as a read_committed reader sees it now", metadata: [
                    "partition": "\(tp.partition)", "position": "\(job.next)", "end": "\(marks.high)", "endAtStart": "\(job.end)"])
                job.end = job.next
                job.stall = nil
                return
            }
            job.end = min(job.end, marks.high)
            if let cached = consumer.cachedWatermarks(tp) {
                reason = .recordsNotDelivered(highWatermark: cached.high)
            } else {
                reason = .noFetchResponse
            }
        } catch {
            reason = .endUnknown("\(error)")
        }
        let stall = RestoreStall(seconds: seconds, reason: reason)
        job.stall = stall
        logger.warning("restore not advancing", metadata: [
            "topic": "\(topic)", "partition": "\(tp.partition)", "position": "\(job.next)", "end": "\(job.end)",
            "seconds": "\(seconds)", "reason": "\(stall.explanation)"])
    }

    /// No restore left: nothing assigned, and the time spent counted.
    private func idle() throws {
        try consumer.unassign()
        assignmentIsStale = false
        if let since = busySince { restoreSeconds += (ContinuousClock.now - since).inSeconds }
        busySince = nil
    }

    /// A store checkpoint's source positions, padded to `count` with -1 (unknown).
    static func positions(of checkpoint: StoreCheckpoint?, count: Int) -> [Int64] {
        var positions = checkpoint?.positions ?? []
        if positions.count < count { positions += Array(repeating: -1, count: count - positions.count) }
        return Array(positions.prefix(count))
    }
}
