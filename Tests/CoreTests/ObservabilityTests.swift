import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif
@testable import PolyglotSupport
@testable import FraudModel
@testable import KafkaClient
@testable import StreamEngine
@testable import Observability
@testable import Roles

/// `/metrics`, `/healthz`, the broker-state tracker and JSON log lines.
@Suite("Observability")
struct ObservabilityTests {
    // MARK: Health

    @Test func healthFollowsTheRuntimeState() throws {
        let now = ContinuousClock.now
        var s = RuntimeStatistics()
        #expect(RoleHealth.evaluate(s, now: now).state == .starting)
        s.phase = .running
        s.lastPollAt = now
        #expect(RoleHealth.evaluate(s, now: now).state == .waitingForAssignment)
        s.assignedPartitions = 4
        s.tasks = 1
        s.restoreRemaining = 1_200
        let restoring = RoleHealth.evaluate(s, now: now)
        #expect(restoring.state == .restoring)
        #expect(restoring.reason == "restoring 3 of 4 partitions, 1200 changelog records left")
        s.tasks = 4
        #expect(RoleHealth.evaluate(s, now: now).isHealthy)

        let policy = HealthPolicy(brokerUnreachableLimit: .seconds(10))
        s.broker.unreachableSince = now - .seconds(5)
        #expect(RoleHealth.evaluate(s, now: now, policy: policy).isHealthy, "a short outage is tolerated")
        s.broker.unreachableSince = now - .seconds(11)
        s.broker.lastError = "_ALL_BROKERS_DOWN: 1/1 brokers are down"
        let down = RoleHealth.evaluate(s, now: now, policy: policy)
        #expect(down.state == .brokerUnreachable)
        #expect(down.reason == "broker unreachable for 11s (_ALL_BROKERS_DOWN: 1/1 brokers are down)")
        s.broker.unreachableSince = nil

        s.consecutiveAborts = 2
        #expect(RoleHealth.evaluate(s, now: now).isHealthy, "one retried abort is no reason")
        s.consecutiveAborts = 3
        #expect(RoleHealth.evaluate(s, now: now).state == .commitFailing)
        s.consecutiveAborts = 0

        s.lastPollAt = now - .seconds(31)
        #expect(RoleHealth.evaluate(s, now: now).state == .stalled)
        s.phase = .stopping
        #expect(RoleHealth.evaluate(s, now: now).state == .stopping)
    }

    /// A restore that stopped advancing: `/healthz` names its changelog partition, position,
    /// end and why; the metrics carry each restoring partition's remaining records and stall.
    @Test func aStalledRestoreIsNamedInHealthAndMetrics() throws {
        var s = RuntimeStatistics()
        s.phase = .running
        s.lastPollAt = .now
        s.assignedPartitions = 2
        s.tasks = 1
        s.restoreRemaining = 9
        s.restores = [PartitionRestore(changelog: KafkaTopicPartition("app-windows-changelog", 1), position: 41, end: 50,
                                       stall: RestoreStall(seconds: 31, reason: .recordsNotDelivered(highWatermark: 53)))]
        s.consumerLag = [KafkaTopicPartition("in", 1): 7, KafkaTopicPartition("app-repartition", 1): 0]
        let health = RoleHealth.evaluate(s)
        #expect(health.state == .restoring)
        #expect(health.reason == "restoring 1 of 2 partitions, 9 changelog records left; app-windows-changelog/1 at 41 of 50, no progress for 31s: no record arrives at the position though the changelog's readable end is past it (high watermark 53): records missing or not deliverable")
        let metrics = RoleMetrics(role: "test", fingerprintDigest: "abcd", families: [])
        let text = try PrometheusText(metrics.exposition(of: RoleSnapshot(runtime: s, samples: [])))
        let labels = ["topic": "app-windows-changelog", "partition": "1"]
        #expect(text["polyglot_restore_partition_remaining_records", labels] == 9)
        #expect(text["polyglot_restore_stalled_seconds", labels] == 31)
        #expect(text["polyglot_consumer_lag_records", ["topic": "in", "partition": "1"]] == 7)
        #expect(text["polyglot_consumer_lag_records", ["topic": "app-repartition", "partition": "1"]] == 0)
    }

    @Test func healthBodyIsOneLineOfJSON() throws {
        for health in [RoleHealth(state: .running, reason: nil),
                       RoleHealth(state: .brokerUnreachable, reason: "broker \"1\" unreachable\nfor 3s")] {
            let body = health.json
            #expect(body.hasSuffix("\n"))
            #expect(body.dropLast().contains("\n") == false)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: String])
            #expect(object["status"] == (health.isHealthy ? "ok" : "unavailable"))
            #expect(object["state"] == health.state.rawValue)
            #expect(object["reason"] == health.reason)
        }
    }

    // MARK: Metrics

    @Test func metricsMirrorTheSnapshotsInPrometheusText() throws {
        let metrics = RoleMetrics(role: "test", fingerprintDigest: "abcd", families: [
            .counter("polyglot_audit_findings_total", help: "Findings by kind."),
        ])
        var s = RuntimeStatistics()
        s.phase = .running
        s.records = 10
        s.recordsBySource = ["input": 10, "repartition": 0]
        s.transactionsCommitted = 2
        s.assignedPartitions = 2
        s.tasks = 2
        s.lastPollAt = .now
        s.consumerLag = [KafkaTopicPartition("in", 0): 5, KafkaTopicPartition("in", 1): 0]
        s.storeBytes = [0: 4096, 1: 8192]
        metrics.commitEnded(CommitTiming(total: .milliseconds(30), transaction: .milliseconds(20)))
        var samples = [MetricSample("polyglot_audit_findings_total", labels: ["kind": "missing"], value: 3)]
        var text = try PrometheusText(metrics.exposition(of: RoleSnapshot(runtime: s, samples: samples)))
        #expect(text["polyglot_records_in_total", ["source": "input"]] == 10)
        #expect(text["polyglot_records_in_total", ["source": "repartition"]] == 0)
        #expect(text["polyglot_records_in_total"] == nil, "no series without its source")
        #expect(text["polyglot_transactions_committed_total"] == 2)
        #expect(text["polyglot_assigned_partitions"] == 2)
        #expect(text["polyglot_healthy"] == 1)
        #expect(text["polyglot_consumer_lag_records", ["topic": "in", "partition": "0"]] == 5)
        #expect(text["polyglot_store_size_bytes", ["partition": "1"]] == 8192)
        #expect(text["polyglot_audit_findings_total", ["kind": "missing"]] == 3)
        #expect(text["polyglot_build_info", ["version": ProductVersion.version, "fingerprint": "abcd", "role": "test"]] == 1)
        #expect(text["polyglot_commit_duration_seconds_count"] == 1)
        #expect(text["polyglot_transaction_duration_seconds_bucket", ["le": "0.025"]] == 1)
        #expect(text.types["polyglot_records_in_total"] == "counter")
        #expect(text.types["polyglot_commit_duration_seconds"] == "histogram")
        #expect(text.types["polyglot_record_latency_seconds"] == "histogram")
        #expect(text["polyglot_record_latency_seconds_count"] == 0)
        #expect(text.help["polyglot_audit_findings_total"] == "Findings by kind.")

        // The next scrape: counters move by what the snapshots moved; a revoked partition's
        // series go.
        s.records = 25
        s.recordsBySource = ["input": 20, "repartition": 5]
        s.consumerLag = [KafkaTopicPartition("in", 0): 1]
        s.storeBytes = [0: 4096]
        samples = [MetricSample("polyglot_audit_findings_total", labels: ["kind": "missing"], value: 4),
                   MetricSample("polyglot_audit_findings_total", labels: ["kind": "drift"], value: 1)]
        text = try PrometheusText(metrics.exposition(of: RoleSnapshot(runtime: s, samples: samples)))
        #expect(text["polyglot_records_in_total", ["source": "input"]] == 20)
        #expect(text["polyglot_records_in_total", ["source": "repartition"]] == 5)
        #expect(text.sum("polyglot_records_in_total") == 25)
        #expect(text["polyglot_consumer_lag_records", ["topic": "in", "partition": "0"]] == 1)
        #expect(text["polyglot_consumer_lag_records", ["topic": "in", "partition": "1"]] == nil)
        #expect(text["polyglot_store_size_bytes", ["partition": "1"]] == nil)
        #expect(text["polyglot_audit_findings_total", ["kind": "missing"]] == 4)
        #expect(text["polyglot_audit_findings_total", ["kind": "drift"]] == 1)
    }

    @Test func fraudRoleSamplesEveryRejectionCode() throws {
        let role = FraudDetectionRole(configuration: ProcessorConfiguration(
            kafka: KafkaConfiguration(), stateDirectory: "/nonexistent", fingerprintDigest: "ab"))
        role.cycle.outputs = 7
        role.cycle.deadLetters = 2
        role.cycle.deadLettersByCode = [.invalidJSON: 2]
        role.didHandleBatch()
        let samples = role.metricSamples
        #expect(samples.contains(MetricSample("polyglot_records_out_total", value: 7)))
        #expect(samples.contains(MetricSample("polyglot_records_dead_lettered_total", labels: ["code": "invalid_json"], value: 2)))
        #expect(samples.filter { $0.name == "polyglot_records_dead_lettered_total" }.count == RejectionCode.allCases.count)
        #expect(Set(samples.map(\.name)).isSubset(of: Set(FraudDetectionRole.metricFamilies.map(\.name))))
    }

    // MARK: Broker state

    @Test func brokerStateFollowsErrorsAndStatistics() throws {
        let tracker = KafkaBrokerState()
        #expect(tracker.reachability.unreachableSince == nil)
        let t0 = ContinuousClock.now
        tracker.recordError(name: "_TRANSPORT", reason: "connection refused", now: t0)
        #expect(tracker.reachability.unreachableSince == nil, "one failed connection is not an outage")
        tracker.recordError(name: "_ALL_BROKERS_DOWN", reason: "1/1 brokers are down", now: t0)
        #expect(tracker.reachability.unreachableSince == t0)
        #expect(tracker.reachability.lastError == "_ALL_BROKERS_DOWN: 1/1 brokers are down")
        let down = #"{"name":"c","brokers":{"127.0.0.1:9092/bootstrap":{"state":"CONNECT","source":"configured"},"GroupCoordinator":{"state":"UP","source":"logical"},":0/internal":{"state":"UP","source":"internal"}},"topics":{}}"#
        down.utf8CString.withUnsafeBytes { tracker.recordStatistics(UnsafeRawBufferPointer(rebasing: $0.dropLast()), now: t0 + .seconds(1)) }
        #expect(tracker.reachability.unreachableSince == t0, "internal and logical brokers are not connections")
        let up = #"{"brokers":{"127.0.0.1:9092/1":{"state":"UP","source":"learned"},"127.0.0.1:9092/bootstrap":{"state":"INIT","source":"configured"}}}"#
        up.utf8CString.withUnsafeBytes { tracker.recordStatistics(UnsafeRawBufferPointer(rebasing: $0.dropLast())) }
        #expect(tracker.reachability.unreachableSince == nil)
        #expect(tracker.reachability.brokersUp == 1)
        #expect(tracker.reachability.brokers == 2)
    }

    // MARK: Settings

    @Test func settingsResolveFlagOverEnvironmentOverDefault() throws {
        var settings = ObservabilitySettings()
        var c = try settings.resolve(environment: [:], defaultMetricsPort: 9464)
        #expect(c.metricsPort == 9464)
        #expect(c.logLevel == .info)
        #expect(c.health.brokerUnreachableLimit == .seconds(30))
        let environment = ["POLYGLOT_METRICS_PORT": "9500", "POLYGLOT_LOG_LEVEL": "debug", "POLYGLOT_HEALTH_BROKER_TIMEOUT": "5s"]
        c = try settings.resolve(environment: environment, defaultMetricsPort: 9465)
        #expect(c.metricsPort == 9500)
        #expect(c.logLevel == .debug)
        #expect(c.health.brokerUnreachableLimit == .seconds(5))
        settings.metricsPort = "0"
        settings.logLevel = "warning"
        c = try settings.resolve(environment: environment, defaultMetricsPort: 9465)
        #expect(c.metricsPort == nil, "0 turns the endpoints off")
        #expect(c.logLevel == .warning)

        settings.metricsPort = "70000"
        #expect(throws: ConfigurationError("--metrics-port: '70000' is not a port (0 to 65535; 0 turns /metrics and /healthz off)")) {
            try settings.resolve(environment: [:], defaultMetricsPort: 9464)
        }
        #expect(throws: ConfigurationError("POLYGLOT_LOG_LEVEL: unknown level 'loud' (trace, debug, info, notice, warning, error, critical)")) {
            try ObservabilitySettings().resolveLogLevel(environment: ["POLYGLOT_LOG_LEVEL": "loud"])
        }
    }

    @Test func settingsFileHoldsObservabilitySettings() throws {
        let directory = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("polyglot.env")
        try "POLYGLOT_METRICS_PORT=9600\nPOLYGLOT_LOG_LEVEL=error\n".write(to: file, atomically: true, encoding: .utf8)
        var processor = ProcessorSettings()
        processor.configFile = file.path
        let layered = try SettingsLayers(configFile: processor.configFile, environment: ["POLYGLOT_LOG_LEVEL": "notice"]).environment
        let c = try ObservabilitySettings().resolve(environment: layered, defaultMetricsPort: 9464)
        #expect(c.metricsPort == 9600)
        #expect(c.logLevel == .notice, "the environment wins over the file")
    }

    // MARK: Logs

    @Test func jsonLogLinesParse() throws {
        let lines = Mutex<[String]>([])
        var logger = Logger(label: "polyglot.test") { label in
            JSONLogHandler(label: label, level: .debug) { bytes in
                lines.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) }
            }
        }
        logger[metadataKey: "instance"] = "i-1"
        logger.info("task started", metadata: ["partition": "3", "message": "collides", "odd": "quote \" newline \n tab \t é"])
        logger.debug("nested", metadata: ["list": ["a", "b"], "map": ["k": "v"]])
        logger.trace("below the level")
        let written = lines.withLock { $0 }
        #expect(written.count == 2)
        for line in written {
            #expect(line.hasSuffix("\n"))
            #expect(!line.dropLast().contains("\n"))
        }
        let first = try #require(try JSONSerialization.jsonObject(with: Data(written[0].utf8)) as? [String: Any])
        #expect(first["level"] as? String == "info")
        #expect(first["logger"] as? String == "polyglot.test")
        #expect(first["message"] as? String == "task started")
        #expect(first["partition"] as? String == "3")
        #expect(first["instance"] as? String == "i-1")
        #expect(first["_message"] as? String == "collides")
        #expect(first["odd"] as? String == "quote \" newline \n tab \t é")
        let time = try #require(first["time"] as? String)
        #expect(time.count == 24 && time.hasSuffix("Z"), "\(time)")
        #expect(ISO8601DateFormatter.withFractionalSeconds.date(from: time) != nil)
        let second = try #require(try JSONSerialization.jsonObject(with: Data(written[1].utf8)) as? [String: Any])
        #expect(second["list"] as? [String] == ["a", "b"])
        #expect(second["map"] as? [String: String] == ["k": "v"])
    }
}

extension ISO8601DateFormatter {
    static var withFractionalSeconds: ISO8601DateFormatter {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }
}

/// The HTTP endpoints against a processor on the dev broker: counters match the run, and
/// `/healthz` turns 503 while restoring and while the broker is down, 200 after.
@Suite("Observability on the broker", .brokerHeavy)
struct ObservabilityBrokerTests {
    let logger: Logger = {
        var l = Logger(label: "polyglot.test.observability")
        l.logLevel = .critical
        return l
    }()

    @Test(.enabled(if: TestCluster.usesMock, TestCluster.needsMock))
    func metricsMatchTheRunAndHealthFollowsTheBroker() async throws {
        let cluster = try TestCluster()
        let mock = try #require(cluster.mock)
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        var configuration = topics.configuration(stateDirectory: state, untilEnd: false)
        // Back to the broker soon after it is up again.
        configuration.kafka.set("reconnect.backoff.max.ms", "500")
        // The dev broker holds a first join for session.timeout.ms minus 1 s: 14 s here, so the
        // first health request comes before the group is joined even when other tests keep this
        // one's thread waiting for several seconds.
        configuration.kafka.set("session.timeout.ms", "15000")
        let running = try RunningProcessor(configuration: configuration, logger: logger,
                                           policy: HealthPolicy(brokerUnreachableLimit: .seconds(1)))
        try await running.whileRunning { processor, client in
            // Joining the group takes seconds on the dev broker: the first answer is 503.
            let first = try await client.get("/healthz")
            #expect(first.status == 503)
            #expect(try first.json()["status"] as? String == "unavailable")
            try await client.waitForHealth(200)

            let workload = Workload.valid(count: 300, cards: 12)
            var input = workload.kafkaRecords
            input.append((Array("bad-1".utf8), Array("{\"transactionId\":".utf8)))
            input.append((Array("bad-2".utf8), Array("[1]".utf8)))
            input.append((Array("bad-3".utf8), Array("[2]".utf8)))
            try await topics.produce(input)
            let text = try await client.waitForMetrics { text in
                text["polyglot_records_out_total"] == 300 && text["polyglot_records_dead_lettered_total", ["code": "not_object"]] == 2
                    && text["polyglot_consumer_lag_records", ["topic": topics.input, "partition": "0"]] == 0
                    && text["polyglot_consumer_lag_records", ["topic": topics.input, "partition": "1"]] == 0
                    && (text["polyglot_store_size_bytes", ["partition": "0"]] ?? 0) > 0
                    // Every record handled was committed, so each has its latency.
                    && text["polyglot_record_latency_seconds_count"] == text.sum("polyglot_records_in_total")
            }
            let stats = processor.statistics
            #expect(stats.outputs == 300)
            #expect(text["polyglot_records_dead_lettered_total", ["code": "invalid_json"]] == 1)
            #expect(text["polyglot_records_dead_lettered_total", ["code": "too_large"]] == 0)
            #expect(text["polyglot_records_flagged_total"] == Double(stats.flagged))
            #expect(text["polyglot_records_late_total"] == Double(stats.late))
            #expect(text["polyglot_records_repartitioned_total"] == Double(stats.repartitioned))
            #expect(stats.repartitioned > 0)
            // Records in: every input record, and again each one read back from the repartition topic.
            #expect(text["polyglot_records_in_total", ["source": "input"]] == 303)
            #expect(text["polyglot_records_in_total", ["source": "repartition"]] == Double(stats.repartitioned))
            #expect(text["polyglot_assigned_partitions"] == 2)
            #expect(text["polyglot_transactions_aborted_total"] == 0)
            #expect((text["polyglot_transactions_committed_total"] ?? 0) >= 1)
            #expect((text["polyglot_commit_duration_seconds_count"] ?? 0) >= 1)
            #expect(text["polyglot_broker_reachable"] == 1)
            #expect(text["polyglot_build_info", ["version": ProductVersion.version, "fingerprint": String(repeating: "ab", count: 32), "role": "process"]] == 1)

            try mock.setBrokerDown(1)
            let down = try await client.waitForHealth(503)
            #expect(try down.json()["state"] as? String == "broker-unreachable")
            let whileDown = try await client.metrics()
            #expect(whileDown["polyglot_broker_reachable"] == 0)
            try mock.setBrokerUp(1)
            try await client.waitForHealth(200)
        }
    }

    @Test(.longOnTheBroker, .enabled(if: TestCluster.usesMock, TestCluster.needsMock))
    func healthIsUnavailableWhileRestoring() async throws {
        let cluster = try TestCluster()
        let mock = try #require(cluster.mock)
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        try await topics.produce(Workload.valid(count: 2_000, cards: 400).kafkaRecords)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        // Many small transactions, so the changelog holds many batches: the dev broker answers a
        // fetch with one batch, so the slowed restore below takes a 200 ms round trip per batch.
        var firstConfiguration = topics.configuration(stateDirectory: state)
        firstConfiguration.maxRecordsPerTransaction = 10
        let first = try StreamProcessor(configuration: firstConfiguration, logger: logger)
        try await run(first)
        let changelog = first.statistics.changelogRecords
        #expect(changelog > 0)

        // No local state: every store is rebuilt from the changelog, each fetch slowed down so
        // the restore lasts long enough to be seen.
        try FileManager.default.removeItem(at: state)
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        // Slowed before the processor starts: slowing it once the group was seen joined lost the
        // race to a restore that had already finished. On a busy machine the round trips alone
        // left too short a window for a check that tests beside it keep waiting, so the first
        // 40 fetches fail too, each backing off 500 ms: the restore stands still for about 20 s
        // (only the restore fetches then; the group consumer's partitions wait paused).
        try mock.setBrokerRTT(1, milliseconds: 200)
        var restoring = topics.configuration(stateDirectory: state, untilEnd: false)
        stallRestoreFetches(on: mock, reader: &restoring)
        let running = try RunningProcessor(configuration: restoring, logger: logger)
        try await running.whileRunning { processor, client in
            let restoring = try await client.waitForHealth(503) { ($0["state"] as? String) == "restoring" }
            #expect((try restoring.json()["reason"] as? String)?.hasPrefix("restoring ") == true)
            try mock.setBrokerRTT(1, milliseconds: 0)
            try await client.waitForHealth(200)
            let text = try await client.metrics()
            #expect(text["polyglot_restored_records_total"] == Double(processor.statistics.restoredRecords))
            #expect(processor.statistics.restoredRecords == changelog)
            #expect(text["polyglot_restore_remaining_records"] == 0)
        }
    }
}

/// A processor and its endpoints in one service group, as `polyglot process` runs them.
struct RunningProcessor {
    let service: ProcessorService
    let server: ObservabilityServer

    init(configuration: ProcessorConfiguration, logger: Logger, policy: HealthPolicy = HealthPolicy()) throws {
        let metrics = RoleMetrics(role: "process", fingerprintDigest: configuration.fingerprintDigest,
                                  families: FraudDetectionRole.metricFamilies)
        let service = try ProcessorService(configuration: configuration, logger: logger, observer: metrics)
        let processor = service.processor
        self.service = service
        server = ObservabilityServer(host: "127.0.0.1", port: 0, metrics: metrics, policy: policy, logger: logger) { processor.snapshot }
    }

    /// Runs both until `body` returns, then shuts the group down gracefully.
    func whileRunning(_ body: @Sendable (StreamProcessor, HTTPTestClient) async throws -> Void) async throws {
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: [.init(service: server), .init(service: service)], logger: Logger(label: "polyglot.test.group")))
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            do {
                let port = await server.listeningPort()
                try await body(service.processor, HTTPTestClient(port: port))
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
    }
}

/// HTTP/1.1 GET over a loopback socket, one connection per request.
struct HTTPTestClient: Sendable {
    let port: Int

    struct Response {
        var status: Int
        var body: String
        func json() throws -> [String: Any] {
            try #require(try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any])
        }
    }

    func get(_ path: String) async throws -> Response {
        let port = self.port
        return try await offPool { try Self.blockingGet(path, port: port) }
    }

    func metrics() async throws -> PrometheusText {
        let response = try await get("/metrics")
        #expect(response.status == 200)
        return try PrometheusText(Array(response.body.utf8))
    }

    /// Polls until `/healthz` answers `status` (and `matching` holds for its JSON).
    @discardableResult
    func waitForHealth(_ status: Int, timeout: Duration = .seconds(60),
                       matching: ([String: Any]) -> Bool = { _ in true },
                       beforeEach: () throws -> Void = {}) async throws -> Response {
        let deadline = ContinuousClock.now + timeout
        var last: Response?
        while ContinuousClock.now < deadline {
            try beforeEach()
            let response = try await get("/healthz")
            if response.status == status, try matching(response.json()) { return response }
            last = response
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("/healthz did not answer \(status) within \(timeout); last: \(last.map { "\($0.status) \($0.body)" } ?? "none")")
        throw CancellationError()
    }

    /// Polls `/metrics` until `condition` holds.
    func waitForMetrics(timeout: Duration = .seconds(60), _ condition: (PrometheusText) -> Bool) async throws -> PrometheusText {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let text = try await metrics()
            if condition(text) { return text }
            try await Task.sleep(for: .milliseconds(50))
        }
        Issue.record("/metrics did not reach the expected values within \(timeout)")
        throw CancellationError()
    }

    static func blockingGet(_ path: String, port: Int) throws -> Response {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HTTPTestError("socket failed") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw HTTPTestError("connect to port \(port) failed") }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, 0) == request.count else { throw HTTPTestError("send failed") }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 { throw HTTPTestError("recv failed") }
            if n == 0 { break }
            received += buffer[0..<n]
        }
        let text = String(decoding: received, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw HTTPTestError("no end of headers in \(text)") }
        let statusLine = text[..<split.lowerBound].split(separator: "\r\n").first ?? ""
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else { throw HTTPTestError("bad status line \(statusLine)") }
        return Response(status: status, body: String(text[split.upperBound...]))
    }
}

struct HTTPTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Prometheus' text format, parsed strictly: every sample line is `name{labels} value`, every
/// family has a TYPE line before its samples, label values are quoted and escaped.
struct PrometheusText {
    var samples: [String: Double] = [:]
    var types: [String: String] = [:]
    var help: [String: String] = [:]

    init(_ bytes: [UInt8]) throws {
        let text = try #require(String(validating: bytes, as: UTF8.self))
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("# HELP ") {
                let rest = line.dropFirst(7)
                let name = rest.prefix { $0 != " " }
                help[String(name)] = String(rest.dropFirst(name.count + 1))
                continue
            }
            if line.hasPrefix("# TYPE ") {
                let parts = line.dropFirst(7).split(separator: " ")
                try #require(parts.count == 2 && ["counter", "gauge", "histogram", "summary", "untyped"].contains(String(parts[1])), "\(line)")
                types[String(parts[0])] = String(parts[1])
                continue
            }
            try #require(!line.hasPrefix("#"), "unexpected comment \(line)")
            var rest = Substring(line)
            let name = String(rest.prefix { $0.isLetter || $0.isNumber || $0 == "_" || $0 == ":" })
            try #require(!name.isEmpty && !(name.first!.isNumber), "bad metric name in \(line)")
            rest = rest.dropFirst(name.count)
            var labels: [String: String] = [:]
            if rest.hasPrefix("{") {
                rest = rest.dropFirst()
                while !rest.hasPrefix("}") {
                    let label = String(rest.prefix { $0 != "=" })
                    rest = rest.dropFirst(label.count)
                    try #require(rest.hasPrefix("=\""), "bad label in \(line)")
                    rest = rest.dropFirst(2)
                    var value = ""
                    while let c = rest.first, c != "\"" {
                        if c == "\\" {
                            rest = rest.dropFirst()
                            let e = try #require(rest.first, "bad escape in \(line)")
                            value.append(e == "n" ? "\n" : e)
                        } else {
                            value.append(c)
                        }
                        rest = rest.dropFirst()
                    }
                    try #require(rest.hasPrefix("\""), "unterminated label value in \(line)")
                    rest = rest.dropFirst()
                    labels[label] = value
                    if rest.hasPrefix(",") { rest = rest.dropFirst() }
                }
                rest = rest.dropFirst()
            }
            try #require(rest.hasPrefix(" "), "no value in \(line)")
            let value = try #require(Double(rest.dropFirst().split(separator: " ").first ?? ""), "bad value in \(line)")
            let family = ["_bucket", "_sum", "_count"].first { name.hasSuffix($0) && types[String(name.dropLast($0.count))] == "histogram" }
                .map { String(name.dropLast($0.count)) } ?? name
            try #require(types[family] != nil, "no TYPE before \(line)")
            samples[Self.key(name, labels)] = value
        }
    }

    subscript(name: String, labels: [String: String] = [:]) -> Double? { samples[Self.key(name, labels)] }

    /// The sum of every series of a family (nil when it has none).
    func sum(_ name: String) -> Double? {
        let series = samples.filter { $0.key.hasPrefix(name + "{") }
        return series.isEmpty ? nil : series.values.reduce(0, +)
    }

    static func key(_ name: String, _ labels: [String: String]) -> String {
        name + "{" + labels.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: ",") + "}"
    }
}
