import Foundation
import Logging
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif
@testable import PolyglotSupport
@testable import KafkaClient
@testable import Roles

/// The processor's topics for one test, with unique names: on a fresh in-process mock cluster,
/// or on the real cluster `POLYGLOT_TEST_BOOTSTRAP` names (created there through the admin API).
final class ProcessTopics: Sendable {
    static let externalBootstrap: String? = ProcessInfo.processInfo.environment["POLYGLOT_TEST_BOOTSTRAP"].flatMap { $0.isEmpty ? nil : $0 }
    static var usesMock: Bool { externalBootstrap == nil }

    static let logger: Logger = {
        var l = Logger(label: "polyglot.test.cli")
        l.logLevel = .error
        return l
    }()

    let mock: MockCluster?
    let bootstrap: String
    let partitions: Int
    let applicationID: String
    let input: String
    let output: String
    let deadLetters: String

    init(partitions: Int) throws {
        if let external = Self.externalBootstrap {
            mock = nil
            bootstrap = external
        } else {
            let cluster = try MockCluster(brokers: 1, logger: Self.logger)
            mock = cluster
            bootstrap = cluster.bootstrapServers
        }
        self.partitions = partitions
        let id = UUID().uuidString.prefix(8).lowercased()
        applicationID = "app-\(id)"
        input = "in-\(id)"
        output = "out-\(id)"
        deadLetters = "dlq-\(id)"
        let topics = [input, output, deadLetters, "\(applicationID)-windows-changelog", "\(applicationID)-repartition"]
        if let mock {
            for topic in topics { try mock.createTopic(topic, partitions: partitions) }
        } else {
            let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrap), logger: Self.logger)
            defer { admin.close() }
            try admin.createTopics(topics.map { KafkaTopicSpecification(name: $0, partitions: partitions) })
        }
    }

    deinit {
        mock?.destroy()
        // On a real cluster the topics go when the test is done (the mock goes whole).
        if mock == nil, let admin = try? KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrap), logger: Self.logger) {
            try? admin.deleteTopics([input, output, deadLetters, "\(applicationID)-windows-changelog", "\(applicationID)-repartition"]
                                    + extraTopics.value.withLock { $0 })
            admin.close()
        }
    }

    /// Topics created besides the processor's, deleted with them on a real cluster.
    private let extraTopics = Locked<[String]>([])

    /// Creates more topics (an auditor's) with this many partitions.
    func createTopics(_ names: [String]) throws {
        if let mock {
            for name in names { try mock.createTopic(name, partitions: partitions) }
        } else {
            let admin = try KafkaAdmin(configuration: KafkaConfiguration(bootstrapServers: bootstrap), logger: Self.logger)
            defer { admin.close() }
            try admin.createTopics(names.map { KafkaTopicSpecification(name: $0, partitions: partitions) })
            extraTopics.value.withLock { $0 += names }
        }
    }

    /// `process` flags naming the cluster and these topics, with a group that forms quickly and
    /// no HTTP endpoints (tests run processes side by side).
    func processArguments(stateDirectory: String) -> [String] {
        ["process", "--bootstrap-servers", bootstrap, "--application-id", applicationID, "--input-topic", input,
         "--output-topic", output, "--dlq-topic", deadLetters, "--state-dir", stateDirectory, "--log-level", "notice",
         "--metrics-port", "0",
         "-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500"]
    }

    /// Loads `lines` into the input topic, each on its card's partition.
    func produce(_ lines: ArraySlice<String>, in directory: URL) async throws {
        let file = directory.appendingPathComponent("batch-\(UUID().uuidString.prefix(8)).jsonl")
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let loader = InputLoader(configuration: InputLoaderConfiguration(
            input: file.path, kafka: KafkaConfiguration(["bootstrap.servers": bootstrap, "linger.ms": "5"]), topic: input))
        let summary = try await loader.runOnDedicatedThread()
        #expect(summary.records == lines.count)
    }

    /// Every committed (read_committed) value of the output topic.
    func committedOutputs() async throws -> [String] {
        try await readAll(output).map { String(decoding: $0.value ?? [], as: UTF8.self) }
    }

    /// Every record of `topic` to its end offsets: committed ones only, or all that were written.
    func readAll(_ topic: String, committedOnly: Bool = true) async throws -> [KafkaMessage] {
        let bootstrap = self.bootstrap, partitions = self.partitions
        return try await onOwnThread {
            let consumer = try KafkaConsumer(configuration: KafkaConfiguration([
                "bootstrap.servers": bootstrap, "isolation.level": committedOnly ? "read_committed" : "read_uncommitted",
                "enable.partition.eof": "true",
            ]), logger: Self.logger)
            defer { consumer.close() }
            let tps = (0..<Int32(partitions)).map { KafkaTopicPartition(topic, $0) }
            let ends = try consumer.endOffsets(tps, timeout: .seconds(10))
            try consumer.assign(tps.map { KafkaTopicPartitionOffset($0, offset: KafkaOffset.beginning) })
            var messages: [KafkaMessage] = []
            let deadline = ContinuousClock.now + .seconds(60)
            while !tps.allSatisfy({ (consumer.endOfPartition($0) ?? -1) >= (ends[$0] ?? 0) }) {
                guard ContinuousClock.now < deadline else {
                    Issue.record("\(topic) was not read to its end within 60 s")
                    break
                }
                messages += try consumer.poll(maxMessages: 10_000, timeout: .milliseconds(100))
            }
            return messages
        }
    }

    /// A reader of the output topic as records arrive (committed or not).
    func outputWatcher() throws -> OutputWatcher {
        try OutputWatcher(bootstrap: bootstrap, topic: output, partitions: partitions)
    }
}

/// Counts the records arriving on a topic, waiting for them in Kafka polls.
final class OutputWatcher: Sendable {
    private let consumer: KafkaConsumer
    private let seen = Locked(0)

    init(bootstrap: String, topic: String, partitions: Int) throws {
        consumer = try KafkaConsumer(configuration: KafkaConfiguration([
            "bootstrap.servers": bootstrap, "isolation.level": "read_uncommitted", "fetch.wait.max.ms": "50",
        ]), logger: ProcessTopics.logger)
        try consumer.assign((0..<Int32(partitions)).map { KafkaTopicPartitionOffset(KafkaTopicPartition(topic, $0), offset: KafkaOffset.beginning) })
    }

    /// Records seen so far.
    var count: Int { seen.value.withLock { $0 } }

    /// Polls until at least `count` records arrived; false when `deadline` passes first or
    /// `isAlive` says the writer is gone.
    func waitFor(_ count: Int, within timeout: Duration, isAlive: @escaping @Sendable () -> Bool) async throws -> Bool {
        let consumer = self.consumer, seen = self.seen
        return try await onOwnThread {
            let deadline = ContinuousClock.now + timeout
            while seen.value.withLock({ $0 }) < count {
                guard ContinuousClock.now < deadline, isAlive() else { return false }
                let n = try consumer.poll(maxMessages: 10_000, timeout: .milliseconds(100)).count
                seen.value.withLock { $0 += n }
            }
            return true
        }
    }

    func close() { consumer.close() }
}

/// A `polyglot` process running in the background, its standard output and error kept in files.
///
/// `@unchecked Sendable`: `Process` is not marked Sendable, but it is set up completely before
/// `run()` and only read afterwards (its termination fields once the handler has run); the exit
/// state is behind a mutex.
final class BackgroundPolyglot: @unchecked Sendable {
    private let process: Process
    let errorLog: URL
    let outputLog: URL
    private let exit = Locked<(exited: Bool, waiters: [UUID: CheckedContinuation<Void, Never>])>((false, [:]))

    init(_ arguments: [String], in directory: URL) throws {
        errorLog = directory.appendingPathComponent("polyglot-\(UUID().uuidString.prefix(8)).stderr")
        outputLog = directory.appendingPathComponent("polyglot-\(UUID().uuidString.prefix(8)).stdout")
        _ = FileManager.default.createFile(atPath: errorLog.path, contents: nil)
        _ = FileManager.default.createFile(atPath: outputLog.path, contents: nil)
        process = Process()
        process.executableURL = try PolyglotBinary.required()
        process.arguments = arguments
        process.currentDirectoryURL = directory
        process.environment = ["PATH": "/usr/bin:/bin", "HOME": directory.path]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: outputLog)
        process.standardError = try FileHandle(forWritingTo: errorLog)
        let exit = self.exit
        process.terminationHandler = { _ in
            let waiters = exit.value.withLock { state in
                state.exited = true
                defer { state.waiters.removeAll() }
                return state.waiters.values
            }
            for w in waiters { w.resume() }
        }
        try process.run()
    }

    /// A test that stops early leaves no process behind.
    deinit { if isRunning { send(SIGKILL) } }

    var isRunning: Bool { !exit.value.withLock { $0.exited } }
    var stderr: String { (try? String(contentsOf: errorLog, encoding: .utf8)) ?? "" }
    var stdout: String { (try? String(contentsOf: outputLog, encoding: .utf8)) ?? "" }
    /// The exit status, or the signal that ended it; meaningful once it exited.
    var status: Int32 { process.terminationStatus }
    var exitedNormally: Bool { process.terminationReason == .exit }

    func send(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Waits until the process exits; false if `timeout` passes first.
    func waitForExit(within timeout: Duration) async -> Bool {
        let exit = self.exit
        let id = UUID()
        let (seconds, attoseconds) = timeout.components
        let deadline = DispatchTime.now() + .milliseconds(Int(seconds * 1000 + attoseconds / 1_000_000_000_000_000))
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = exit.value.withLock { state -> Bool in
                if !state.exited { state.waiters[id] = continuation }
                return state.exited
            }
            if done {
                continuation.resume()
                return
            }
            // Whichever comes first, the exit or the deadline, resumes the wait.
            DispatchQueue.global().asyncAfter(deadline: deadline) {
                exit.value.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
            }
        }
        return !isRunning
    }
}

/// A mutex that closures can share.
final class Locked<Value: Sendable>: Sendable {
    let value: Mutex<Value>
    init(_ value: Value) { self.value = Mutex(value) }
}

/// Runs blocking client calls off the cooperative pool.
func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try body() }) }
        thread.start()
    }
}

/// Fraud-test records: `count` transactions over `cards` cards, each card's in time order,
/// event times from the start of the hour before the current one (the processor rejects an
/// event time more than an hour past the record's Kafka timestamp).
func transactionLines(count: Int, cards: Int) -> [String] {
    let hour: Int64 = 3_600_000
    let start = (Int64(Date().timeIntervalSince1970 * 1000) / hour - 1) * hour
    return (0..<count).map { i in
        #"{"transactionId":"t-\#(i)","cardId":"c-\#(i % cards)","amount":\#(i % 500).\#(i % 10)5,"timestamp":\#(start + Int64(i) * 100)}"#
    }
}

/// `replay`'s output line per transaction id for `lines`, from the binary.
func replayVerdicts(_ lines: [String], in directory: URL) throws -> [String: String] {
    let input = directory.appendingPathComponent("replay-in.jsonl")
    try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: input)
    let replayed = try polyglot(["replay", "replay-in.jsonl", "-o", "replay-out.jsonl"], in: directory)
    #expect(replayed.status == 0, "\(replayed.stderr)")
    var expected: [String: String] = [:]
    for line in try String(contentsOf: directory.appendingPathComponent("replay-out.jsonl"), encoding: .utf8).split(separator: "\n") {
        expected[transactionID(line)] = String(line)
    }
    return expected
}

func transactionID(_ line: Substring) -> String {
    guard let start = line.range(of: #""transactionId":""#)?.upperBound, let end = line[start...].firstIndex(of: "\"") else { return "" }
    return String(line[start..<end])
}

/// A number in the processor's `stopped` log line (a JSON field, `"aborts":"0"`, or text,
/// `aborts=0`), nil when it is not there.
func stoppedLineValue(_ name: String, in log: String) -> Int? {
    guard let line = log.split(separator: "\n").last(where: { $0.contains("stopped") }) else { return nil }
    for marker in ["\"\(name)\":\"", "\"\(name)\":", " \(name)="] {
        if let range = line.range(of: marker), let value = Int(line[range.upperBound...].prefix { $0.isNumber }) { return value }
    }
    return nil
}
