import Crypto
import Foundation
import Logging

/// Counters of one processor run: the runtime's and the fraud role's.
public struct ProcessorStatistics: Sendable, Hashable {
    /// Input and repartition records handled (committed or not).
    public var records = 0
    public var outputs = 0
    public var deadLetters = 0
    public var repartitioned = 0
    public var flagged = 0
    public var late = 0
    public var transactionsCommitted = 0
    public var transactionsAborted = 0
    /// Transaction calls repeated after a retriable error.
    public var transactionRetries = 0
    /// Rewinds to the last commit after an abort.
    public var rewinds = 0
    public var changelogRecords = 0
    public var restoredRecords = 0
    public var restoreSeconds = 0.0
    public var processingSeconds = 0.0
    public var pollSeconds = 0.0
    public var commitSeconds = 0.0
    public var changelogSeconds = 0.0
    public var kafkaCommitSeconds = 0.0
    public var storeCommitSeconds = 0.0
}

/// `polyglot process`: the fraud role (``FraudDetectionRole``) on the stream runtime
/// (``StreamRuntime``), with the processor's settings.
public final class StreamProcessor: Sendable {
    public let configuration: ProcessorConfiguration
    public let role: FraudDetectionRole
    public let runtime: StreamRuntime<FraudDetectionRole>
    private let logger: Logger

    public init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "polyglot.process")) throws(ConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        self.logger = logger
        role = FraudDetectionRole(configuration: configuration)
        let c = configuration
        runtime = StreamRuntime(role: role, configuration: RuntimeConfiguration(
            kafka: c.kafka, groupID: c.applicationID,
            stateDirectory: URL(fileURLWithPath: c.stateDirectory).appendingPathComponent(c.applicationID).path,
            guarantee: c.guarantee, commitInterval: c.commitInterval, untilEnd: c.untilEnd,
            transactionalID: Self.transactionalID(c), connectTimeout: c.connectTimeout), logger: logger)
    }

    /// Asks ``run()`` to finish: it commits (or aborts) the open transaction, leaves the group and
    /// returns. Any thread.
    public func requestStop() { runtime.requestStop() }

    public var statistics: ProcessorStatistics {
        let r = runtime.statistics
        let f = role.counters
        return ProcessorStatistics(
            records: r.records, outputs: f.outputs, deadLetters: f.deadLetters, repartitioned: f.repartitioned,
            flagged: f.flagged, late: f.late,
            transactionsCommitted: r.transactionsCommitted, transactionsAborted: r.transactionsAborted,
            transactionRetries: r.transactionRetries, rewinds: r.rewinds, changelogRecords: r.changelogRecords,
            restoredRecords: r.restoredRecords, restoreSeconds: r.restoreSeconds, processingSeconds: r.processingSeconds,
            pollSeconds: r.pollSeconds, commitSeconds: r.commitSeconds, changelogSeconds: r.changelogSeconds,
            kafkaCommitSeconds: r.kafkaCommitSeconds, storeCommitSeconds: r.storeCommitSeconds)
    }

    /// The transactional id: `<application-id>-<instance id>`.
    public var transactionalID: String { Self.transactionalID(configuration) }

    static func transactionalID(_ c: ProcessorConfiguration) -> String {
        if let id = c.instanceID { return "\(c.applicationID)-\(id)" }
        let path = URL(fileURLWithPath: c.stateDirectory).standardizedFileURL.path
        let digest = SHA256.hash(data: Data("\(ProcessInfo.processInfo.hostName)\n\(path)".utf8))
        return "\(c.applicationID)-" + digest.prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// Runs on a dedicated thread until stopped (or, with `untilEnd`, until the end offsets seen
    /// at start are processed), bridged to async.
    public func runOnDedicatedThread() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let thread = Thread {
                // Named from inside: on Linux a name set before start does not reach the OS thread (15 bytes at most).
                Thread.current.name = "polyglot-proc"
                continuation.resume(with: Result { try self.run() })
            }
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    /// Blocking: the whole run. Call on a dedicated thread.
    public func run() throws {
        try runtime.run()
        let s = statistics
        logger.notice("processed", metadata: [
            "records": "\(s.records)", "outputs": "\(s.outputs)", "deadLetters": "\(s.deadLetters)",
            "repartitioned": "\(s.repartitioned)", "flagged": "\(s.flagged)", "late": "\(s.late)",
        ])
    }
}
