import Foundation
import PolyglotSupport

/// How long records waited from their Kafka timestamp until the commit that made what they
/// produced visible: a cumulative histogram, as Prometheus exposes one.
///
/// Kept by the run loop itself rather than observed record by record through swift-metrics:
/// every record of a commit shares the commit's end, so the loop buckets a whole cycle in one
/// pass over its timestamps, with no lock per record.
public struct RecordLatencyHistogram: Sendable, Hashable {
    /// Upper bounds in milliseconds: fine around the 100 ms commit interval and the 150 ms a
    /// verdict should take at most, coarse beyond.
    public static let boundsMilliseconds: [Int64] = [5, 10, 25, 50, 75, 100, 150, 200, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000]

    /// Per bound, the records at or under it (not cumulative); the last slot counts the rest.
    public private(set) var counts: [Int64] = Array(repeating: 0, count: Self.boundsMilliseconds.count + 1)
    public private(set) var count: Int64 = 0
    public private(set) var sumMilliseconds: Int64 = 0

    public init() {}

    /// Buckets one latency; a negative one (a producer's clock ahead of this host's) counts as 0.
    @inline(__always)
    public mutating func record(milliseconds: Int64) {
        let latency = max(0, milliseconds)
        var i = 0
        let bounds = Self.boundsMilliseconds
        while i < bounds.count, latency > bounds[i] { i += 1 }
        counts[i] += 1
        count += 1
        sumMilliseconds &+= latency
    }

    /// Buckets every timestamp of a cycle against the wall clock of its commit.
    public mutating func record(timestamps: [Int64], committedAt wallClockMillis: Int64) {
        for t in timestamps { record(milliseconds: wallClockMillis &- t) }
    }

    public mutating func merge(_ other: RecordLatencyHistogram) {
        for i in counts.indices { counts[i] += other.counts[i] }
        count += other.count
        sumMilliseconds &+= other.sumMilliseconds
    }

    /// The smallest bound at or under which `fraction` of the records fall (nil when empty, or
    /// `.max` when beyond the last bound): what a dashboard's `histogram_quantile` reads.
    public func quantileBoundMilliseconds(_ fraction: Double) -> Int64? {
        guard count > 0 else { return nil }
        let rank = Int64((fraction * Double(count)).rounded(.up))
        var seen: Int64 = 0
        for (i, n) in counts.enumerated() {
            seen += n
            if seen >= rank { return i < Self.boundsMilliseconds.count ? Self.boundsMilliseconds[i] : .max }
        }
        return .max
    }

    /// The histogram in Prometheus' text format, in seconds, under `name`.
    public func prometheusText(name: String, help: String) -> String {
        var out = "# HELP \(name) \(help)\n# TYPE \(name) histogram\n"
        var cumulative: Int64 = 0
        for (i, bound) in Self.boundsMilliseconds.enumerated() {
            cumulative += counts[i]
            out += "\(name)_bucket{le=\"\(Self.seconds(bound))\"} \(cumulative)\n"
        }
        out += "\(name)_bucket{le=\"+Inf\"} \(count)\n"
        out += "\(name)_sum \(Self.seconds(sumMilliseconds))\n"
        out += "\(name)_count \(count)\n"
        return out
    }

    /// Milliseconds as seconds, in the shortest exact decimal form (`0.005`, `1`, `2.5`).
    static func seconds(_ milliseconds: Int64) -> String {
        let whole = milliseconds / 1000, fraction = milliseconds % 1000
        guard fraction != 0 else { return "\(whole)" }
        var digits = String(fraction)
        digits = String(repeating: "0", count: 3 - digits.count) + digits
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(whole).\(digits)"
    }

    /// The wall clock in epoch milliseconds, as Kafka timestamps count.
    public static func wallClockMillis() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }
}
