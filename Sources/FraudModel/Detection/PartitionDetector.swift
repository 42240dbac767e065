/// One partition's verdicts: the detector of its parameters' window kind over that partition's
/// state. Every role decides records through one of these (``InMemoryDetector`` for `replay`
/// and batch audits, ``SQLiteDetectorStore`` for `process` and the continuous auditor), so the
/// window kind is chosen once, where the state is made, and no role branches on it.
public protocol PartitionDetector: AnyObject {
    var parameters: DetectorParameters { get }
    /// Decides one valid record (card id bytes, event time) and records its effect.
    func process(card: CardBytes, eventTime: Int64) -> Verdict
    /// The state was rolled back to its last commit: forget what was derived from later records.
    func rolledBack()
}

extension PartitionDetector {
    /// ``process(card:eventTime:)`` by the card's String id.
    public func process(card: String, eventTime: Int64) -> Verdict {
        var card = card
        return card.withUTF8 { process(card: CardBytes($0), eventTime: eventTime) }
    }
}

/// A ``PartitionDetector`` in memory: tumbling windows in an ``InMemoryWindowStore``, sliding
/// windows in an ``InMemorySlidingStore``, as the parameters say.
///
/// Not thread-safe: one per partition, used from one thread.
public final class InMemoryDetector: PartitionDetector {
    public let parameters: DetectorParameters
    private var tumbling: Detector
    private let tumblingStore: InMemoryWindowStore?
    private var sliding: SlidingDetector
    private let slidingStore: InMemorySlidingStore?

    public init(parameters: DetectorParameters, initialCapacity: Int = 1_024) {
        self.parameters = parameters
        tumbling = Detector(parameters: parameters)
        sliding = SlidingDetector(parameters: parameters)
        switch parameters.kind {
        case .tumbling:
            tumblingStore = InMemoryWindowStore(parameters: parameters, initialCapacity: initialCapacity)
            slidingStore = nil
        case .sliding:
            tumblingStore = nil
            slidingStore = InMemorySlidingStore(parameters: parameters, initialCapacity: initialCapacity)
        }
    }

    @inline(__always)
    public func process(card: CardBytes, eventTime: Int64) -> Verdict {
        if var store = tumblingStore {
            return tumbling.process(card: card, eventTime: eventTime, store: &store)
        }
        var store = slidingStore.unsafelyUnwrapped
        return sliding.process(card: card, eventTime: eventTime, store: &store)
    }

    /// Memory holds no commit: nothing to forget.
    public func rolledBack() {}

    /// Number of cards with state.
    public var cardCount: Int { tumblingStore?.cardCount ?? slidingStore!.cardCount }

    /// See ``CardTable/planLookups(_:card:)``: hints for ``prefetch(ahead:)``.
    public func planLookups(_ count: Int, card: (Int) -> CardBytes?) {
        if let tumblingStore { tumblingStore.planLookups(count, card: card) } else { slidingStore!.planLookups(count, card: card) }
    }

    /// See ``CardTable/prefetch(ahead:)``.
    @inline(__always)
    public func prefetch(ahead i: Int) {
        if let tumblingStore { tumblingStore.prefetch(ahead: i) } else { slidingStore.unsafelyUnwrapped.prefetch(ahead: i) }
    }
}
