import Logging
import StreamEngine
import Observability

/// A role that runs on the stream runtime under a command: the settings it was made from and
/// the samples `/metrics` shows for it.
public protocol RunnableRole: StreamRole, Sendable {
    associatedtype Configuration: Sendable
    /// The settings the role was made from.
    var configuration: Configuration { get }
    /// The role's own metric samples (the runtime's come from its statistics). Any thread.
    var metricSamples: [MetricSample] { get }
}

/// One role on the stream runtime: the role, its runtime, and what a command needs of them
/// (stop, snapshot, run). `polyglot process` is ``StreamProcessor`` and the continuous
/// `polyglot audit` is ``ContinuousAuditor``: this type with their role.
public final class RoleRunner<Role: RunnableRole>: Sendable {
    public let role: Role
    public let runtime: StreamRuntime<Role>

    /// `observer` hears of each commit (``RoleMetrics`` is one).
    init(role: Role, runtimeConfiguration: RuntimeConfiguration, logger: Logger, observer: (any RuntimeObserver)?) {
        self.role = role
        runtime = StreamRuntime(role: role, configuration: runtimeConfiguration, logger: logger, observer: observer)
        runtime.specializeRecordHandling()
    }

    /// The settings the role was made from.
    public var configuration: Role.Configuration { role.configuration }

    /// Asks the run to finish: it commits (or aborts) the open transaction, leaves the group and
    /// returns. Any thread.
    public func requestStop() { runtime.requestStop() }

    /// What `/metrics` and `/healthz` read: the runtime's statistics and the role's samples.
    /// Any thread; never waits for the run.
    public var snapshot: RoleSnapshot {
        RoleSnapshot(runtime: runtime.statistics, samples: role.metricSamples)
    }

    /// Blocking: the whole run. Call on a dedicated thread.
    public func run() throws {
        try runtime.run()
    }
}

/// `polyglot process`: the fraud role (``FraudDetectionRole``) on the stream runtime, with the
/// processor's settings.
public typealias StreamProcessor = RoleRunner<FraudDetectionRole>

/// `polyglot audit`, continuous: the audit role (``AuditRole``) on the stream runtime, with the
/// auditor's settings.
public typealias ContinuousAuditor = RoleRunner<AuditRole>

extension FraudDetectionRole: RunnableRole {}
extension AuditRole: RunnableRole {}
