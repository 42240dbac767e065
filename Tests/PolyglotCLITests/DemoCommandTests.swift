import Foundation
import Testing

/// `polyglot demo`: the whole pipeline in one process, broker included.
@Suite("Demo", PolyglotBinary.enabled)
struct DemoCommandTests {
    /// A clean run: every record generated, processed and audited, and the summary says so.
    @Test func aCleanDemoExitsZeroWithItsSummary() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let run = try polyglot(["demo", "--records", "3000", "--process-metrics-port", "0", "--audit-metrics-port", "0"], in: directory)
        #expect(run.status == 0, "\(run.stderr)")
        let summary = run.stdout.split(separator: "\n")
        #expect(summary.first?.hasPrefix("demo: 3000 transactions in ") == true)
        // 1% malformed lines by default: rejected, by code, and every one dead-lettered.
        let rejected = try #require(summary.first?.split(separator: " ").firstIndex(of: "rejected").map { summary.first!.split(separator: " ")[$0 - 1] })
        #expect(Int(rejected) ?? 0 > 0)
        #expect(summary.contains { $0.hasPrefix("  rejected by code: ") })
        #expect(summary.contains("  audit: clean, every verdict recomputed and equal"))
        #expect(run.stdout.contains("missing 0, duplicate 0, orphan 0, mismatch 0, drift 0, unreadable 0"))
    }

    @Test func badSettingsAreUsageErrors() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        for arguments in [["--records", "0"], ["--settle", "-1s"], ["--process-metrics-port", "70000"]] {
            let run = try polyglot(["demo"] + arguments, in: directory)
            #expect(run.status == 64, "\(arguments): \(run.stderr)")
            #expect(run.stderr.split(separator: "\n").count == 1 && run.stderr.hasPrefix("polyglot: "), "\(arguments): \(run.stderr)")
        }
    }

    /// The same seed gives the same summary on every run (the event times do not follow the
    /// wall clock into other windows); only the elapsed time differs.
    @Test func theSameSeedGivesTheSameSummary() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        var summaries: [[Substring]] = []
        for _ in 0..<2 {
            let run = try polyglot(["demo", "--records", "2000", "--seed", "7", "--process-metrics-port", "0", "--audit-metrics-port", "0"],
                                   in: directory)
            #expect(run.status == 0, "\(run.stderr)")
            var lines = run.stdout.split(separator: "\n")
            try #require(!lines.isEmpty)
            // "demo: 2000 transactions in 6.2 s: ..." without its seconds.
            let first = lines[0]
            let seconds = try #require(first.range(of: #" in [0-9.]+ s:"#, options: .regularExpression))
            lines[0] = first[..<seconds.lowerBound] + first[seconds.upperBound...]
            summaries.append(lines)
        }
        #expect(summaries[0] == summaries[1])
        #expect(summaries[0].first?.contains("flagged") == true)
    }
}
