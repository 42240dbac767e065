/// One card's accepted event times for sliding windows (SEMANTICS.md §2b), ascending.
///
/// A sorted array read by binary search: a record's count is two searches (one when it is the
/// card's latest, the usual case), so a burst of n records of one card costs O(log n) per
/// verdict. In-order records append; an out-of-order (not late) record is inserted at its place,
/// which moves only the times after it, and those are within `W + G` of the card's maximum.
/// Times that can no longer count (SEMANTICS.md §2b's purge rule) leave from the front by moving
/// ``head``; the array is compacted once most of it is dead, so dropping is amortized O(1).
struct AcceptedTimes: Equatable {
    private(set) var storage: [Int64] = []
    /// Index of the first live time in ``storage``.
    private(set) var head = 0

    init() {}

    /// Times already in ascending order (a decoded store value).
    init(ascending times: [Int64]) {
        storage = times
    }

    /// Number of live times.
    @inline(__always)
    var count: Int { storage.count - head }

    @inline(__always)
    var isEmpty: Bool { storage.count == head }

    /// The latest time (nil when empty).
    var last: Int64? { isEmpty ? nil : storage[storage.count - 1] }

    /// Calls `body` with each live time, ascending.
    func forEach(_ body: (Int64) -> Void) {
        for i in head..<storage.count { body(storage[i]) }
    }

    /// Number of times `u` with `lo <= u <= hi`.
    @inline(__always)
    func count(from lo: Int64, through hi: Int64) -> Int {
        let n = storage.count
        guard n > head else { return 0 }
        let end = storage[n - 1] <= hi ? n : firstIndex(after: hi)
        return end - firstIndex(atLeast: lo, before: end)
    }

    /// Adds `t`, after any equal times.
    @inline(__always)
    mutating func insert(_ t: Int64) {
        if let last = storage.last, t < last, storage.count > head {
            storage.insert(t, at: firstIndex(after: t))
        } else {
            storage.append(t)
        }
    }

    /// Drops every time `u <= bound`.
    @inline(__always)
    mutating func drop(through bound: Int64) {
        guard storage.count > head, storage[head] <= bound else { return }
        head = firstIndex(after: bound)
        if head == storage.count {
            storage.removeAll(keepingCapacity: storage.capacity <= 64)
            head = 0
        } else if head >= 16 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
    }

    /// First index from ``head`` whose time is greater than `t` (``storage``'s count if none).
    @inline(__always)
    private func firstIndex(after t: Int64) -> Int {
        var lo = head, hi = storage.count
        while lo < hi {
            let mid = (lo + hi) >> 1
            if storage[mid] <= t { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// First index from ``head`` (and before `end`) whose time is at least `t`.
    @inline(__always)
    private func firstIndex(atLeast t: Int64, before end: Int) -> Int {
        var lo = head, hi = end
        while lo < hi {
            let mid = (lo + hi) >> 1
            if storage[mid] < t { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    static func == (a: AcceptedTimes, b: AcceptedTimes) -> Bool {
        guard a.count == b.count else { return false }
        for i in 0..<a.count where a.storage[a.head + i] != b.storage[b.head + i] { return false }
        return true
    }
}
