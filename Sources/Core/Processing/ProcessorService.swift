import Logging
import ServiceLifecycle

/// `polyglot process` as a service: graceful shutdown (SIGTERM/SIGINT through the service
/// group) finishes or aborts the open transaction, commits, leaves the group and returns.
public struct ProcessorService: Service {
    public let processor: StreamProcessor

    /// Prepares the state directory (``StateDirectory/prepare(_:instanceID:)``: private, with
    /// the instance id kept in it) and logs its absolute path, so that a run never writes state
    /// somewhere unnoticed.
    public init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "polyglot.process")) throws(ConfigurationError) {
        processor = try StreamProcessor(configuration: configuration, logger: logger)
        var metadata: Logger.Metadata = ["path": "\(configuration.stateDirectory)"]
        if let instanceID = configuration.instanceID {
            let preparation: StateDirectory.Preparation
            do {
                preparation = try StateDirectory.prepare(configuration.stateDirectory, instanceID: instanceID)
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

    public func run() async throws {
        let processor = self.processor
        try await withGracefulShutdownHandler {
            try await processor.runOnDedicatedThread()
        } onGracefulShutdown: {
            processor.requestStop()
        }
    }
}
