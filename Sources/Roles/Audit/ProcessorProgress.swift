import Foundation
import Logging
import Synchronization
import KafkaClient
import PolyglotSupport

/// Where the processor's consumer group stands, read from Kafka, so the continuous auditor
/// decides `missing` from positions rather than from how long it waited (SEMANTICS.md §5).
///
/// Once a probe interval, on a thread of its own (every call here blocks), it reads the
/// processor group's committed offsets on the input and repartition partitions, then the
/// read_committed end offsets of the input, output, dead-letter and repartition partitions.
/// The processor commits an input's offset in the transaction that holds the input's output,
/// dead letter or forwarded copy, so once its committed offset on input partition p is C, all of
/// those for inputs of p below C lie below the end offsets read afterwards. A forwarded input's
/// output follows one hop later: once the group's committed offset on repartition partition q
/// reaches the repartition end offset read after an earlier probe, every input forwarded to q
/// before that probe has its output in output partition q below the end offset read now.
///
/// From that, per auditor task q, a list of ``Due`` steps: inputs of partition p below `due[p]`
/// whose card belongs to q are missing unless an output (or dead letter) for them lies below
/// `output` (`deadLetters`). A task applies the latest step whose positions it has reconciled,
/// so no decision depends on how fast it reads one topic against another.
///
/// It also keeps, per input partition, how many inputs wait for the processor and since when
/// the oldest waits (first seen by a probe): the `stalled` findings and the waiting metrics.
final class ProcessorProgress: Sendable {
    /// What task q may decide once it reconciled its output partition up to `output` and read
    /// its dead-letter partition up to `deadLetters`: inputs of partition p below `due[p]`.
    struct Due: Sendable, Equatable {
        var due: [Int64]
        var output: Int64
        var deadLetters: Int64
    }

    /// One input partition's inputs the processor has not committed past.
    struct Waiting: Sendable, Equatable {
        /// The group's committed offset (-1: none).
        var committed: Int64 = -1
        /// The input partition's end offset.
        var end: Int64 = 0
        /// When a probe first saw the oldest waiting input (epoch ms; nil: none waits).
        var since: Int64?

        var count: Int64 { max(0, end - max(committed, 0)) }
    }

    struct Topics: Sendable {
        var input: String
        var output: String
        var deadLetter: String
        var repartition: String
    }

    private struct Probe {
        var committedInput: [Int64]
        var repartitionEnd: [Int64]?
    }

    private struct State {
        var steps: [[Due]]
        var forwarded: [[Int64]]
        var waiting: [Waiting]
        /// Per input partition: (probe time, end offset) each time the end moved, oldest first.
        var ends: [[(at: Int64, end: Int64)]]
        /// Input end offsets of recent probes, by probe start time (epoch ms), oldest first.
        var inputEnds: [(at: Int64, ends: [Int64])] = []
        var probes = 0
    }

    let group: String
    let topics: Topics
    let partitions: Int
    let interval: Duration
    private let kafka: KafkaConfiguration
    private let logger: Logger
    private let state: Mutex<State>
    private let started = Atomic<Bool>(false)
    private let stop = Atomic<Bool>(false)
    private let done = Atomic<Bool>(false)

    static let maxSteps = 512
    static let maxProbes = 300

    init(kafka: KafkaConfiguration, group: String, topics: Topics, partitions: Int, interval: Duration, logger: Logger) {
        self.kafka = kafka
        self.group = group
        self.topics = topics
        self.partitions = partitions
        self.interval = interval
        self.logger = logger
        state = Mutex(State(steps: Array(repeating: [], count: partitions),
                            forwarded: Array(repeating: Array(repeating: 0, count: partitions), count: partitions),
                            waiting: Array(repeating: Waiting(), count: partitions), ends: Array(repeating: [], count: partitions)))
    }

    /// Starts probing on a thread of its own (once), until ``requestStop()`` or `isStopping`.
    func start(isStopping: @escaping @Sendable () -> Bool) {
        guard !started.exchange(true, ordering: .acquiringAndReleasing) else { return }
        DedicatedThread.detach(name: "polyglot-progress") { [self] in
            run(isStopping: isStopping)
            done.store(true, ordering: .releasing)
        }
    }

    func requestStop() { stop.store(true, ordering: .releasing) }

    /// Whether the probing thread has ended (or never started).
    var isStopped: Bool { !started.load(ordering: .acquiring) || done.load(ordering: .acquiring) }

    /// Probes that completed so far.
    var probes: Int { state.withLock { $0.probes } }

    /// The latest step for task `q` whose positions it has reached (its outputs reconciled up to
    /// `output`, its dead letters read up to `deadLetters`); earlier steps are dropped, that one
    /// stays (a task that rolled back applies it again).
    func due(for q: Int32, output: Int64, deadLetters: Int64) -> [Int64]? {
        state.withLock { s in
            let steps = s.steps[Int(q)]
            guard let i = steps.lastIndex(where: { $0.output <= output && $0.deadLetters <= deadLetters }) else { return nil }
            let due = steps[i].due
            s.steps[Int(q)].removeFirst(i)
            return due
        }
    }

    /// Input partition `p`'s waiting inputs as of the last probe.
    func waiting(_ p: Int32) -> Waiting { state.withLock { $0.waiting[Int(p)] } }

    var allWaiting: [Waiting] { state.withLock { $0.waiting } }

    /// The end offset of input partition `p` read by the first probe that began after `time`
    /// (epoch ms), or nil when none has yet. An output whose source is at or past it names an
    /// input that did not exist when the output was already there.
    func inputEnd(_ p: Int32, after time: Int64) -> Int64? {
        state.withLock { s in s.inputEnds.first { $0.at > time }?.ends[Int(p)] }
    }

    private func run(isStopping: @Sendable () -> Bool) {
        var config = kafka
        config.set("group.id", group)
        config.set("isolation.level", "read_committed")
        let consumer: KafkaConsumer
        do {
            consumer = try KafkaConsumer(configuration: config, logger: logger)
        } catch {
            logger.error("cannot read the processor group's progress", metadata: ["group": "\(group)", "error": "\(error)"])
            return
        }
        defer { consumer.close() }
        var probes: [Probe] = []
        var lastFailure: String?
        var warnedNoCommits = false
        while !stop.load(ordering: .acquiring), !isStopping() {
            let begun = ContinuousClock.now
            do {
                if try probe(consumer, &probes), !warnedNoCommits {
                    warnedNoCommits = true
                    logger.warning("the processor's group has committed no input offset: no input is due, so none can be missing yet (check --application-id; librdkafka's mock cluster, the dev broker, keeps no offset committed in a transaction)",
                                   metadata: ["group": "\(group)"])
                }
                lastFailure = nil
            } catch {
                let text = "\(error)"
                if text != lastFailure { logger.warning("reading the processor group's progress failed", metadata: ["group": "\(group)", "error": "\(text)"]) }
                lastFailure = text
            }
            let deadline = begun + interval
            while ContinuousClock.now < deadline, !stop.load(ordering: .acquiring), !isStopping() {
                Thread.sleep(forTimeInterval: 0.02)
            }
        }
    }

    /// One probe; returns whether inputs exist and the group has committed past none of them.
    private func probe(_ consumer: KafkaConsumer, _ probes: inout [Probe]) throws -> Bool {
        let at = AuditTask.wallClock()
        let n = Int32(partitions)
        let t = topics
        func tps(_ topic: String) -> [KafkaTopicPartition] { (0..<n).map { KafkaTopicPartition(topic, $0) } }
        func vector(_ offsets: [KafkaTopicPartitionOffset], _ topic: String) -> [Int64] {
            var v = Array(repeating: Int64(-1), count: partitions)
            for o in offsets where o.topicPartition.topic == topic && o.topicPartition.partition < n && o.offset >= 0 {
                v[Int(o.topicPartition.partition)] = o.offset
            }
            return v
        }
        // Committed offsets first, then end offsets: what was committed then lies below the ends read now.
        let committedInput = vector(try consumer.committed(tps(t.input), timeout: .seconds(10)), t.input)
        // The repartition topic exists once the processor ran; before, nothing was forwarded.
        let committedRepartition = (try? consumer.committed(tps(t.repartition), timeout: .seconds(10))).map { vector($0, t.repartition) }
        let ends = try consumer.endOffsets(tps(t.input) + tps(t.output) + tps(t.deadLetter), timeout: .seconds(10))
        let repartitionEnds = (try? consumer.endOffsets(tps(t.repartition), timeout: .seconds(10)))
        func end(_ topic: String, _ p: Int) -> Int64 { max(0, ends[KafkaTopicPartition(topic, Int32(p))] ?? 0) }
        let probe = Probe(committedInput: committedInput,
                          repartitionEnd: repartitionEnds.map { e in (0..<partitions).map { max(0, e[KafkaTopicPartition(t.repartition, Int32($0))] ?? 0) } })
        state.withLock { s in
            for q in 0..<partitions {
                // Inputs forwarded to q before an earlier probe: decided once the group has
                // committed past that probe's repartition end.
                // No committed offset: the group has read nothing there, which covers an empty partition.
                if let committed = committedRepartition.map({ max($0[q], 0) }),
                   let resolved = probes.last(where: { ($0.repartitionEnd?[q] ?? .max) <= committed }) {
                    for p in 0..<partitions { s.forwarded[q][p] = max(s.forwarded[q][p], resolved.committedInput[p]) }
                }
                var due = s.forwarded[q]
                due[q] = max(due[q], committedInput[q])
                let step = Due(due: due, output: end(t.output, q), deadLetters: end(t.deadLetter, q))
                if s.steps[q].last != step {
                    if s.steps[q].count >= Self.maxSteps { s.steps[q].remove(at: 1) }
                    s.steps[q].append(step)
                }
            }
            for p in 0..<partitions {
                let inputEnd = end(t.input, p), committed = committedInput[p]
                if s.ends[p].last.map({ $0.end < inputEnd }) ?? (inputEnd > 0) { s.ends[p].append((at, inputEnd)) }
                s.ends[p].removeAll { $0.end <= max(committed, 0) }
                s.waiting[p] = Waiting(committed: committed, end: inputEnd,
                                       since: inputEnd > max(committed, 0) ? s.ends[p].first?.at : nil)
            }
            s.inputEnds.append((at, (0..<partitions).map { end(t.input, $0) }))
            if s.inputEnds.count > 8 { s.inputEnds.removeFirst() }
            s.probes += 1
        }
        probes.append(probe)
        if probes.count > Self.maxProbes { probes.removeFirst() }
        return (0..<partitions).contains { end(t.input, $0) > 0 } && committedInput.allSatisfy { $0 < 0 }
    }
}
