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
    /// Another instance for another stream thread of the same run: per-thread state of its
    /// own, what the run reports (counters, samples) shared with this one.
    func makeThreadInstance() -> Self
}

/// One role on the stream runtime: the role, its stream threads, and what a command needs of
/// them (stop, snapshot, run). `polyglot process` is ``StreamProcessor`` and the continuous
/// `polyglot audit` is ``ContinuousAuditor``: this type with their role.
public final class RoleRunner<Role: RunnableRole>: Sendable {
    /// The role's instance on the first stream thread; the others share what it reports.
    public var role: Role { runtime.role }
    /// The run: ``RuntimeConfiguration/streamThreads`` stream threads, one role instance each.
    public let runtime: StreamThreadGroup<Role>

    /// `observer` hears of each commit (``RoleMetrics`` is one), from every stream thread.
    init(role: Role, runtimeConfiguration: RuntimeConfiguration, logger: Logger, observer: (any RuntimeObserver)?) {
        let roles = [role] + (1..<max(1, runtimeConfiguration.streamThreads)).map { _ in role.makeThreadInstance() }
        runtime = StreamThreadGroup(roles: roles, configuration: runtimeConfiguration, logger: logger, observer: observer)
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

    /// Blocking: the whole run, the first stream thread on the calling thread (named
    /// `threadName`, the others after it). Call on a dedicated thread.
    public func run(threadName: String = "polyglot-run") throws {
        try runtime.run(threadName: threadName)
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
