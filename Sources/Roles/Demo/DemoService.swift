import Synchronization
import Logging
import ServiceLifecycle

/// `polyglot demo` as a service: graceful shutdown (SIGTERM, SIGINT) ends the demo, both roles
/// commit and stop, and the summary is still given.
public final class DemoService: Service, Sendable {
    public let demo: PipelineDemo
    private let progress: @Sendable (DemoProgress) -> Void
    private let onStarted: @Sendable (PipelineDemo.Roles) async throws -> Void
    private let result = ResultBox()

    public init(demo: PipelineDemo, onStarted: @escaping @Sendable (PipelineDemo.Roles) async throws -> Void = { _ in },
                progress: @escaping @Sendable (DemoProgress) -> Void) {
        self.demo = demo
        self.progress = progress
        self.onStarted = onStarted
    }

    /// The summary, once ``run()`` returned.
    public var summary: DemoSummary? { result.value }

    public func run() async throws {
        let demo = self.demo
        let summary = try await withGracefulShutdownHandler {
            try await demo.run(progress: progress, onStarted: onStarted)
        } onGracefulShutdown: {
            demo.requestStop()
        }
        result.value = summary
    }
}


/// The summary, written once by the service's task and read after the group returned.
final class ResultBox: Sendable {
    private let box = Mutex<DemoSummary?>(nil)
    var value: DemoSummary? {
        get { box.withLock { $0 } }
        set { box.withLock { $0 = newValue } }
    }
}
