/// One card's accepted event times for sliding windows (SEMANTICS.md §2b), ascending.
///
/// Up to ``inlineCapacity`` times live inline, in the card's table entry: most cards keep one
/// or two times within `2W + G`, and a separate heap buffer per card cost a cache miss on nearly
/// every record. More go to a sorted array read by binary search: a record's count is two
/// searches (one when it is the card's latest, the usual case), so a burst of n records of one
/// card costs O(log n) per verdict. In-order records append; an out-of-order (not late) record
/// is inserted at its place, which moves only the times after it, and those are within `W + G`
/// of the card's maximum. Times that can no longer count (SEMANTICS.md §2b's purge rule) leave
/// from the front by moving `head`; the array is compacted once most of it is dead (amortized
/// O(1) per time), and given up for the inline slots once few times are left.
package struct AcceptedTimes: Equatable {
    static let inlineCapacity = 3

    private var small: (Int64, Int64, Int64) = (0, 0, 0)
    /// Number of inline times (when `large` is nil).
    private var smallCount: UInt8 = 0
    /// Index of the first live time in `large`.
    private var head: Int32 = 0
    private var large: [Int64]?

    package init() {}

    /// Times already in ascending order (a decoded store value).
    package init(ascending times: [Int64]) {
        if times.count <= Self.inlineCapacity {
            for t in times { appendSmall(t) }
        } else {
            large = times
        }
    }

    /// Number of live times.
    @inline(__always)
    var count: Int {
        if let large { return large.count - Int(head) }
        return Int(smallCount)
    }

    @inline(__always)
    var isEmpty: Bool { count == 0 }

    /// Calls `body` with each live time, ascending.
    package func forEach(_ body: (Int64) -> Void) {
        if let large {
            for i in Int(head)..<large.count { body(large[i]) }
        } else {
            for i in 0..<Int(smallCount) { body(smallAt(i)) }
        }
    }

    /// Number of times `u` with `lo <= u <= hi`.
    @inline(__always)
    package func count(from lo: Int64, through hi: Int64) -> Int {
        guard let large else {
            var n = 0
            for i in 0..<Int(smallCount) {
                let u = smallAt(i)
                if lo <= u && u <= hi { n += 1 }
            }
            return n
        }
        let n = large.count
        let start = Int(head)
        guard n > start else { return 0 }
        let end = large[n - 1] <= hi ? n : Self.firstIndex(in: large, from: start, to: n) { $0 > hi }
        return end - Self.firstIndex(in: large, from: start, to: end) { $0 >= lo }
    }

    /// Adds `t`, after any equal times.
    @inline(__always)
    package mutating func insert(_ t: Int64) {
        if large == nil {
            let n = Int(smallCount)
            if n < Self.inlineCapacity {
                // Shift the later times one slot up, then place t.
                var i = n
                while i > 0 && smallAt(i - 1) > t {
                    setSmall(i, smallAt(i - 1))
                    i -= 1
                }
                setSmall(i, t)
                smallCount += 1
                return
            }
            var spilled: [Int64] = []
            spilled.reserveCapacity(2 * Self.inlineCapacity + 2)
            for i in 0..<n { spilled.append(smallAt(i)) }
            large = spilled
            head = 0
            smallCount = 0
        }
        let start = Int(head)
        if let last = large!.last, t < last, large!.count > start {
            let at = Self.firstIndex(in: large!, from: start, to: large!.count) { $0 > t }
            large!.insert(t, at: at)
        } else {
            large!.append(t)
        }
    }

    /// Drops every time `u <= bound`.
    @inline(__always)
    package mutating func drop(through bound: Int64) {
        guard large != nil else {
            var dropped = 0
            while dropped < Int(smallCount) && smallAt(dropped) <= bound { dropped += 1 }
            guard dropped > 0 else { return }
            for i in dropped..<Int(smallCount) { setSmall(i - dropped, smallAt(i)) }
            smallCount -= UInt8(dropped)
            return
        }
        let start = Int(head)
        guard large!.count > start, large![start] <= bound else { return }
        let newHead = Self.firstIndex(in: large!, from: start, to: large!.count) { $0 > bound }
        let live = large!.count - newHead
        if live <= Self.inlineCapacity {
            let times = large![newHead...]
            large = nil
            head = 0
            smallCount = 0
            for t in times { appendSmall(t) }
        } else if newHead >= 16 && newHead * 2 >= large!.count {
            large!.removeFirst(newHead)
            head = 0
        } else {
            head = Int32(newHead)
        }
    }

    /// The first index in `from..<to` whose time satisfies `isPast` (the times are ascending, so
    /// `isPast` is false then true), or `to` when none does.
    @inline(__always)
    private static func firstIndex(in times: [Int64], from: Int, to: Int, _ isPast: (Int64) -> Bool) -> Int {
        var lo = from, hi = to
        while lo < hi {
            let mid = (lo + hi) >> 1
            if isPast(times[mid]) { hi = mid } else { lo = mid + 1 }
        }
        return lo
    }

    @inline(__always)
    private func smallAt(_ i: Int) -> Int64 {
        switch i {
        case 0: small.0
        case 1: small.1
        default: small.2
        }
    }

    @inline(__always)
    private mutating func setSmall(_ i: Int, _ t: Int64) {
        switch i {
        case 0: small.0 = t
        case 1: small.1 = t
        default: small.2 = t
        }
    }

    private mutating func appendSmall(_ t: Int64) {
        setSmall(Int(smallCount), t)
        smallCount += 1
    }

    /// The `i`th live time (0 ≤ i < ``count``).
    private func time(at i: Int) -> Int64 {
        if let large { return large[Int(head) + i] }
        return smallAt(i)
    }

    package static func == (a: AcceptedTimes, b: AcceptedTimes) -> Bool {
        guard a.count == b.count else { return false }
        for i in 0..<a.count where a.time(at: i) != b.time(at: i) { return false }
        return true
    }
}
