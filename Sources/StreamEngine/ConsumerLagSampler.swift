import KafkaClient

/// Consumer lag of every partition assigned to the group consumer, for every source topic
/// (the repartition topic included), whether its task runs or still restores.
///
/// A running partition's lag is the high watermark of its last fetch response minus its
/// position (or, before it handed out a record, the offset its task starts at): local state, no
/// request, as the sampling runs on the run loop. A partition that is not fetching (restoring, paused since
/// its assignment) has neither, so its lag is measured from the group's committed offset (read
/// once per assignment) to the partition's end (asked for every ``endRefresh``): what is left
/// to process once its restore ends.
final class ConsumerLagSampler {
    /// How often the end offsets of partitions that do not fetch are asked for: a request per
    /// partition, made on the run loop.
    static let endRefresh: Duration = .seconds(5)

    private var committed: [KafkaTopicPartition: Int64] = [:]
    private var ends: [KafkaTopicPartition: KafkaWatermarks] = [:]
    private var endsAskedAt: ContinuousClock.Instant?

    /// The lag of `running` and `waiting` partitions of every topic in `sources`; `start` is the
    /// offset a running partition's task starts at in source `i` (nil: the earliest).
    func sample(_ consumer: KafkaConsumer, sources: [String], running: [Int32], waiting: [Int32],
                start: (_ source: Int, _ partition: Int32) -> Int64?,
                now: ContinuousClock.Instant) -> [KafkaTopicPartition: Int64] {
        var lag: [KafkaTopicPartition: Int64] = [:]
        var unmeasured: [KafkaTopicPartition] = waiting.flatMap { p in sources.map { KafkaTopicPartition($0, p) } }
        for (i, source) in sources.enumerated() {
            let tps = running.map { KafkaTopicPartition(source, $0) }
            guard !tps.isEmpty, let positions = try? consumer.position(tps) else {
                unmeasured += tps
                continue
            }
            for position in positions {
                // No fetch response yet: no series yet. A running partition never costs a
                // request: this runs on the run loop, and each partition of an idle repartition
                // topic (which never hands out a record) used to ask for its end, one blocking
                // request each, every few seconds.
                guard let marks = consumer.cachedWatermarks(position.topicPartition) else { continue }
                if position.offset >= 0 {
                    lag[position.topicPartition] = max(0, marks.high - position.offset)
                } else if let from = start(i, position.topicPartition.partition) ?? (marks.low >= 0 ? marks.low : nil) {
                    // Nothing handed out yet: everything from where the task starts is left.
                    lag[position.topicPartition] = max(0, marks.high - from)
                }
            }
        }
        guard !unmeasured.isEmpty else {
            forget(keeping: [])
            return lag
        }
        forget(keeping: Set(unmeasured))
        let missing = unmeasured.filter { committed[$0] == nil }
        if !missing.isEmpty, let offsets = try? consumer.committed(missing, timeout: .seconds(1)) {
            for o in offsets { committed[o.topicPartition] = o.offset }
        }
        if endsAskedAt.map({ now - $0 >= Self.endRefresh }) ?? true || unmeasured.contains(where: { ends[$0] == nil }) {
            endsAskedAt = now
            for tp in unmeasured {
                // One unanswered request is enough for this round: the others would wait too.
                guard let marks = try? consumer.queryWatermarks(tp, timeout: .seconds(1)) else { break }
                ends[tp] = marks
            }
        }
        for tp in unmeasured {
            // Both known, or no series yet: a guess would show a lag that is not there.
            guard let marks = ends[tp], let offset = committed[tp] else { continue }
            // No committed offset: the group starts it at the earliest record.
            lag[tp] = max(0, marks.high - (offset >= 0 ? offset : marks.low))
        }
        return lag
    }

    /// Drops what is kept of partitions no longer measured this way (revoked, or fetching).
    private func forget(keeping: Set<KafkaTopicPartition>) {
        committed = committed.filter { keeping.contains($0.key) }
        ends = ends.filter { keeping.contains($0.key) }
    }
}
