import KafkaClient

/// Where one partition's restore stands: what `/healthz`, the metrics and the logs show of it.
public struct PartitionRestore: Sendable, Hashable {
    /// The changelog partition replayed.
    public var changelog: KafkaTopicPartition
    /// The next changelog offset to apply.
    public var position: Int64
    /// The end the restore runs to: the changelog's end as a read_committed reader sees it
    /// (the last stable offset) when the restore began, or later when it was found again.
    public var end: Int64
    /// Set when the restore has not advanced for longer than the runtime's bound.
    public var stall: RestoreStall?

    public var remaining: Int64 { max(end - position, 0) }
}

/// Why a restore has not advanced for longer than the runtime's bound.
public struct RestoreStall: Sendable, Hashable {
    public enum Reason: Sendable, Hashable {
        /// The changelog's leader did not answer a request for the partition's end.
        case endUnknown(String)
        /// No fetch response has come for the partition since the restore began.
        case noFetchResponse
        /// Fetches answer, but no record arrives at the position though the readable end is
        /// past it: the records there are missing (deleted, truncated) or cannot be delivered.
        case recordsNotDelivered(highWatermark: Int64)
    }

    /// How long the restore has not advanced, when this was found.
    public var seconds: Int64
    public var reason: Reason

    /// One line: why the restore waits.
    public var explanation: String {
        switch reason {
        case .endUnknown(let error):
            return "the changelog's end cannot be read (\(error))"
        case .noFetchResponse:
            return "no fetch response from the partition's leader"
        case .recordsNotDelivered(let high):
            return "no record arrives at the position though the changelog's readable end is past it (high watermark \(high)): records missing or not deliverable"
        }
    }
}

extension PartitionRestore {
    /// One line for logs and `/healthz`: partition, position, end and, when stalled, why.
    public var summary: String {
        var line = "\(changelog.topic)/\(changelog.partition) at \(position) of \(end)"
        if let stall { line += ", no progress for \(stall.seconds)s: \(stall.explanation)" }
        return line
    }
}
