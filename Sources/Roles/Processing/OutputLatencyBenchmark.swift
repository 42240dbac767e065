import Dispatch
import Foundation
import Logging
import Synchronization
import PolyglotSupport
import FraudModel
import KafkaClient
import StreamEngine

/// Output latency under a steady input rate, for `polyglot dev latency-bench`: what a payment
/// waits between being produced and its verdict becoming visible.
///
/// One thread produces generated transactions at each rate in turn, with event time (and the
/// Kafka timestamp) set to the wall clock at produce, each on its card's partition as
/// `polyglot produce` places it. Another thread reads the output topic read_committed, as any
/// downstream consumer would, and takes `now - timestamp` of every output of this run: under
/// exactly-once that covers the processor's handling, its transaction and the commit that made
/// the output visible. With no output topic the reader reads the input topic itself, which
/// measures the floor: the same producer and consumer with no processor between them.
public struct OutputLatencyBenchmark: Sendable {
    public struct Options: Sendable {
        public var bootstrapServers: String
        public var inputTopic = PipelineNames.inputTopic
        /// nil: read the input topic itself (the floor).
        public var outputTopic: String? = PipelineNames.outputTopic
        /// Records per second of each phase, in order.
        public var rates: [Int] = [5_000, 20_000, 50_000, 100_000]
        public var secondsPerRate = 20
        public var cards = 10_000
        public var partitioner: KafkaPartitioner = .murmur2
        /// How long the reader waits after the last phase for outputs still to come.
        public var drainTimeout: Duration = .seconds(30)
        /// Extra librdkafka properties for both clients (`-X`).
        public var overrides = KafkaConfiguration()
        public init(bootstrapServers: String) { self.bootstrapServers = bootstrapServers }
    }

    /// The latencies of one phase, in milliseconds.
    public struct Phase: Sendable, CustomStringConvertible {
        public var rate: Int
        public var seconds: Int
        public var sent: Int
        public var received: Int
        /// Sorted.
        public var latencies: [Int64]

        public func percentile(_ p: Double) -> Int64 {
            guard !latencies.isEmpty else { return 0 }
            let rank = Int((p / 100 * Double(latencies.count)).rounded(.up))
            return latencies[min(latencies.count - 1, max(0, rank - 1))]
        }

        /// `rate 5000/s for 20 s: sent 100000, received 100000, latency ms p50 9 p95 14 p99 21 max 48`.
        public var description: String {
            "rate \(rate)/s for \(seconds) s: sent \(sent), received \(received), latency ms p50 \(percentile(50)) p95 \(percentile(95)) p99 \(percentile(99)) max \(latencies.last ?? 0)"
        }
    }

    public let options: Options
    private let logger: Logger

    public init(options: Options, logger: Logger = Logger(label: "polyglot.dev.latency-bench")) {
        self.options = options
        self.logger = logger
    }

    /// Producer settings for latency: a record leaves at once (the floor must not linger).
    static let producerTuning: [String: String] = [
        "linger.ms": "1",
        "queue.buffering.max.messages": "1000000",
        "queue.buffering.max.kbytes": "1048576",
    ]

    /// Blocking: every phase, then the drain. Call on a dedicated thread.
    public func run() throws -> [Phase] {
        let o = options
        precondition(!o.rates.isEmpty && o.rates.allSatisfy { $0 > 0 } && o.secondsPerRate > 0 && o.cards > 0)
        let base = KafkaConfiguration(bootstrapServers: o.bootstrapServers)
        var producerConfig = base.merging(KafkaConfiguration(Self.producerTuning)).merging(o.overrides)
        producerConfig.setDefault("enable.idempotence", "true")
        let producer = try KafkaProducer(configuration: producerConfig, logger: logger)
        defer { producer.close(flushTimeout: .seconds(5)) }
        let inputPartitions = try producer.partitionCounts([o.inputTopic], timeout: .seconds(15))[o.inputTopic] ?? 0
        let readTopic = o.outputTopic ?? o.inputTopic
        let readPartitions = try producer.partitionCounts([readTopic], timeout: .seconds(15))[readTopic] ?? 0
        guard inputPartitions > 0, readPartitions > 0 else {
            throw KafkaError(code: -1, name: "BENCH", message: "topics \(o.inputTopic) and \(readTopic) must exist")
        }

        var readerConfig = base.merging(o.overrides)
        readerConfig.set("isolation.level", "read_committed")
        readerConfig.setDefault("fetch.wait.max.ms", "5")
        let reader = try KafkaConsumer(configuration: readerConfig, logger: logger)
        defer { reader.close() }
        // Everything from the current end on (outputs of earlier runs are not this run's), from
        // explicit offsets, so no record produced after this line can be missed.
        try reader.assign((0..<Int32(readPartitions)).map { p in
            KafkaTopicPartitionOffset(readTopic, p, offset: try reader.queryWatermarks(KafkaTopicPartition(readTopic, p), timeout: .seconds(15)).high)
        })

        // Each phase's ids carry a run tag and the phase number: `lat-<tag>-<phase>-<n>`.
        let tag = String(UUID().uuidString.prefix(8)).lowercased()
        let shared = ReaderState(phases: o.rates.count)
        let readerDone = ConditionLock(false)
        let prefix = Array("{\"transactionId\":\"lat-\(tag)-".utf8)
        DedicatedThread.detach(name: "latency-reader") {
            defer { readerDone.withLock { $0 = true } }
            do {
                var pending: [(Int, Int64)] = []
                while !shared.stop.load(ordering: .acquiring),
                      shared.received.load(ordering: .relaxed) < shared.expected.load(ordering: .acquiring) {
                    _ = try reader.pollBorrowing(maxMessages: 10_000, timeout: .milliseconds(20)) { m in
                        let now = Self.wallClockMillis()
                        guard let value = m.value, let (phase, eventTime) = Self.phaseAndTimestamp(value, prefix: prefix) else { return }
                        pending.append((phase, now - eventTime))
                    }
                    guard !pending.isEmpty else { continue }
                    let batch = pending
                    pending.removeAll(keepingCapacity: true)
                    shared.collected.withLock { phases in
                        for (phase, latency) in batch where phase < phases.count { phases[phase].append(latency) }
                    }
                    shared.received.add(batch.count, ordering: .relaxed)
                }
            } catch {
                shared.failure.withLock { $0 = "\(error)" }
            }
        }
        defer {
            shared.stop.store(true, ordering: .releasing)
            readerDone.wait(until: { $0 }) { _ in }
        }
        let topic = try producer.topic(o.inputTopic)
        var sentPerPhase: [Int] = []
        var key: [UInt8] = []
        var value: [UInt8] = []
        for (phase, rate) in o.rates.enumerated() {
            let total = rate * o.secondsPerRate
            let start = ContinuousClock.now
            var sent = 0
            while sent < total {
                // Whatever the schedule says is due by now, then a short nap.
                let elapsed = ContinuousClock.now - start
                let due = min(total, Int(elapsed.inSeconds * Double(rate)) + 1)
                while sent < due {
                    let now = Self.wallClockMillis()
                    let card = Self.card(phase: phase, n: sent, cards: o.cards)
                    key.removeAll(keepingCapacity: true)
                    key.append(contentsOf: "card-\(card)".utf8)
                    value.removeAll(keepingCapacity: true)
                    value.append(contentsOf: prefix)
                    value.append(contentsOf: "\(phase)-\(sent)\",\"cardId\":\"card-\(card)\",\"amount\":12.34,\"timestamp\":\(now)}".utf8)
                    let partition = key.withUnsafeBufferPointer { o.partitioner.partition(of: $0, count: Int32(inputPartitions)) }
                    try key.withUnsafeBytes { k in
                        try value.withUnsafeBytes { v in
                            try producer.produce(to: topic, partition: partition, key: k, value: v,
                                                 headers: KafkaRecordHeaders(), timestamp: now, blockIfQueueFull: true)
                        }
                    }
                    sent += 1
                }
                if sent < total { Thread.sleep(forTimeInterval: 0.0005) }
            }
            sentPerPhase.append(sent)
            logger.info("phase sent", metadata: ["rate_per_second": .number(rate), "records": .number(sent)])
        }
        try producer.flush(timeout: .seconds(30))
        let counts = producer.deliveryCounts
        guard counts.failed == 0 else {
            throw KafkaError(code: -1, name: "BENCH", message: "\(counts.failed) records not delivered: \(counts.failures.first.map { "\($0)" } ?? "")")
        }
        shared.expected.store(sentPerPhase.reduce(0, +), ordering: .releasing)
        // Outputs still in flight arrive within the drain timeout, or count as not received.
        readerDone.wait(until: { $0 }, timeout: .milliseconds(Int(o.drainTimeout.inSeconds * 1000))) { _, _ in }
        shared.stop.store(true, ordering: .releasing)
        if let failure = shared.failure.withLock({ $0 }) {
            throw KafkaError(code: -1, name: "BENCH", message: "the reader failed: \(failure)")
        }
        let phases = shared.collected.withLock { $0 }
        return o.rates.indices.map { i in
            Phase(rate: o.rates[i], seconds: o.secondsPerRate, sent: sentPerPhase[i], received: phases[i].count, latencies: phases[i].sorted())
        }
    }

    /// What the reader thread shares with the producing one.
    private final class ReaderState: Sendable {
        let collected: Mutex<[[Int64]]>
        let stop = Atomic<Bool>(false)
        /// Records the reader stops after: unknown (`Int.max`) until every phase was sent.
        let expected = Atomic<Int>(Int.max)
        let received = Atomic<Int>(0)
        let failure = Mutex<String?>(nil)
        init(phases: Int) { collected = Mutex(Array(repeating: [], count: phases)) }
    }

    /// Cards in a fixed rotation: each card's records are spread out, as real payments are.
    static func card(phase: Int, n: Int, cards: Int) -> Int { (n &* 7919 &+ phase) % cards }

    /// The phase from a `lat-<tag>-<phase>-<n>` id of this run, and the `timestamp` member.
    static func phaseAndTimestamp(_ value: UnsafeRawBufferPointer, prefix: [UInt8]) -> (Int, Int64)? {
        guard value.count > prefix.count, value.starts(with: prefix) else { return nil }
        var i = prefix.count
        var phase = 0
        while i < value.count, value[i] >= 0x30, value[i] <= 0x39 {
            phase = phase * 10 + Int(value[i] - 0x30)
            i += 1
        }
        let key = Array("\"timestamp\":".utf8)
        guard let at = Self.find(key, in: value, from: i) else { return nil }
        var j = at + key.count
        var t: Int64 = 0
        while j < value.count, value[j] >= 0x30, value[j] <= 0x39 {
            t = t * 10 + Int64(value[j] - 0x30)
            j += 1
        }
        return (phase, t)
    }

    private static func find(_ needle: [UInt8], in haystack: UnsafeRawBufferPointer, from start: Int) -> Int? {
        guard haystack.count >= needle.count else { return nil }
        var i = start
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0], (1..<needle.count).allSatisfy({ haystack[i + $0] == needle[$0] }) { return i }
            i += 1
        }
        return nil
    }

    static func wallClockMillis() -> Int64 { RecordLatencyHistogram.wallClockMillis() }
}
