import Logging
import ServiceLifecycle
import PolyglotSupport
import StateStore
import StreamEngine

/// `polyglot audit` (continuous) as a service, stopping like ``ProcessorService``.
public struct AuditorService: Service {
    public let auditor: ContinuousAuditor

    /// `observer` hears of each commit (``RoleMetrics`` is one).
    public init(configuration: AuditorConfiguration, logger: Logger = Logger(label: "polyglot.audit"),
                observer: (any RuntimeObserver)? = nil) throws(ConfigurationError) {
        auditor = try ContinuousAuditor(configuration: configuration, logger: logger, observer: observer)
        try StateDirectory.prepareForRun(configuration.pipeline.stateDirectory, instanceID: configuration.pipeline.instanceID, logger: logger)
    }

    public func run() async throws {
        try await auditor.runtime.runUntilGracefulShutdown(threadName: "polyglot-audit")
    }
}
