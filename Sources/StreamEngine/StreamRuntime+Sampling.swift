import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// What the run publishes about itself: cycle counts, consumer lag and store sizes, restore
// progress, and the periodic progress (health) log line.
extension StreamRuntime {
    func publishCycleStats() {
        role.didHandleBatch()
        let now = ContinuousClock.now
        let sources = role.sources
        statsBox.withLock { s in
            for i in cycleRecords.indices {
                let n = cycleRecords[i]
                cycleRecords[i] = 0
                s.records += n
                s.recordsBySource[sources[i].label, default: 0] += n
            }
            s.lastPollAt = now
        }
    }

    /// Consumer lag about once a second and store sizes every few seconds, of every assigned
    /// partition (``ConsumerLagSampler``).
    func sampleLagAndStores(now: ContinuousClock.Instant) {
        if let last = lagSampledAt, now - last < .seconds(1) { return }
        lagSampledAt = now
        let all = tasks.all
        let lag = lagSampler.sample(consumer, sources: role.sources.map(\.name), running: all.filter { $0.task != nil }.map(\.partition),
                                    waiting: all.filter { $0.task == nil }.map(\.partition),
                                    start: { i, p in self.tasks.slot(p)?.next[i] }, now: now)
        var stores: [Int32: Int64]?
        let open = all.filter { $0.store != nil }
        // A store opened or closed since: sampled now, not up to ten seconds later.
        if storesSampledAt.map({ now - $0 >= .seconds(10) }) ?? true || open.count != sampledStores {
            storesSampledAt = now
            sampledStores = open.count
            stores = Dictionary(uniqueKeysWithValues: open.map { ($0.partition, StateDirectory.bytes(of: $0.directory)) })
        }
        statsBox.withLock {
            $0.consumerLag = lag
            if let stores { $0.storeBytes = stores }
        }
    }

    func publishRestoreProgress() {
        let p = restorer.progress
        let restored = restorer.restoredRecords, seconds = restorer.restoreSeconds, partitions = restorer.partitions
        statsBox.withLock {
            $0.restoringTasks = p.restoring
            $0.restoreRemaining = p.remaining
            $0.restores = partitions
            $0.restoredRecords = restored
            $0.restoreSeconds = seconds
        }
    }

    /// The progress line, every ten seconds: the health state and why, and the rate since the
    /// last one. Returns the record count it reported.
    func logProgress(now: ContinuousClock.Instant, since lastReport: ContinuousClock.Instant, recordsThen: Int) -> Int {
        let s = statistics
        let rate = Double(s.records - recordsThen) / (now - lastReport).inSeconds
        // Idle, stuck in a group join and cut off from the broker must read differently.
        let health = RoleHealth.evaluate(s, now: now)
        var metadata: Logger.Metadata = [
            "state": "\(health.state.rawValue)", "records": .number(s.records), "recent_rate_per_second": .number(Int(rate)),
            "commits": .number(s.transactionsCommitted), "aborts": .number(s.transactionsAborted), "tasks": .number(s.tasks),
            "assigned_partitions": .number(s.assignedPartitions), "restoring_tasks": .number(s.restoringTasks),
            "lag_records": .number(Int(s.consumerLag.values.reduce(0, +))),
        ]
        if let reason = health.reason { metadata["reason"] = "\(reason)" }
        logger.info("progress", metadata: metadata)
        return s.records
    }
}
