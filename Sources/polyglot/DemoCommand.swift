import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import FraudModel
import KafkaClient
import Observability
import Roles

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "The whole pipeline in one process, with no Kafka installed: generate, produce, process, audit.",
        discussion: """
            Starts the dev broker (librdkafka's mock cluster) in-process, generates transactions \
            (bursts that trip the detector, late and malformed lines), loads them into the input \
            topic as `polyglot produce` does, and runs the processor and the continuous auditor on \
            them. Shows progress on a terminal, then a summary: records, flagged, rejected by code \
            and the audit's findings by kind. Exits 0 when the audit is clean, 1 when it is not. \
            With --keep-running both roles stay up until Ctrl-C.
            """)

    @Option(parsing: .unconditional, help: "Transactions to generate.")
    var records: Int = 20_000

    @Option(parsing: .unconditional, help: "Distinct cards.")
    var cards: Int = 2_000

    @Option(parsing: .unconditional, help: "Partitions of every topic.")
    var partitions: Int = 6

    @Option(parsing: .unconditional, help: "Fraction of malformed lines, 0 to 1.")
    var bad: Double = 0.01

    @Option(parsing: .unconditional, help: "Seed of the generator: the same seed gives the same summary.")
    var seed: UInt64 = 1

    @Option(parsing: .unconditional, help: "How long the auditor waits for an output before its input is missing.")
    var settle: String = "10s"

    @Option(help: "tumbling (epoch-aligned windows) or sliding (the window ending at each record), for the processor and the auditor alike (env POLYGLOT_WINDOW_KIND).")
    var windowKind: String?

    @Flag(help: "Leave the processor, the auditor and their HTTP endpoints running once everything is audited, until Ctrl-C.")
    var keepRunning = false

    @Option(parsing: .unconditional, help: "Port of the processor's /metrics and /healthz; 0 turns them off.")
    var processMetricsPort: Int = ObservabilitySettings.processMetricsPort

    @Option(parsing: .unconditional, help: "Port of the auditor's /metrics and /healthz; 0 turns them off.")
    var auditMetricsPort: Int = ObservabilitySettings.auditMetricsPort

    func run() async throws {
        let settleMs: Int64
        do { settleMs = try Durations.milliseconds(settle, setting: "--settle") } catch { throw ValidationError(error.message) }
        for (name, port) in [("--process-metrics-port", processMetricsPort), ("--audit-metrics-port", auditMetricsPort)] where !(0...65535).contains(port) {
            throw ValidationError("\(name): \(port) is not a port (0 to 65535; 0 turns it off)")
        }
        // A port already taken fails the demo now, before anything starts, naming its flag.
        for (flag, port) in [("--process-metrics-port", processMetricsPort), ("--audit-metrics-port", auditMetricsPort)] {
            do { try PortProbe.checkAvailable(address: ObservabilitySettings.everyInterface, port: port, flag: flag) } catch {
                throw CommandFailure(error.message)
            }
        }
        let digest: String
        do { digest = try EnvironmentFingerprint.runningDigest() } catch { throw CommandFailure("cannot compute the environment fingerprint: \(error)") }
        var options = DemoOptions(records: records, cards: cards, partitions: partitions, badFraction: bad, seed: seed,
                                  keepRunning: keepRunning, settle: .milliseconds(settleMs))
        options.fingerprintDigest = digest
        do {
            let kind = windowKind.map { ($0, Setting.windowKind.flag) }
                ?? ProcessInfo.processInfo.environment[Setting.windowKind.variable].flatMap { $0.isEmpty ? nil : ($0, Setting.windowKind.variable) }
            if let (text, setting) = kind { options.windowKind = try WindowKind(parsing: text, setting: setting) }
        } catch {
            throw ValidationError(error.message)
        }
        let logger = Logger(label: "polyglot.demo")
        let processMetrics = RoleMetrics(role: "process", fingerprintDigest: digest, families: FraudDetectionRole.metricFamilies)
        let auditMetrics = RoleMetrics(role: "audit", fingerprintDigest: digest, families: AuditRole.metricFamilies)
        let demo: PipelineDemo
        do {
            demo = try PipelineDemo(options: options, logger: logger, processorObserver: processMetrics, auditorObserver: auditMetrics)
        } catch {
            throw ValidationError(error.message)
        }
        // Both roles' endpoints, as `process` and `audit` serve them, once the roles exist.
        let endpoints = Mutex<(group: ServiceGroup, task: Task<Void, any Error>)?>(nil)
        let ports = (process: processMetricsPort, audit: auditMetricsPort)
        let onStarted: @Sendable (PipelineDemo.Roles) async throws -> Void = { roles in
            var servers: [ServiceGroupConfiguration.ServiceConfiguration] = []
            var httpLogger = Logger(label: "polyglot.http")
            httpLogger.logLevel = .error
            var listening: [ObservabilityServer] = []
            if ports.process > 0 {
                listening.append(ObservabilityServer(port: ports.process, portFlag: "--process-metrics-port", metrics: processMetrics,
                                                     logger: httpLogger) { roles.processor.snapshot })
            }
            if ports.audit > 0 {
                listening.append(ObservabilityServer(port: ports.audit, portFlag: "--audit-metrics-port", metrics: auditMetrics,
                                                     logger: httpLogger) { roles.auditor.snapshot })
            }
            guard !listening.isEmpty else { return }
            servers = listening.map { .init(service: $0) }
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: servers, logger: httpLogger))
            let task = Task { try await group.run() }
            endpoints.withLock { $0 = (group, task) }
            // The addresses are printed once they answer; a server that failed ends the demo.
            for server in listening where await server.listeningPort() == 0 {
                try await task.value
                return
            }
            StandardError.write("metrics and health: \(listening.map { "http://localhost:\($0.port)/metrics" }.joined(separator: " "))\n")
        }
        let terminal = isatty(2) != 0
        let lastLine = Mutex<ContinuousClock.Instant?>(nil)
        let service = DemoService(demo: demo, onStarted: onStarted, progress: { progress in
            if terminal {
                StandardError.showStatus(progress.line)
            } else {
                // Not a terminal: a line every five seconds rather than a redrawn one.
                let due = lastLine.withLock { last in
                    guard last.map({ ContinuousClock.now - $0 >= .seconds(5) }) ?? true else { return false }
                    last = ContinuousClock.now
                    return true
                }
                if due { StandardError.write(progress.line + "\n") }
            }
        })
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: service, successTerminationBehavior: .gracefullyShutdownGroup)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await failingInOneLine {
            try await group.run()
            if let running = endpoints.withLock({ $0 }) {
                await running.group.triggerGracefulShutdown()
                try await running.task.value
            }
        }
        StandardError.endStatus()
        guard let summary = service.summary else { throw CommandFailure("the demo stopped before its summary") }
        print(summary.text)
        if !summary.isClean { throw ExitCode(1) }
    }
}
