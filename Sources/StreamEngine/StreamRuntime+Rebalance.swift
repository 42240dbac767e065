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
        if failing {
            // Never abort while a commit runs on the commit thread: let it end first.
            if inFlight != nil {
                _ = try? coordinator.finishCommit(wait: true)
                inFlight = nil
            }
            collector.emitter.discard()
            try? collector.emitter.drain()
            _ = try? coordinator.abort()
        } else if lost {
            // Another member owns them already: whatever is open cannot commit.
            do { try abortAndRewind(skippingSeekOf: leaving) } catch { hookError = hookError ?? error }
        } else {
            do { try commitCycle(leaving: leaving) } catch { hookError = hookError ?? error }
        }
        for slot in tasks.remove(leaving) { close(slot) }
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
