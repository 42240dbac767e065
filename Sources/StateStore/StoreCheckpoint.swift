/// Where a task's store stands relative to Kafka, committed in the same SQLite transaction as the
/// state it describes.
public struct StoreCheckpoint: Sendable, Hashable {
    /// The next offset to process per source topic, in the role's source order (-1: unknown):
    /// the store holds the effect of every record before them. At most
    /// ``ChangelogPositions/maxCount``.
    public var positions: [Int64]
    /// The next changelog offset after everything this store has applied or produced.
    public var changelogOffset: Int64

    /// A negative position is kept as -1 (unknown), as the checkpoint row and the changelog
    /// header store it.
    public init(positions: [Int64], changelogOffset: Int64) {
        self.positions = positions.map { max($0, -1) }
        self.changelogOffset = changelogOffset
    }

    /// A checkpoint of a role with one source topic.
    public init(sourceOffset: Int64, changelogOffset: Int64) {
        self.init(positions: [sourceOffset], changelogOffset: changelogOffset)
    }

    /// The first source topic's next offset (-1: unknown or none).
    public var sourceOffset: Int64 { positions.first ?? -1 }
}
