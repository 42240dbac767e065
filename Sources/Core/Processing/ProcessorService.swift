import Logging
import ServiceLifecycle

/// `polyglot process` as a service: graceful shutdown (SIGTERM/SIGINT through the service
/// group) finishes or aborts the open transaction, commits, leaves the group and returns.
public struct ProcessorService: Service {
    public let processor: StreamProcessor

    public init(configuration: ProcessorConfiguration, logger: Logger = Logger(label: "polyglot.process")) throws(ConfigurationError) {
        processor = try StreamProcessor(configuration: configuration, logger: logger)
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
