import FraudModel

/// One card's sliding-window state as the SQLite store keeps it (SEMANTICS.md §2b): whether the
/// card exists, its largest accepted event time and its accepted times.
struct CardTimes: Equatable {
    var exists: Bool
    var max: Int64
    var times: AcceptedTimes

    /// A card that does not exist.
    static let absent = CardTimes(exists: false, max: 0, times: AcceptedTimes())

    init(exists: Bool, max: Int64, times: AcceptedTimes) {
        self.exists = exists
        self.max = max
        self.times = times
    }

    /// Records an accepted record at `t` (see ``SlidingWindowStore/accept(_:eventTime:from:cardMax:streamTime:)``)
    /// and returns the count of earlier times from `from` through `t`.
    @inline(__always)
    mutating func accept(eventTime t: Int64, from: Int64, cardMax: Int64, streamTime: Int64,
                         parameters: DetectorParameters) -> Int64 {
        let earlier = exists ? times.count(from: from, through: t) : 0
        if !exists { self = CardTimes(exists: true, max: cardMax, times: AcceptedTimes()) }
        max = cardMax
        if let bound = parameters.slidingDropBound(cardMax: cardMax, streamTime: streamTime) { times.drop(through: bound) }
        times.insert(t)
        return Int64(earlier)
    }

    static func == (a: CardTimes, b: CardTimes) -> Bool {
        guard a.exists == b.exists else { return false }
        guard a.exists else { return true }
        return a.max == b.max && a.times == b.times
    }
}

extension CardTimes: StoreValue {
    /// `'s'`: a sliding store's card. A tumbling store's cards are `'c'`, so each kind's reader
    /// recognizes the other's changelog instead of misreading it.
    static var changelogTag: UInt8 { ChangelogRecord.slidingCardTag }

    /// The card's maximum: a card expires by it (``SQLiteSlidingStore/purgeExpired(_:)``).
    var rank: Int64 { max }

    /// The most times one value may expand to: far more than any card keeps within `2W + G`
    /// (a million records of one card in one second is 1,000 runs of 1,000), and a bound on
    /// what a damaged record can make a restore allocate.
    static let maxTimeCount = 1 << 27

    /// The maximum (8 bytes big-endian), then the times as runs of equal times, ascending: per
    /// run the gap from the previous run's time (from 0 for the first) and the run's length,
    /// each an unsigned LEB128 varint. A burst of records in one millisecond is one run, and
    /// times a few ms apart take a few bytes each, so a card's value stays far below a Kafka
    /// record's size limit.
    func encode(into bytes: inout [UInt8]) {
        ChangelogRecord.appendBigEndian(max, to: &bytes)
        var previous: Int64 = 0
        var run: (time: Int64, count: UInt64)?
        func flush() {
            guard let r = run else { return }
            Self.appendVarint(UInt64(r.time - previous), to: &bytes)
            Self.appendVarint(r.count, to: &bytes)
            previous = r.time
        }
        times.forEach { t in
            if let r = run, r.time == t {
                run!.count = r.count + 1
            } else {
                flush()
                run = (t, 1)
            }
        }
        flush()
    }

    /// A card value: a maximum that is an event time, then runs whose times are strictly
    /// ascending, from 0 up to the maximum, each of at least one record, canonical varints.
    static func decode(_ value: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> CardTimes {
        guard value.count >= 8 else {
            throw ChangelogDecodingError("sliding card value has \(value.count) bytes, expected at least 8")
        }
        let max = ChangelogRecord.readBigEndian(value, at: 0)
        guard max >= 0 else { throw ChangelogDecodingError("sliding card value has a negative maximum \(max)") }
        var times: [Int64] = []
        var offset = 8
        var time: Int64 = 0
        var first = true
        while offset < value.count {
            let gap = try readVarint(value, &offset)
            let count = try readVarint(value, &offset)
            guard first || gap > 0 else { throw ChangelogDecodingError("sliding card value has times out of order") }
            guard gap <= UInt64(Int64.max - time) else { throw ChangelogDecodingError("sliding card value has a time past the largest timestamp") }
            time += Int64(gap)
            first = false
            guard time <= max else {
                throw ChangelogDecodingError("sliding card value has a time \(time) after the card's maximum \(max)")
            }
            guard count > 0 else { throw ChangelogDecodingError("sliding card value has a run of no records") }
            guard count <= UInt64(maxTimeCount - times.count) else {
                throw ChangelogDecodingError("sliding card value holds more than \(maxTimeCount) times")
            }
            times.append(contentsOf: repeatElement(time, count: Int(count)))
        }
        return CardTimes(exists: true, max: max, times: AcceptedTimes(ascending: times))
    }

    static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    /// An unsigned LEB128 varint of at most 64 bits in its shortest form.
    static func readVarint(_ bytes: UnsafeRawBufferPointer, _ offset: inout Int) throws(ChangelogDecodingError) -> UInt64 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard offset < bytes.count else { throw ChangelogDecodingError("sliding card value ends inside a number") }
            let byte = bytes[offset]
            offset += 1
            guard shift < 64, shift < 63 || byte <= 1 else { throw ChangelogDecodingError("sliding card value holds a number over 64 bits") }
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 {
                guard byte != 0 || shift == 0 else { throw ChangelogDecodingError("sliding card value holds a number not in its shortest form") }
                return value
            }
            shift += 7
        }
    }
}
