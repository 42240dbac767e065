import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#endif
import KafkaClient
import StreamEngine

/// The HTTP endpoints of a long-running role, as a service beside it in its service group:
/// `GET /metrics` (Prometheus text) and `GET /healthz` (200 while ``RoleHealth`` says healthy,
/// else 503, each with one line of JSON).
///
/// Both read a snapshot per request through `snapshot` (the runtime's statistics behind their
/// lock and the role's counters): nothing runs between requests, and the role's thread is never
/// waited for.
public struct ObservabilityServer: Service {
    /// The address of every IPv4 interface: the endpoints' default, for a load balancer's checks.
    public static let everyInterface = "0.0.0.0"

    public let host: String
    /// 0 picks a free port (tests): ``listeningPort()`` says which.
    public let port: Int
    public let metrics: RoleMetrics
    public let policy: HealthPolicy
    /// The flag that chose the port, named when it cannot be listened on.
    public let portFlag: String
    private let snapshot: @Sendable () -> RoleSnapshot
    private let logger: Logger
    private let listening = ListeningPort()

    /// - Parameters:
    ///   - host: the address to listen on; every interface by default, for a load balancer's checks.
    ///   - portFlag: the flag that chose `port`, for the message when it is taken.
    ///   - snapshot: called per request, on any thread; must not block.
    public init(host: String = ObservabilityServer.everyInterface, port: Int, portFlag: String = "--metrics-port",
                metrics: RoleMetrics, policy: HealthPolicy = HealthPolicy(),
                logger: Logger, snapshot: @escaping @Sendable () -> RoleSnapshot) {
        self.host = host
        self.port = port
        self.portFlag = portFlag
        self.metrics = metrics
        self.policy = policy
        self.logger = logger
        self.snapshot = snapshot
    }

    /// Fails, in one line naming the port and its flag, when the port cannot be listened on:
    /// called before the role starts, so a taken port stops nothing half-started.
    public func checkAvailable() throws(ObservabilityError) {
        try PortProbe.checkAvailable(address: host, port: port, flag: portFlag)
    }

    /// The port once the server listens (waits for it); 0 when it could not listen.
    public func listeningPort() async -> Int { await listening.value() }

    public func run() async throws {
        let router = Router()
        let metrics = self.metrics, snapshot = self.snapshot, policy = self.policy
        router.get("metrics") { _, _ in
            let text = metrics.exposition(of: snapshot())
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: ResponseBody(byteBuffer: ByteBufferAllocator().buffer(bytes: text)))
        }
        router.get("healthz") { _, _ in
            let health = RoleHealth.evaluate(snapshot().runtime, policy: policy)
            return Response(status: health.isHealthy ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                            body: ResponseBody(byteBuffer: ByteBufferAllocator().buffer(string: health.json)))
        }
        do { try checkAvailable() } catch {
            self.listening.set(0)
            throw error
        }
        let listening = self.listening, logger = self.logger, host = self.host
        // The server's own lines about a failed bind would repeat the one-line failure below.
        var serverLogger = logger
        serverLogger.logLevel = .critical
        let app = Application(
            router: router,
            configuration: ApplicationConfiguration(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? 0
                logger.info("serving /metrics and /healthz", metadata: ["address": "\(host)", "port": .number(port)])
                listening.set(port)
            },
            logger: serverLogger)
        do {
            try await app.run()
        } catch {
            listening.set(0)
            // Taken between the check and the bind.
            if "\(error)".contains("Address already in use") {
                throw PortProbe.failure(address: host, port: port, flag: portFlag, errno: EADDRINUSE)
            }
            throw ObservabilityError(.listenFailed, "cannot serve /metrics and /healthz on \(host):\(port): \(error)")
        }
    }
}

/// A failure of the observability endpoints.
public struct ObservabilityError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case listenFailed = "listen_failed"
    }

    public let code: Code
    public let message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// The bound port, set once; readers wait for it.
private final class ListeningPort: Sendable {
    private let state = Mutex<(port: Int?, waiters: [CheckedContinuation<Int, Never>])>((nil, []))

    func set(_ port: Int) {
        let waiters = state.withLock { s in
            s.port = port
            defer { s.waiters = [] }
            return s.waiters
        }
        for w in waiters { w.resume(returning: port) }
    }

    func value() async -> Int {
        await withCheckedContinuation { continuation in
            let port = state.withLock { s -> Int? in
                if let port = s.port { return port }
                s.waiters.append(continuation)
                return nil
            }
            if let port { continuation.resume(returning: port) }
        }
    }
}
