import Crypto
import Foundation
import Logging
import PolyglotSupport
import StreamEngine
import Observability

/// Counters of one processor run: the runtime's and the fraud role's, each readable by name
/// (`statistics.records`, `statistics.outputs`).
@dynamicMemberLookup
public struct ProcessorStatistics: Sendable, Hashable {
    public var runtime: RuntimeStatistics
    public var fraud: FraudDetectionCounters

    public subscript<T>(dynamicMember key: KeyPath<RuntimeStatistics, T>) -> T { runtime[keyPath: key] }
    public subscript<T>(dynamicMember key: KeyPath<FraudDetectionCounters, T>) -> T { fraud[keyPath: key] }
}

/// `polyglot process`: the fraud role (``FraudDetectionRole``) on the stream runtime
/// (``StreamRuntime``), with the processor's settings.
public final class StreamProcessor: Sendable {
    public let configuration: ProcessorConfiguration
    public let role: FraudDetectionRole
    public let runtime: StreamRuntime<FraudDetectionRole>

    /// `observer` hears of each commit (``RoleMetrics`` is one); `transactionFaults` fails
    /// transaction calls on purpose (tests).
    public init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "polyglot.process"),
                observer: (any RuntimeObserver)? = nil, transactionFaults: TransactionFaultInjector? = nil) throws(ConfigurationError) {
        try configuration.validate()
        self.configuration = configuration
        role = FraudDetectionRole(configuration: configuration)
        var runtimeConfiguration = RuntimeConfiguration(role: configuration)
        runtimeConfiguration.transactionFaults = transactionFaults
        runtime = StreamRuntime(role: role, configuration: runtimeConfiguration, logger: logger, observer: observer)
    }

    /// Asks ``run()`` to finish: it commits (or aborts) the open transaction, leaves the group and
    /// returns. Any thread.
    public func requestStop() { runtime.requestStop() }

    public var statistics: ProcessorStatistics {
        ProcessorStatistics(runtime: runtime.statistics, fraud: role.counters)
    }

    /// What `/metrics` and `/healthz` read: the runtime's statistics and the fraud role's
    /// counters (``FraudDetectionRole/metricFamilies``). Any thread; never waits for the run.
    public var snapshot: RoleSnapshot {
        RoleSnapshot(runtime: runtime.statistics, samples: role.metricSamples)
    }

    /// The transactional id: `<application-id>-<instance id>`.
    public var transactionalID: String { runtime.configuration.transactionalID }

    /// Runs on a dedicated thread until stopped (or, with `untilEnd`, until the end offsets seen
    /// at start are processed), bridged to async.
    public func runOnDedicatedThread() async throws {
        try await runtime.runOnDedicatedThread(threadName: "polyglot-proc")
    }

    /// Blocking: the whole run. Call on a dedicated thread.
    public func run() throws {
        try runtime.run()
    }
}
