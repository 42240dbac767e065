import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif
@testable import KafkaClient

/// The `polyglot` binary restarted on the same state directory: after a store file was
/// damaged (the store is rebuilt from the changelog), and after a SIGKILL in the middle of a
/// transaction. Every verdict stays `replay`'s.
@Suite("Restart", .serialized,
       PolyglotBinary.enabled)
struct CrashRestartTests {
    static let logger: Logger = {
        var l = Logger(label: "polyglot.test.crash")
        l.logLevel = .error
        return l
    }()

    @Test func restartOnADamagedStoreRebuildsIt() async throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let topics = try ProcessTopics(partitions: 3)
        // Each card's records in time order, an hour old at most (future skew).
        let lines = transactionLines(count: 33_000, cards: 150)
        try await topics.produce(lines[..<30_000], in: dir)
        let state = dir.appendingPathComponent("state").path
        let arguments = topics.processArguments(stateDirectory: state) + ["--until-end"]
        let first = try polyglot(arguments, in: dir)
        #expect(first.status == 0, "\(first.stderr)")

        // A damaged store file is rebuilt from the changelog, not only detected.
        let store = URL(fileURLWithPath: state).appendingPathComponent(topics.applicationID).appendingPathComponent("\(topics.input)-0")
            .appendingPathComponent("windows.sqlite")
        #expect(FileManager.default.fileExists(atPath: store.path), "no store at \(store.path)")
        // The database's first page and its write-ahead log's header (which SQLite would
        // otherwise read the first page from).
        for file in [store.path, store.path + "-wal"] where FileManager.default.fileExists(atPath: file) {
            let handle = try #require(FileHandle(forWritingAtPath: file))
            try handle.write(contentsOf: Data(repeating: 0x5A, count: 4096))
            try handle.close()
        }

        // More records of the same cards: their verdicts depend on the rebuilt state.
        try await topics.produce(lines[30_000...], in: dir)
        let second = try polyglot(arguments, in: dir)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("rebuilding from the changelog"), "the damaged store was not rebuilt: \(second.stderr)")

        // Nothing aborted (two clean runs): exactly one committed output per input, replay's.
        let expected = try replayVerdicts(lines, in: dir)
        var outputs: [String: [String]] = [:]
        for value in try await topics.committedOutputs() { outputs[transactionID(value[...]), default: []].append(value) }
        #expect(outputs.count == expected.count, "transactions with an output: \(outputs.count) of \(expected.count)")
        let duplicated = outputs.filter { $0.value.count > 1 }.keys.sorted()
        #expect(duplicated.isEmpty, "\(duplicated.count) transactions have more than one output, e.g. \(duplicated.prefix(3))")
        let wrong = expected.keys.filter { outputs[$0]?.last != expected[$0] }.sorted()
        #expect(wrong.isEmpty, "\(wrong.count) verdicts differ from replay's, e.g. \(wrong.first.map { "\($0): \(outputs[$0] ?? [])" } ?? "")")
    }

    /// The first input fed after the kill.
    static let fedAfterKill = 8_000

    /// What a run killed with SIGKILL while records flow left, and the restart after it.
    struct KilledRun {
        var lines: [String]
        /// replay's output per transaction id.
        var expected: [String: String]
        /// Every committed output after the restart, per transaction id.
        var outputs: [String: [String]]
        /// Every output written (committed or not) when the run was killed, per transaction id.
        var writtenBeforeKill: [String: [String]]
    }

    /// Starts `process`, feeds it input while it runs, kills it with SIGKILL once outputs of the
    /// second batch appear (a transaction is open: one commits every 100 ms while records flow),
    /// feeds the rest and restarts it with `--until-end` on the same state directory.
    static func killMidTransactionAndRestart(_ topics: ProcessTopics, in dir: URL) async throws -> KilledRun {
        let lines = transactionLines(count: 15_000, cards: 150)
        try await topics.produce(lines[..<4_000], in: dir)
        let arguments = topics.processArguments(stateDirectory: dir.appendingPathComponent("state").path)
        let first = try BackgroundPolyglot(arguments, in: dir)
        let watcher = try topics.outputWatcher()
        defer { watcher.close() }
        let started = try await watcher.waitFor(1_000, within: .seconds(90)) { first.isRunning }
        try #require(started, "no outputs from the first run: \(first.stderr)")
        try await topics.produce(lines[4_000..<fedAfterKill], in: dir)
        let flowing = try await watcher.waitFor(4_300, within: .seconds(60)) { first.isRunning }
        first.send(SIGKILL)
        try #require(flowing, "the first run did not reach the second batch: \(first.stderr)")
        let killed = await first.waitForExit(within: .seconds(30))
        try #require(killed, "still running 30 s after SIGKILL")
        #expect(!first.exitedNormally, "the first run ended by itself: \(first.stderr)")

        // Everything the killed run wrote, the open transaction's records included.
        var writtenBeforeKill: [String: [String]] = [:]
        for m in try await topics.readAll(topics.output, committedOnly: false) {
            let value = String(decoding: m.value ?? [], as: UTF8.self)
            writtenBeforeKill[transactionID(value[...]), default: []].append(value)
        }
        #expect(writtenBeforeKill.count >= 4_300 && writtenBeforeKill.count < lines.count,
                "\(writtenBeforeKill.count) transactions had an output when the run was killed")

        try await topics.produce(lines[fedAfterKill...], in: dir)
        let second = try polyglot(arguments + ["--until-end"], in: dir)
        #expect(second.status == 0, "\(second.stderr)")

        var outputs: [String: [String]] = [:]
        for value in try await topics.committedOutputs() { outputs[transactionID(value[...]), default: []].append(value) }
        return KilledRun(lines: lines, expected: try replayVerdicts(lines, in: dir), outputs: outputs, writtenBeforeKill: writtenBeforeKill)
    }

    /// Every input, fed before or after the kill, has its committed output and it is replay's
    /// verdict. On a real cluster exactly one: the restart fenced the killed transaction and it
    /// was aborted. librdkafka's mock writes no transaction markers, so the killed transaction's
    /// outputs stay visible there: an input may then have a second output, but only when the
    /// killed run wrote the first, and both are replay's verdict.
    @Test func killNineMidTransactionThenRestartEqualsReplay() async throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let run = try await Self.killMidTransactionAndRestart(try ProcessTopics(partitions: 3), in: dir)
        let missing = run.expected.keys.filter { run.outputs[$0] == nil }.sorted()
        #expect(missing.isEmpty, "\(missing.count) of \(run.expected.count) inputs have no committed output, e.g. \(missing.prefix(3))")
        let wrong = run.outputs.filter { id, values in values.contains { $0 != run.expected[id] } }.keys.sorted()
        #expect(wrong.isEmpty, "\(wrong.count) outputs differ from replay's, e.g. \(wrong.first.map { "\($0): \(run.outputs[$0] ?? [])" } ?? "")")
        let duplicated = run.outputs.filter { $0.value.count > 1 }.keys.sorted()
        if ProcessTopics.usesMock {
            let unexplained = duplicated.filter { run.outputs[$0]!.count > 2 || run.writtenBeforeKill[$0] == nil }
            #expect(unexplained.isEmpty, "\(unexplained.count) inputs have outputs the killed transaction does not explain, e.g. \(unexplained.prefix(3))")
        } else {
            #expect(duplicated.isEmpty, "\(duplicated.count) transactions have more than one output, e.g. \(duplicated.prefix(3))")
        }
        // What the killed run wrote, its open transaction included, was computed from committed
        // state: replay's verdicts too.
        let wrongBeforeKill = run.writtenBeforeKill.filter { id, values in values.contains { $0 != run.expected[id] } }.keys.sorted()
        #expect(wrongBeforeKill.isEmpty, "\(wrongBeforeKill.count) outputs of the killed run differ from replay's, e.g. \(wrongBeforeKill.prefix(3))")
    }
}
