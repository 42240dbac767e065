import Testing
@testable import StreamEngine

@Suite("Record latency")
struct RecordLatencyTests {
    @Test func bucketsEachLatencyUnderTheFirstBoundAtOrAboveIt() {
        var h = RecordLatencyHistogram()
        // Commit at 10,000 ms: latencies 0 (a clock ahead counts as 0), 5, 6, 150, 151 and 40,000 ms.
        h.record(timestamps: [10_003, 9_995, 9_994, 9_850, 9_849, -30_000], committedAt: 10_000)
        #expect(h.count == 6)
        #expect(h.sumMilliseconds == 0 + 5 + 6 + 150 + 151 + 40_000)
        let bounds = RecordLatencyHistogram.boundsMilliseconds
        #expect(h.counts[bounds.firstIndex(of: 5)!] == 2)
        #expect(h.counts[bounds.firstIndex(of: 10)!] == 1)
        #expect(h.counts[bounds.firstIndex(of: 150)!] == 1)
        #expect(h.counts[bounds.firstIndex(of: 200)!] == 1)
        #expect(h.counts.last == 1)
        #expect(h.quantileBoundMilliseconds(0.5) == 10)
        #expect(h.quantileBoundMilliseconds(0.66) == 150)
        #expect(h.quantileBoundMilliseconds(0.99) == .max)
        #expect(RecordLatencyHistogram().quantileBoundMilliseconds(0.99) == nil)

        var merged = RecordLatencyHistogram()
        merged.merge(h)
        merged.merge(h)
        #expect(merged.count == 12 && merged.counts.last == 2)
    }

    @Test func exposesACumulativePrometheusHistogramInSeconds() throws {
        var h = RecordLatencyHistogram()
        h.record(timestamps: [1_000, 960, 900, 700], committedAt: 1_000)
        let text = try PrometheusText(Array(h.prometheusText(name: "polyglot_record_latency_seconds", help: "Latency.").utf8))
        #expect(text.types["polyglot_record_latency_seconds"] == "histogram")
        #expect(text["polyglot_record_latency_seconds_bucket", ["le": "0.005"]] == 1)
        #expect(text["polyglot_record_latency_seconds_bucket", ["le": "0.05"]] == 2)
        #expect(text["polyglot_record_latency_seconds_bucket", ["le": "0.1"]] == 3)
        #expect(text["polyglot_record_latency_seconds_bucket", ["le": "0.25"]] == 3)
        #expect(text["polyglot_record_latency_seconds_bucket", ["le": "0.5"]] == 4)
        #expect(text["polyglot_record_latency_seconds_bucket", ["le": "2.5"]] == 4)
        #expect(text["polyglot_record_latency_seconds_bucket", ["le": "+Inf"]] == 4)
        #expect(text["polyglot_record_latency_seconds_count"] == 4)
        #expect(text["polyglot_record_latency_seconds_sum"] == 0.44)
    }
}
