import FraudModel

/// One card's state as the SQLite store keeps it in memory: whether the card exists, its
/// largest accepted event time and its open windows in ascending start order.
///
/// Two windows are inline, so the usual card (grace shorter than a window: at most the window of
/// its latest record and, briefly, the one before) costs no allocation; more go to `more`.
struct CardWindows: Equatable {
    var exists: Bool
    var max: Int64
    private(set) var windowCount: Int
    private var first = WindowCount(start: 0, count: 0)
    private var second = WindowCount(start: 0, count: 0)
    private var more: [WindowCount] = []

    /// A card that does not exist.
    static let absent = CardWindows(exists: false, max: 0, windowCount: 0)

    private init(exists: Bool, max: Int64, windowCount: Int) {
        self.exists = exists
        self.max = max
        self.windowCount = windowCount
    }

    /// An existing card with no windows yet.
    init(max: Int64) {
        self.init(exists: true, max: max, windowCount: 0)
    }

    /// Window `i` (0 ≤ i < ``windowCount``), by ascending start.
    @inline(__always)
    subscript(i: Int) -> WindowCount {
        get { i == 0 ? first : i == 1 ? second : more[i - 2] }
        set {
            if i == 0 { first = newValue } else if i == 1 { second = newValue } else { more[i - 2] = newValue }
        }
    }

    @inline(__always)
    func forEach(_ body: (WindowCount) -> Void) {
        for i in 0..<windowCount { body(self[i]) }
    }

    /// The count of the window starting at `start` (0 when it is not open).
    @inline(__always)
    func count(at start: Int64) -> Int64 {
        for i in 0..<windowCount where self[i].start == start { return self[i].count }
        return 0
    }

    /// Appends a window after every other (its start is the largest).
    mutating func appendInOrder(_ window: WindowCount) {
        if windowCount >= 2 { more.append(window) } else { self[windowCount] = window }
        windowCount += 1
    }

    /// Records an accepted record: the card's new maximum, and its window's new count. Drops the
    /// windows that `parameters` say are closed by the new maximum or by retention at `streamTime`
    /// (SEMANTICS.md §2 allows deleting them; keeping them would only grow the state).
    @inline(__always)
    mutating func accept(windowStart: Int64, count: Int64, max newMax: Int64, streamTime: Int64,
                         parameters p: DetectorParameters) {
        exists = true
        max = newMax
        // The usual case: no window, or only this record's own.
        if windowCount == 0 || (windowCount == 1 && first.start == windowStart) {
            first = WindowCount(start: windowStart, count: count)
            windowCount = 1
            return
        }
        // Grace shorter than a window: a record in a new window closes the card's only other one.
        if windowCount == 1 && first.start < windowStart && p.isClosed(windowStart: first.start, cardMax: newMax, streamTime: streamTime) {
            first = WindowCount(start: windowStart, count: count)
            return
        }
        var kept: [WindowCount] = []
        kept.reserveCapacity(windowCount + 1)
        var placed = false
        for i in 0..<windowCount {
            let w = self[i]
            if !placed && w.start >= windowStart {
                kept.append(WindowCount(start: windowStart, count: count))
                placed = true
                if w.start == windowStart { continue }
            }
            if p.isClosed(windowStart: w.start, cardMax: newMax, streamTime: streamTime) { continue }
            kept.append(w)
        }
        if !placed { kept.append(WindowCount(start: windowStart, count: count)) }
        self = CardWindows(max: newMax)
        for w in kept { appendInOrder(w) }
    }

    /// Converts to the public form.
    var state: CardState? {
        guard exists else { return nil }
        var windows: [WindowCount] = []
        windows.reserveCapacity(windowCount)
        forEach { windows.append($0) }
        return CardState(max: max, windows: windows)
    }

    /// From the public form (nil: absent).
    init(_ state: CardState?) {
        guard let state else {
            self = .absent
            return
        }
        self.init(max: state.max)
        for w in state.windows { appendInOrder(w) }
    }

    static func == (a: CardWindows, b: CardWindows) -> Bool {
        guard a.exists == b.exists else { return false }
        guard a.exists else { return true }
        guard a.max == b.max, a.windowCount == b.windowCount else { return false }
        for i in 0..<a.windowCount where a[i] != b[i] { return false }
        return true
    }
}

extension CardWindows: StoreValue {
    static var changelogTag: UInt8 { ChangelogRecord.cardTag }

    /// The card's maximum: a card expires by it (``SQLiteWindowStore/purgeExpired(_:)``).
    var rank: Int64 { max }

    /// The largest window count a changelog record may hold. A count is at most the number of
    /// records in one partition, which Kafka numbers with non-negative Int64 offsets, so a real
    /// count stays below Int64.max; half of it leaves a margin no partition can use up, and the
    /// detector adds one per record to a restored count, which therefore cannot overflow.
    static let maxWindowCount = Int64.max / 2

    /// The maximum, then each window's start and count, 8 bytes big-endian each.
    func encode(into bytes: inout [UInt8]) {
        ChangelogRecord.appendBigEndian(max, to: &bytes)
        forEach { w in
            ChangelogRecord.appendBigEndian(w.start, to: &bytes)
            ChangelogRecord.appendBigEndian(w.count, to: &bytes)
        }
    }

    /// A card value: a maximum that is an event time (never negative), then windows with
    /// strictly ascending starts from 0 up to the maximum, each with a count from 1 to
    /// ``maxWindowCount``.
    static func decode(_ value: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> CardWindows {
        guard value.count >= 8, (value.count - 8) % 16 == 0 else {
            throw ChangelogDecodingError("card value has \(value.count) bytes, expected 8 plus 16 per window")
        }
        let n = (value.count - 8) / 16
        var state = CardWindows(max: ChangelogRecord.readBigEndian(value, at: 0))
        guard state.max >= 0 else {
            throw ChangelogDecodingError("card value has a negative maximum \(state.max)")
        }
        var previous: Int64?
        for i in 0..<n {
            let start = ChangelogRecord.readBigEndian(value, at: 8 + 16 * i)
            let count = ChangelogRecord.readBigEndian(value, at: 16 + 16 * i)
            guard count > 0 else {
                throw ChangelogDecodingError("card value has a window of count \(count)")
            }
            guard count <= maxWindowCount else {
                throw ChangelogDecodingError("card value has a window of count \(count), more than any partition can hold (\(maxWindowCount))")
            }
            guard start >= 0 else {
                throw ChangelogDecodingError("card value has a window starting at \(start), before the epoch")
            }
            guard start <= state.max else {
                throw ChangelogDecodingError("card value has a window starting at \(start), after the card's maximum \(state.max)")
            }
            if let previous, start <= previous {
                throw ChangelogDecodingError("card value has windows out of order (\(start) after \(previous))")
            }
            previous = start
            state.appendInOrder(WindowCount(start: start, count: count))
        }
        return state
    }
}
