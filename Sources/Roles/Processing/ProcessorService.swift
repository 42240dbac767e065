import Logging
import ServiceLifecycle
import PolyglotSupport
import StateStore
import StreamEngine

/// `polyglot process` as a service: graceful shutdown (SIGTERM/SIGINT through the service
/// group) finishes or aborts the open transaction, commits, leaves the group and returns.
public struct ProcessorService: Service {
    public let processor: StreamProcessor

    /// Prepares the state directory (``StateDirectory/prepareForRun(_:instanceID:logger:)``).
    /// `observer` hears of each commit (``RoleMetrics`` is one).
    public init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "polyglot.process"),
                observer: (any RuntimeObserver)? = nil) throws(ConfigurationError) {
        processor = try StreamProcessor(configuration: configuration, logger: logger, observer: observer)
        try StateDirectory.prepareForRun(configuration.stateDirectory, instanceID: configuration.instanceID, logger: logger)
    }

    public func run() async throws {
        try await processor.runtime.runUntilGracefulShutdown(threadName: "polyglot-proc")
    }
}

extension StateDirectory {
    /// Prepares a role's state directory (``prepare(_:instanceID:)``: private, with the instance
    /// id kept in it) and logs its absolute path, so that a run never writes state somewhere
    /// unnoticed.
    public static func prepareForRun(_ directory: String, instanceID: String?, logger: Logger) throws(ConfigurationError) {
        var metadata: Logger.Metadata = ["path": "\(directory)"]
        if let instanceID {
            let preparation: StateDirectory.Preparation
            do {
                preparation = try StateDirectory.prepare(directory, instanceID: instanceID)
            } catch {
                throw ConfigurationError("state directory: \(error.description)")
            }
            if preparation.tightened {
                logger.warning("state directory was readable by other users; made private (0700)", metadata: metadata)
            }
            metadata["instance"] = "\(instanceID)"
        }
        logger.info("state directory", metadata: metadata)
    }
}
