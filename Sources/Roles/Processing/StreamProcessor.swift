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

extension RoleRunner where Role == FraudDetectionRole {
    /// `observer` hears of each commit (``RoleMetrics`` is one); `transactionFaults` fails
    /// transaction calls on purpose (tests).
    public convenience init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "polyglot.process"),
                            observer: (any RuntimeObserver)? = nil, transactionFaults: TransactionFaultInjector? = nil) throws(ConfigurationError) {
        try configuration.validate()
        var runtimeConfiguration = RuntimeConfiguration(role: configuration)
        runtimeConfiguration.transactionFaults = transactionFaults
        self.init(role: FraudDetectionRole(configuration: configuration), runtimeConfiguration: runtimeConfiguration,
                  logger: logger, observer: observer)
    }

    public var statistics: ProcessorStatistics {
        ProcessorStatistics(runtime: runtime.statistics, fraud: role.counters)
    }

    /// The transactional id: `<application-id>-<instance id>`.
    public var transactionalID: String { runtime.configuration.transactionalID }

    /// Runs on a dedicated thread until stopped (or, with `untilEnd`, until the end offsets seen
    /// at start are processed), bridged to async.
    public func runOnDedicatedThread() async throws {
        try await runtime.runOnDedicatedThread(threadName: "polyglot-proc")
    }
}
