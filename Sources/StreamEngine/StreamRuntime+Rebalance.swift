import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// The rebalance hooks, called by the group consumer on the run-loop thread inside a poll.
extension StreamRuntime {
    // MARK: - Rebalance hooks (on the run-loop thread, inside poll)

    func assigned(_ partitions: [KafkaTopicPartition]) -> [KafkaTopicPartition: Int64] {
        guard hookError == nil else { return [:] }
        hasBeenAssigned = true
        do {
            _ = try tasks.assigned(partitions)
        } catch {
            hookError = error
        }
        let assigned = tasks.all.count
        statsBox.withLock { $0.assignedPartitions = assigned }
        // Every assigned partition starts paused; a task resumes its own once restored.
        return [:]
    }

    func revoked(_ partitions: [KafkaTopicPartition], lost: Bool) {
        let leaving = Set(partitions.map(\.partition))
        // Committed, aborted (lost: another member owns them already) or, when the run is
        // failing, abandoned: the commit lifecycle decides.
        do { try drive(.partitionsRevoked(leaving, lost: lost)) } catch { hookError = hookError ?? error }
        for slot in tasks.remove(leaving) { close(slot) }
        seeksAwaitingFetcher = seeksAwaitingFetcher.filter { !leaving.contains($0.key.partition) }
        let running = tasks.running.count, assigned = tasks.all.count
        statsBox.withLock {
            $0.tasks = running
            $0.assignedPartitions = assigned
            $0.consumerLag = $0.consumerLag.filter { !leaving.contains($0.key.partition) }
            $0.restores = $0.restores.filter { !leaving.contains($0.changelog.partition) }
            $0.storeBytes = $0.storeBytes.filter { !leaving.contains($0.key) }
        }
    }
}
