import Core
import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The `polyglot` binary restarted on a state directory whose store file was damaged: the store
/// is rebuilt from the changelog and every verdict stays `replay`'s. (A SIGKILL in the middle
/// of a transaction is not checked on the mock: it keeps the killed transaction's changelog
/// records visible to read_committed readers, so a restore after it may apply them.)
@Suite("Restart", .serialized,
       .enabled(if: PolyglotBinary.url != nil, "the polyglot binary was not found next to the test bundle (set POLYGLOT_BINARY)"))
struct CrashRestartTests {
    static let logger: Logger = {
        var l = Logger(label: "polyglot.test.crash")
        l.logLevel = .error
        return l
    }()

    @Test func restartOnADamagedStoreRebuildsIt() async throws {
        let dir = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let mock = try MockCluster(brokers: 1, logger: Self.logger)
        defer { mock.destroy() }
        let partitions = 3
        let app = "fraud-detector-processor"
        for topic in ["financial-transactions", "enriched-transactions", "financial-transactions.dlq", "\(app)-windows-changelog", "\(app)-repartition"] {
            try mock.createTopic(topic, partitions: partitions)
        }
        // Keyed by card, each card's records in time order, an hour old at most (future skew).
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let start = now - 3_600_000 - now % 3_600_000
        var lines: [String] = []
        for i in 0..<33_000 {
            lines.append(#"{"transactionId":"t-\#(i)","cardId":"c-\#(i % 150)","amount":\#(i % 500).\#(i % 10)5,"timestamp":\#(start + Int64(i) * 100)}"#)
        }
        #expect(try Self.produce(lines[..<30_000], to: mock.bootstrapServers) == 0, "records not delivered")
        let state = dir.appendingPathComponent("state").path
        let arguments = ["process", "--bootstrap-servers", mock.bootstrapServers, "--state-dir", state, "--log-level", "warning", "--metrics-port", "0",
                         "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500", "--until-end"]
        let first = try polyglot(arguments, in: dir)
        #expect(first.status == 0, "\(first.stderr)")

        // A damaged store file is rebuilt from the changelog, not only detected.
        let store = URL(fileURLWithPath: state).appendingPathComponent(app).appendingPathComponent("financial-transactions-0")
            .appendingPathComponent("windows.sqlite")
        // The database's first page and its write-ahead log's header (which SQLite would
        // otherwise read the first page from).
        for file in [store.path, store.path + "-wal"] where FileManager.default.fileExists(atPath: file) {
            let handle = try #require(FileHandle(forWritingAtPath: file))
            try handle.write(contentsOf: Data(repeating: 0x5A, count: 4096))
            try handle.close()
        }

        // More records of the same cards: their verdicts depend on the rebuilt state.
        #expect(try Self.produce(lines[30_000...], to: mock.bootstrapServers) == 0, "records not delivered")
        let second = try polyglot(arguments, in: dir)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(second.stderr.contains("rebuilding from the changelog"), "the damaged store was not rebuilt: \(second.stderr)")

        // What replay says over all the records, and the last output of each transaction.
        let inputFile = dir.appendingPathComponent("in.jsonl")
        try (lines.joined(separator: "\n") + "\n").write(to: inputFile, atomically: true, encoding: .utf8)
        let replayed = try polyglot(["replay", "in.jsonl", "-o", "out.jsonl"], in: dir)
        #expect(replayed.status == 0)
        var expected: [String: String] = [:]
        for line in try String(contentsOf: dir.appendingPathComponent("out.jsonl"), encoding: .utf8).split(separator: "\n") {
            expected[Self.transactionID(line)] = String(line)
        }
        let outputs = try Self.readAll(mock.bootstrapServers, topic: "enriched-transactions", partitions: partitions)
        var last: [String: String] = [:]
        for value in outputs { last[Self.transactionID(value[...])] = value }
        #expect(last.count == expected.count, "transactions with an output: \(last.count) of \(expected.count)")
        let wrong = expected.keys.filter { last[$0] != expected[$0] }.sorted()
        let example = wrong.first.map { "\($0): \(last[$0] ?? "none")" } ?? ""
        #expect(wrong.count == 0, "\(wrong.count) verdicts differ from replay's, e.g. \(example)")
    }

    /// Produces `lines` keyed by their card as Java producers place keys; the count not delivered.
    static func produce(_ lines: ArraySlice<String>, to bootstrap: String) throws -> Int {
        let producer = try KafkaProducer(configuration: KafkaConfiguration(["bootstrap.servers": bootstrap, "partitioner": "murmur2_random",
                                                                            "linger.ms": "5"]), logger: logger)
        for (i, line) in zip(lines.indices, lines) {
            try producer.produce(topic: "financial-transactions", key: Array("c-\(i % 150)".utf8), value: Array(line.utf8), blockIfQueueFull: true)
        }
        try producer.flush(timeout: .seconds(30))
        let failed = producer.deliveryCounts.failed
        producer.close()
        return failed
    }

    static func start(_ arguments: [String], in directory: URL) throws -> Process {
        let process = Process()
        process.executableURL = PolyglotBinary.url!
        process.arguments = arguments
        process.currentDirectoryURL = directory
        process.environment = ["PATH": "/usr/bin:/bin", "HOME": directory.path]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    static func transactionID(_ line: Substring) -> String {
        guard let start = line.range(of: #""transactionId":""#)?.upperBound, let end = line[start...].firstIndex(of: "\"") else { return "" }
        return String(line[start..<end])
    }

    /// Every committed record of a topic, in partition order.
    static func readAll(_ bootstrap: String, topic: String, partitions: Int) throws -> [String] {
        let consumer = try KafkaConsumer(configuration: KafkaConfiguration(["bootstrap.servers": bootstrap, "isolation.level": "read_committed",
                                                                            "enable.partition.eof": "true"]), logger: logger)
        defer { consumer.close() }
        let tps = (0..<Int32(partitions)).map { KafkaTopicPartition(topic, $0) }
        let ends = try consumer.endOffsets(tps, timeout: .seconds(10))
        try consumer.assign(tps.map { KafkaTopicPartitionOffset($0, offset: KafkaOffset.beginning) })
        var values: [String] = []
        let deadline = ContinuousClock.now + .seconds(60)
        while ContinuousClock.now < deadline {
            for m in try consumer.poll(maxMessages: 10_000, timeout: .milliseconds(100)) {
                values.append(String(decoding: m.value ?? [], as: UTF8.self))
            }
            if tps.allSatisfy({ tp in (consumer.endOfPartition(tp) ?? -1) >= (ends[tp] ?? 0) }) { break }
        }
        return values
    }
}
