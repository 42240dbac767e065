import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `polyglot process` stopped by SIGTERM or SIGINT while records flow: it exits 0 promptly with
/// its open transaction committed or aborted, and a restart with `--until-end` leaves exactly
/// one committed output per input, each `replay`'s verdict.
@Suite("Shutdown signals", .serialized,
       PolyglotBinary.enabled)
struct ShutdownSignalTests {
    @Test(arguments: [SIGTERM, SIGINT])
    func signalWhileRecordsFlowExitsZeroAndLosesNothing(_ signal: Int32) async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let topics = try ProcessTopics(partitions: 3)
        let lines = transactionLines(count: 12_000, cards: 150)
        try await topics.produce(lines[..<3_000], in: directory)

        let arguments = topics.processArguments(stateDirectory: directory.appendingPathComponent("state").path)
        let first = try BackgroundPolyglot(arguments, in: directory)
        let watcher = try topics.outputWatcher()
        defer { watcher.close() }
        let started = try await watcher.waitFor(1_000, within: .seconds(90)) { first.isRunning }
        try #require(started, "no outputs from the first run: \(first.stderr)")
        // More input while it works; the signal comes once outputs of it appear, so records are
        // in flight (and, at a 100 ms commit interval, a transaction is open).
        try await topics.produce(lines[3_000..<6_000], in: directory)
        let flowing = try await watcher.waitFor(3_200, within: .seconds(60)) { first.isRunning }
        try #require(flowing, "the first run did not reach the second batch: \(first.stderr)")
        first.send(signal)
        let exited = await first.waitForExit(within: .seconds(30))
        try #require(exited, "still running 30 s after the signal: \(first.stderr)")
        #expect(first.exitedNormally && first.status == 0, "status \(first.status): \(first.stderr)")
        #expect(first.stderr.contains("stopped"), "no final log line: \(first.stderr)")

        try await topics.produce(lines[6_000...], in: directory)
        let second = try polyglot(arguments + ["--until-end"], in: directory)
        #expect(second.status == 0, "\(second.stderr)")

        let expected = try replayVerdicts(lines, in: directory)
        var outputs: [String: [String]] = [:]
        for value in try await topics.committedOutputs() { outputs[transactionID(value[...]), default: []].append(value) }
        #expect(outputs.count == expected.count, "transactions with an output: \(outputs.count) of \(expected.count)")
        let wrong = expected.keys.filter { outputs[$0]?.last != expected[$0] }.sorted()
        #expect(wrong.isEmpty, "\(wrong.count) verdicts differ from replay's, e.g. \(wrong.first.map { "\($0): \(outputs[$0]?.last ?? "none")" } ?? "")")
        // Exactly once. A stop commits the open transaction; one instance at a time never
        // rebalances mid-transaction, so nothing aborts and even the mock (which would show an
        // aborted transaction's records) has one output per input.
        let aborts = (stoppedLineValue("aborts", in: first.stderr) ?? -1, stoppedLineValue("aborts", in: second.stderr) ?? -1)
        let duplicated = outputs.filter { $0.value.count > 1 }.keys.sorted()
        #expect(duplicated.isEmpty, "\(duplicated.count) transactions have more than one output, e.g. \(duplicated.prefix(3)); aborts: \(aborts)")
    }
}
