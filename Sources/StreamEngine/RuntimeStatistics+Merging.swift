import PolyglotSupport

extension RuntimeStatistics {
    /// The statistics of an instance's stream threads as one: counts and times spent add up;
    /// the processing and restore spans run side by side, so they are the threads' union and
    /// their longest; health reads the worst thread (the oldest poll, the most aborts in a row,
    /// the broker down longest) and the newest commit.
    public static func merging(_ threads: [RuntimeStatistics]) -> RuntimeStatistics {
        guard var merged = threads.first else { return RuntimeStatistics() }
        for s in threads.dropFirst() {
            merged.records += s.records
            merged.recordsBySource.merge(s.recordsBySource, uniquingKeysWith: +)
            merged.transactionsCommitted += s.transactionsCommitted
            merged.transactionsAborted += s.transactionsAborted
            merged.transactionRetries += s.transactionRetries
            merged.rewinds += s.rewinds
            merged.changelogRecords += s.changelogRecords
            merged.restoredRecords += s.restoredRecords
            merged.restoreRemaining += s.restoreRemaining
            merged.restoringTasks += s.restoringTasks
            merged.restores += s.restores
            merged.tasks += s.tasks
            merged.restoreSeconds = max(merged.restoreSeconds, s.restoreSeconds)
            merged.pollSeconds += s.pollSeconds
            merged.commitSeconds += s.commitSeconds
            merged.changelogSeconds += s.changelogSeconds
            merged.kafkaCommitSeconds += s.kafkaCommitSeconds
            merged.storeCommitSeconds += s.storeCommitSeconds
            merged.phase = merged.phase.merged(with: s.phase)
            merged.assignedPartitions += s.assignedPartitions
            merged.lastPollAt = earliest(merged.lastPollAt, s.lastPollAt)
            merged.lastCommitAt = latest(merged.lastCommitAt, s.lastCommitAt)
            merged.consecutiveAborts = max(merged.consecutiveAborts, s.consecutiveAborts)
            merged.consumerLag.merge(s.consumerLag) { max($0, $1) }
            merged.storeBytes.merge(s.storeBytes) { max($0, $1) }
            if let down = s.broker.unreachableSince, merged.broker.unreachableSince.map({ down < $0 }) ?? true {
                merged.broker = s.broker
            }
            merged.recordLatency.merge(s.recordLatency)
        }
        // From the first record any thread handled to the last commit of any thread.
        let spans = threads.compactMap { s in s.firstRecordAt.map { ($0, $0 + .seconds(s.processingSeconds)) } }
        if let start = spans.map(\.0).min(), let end = spans.map(\.1).max() {
            merged.firstRecordAt = start
            merged.processingSeconds = (end - start).inSeconds
        }
        return merged
    }

    private static func earliest(_ a: ContinuousClock.Instant?, _ b: ContinuousClock.Instant?) -> ContinuousClock.Instant? {
        guard let a, let b else { return a ?? b }
        return min(a, b)
    }

    private static func latest(_ a: ContinuousClock.Instant?, _ b: ContinuousClock.Instant?) -> ContinuousClock.Instant? {
        guard let a, let b else { return a ?? b }
        return max(a, b)
    }
}

extension RuntimePhase {
    /// The phase of two threads as one: starting until every thread runs, stopped once all
    /// have, stopping in between.
    func merged(with other: RuntimePhase) -> RuntimePhase {
        switch (self, other) {
        case (.starting, _), (_, .starting): .starting
        case (.stopped, .stopped): .stopped
        case (.running, .running): .running
        default: .stopping
        }
    }
}
