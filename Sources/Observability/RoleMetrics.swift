import CoreMetrics
import Metrics
import Prometheus
import Synchronization
import PolyglotSupport
import StreamEngine

/// A metric family a role adds to `/metrics` beside the runtime's: a name (`polyglot_` first),
/// what it counts and whether it only grows.
public struct MetricFamily: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// Only grows (a `_total` name); samples carry the running total.
        case counter
        /// Any value at the time of the scrape.
        case gauge
    }

    public var name: String
    public var help: String
    public var kind: Kind

    public static func counter(_ name: String, help: String) -> MetricFamily { MetricFamily(name: name, help: help, kind: .counter) }
    public static func gauge(_ name: String, help: String) -> MetricFamily { MetricFamily(name: name, help: help, kind: .gauge) }
}

/// One series' value at a scrape: the family's name, its labels and the value (a counter's
/// total so far).
public struct MetricSample: Sendable, Hashable {
    public var name: String
    public var labels: [String: String]
    public var value: Int64

    public init(_ name: String, labels: [String: String] = [:], value: Int64) {
        self.name = name
        self.labels = labels
        self.value = value
    }

    public init(_ name: String, labels: [String: String] = [:], value: Int) {
        self.init(name, labels: labels, value: Int64(value))
    }
}

/// What one scrape reads of a running role: the runtime's statistics and the role's own samples.
public struct RoleSnapshot: Sendable {
    public var runtime: RuntimeStatistics
    /// In the families the role declared to ``RoleMetrics``.
    public var samples: [MetricSample]

    public init(runtime: RuntimeStatistics, samples: [MetricSample] = []) {
        self.runtime = runtime
        self.samples = samples
    }
}

/// The Prometheus metrics of one role on the stream runtime, through swift-metrics with a
/// swift-prometheus registry of its own (two runs in one process never share a series).
///
/// Counters and gauges are taken from snapshots at each scrape (``exposition(of:)``): the hot
/// path keeps counting without locks, as it does for the final log line, and publishes per poll.
/// Commit latencies are observed as they happen: pass this as the runtime's ``RuntimeObserver``.
public final class RoleMetrics: RuntimeObserver {
    public let registry: PrometheusCollectorRegistry
    private let factory: DescribedMetricsFactory
    private let commitDuration: CoreMetrics.Timer
    private let transactionDuration: CoreMetrics.Timer
    private let roleFamilies: [String: MetricFamily]
    private struct Series: Sendable {
        var counters: [SeriesKey: (counter: CoreMetrics.Counter, total: Int64)] = [:]
        var gauges: [SeriesKey: CoreMetrics.Gauge] = [:]
    }
    private let series = Mutex(Series())

    /// Upper bounds of the latency histograms: a commit every 100 ms usually takes tens of ms.
    static let latencyBuckets: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2_500), .seconds(5), .seconds(10),
    ]

    /// - Parameters:
    ///   - role: the command's name (`process`, `audit`), a label of `polyglot_build_info`.
    ///   - fingerprintDigest: the environment fingerprint's digest, another label of it.
    ///   - families: the role's own families, whose samples the snapshot passed to ``exposition(of:)`` carries.
    public init(role: String, fingerprintDigest: String, families: [MetricFamily] = []) {
        registry = PrometheusCollectorRegistry()
        var help = Self.runtimeFamilies.reduce(into: Self.histogramHelp) { $0[$1.name] = $1.help }
        for family in families {
            precondition(help[family.name] == nil, "metric family \(family.name) declared twice")
            help[family.name] = family.help
        }
        roleFamilies = Dictionary(uniqueKeysWithValues: families.map { ($0.name, $0) })
        factory = DescribedMetricsFactory(registry: registry, help: help, buckets: Self.latencyBuckets)
        commitDuration = CoreMetrics.Timer(label: "polyglot_commit_duration_seconds", factory: factory)
        transactionDuration = CoreMetrics.Timer(label: "polyglot_transaction_duration_seconds", factory: factory)
        CoreMetrics.Gauge(label: "polyglot_build_info", dimensions: [
            ("version", ProductVersion.version), ("fingerprint", fingerprintDigest), ("role", role),
        ], factory: factory).record(1)
    }

    public func commitEnded(_ commit: CommitTiming) {
        commitDuration.recordNanoseconds(Self.nanoseconds(commit.total))
        transactionDuration.recordNanoseconds(Self.nanoseconds(commit.transaction))
    }

    /// Brings every series up to `snapshot` and returns the registry in Prometheus' text format.
    public func exposition(of snapshot: RoleSnapshot) -> [UInt8] {
        update(snapshot)
        var text = registry.emitToBuffer()
        // Bucketed by the run loop per commit (no lock per record), so written here rather
        // than through a swift-metrics timer.
        text.append(contentsOf: snapshot.runtime.recordLatency.prometheusText(
            name: Self.recordLatencyFamily, help: Self.recordLatencyHelp).utf8)
        return text
    }

    static let recordLatencyFamily = "polyglot_record_latency_seconds"
    static let recordLatencyHelp = "Time from a record's Kafka timestamp to the commit that made its outputs visible."

    /// The runtime's families (every role has them).
    static let runtimeFamilies: [MetricFamily] = [
        .counter("polyglot_records_in_total", help: "Records handled, per source topic (a rewind after an abort handles some again)."),
        .counter("polyglot_transactions_committed_total", help: "Transactions committed."),
        .counter("polyglot_transactions_aborted_total", help: "Transactions aborted (their records are handled again)."),
        .counter("polyglot_transaction_retries_total", help: "Transaction calls repeated after a retriable error."),
        .counter("polyglot_changelog_records_total", help: "Changelog records written by committed transactions."),
        .counter("polyglot_restored_records_total", help: "Changelog records applied while restoring stores."),
        .gauge("polyglot_restore_remaining_records", help: "Changelog records still to restore."),
        .gauge("polyglot_restoring_partitions", help: "Partitions whose store is being restored."),
        .gauge("polyglot_restore_partition_remaining_records", help: "Changelog records a restoring partition has still to apply, per changelog partition."),
        .gauge("polyglot_restore_stalled_seconds", help: "How long a restoring partition has not advanced, once past the stall limit (0 while it advances)."),
        .gauge("polyglot_assigned_partitions", help: "Partitions the consumer group assigned to this instance."),
        .gauge("polyglot_running_partitions", help: "Assigned partitions restored and processing."),
        .gauge("polyglot_consumer_lag_records", help: "Records (and transaction markers) after the consumer's position, per source partition."),
        .gauge("polyglot_store_size_bytes", help: "Bytes of a partition's store files."),
        .gauge("polyglot_broker_reachable", help: "1 while the consumer has a broker connected, 0 while it has none."),
        .gauge("polyglot_healthy", help: "1 while /healthz answers 200."),
        .gauge("polyglot_build_info", help: "Always 1: the version, environment fingerprint digest and role as labels."),
    ]

    /// The latency histograms' help lines.
    static let histogramHelp: [String: String] = [
        "polyglot_commit_duration_seconds": "Time from the start of a commit to its stores' commit.",
        "polyglot_transaction_duration_seconds": "Time of a commit's Kafka transaction commit (exactly-once) or offset commit.",
    ]

    private func update(_ snapshot: RoleSnapshot) {
        let s = snapshot.runtime
        var counters: [MetricSample] = s.recordsBySource.map { MetricSample("polyglot_records_in_total", labels: ["source": $0.key], value: $0.value) }
        counters += [
            MetricSample("polyglot_transactions_committed_total", value: s.transactionsCommitted),
            MetricSample("polyglot_transactions_aborted_total", value: s.transactionsAborted),
            MetricSample("polyglot_transaction_retries_total", value: s.transactionRetries),
            MetricSample("polyglot_changelog_records_total", value: s.changelogRecords),
            MetricSample("polyglot_restored_records_total", value: s.restoredRecords),
        ]
        let health = RoleHealth.evaluate(s)
        var gauges: [MetricSample] = [
            MetricSample("polyglot_restore_remaining_records", value: s.restoreRemaining),
            MetricSample("polyglot_restoring_partitions", value: s.restoringTasks),
            MetricSample("polyglot_assigned_partitions", value: s.assignedPartitions),
            MetricSample("polyglot_running_partitions", value: s.tasks),
            MetricSample("polyglot_broker_reachable", value: s.broker.unreachableSince == nil ? 1 : 0),
            MetricSample("polyglot_healthy", value: health.isHealthy ? 1 : 0),
        ]
        for restore in s.restores {
            let labels = ["topic": restore.changelog.topic, "partition": "\(restore.changelog.partition)"]
            gauges.append(MetricSample("polyglot_restore_partition_remaining_records", labels: labels, value: restore.remaining))
            gauges.append(MetricSample("polyglot_restore_stalled_seconds", labels: labels, value: restore.stall?.seconds ?? 0))
        }
        for (tp, lag) in s.consumerLag {
            gauges.append(MetricSample("polyglot_consumer_lag_records", labels: ["topic": tp.topic, "partition": "\(tp.partition)"], value: lag))
        }
        for (partition, bytes) in s.storeBytes {
            gauges.append(MetricSample("polyglot_store_size_bytes", labels: ["partition": "\(partition)"], value: bytes))
        }
        for sample in snapshot.samples {
            guard let family = roleFamilies[sample.name] else {
                preconditionFailure("metric \(sample.name) is not one of the role's declared families")
            }
            switch family.kind {
            case .counter: counters.append(sample)
            case .gauge: gauges.append(sample)
            }
        }
        let factory = self.factory
        series.withLock { series in
            for sample in counters {
                let key = SeriesKey(sample)
                let entry = series.counters[key]
                    ?? (CoreMetrics.Counter(label: sample.name, dimensions: key.labels, factory: factory), 0)
                if sample.value > entry.total {
                    entry.counter.increment(by: sample.value - entry.total)
                } else if sample.value < entry.total {
                    // A new run behind the same metrics: counting starts over.
                    entry.counter.reset()
                    if sample.value > 0 { entry.counter.increment(by: sample.value) }
                }
                series.counters[key] = (entry.counter, sample.value)
            }
            var seen = Set<SeriesKey>()
            for sample in gauges {
                let key = SeriesKey(sample)
                seen.insert(key)
                let gauge = series.gauges[key] ?? CoreMetrics.Gauge(label: sample.name, dimensions: key.labels, factory: factory)
                gauge.record(sample.value)
                series.gauges[key] = gauge
            }
            // A partition revoked since the last scrape: its series go rather than freeze.
            for (key, gauge) in series.gauges where !seen.contains(key) {
                gauge.destroy()
                series.gauges[key] = nil
            }
        }
    }

    static func nanoseconds(_ d: Duration) -> Int64 {
        d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000
    }
}

/// A series: a family's name and its labels, sorted by name.
private struct SeriesKey: Hashable, Sendable {
    var name: String
    var labelPairs: [String]

    init(_ sample: MetricSample) {
        name = sample.name
        labelPairs = sample.labels.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }
    }

    var labels: [(String, String)] {
        stride(from: 0, to: labelPairs.count, by: 2).map { (labelPairs[$0], labelPairs[$0 + 1]) }
    }
}

/// swift-metrics' factory for a swift-prometheus registry, with a help line per family (the
/// stock factory writes none) and the latency buckets for every timer.
struct DescribedMetricsFactory: MetricsFactory {
    let registry: PrometheusCollectorRegistry
    let help: [String: String]
    let buckets: [Duration]

    private func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: help[label] ?? "")
    }

    func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(descriptor: descriptor(label), labels: dimensions, buckets: buckets)
    }

    func destroyCounter(_ handler: any CounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        if let counter = handler as? Prometheus.Counter { registry.unregisterCounter(counter) }
    }

    func destroyRecorder(_ handler: any RecorderHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
    }

    func destroyMeter(_ handler: any MeterHandler) {
        if let gauge = handler as? Prometheus.Gauge { registry.unregisterGauge(gauge) }
    }

    func destroyTimer(_ handler: any TimerHandler) {
        if let histogram = handler as? DurationHistogram { registry.unregisterDurationHistogram(histogram) }
    }
}
