import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// `--until-end`: the end offsets seen at start and whether the run has reached them.
extension StreamRuntime {
    /// Reads the end offsets of the sources that are not internal, which the run stops at.
    func readEndOffsets(with restoreConsumer: KafkaConsumer) throws {
        let sources = role.sources
        endOffsets = try sources.map { source in
            guard !source.isInternal else { return [:] }
            var ends: [Int32: Int64] = [:]
            for p in 0..<Int32(partitionCount) {
                ends[p] = try restoreConsumer.queryWatermarks(KafkaTopicPartition(source.name, p), timeout: .seconds(30)).high
            }
            return ends
        }
        logger.info("processing up to the end offsets seen at start", metadata: [
            "end": "\(endOffsets[0].sorted { $0.key < $1.key }.map { "\($0.key):\($0.value)" }.joined(separator: ","))",
        ])
    }

    // MARK: - Until end

    func reachedEnd() throws -> Bool {
        // A thread the group gave no partition (more threads than partitions) has nothing to
        // wait for; a lone member without partitions waits for some.
        guard !tasks.isEmpty || (coordination != nil && hasBeenAssigned), tasks.allRunning, pendingRecords == 0, coordinator.state == .idle, lifecycle.state == .idle else { return false }
        let running = tasks.running
        for (i, source) in role.sources.enumerated() {
            let tps = running.map { KafkaTopicPartition(source.name, $0.partition) }
            let positions = try consumer.position(tps)
            for (slot, position) in zip(running, positions) {
                if source.isInternal {
                    // Whatever this run sent there must be processed too.
                    let marks = try consumer.queryWatermarks(position.topicPartition, timeout: .seconds(10))
                    if let eof = consumer.endOfPartition(position.topicPartition), eof >= marks.high { continue }
                    let reached = max(position.offset, slot.next[i] ?? KafkaOffset.invalid, slot.committed[i] ?? KafkaOffset.invalid)
                    if reached < marks.high, marks.high > 0 {
                        // Empty so far and starting at the high watermark: nothing to do.
                        if reached < 0, marks.low == marks.high { continue }
                        return false
                    }
                } else {
                    let end = endOffsets[i][slot.partition] ?? 0
                    if let eof = consumer.endOfPartition(position.topicPartition), eof >= end { continue }
                    let reached = max(position.offset, slot.next[i] ?? KafkaOffset.invalid)
                    // A range nothing was read from counts as done when it starts at or past the end.
                    if reached < end, (slot.committed[i] ?? KafkaOffset.invalid) < end { return false }
                }
            }
        }
        return true
    }
}
