import Foundation
import Logging
import Synchronization
import PolyglotSupport
import FraudModel
import KafkaClient
import StateStore
import StreamEngine
import Observability

/// Everything the continuous auditor needs, already validated.
public struct AuditorConfiguration: Sendable {
    /// The processor's settings, resolved the same way: Kafka, its topics, the state directory,
    /// the guarantee, the partitioner and the detector's parameters. Its `applicationID` is the
    /// auditor's own consumer group, and the prefix of the auditor's internal topics.
    public var pipeline: ProcessorConfiguration
    /// The high-value threshold and the fingerprint the auditor checks against.
    public var audit: AuditConfiguration
    /// Where findings go, one JSON record each, keyed by transaction id.
    public var findingsTopic: String
    /// The processor's application id: the consumer group whose committed offsets say which
    /// inputs are due (`missing` comes from positions, never from waiting).
    public var processorGroup: String
    /// How long a matched transaction id is remembered, so that a second output for it is a
    /// `duplicate` (later, an `orphan`); also how long a dead letter without a source waits for
    /// a rejected input with its bytes.
    public var settle: Duration
    /// How long the oldest input the processor has not committed past may wait before its
    /// partition is reported `stalled`.
    public var stallAfter: Duration
    /// How often the processor group's committed offsets and the topics' end offsets are read.
    public var probeInterval: Duration

    public static let defaultGroupID = PipelineNames.auditorGroupID
    public static let defaultFindingsTopic = PipelineNames.findingsTopic

    public init(pipeline: ProcessorConfiguration, audit: AuditConfiguration, findingsTopic: String = Self.defaultFindingsTopic,
                processorGroup: String = PipelineNames.applicationID, settle: Duration = .seconds(30),
                stallAfter: Duration = .seconds(300), probeInterval: Duration = .seconds(1)) {
        self.pipeline = pipeline
        self.audit = audit
        self.findingsTopic = findingsTopic
        self.processorGroup = processorGroup
        self.settle = settle
        self.stallAfter = stallAfter
        self.probeInterval = probeInterval
    }

    /// `<group>-ledger-changelog`: the auditor's store.
    public var changelogTopic: String { PipelineNames.ledgerChangelog(auditorGroup: pipeline.applicationID) }
    /// `<group>-repartition`: inputs read away from their card's partition go there, to the task
    /// that reads that card's outputs.
    public var repartitionTopic: String { PipelineNames.repartitionTopic(group: pipeline.applicationID) }

    public func validate() throws(ConfigurationError) {
        try pipeline.validate()
        guard ProcessorConfiguration.isValidTopicName(findingsTopic) else {
            throw ConfigurationError("invalid findings topic name '\(findingsTopic)' (1 to 249 of [a-zA-Z0-9._-])")
        }
        let r = pipeline
        guard Set([r.inputTopic, r.outputTopic, r.deadLetterTopic, findingsTopic, changelogTopic, repartitionTopic]).count == 6 else {
            throw ConfigurationError("the findings topic and the auditor's internal topics must differ from the processor's topics")
        }
        guard settle >= .zero else { throw ConfigurationError("the settle time must not be negative") }
        guard stallAfter > .zero else { throw ConfigurationError("the stall time must be positive") }
        guard probeInterval > .zero else { throw ConfigurationError("the probe interval must be positive") }
        guard !processorGroup.isEmpty, processorGroup != pipeline.applicationID else {
            throw ConfigurationError("the auditor's group must differ from the processor's application id '\(processorGroup)'")
        }
    }
}

/// `polyglot audit` as a role on the ``StreamRuntime``, beside the processor's: SEMANTICS.md §5,
/// continuously and exactly once.
///
/// Task p reads partition p of the input, output and dead-letter topics, and of its own
/// repartition topic. The processor writes a card's output to the card's partition and a dead
/// letter to its input's partition, so task p sees every output of its cards and every dead
/// letter of its inputs; an input read on a partition that is not its card's is forwarded,
/// unchanged, to that partition of the repartition topic, and reconciled there. Each task runs
/// an ``AuditReconciler`` whose one lane is its output partition, over its ``AuditStore``: the
/// ledger and the window store it recomputes verdicts in are changelogged and committed with the
/// findings, which go to the findings topic in the same transaction; a finding is logged, and
/// counted, once its transaction committed.
///
/// Used from the runtime's thread only; ``counts`` may be read from any thread.
public final class AuditRole: StreamRole, @unchecked Sendable {
    // @unchecked: the scratch state and topic handles are used on the runtime's thread only;
    // `shared` is locked, and the logger is Sendable.
    public typealias Task = AuditTask

    public let configuration: AuditorConfiguration
    public let sources: [SourceTopic]
    public var changelogTopic: String { configuration.changelogTopic }
    public var sinkTopics: [String] { [configuration.findingsTopic] }
    /// Decisions from the processor's progress, stall checks and read progress sent to the
    /// other tasks: a few times a second.
    public var punctuationInterval: Duration? { .milliseconds(250) }
    /// Records deleted by retention before the auditor read them are reported (`truncated`),
    /// never skipped: an input, output or dead letter the auditor never saw must not make the
    /// records around it missing or orphans.
    public var reportsDeletedRecords: Bool { true }

    static let input = 0
    static let repartition = 1
    static let output = 2
    static let deadLetter = 3

    let logger: Logger
    let inputTopicBytes: [UInt8]
    let fingerprintBytes: [UInt8]
    let findingBuffer = ByteBuffer(capacity: 2_048)
    struct Topics {
        var findings: KafkaProducerTopic
        var repartition: KafkaProducerTopic
    }
    var topics: Topics?
    /// What the role's instances on the run's stream threads share: the counts, and the
    /// processor group's progress, read once for all of them.
    private final class Shared: Sendable {
        let counts = Mutex(AuditCounts())
        let progress = Mutex<ProcessorProgress?>(nil)
    }
    private let shared: Shared
    /// Whether the run this role is part of is stopping or stopped (set by ``ContinuousAuditor``):
    /// the progress thread ends with it.
    var runtimeIsStopping: @Sendable () -> Bool = { false }

    public convenience init(configuration: AuditorConfiguration, logger: Logger) {
        self.init(configuration: configuration, logger: logger, shared: Shared())
    }

    private init(configuration: AuditorConfiguration, logger: Logger, shared: Shared) {
        self.shared = shared
        self.configuration = configuration
        self.logger = logger
        let r = configuration.pipeline
        sources = [SourceTopic(r.inputTopic, label: "input"), SourceTopic(configuration.repartitionTopic, isInternal: true, label: "repartition"),
                   SourceTopic(r.outputTopic, label: "output"), SourceTopic(r.deadLetterTopic, label: "dead_letter")]
        inputTopicBytes = Array(r.inputTopic.utf8)
        fingerprintBytes = Array(configuration.audit.fingerprintDigest.map { Array($0.utf8) } ?? [])
    }

    /// Counts of committed work: records read and findings by kind.
    public var counts: AuditCounts { shared.counts.withLock { $0 } }

    /// The processor group's progress, read on a thread of its own while tasks run (nil until
    /// the first task starts).
    var progress: ProcessorProgress? { shared.progress.withLock { $0 } }

    /// Another instance for another stream thread of the same run, sharing ``counts`` and the
    /// processor's progress.
    public func makeThreadInstance() -> AuditRole {
        let sibling = AuditRole(configuration: configuration, logger: logger, shared: shared)
        sibling.runtimeIsStopping = runtimeIsStopping
        return sibling
    }

    public func openStore(directory: String) throws(SQLiteError) -> AuditStore {
        try AuditStore(directory: directory, parameters: configuration.pipeline.parameters, options: configuration.pipeline.storeOptions)
    }

    public func destroyStore(directory: String) throws(SQLiteError) {
        try AuditStore.destroy(directory: directory)
    }

    public func makeTask(partition: Int32, partitionCount: Int, store: AuditStore, collector: RecordCollector) throws -> AuditTask {
        if topics == nil {
            topics = Topics(findings: try collector.topic(configuration.findingsTopic),
                            repartition: try collector.topic(configuration.repartitionTopic))
        }
        store.ledger.loadQueue()
        let progress = shared.progress.withLock { current in
            if let current, !current.isStopped { return current }
            let c = configuration, r = c.pipeline
            let progress = ProcessorProgress(
                kafka: r.kafka, group: c.processorGroup,
                topics: .init(input: r.inputTopic, output: r.outputTopic, deadLetter: r.deadLetterTopic,
                              repartition: PipelineNames.repartitionTopic(group: c.processorGroup)),
                partitions: partitionCount, interval: c.probeInterval, logger: logger)
            progress.start(isStopping: runtimeIsStopping)
            current = progress
            return progress
        }
        return AuditTask(role: self, partition: partition, partitionCount: Int32(partitionCount), store: store, collector: collector,
                         progress: progress)
    }

    public func didHandleBatch() {}

    public static let metricFamilies: [MetricFamily] = [
        .counter("polyglot_audit_findings_total", help: "Audit findings committed, by kind."),
        .counter("polyglot_audit_records_total", help: "Records the auditor reconciled, by what they are (input, output, dead_letter)."),
        .gauge("polyglot_audit_waiting_inputs", help: "Inputs the processor's group has not committed past, per input partition."),
        .gauge("polyglot_audit_oldest_waiting_seconds", help: "How long the oldest of them has waited, per input partition (0: none waits)."),
    ]

    /// The committed counts as samples of ``metricFamilies``: every kind, seen or not.
    public var metricSamples: [MetricSample] {
        let c = counts
        let kinds: [(String, Int)] = [("missing", c.missing), ("duplicate", c.duplicate), ("orphan", c.orphan), ("mismatch", c.mismatch),
                                      (AuditFinding.Kind.highValue.rawValue, c.highValue), ("flagged", c.flagged), ("drift", c.drift), ("unreadable", c.unreadable),
                                      ("stalled", c.stalled), ("resumed", c.resumed), ("truncated", c.truncated)]
        let now = AuditTask.wallClock()
        let waiting = progress?.allWaiting ?? []
        return kinds.map { MetricSample("polyglot_audit_findings_total", labels: ["kind": $0.0], value: $0.1) }
            + [("input", c.inputs), ("output", c.outputs), ("dead_letter", c.deadLetters)].map {
                MetricSample("polyglot_audit_records_total", labels: ["record": $0.0], value: $0.1)
            }
            + waiting.enumerated().flatMap { p, w in
                [MetricSample("polyglot_audit_waiting_inputs", labels: ["partition": "\(p)"], value: w.count),
                 MetricSample("polyglot_audit_oldest_waiting_seconds", labels: ["partition": "\(p)"],
                              value: w.since.map { max(0, now - $0) / 1000 } ?? 0)]
            }
    }

    public var summary: [String: String] {
        Dictionary(uniqueKeysWithValues: counts.entries.map { ($0.name, "\($0.value)") })
    }

    /// A committed cycle's findings and counts.
    func publish(_ findings: [AuditFinding], _ counts: AuditCounts) {
        for finding in findings {
            // Verdicts and stalls are information; what says the processor is wrong is a warning.
            switch finding.kind {
            case .flagged, .highValue, .stalled, .resumed:
                logger.info("\(finding.logLine)", metadata: ["kind": "\(finding.kind.rawValue)"])
            default:
                logger.warning("\(finding.logLine)", metadata: ["kind": "\(finding.kind.rawValue)"])
            }
        }
        shared.counts.withLock { $0.add(counts) }
    }

    /// Sends one finding to the findings topic, keyed by its transaction id.
    func send(_ finding: AuditFinding, collector: RecordCollector) {
        findingBuffer.removeAll()
        finding.appendJSON(to: findingBuffer)
        let fingerprint = fingerprintBytes
        let key = finding.transactionId.map { Array($0.utf8) }
        let send = { (key: UnsafeRawBufferPointer?) in
            collector.send(to: self.topics!.findings, key: key, value: self.findingBuffer.bytes) { headers in
                if !fingerprint.isEmpty { fingerprint.withUnsafeBytes { headers.add(HeaderName.fingerprint, $0) } }
            }
        }
        if let key { key.withUnsafeBytes { send($0) } } else { send(nil) }
    }
}

/// One partition's audit: its reconciler over its store.
///
/// Missing and orphan come from positions (SEMANTICS.md §5). An output whose input is unknown
/// is an orphan once the auditor has read its source's input partition past the source: its
/// own input partition as this task reads it, another partition as that partition's task says
/// in the read-progress records it sends through the repartition topic (after the inputs it
/// forwarded, so the two arrive in order). A waiting input is missing once ``ProcessorProgress``
/// says the processor committed past it and this task has reconciled the outputs and dead
/// letters committed with it.
public final class AuditTask: StreamTask {
    unowned let role: AuditRole
    let partition: Int32
    let partitionCount: Int32
    public let store: AuditStore
    let collector: RecordCollector
    let progress: ProcessorProgress
    private var reconciler: AuditReconciler<SQLiteDetectorStore>
    private var decoder = TransactionDecoder()
    private let inputTopic: String
    private let outputTopic: String
    private let deadLetterTopic: String
    private let settleMilliseconds: Int64
    private let stallMilliseconds: Int64
    /// Findings and counts of the open cycle, and of the sealed one whose commit is in flight.
    private var cycleFindings: [AuditFinding] = []
    private var sealedFindings: [AuditFinding] = []
    private var sealedCounts = AuditCounts()
    private let source = ByteBuffer(capacity: 256)
    /// Next offset of each source this task has handled (from the store's checkpoint at start).
    private var next: [Int64]
    /// Per input partition: the offset up to which the auditor has read it (this task's own
    /// partition: `next[input]`; another: the last read-progress record from its task).
    private var readUpTo: [Int64]
    private var fingerprints = RepeatedHeaderText(), detectors = RepeatedHeaderText()
    /// What this task last told each other task of its input position, and when.
    private var sentReadUpTo: [Int64]
    private var sentAt: Int64 = 0
    /// The stall reported for this input partition and not yet resumed: its committed offset.
    private var stalledAt: Int64?
    /// Partitions that lost records before the auditor read them, as this task knows them: its
    /// own (from the runtime) and other input partitions (from their tasks' read progress). Kept
    /// in the store (``KnownGaps``): a restart knows what the run before it learned, and a gap
    /// met in a rolled-back cycle is met again.
    private var truncation: AuditTruncation

    /// The header of a read-progress record that says the sender's input partition lost records
    /// below an offset: `<input topic>/<partition>/<first offset read after the gap>`.
    static let readFromHeader = HeaderName.auditReadFrom

    /// The header of a read-progress record on the auditor's repartition topic:
    /// `<input topic>/<partition>/<next offset read>`.
    static let readProgressHeader = HeaderName.auditRead
    static let progressHeartbeat: Int64 = 5_000

    init(role: AuditRole, partition: Int32, partitionCount: Int32, store: AuditStore, collector: RecordCollector,
         progress: ProcessorProgress) {
        self.role = role
        self.partition = partition
        self.partitionCount = partitionCount
        self.store = store
        self.collector = collector
        self.progress = progress
        inputTopic = role.configuration.pipeline.inputTopic
        outputTopic = role.configuration.pipeline.outputTopic
        deadLetterTopic = role.configuration.pipeline.deadLetterTopic
        settleMilliseconds = role.configuration.settle.wholeMilliseconds
        stallMilliseconds = role.configuration.stallAfter.wholeMilliseconds
        next = []
        readUpTo = []
        sentReadUpTo = []
        truncation = store.ledger.knownGaps.truncation(outputTopic: outputTopic, deadLetterTopic: deadLetterTopic)
        reconciler = AuditReconciler(configuration: role.configuration.audit, ledger: store.ledger, windows: { _ in store.windows })
        reconciler.updateTruncation(truncation, inputTopic: inputTopic, lane: partition)
        resetPositions()
        reconciler.sourceIsRead = { [unowned self] in self.sourceIsRead($0, receivedAt: $1) }
    }

    static func wallClock() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    public func handle(_ m: borrowing KafkaRecordView, source from: Int) throws {
        let value = m.value ?? UnsafeRawBufferPointer(start: nil, count: 0)
        let now = Self.wallClock()
        next[from] = m.offset + 1
        switch from {
        case AuditRole.input:
            readUpTo[Int(partition)] = m.offset + 1
            let position = AuditPosition.record(topic: inputTopic, partition: m.partition, offset: m.offset)
            // Read once, here: the reader's view says where the card belongs and is what the
            // reconciler checks. A rejected record is reconciled here, with its dead letter.
            let parameters = role.configuration.pipeline.parameters
            if m.value != nil, let view = try? decoder.decodeView(value, kafkaTimestamp: m.timestamp, maxFutureSkew: parameters.maxFutureSkew) {
                if forwardIfAway(m, value: value, view: view) { return }
                reconciler.input(value, view: view, position: position, readAt: now)
            } else {
                reconciler.input(value, position: position, kafkaTimestamp: m.timestamp, readAt: now)
            }
        case AuditRole.repartition:
            if let read = m.header(Self.readProgressHeader) {
                // A gap in the sender's input partition is known before its read progress past it.
                if let from = m.header(Self.readFromHeader),
                   case .record(_, let p, let first)? = TopicAudit.position(from, inputTopic: inputTopic, inputTopicBytes: role.inputTopicBytes),
                   p >= 0, p < partitionCount, p != partition, truncation.deleted(.input, partition: p, below: first) {
                    reconciler.updateTruncation(truncation, inputTopic: inputTopic, lane: partition)
                }
                if case .record(_, let p, let offset)? = TopicAudit.position(read, inputTopic: inputTopic, inputTopicBytes: role.inputTopicBytes),
                   p >= 0, p < partitionCount, p != partition {
                    reconciler.truncation?.noteForwarded(from: p, at: offset)
                    if offset > readUpTo[Int(p)] {
                        readUpTo[Int(p)] = offset
                        reconciler.drainOrphans()
                    }
                }
                sendFindings()
                return
            }
            let position = m.header(HeaderName.source).flatMap {
                TopicAudit.position($0, inputTopic: inputTopic, inputTopicBytes: role.inputTopicBytes)
            } ?? .record(topic: role.configuration.repartitionTopic, partition: m.partition, offset: m.offset)
            reconciler.truncation?.noteForwarded(position)
            reconciler.input(value, position: position, kafkaTimestamp: m.timestamp, readAt: now)
        case AuditRole.output:
            reconciler.output(value, position: .record(topic: outputTopic, partition: m.partition, offset: m.offset),
                              lane: partition, source: sourcePosition(m), fingerprint: fingerprints.text(of: m.header(HeaderName.fingerprint)),
                              detector: detectors.text(of: m.header(DetectorParameters.headerName)), receivedAt: now)
        default:
            let source = sourcePosition(m)
            reconciler.deadLetter(value, code: m.header(HeaderName.error).map { String(decoding: $0, as: UTF8.self) },
                                  source: source,
                                  position: .record(topic: deadLetterTopic, partition: m.partition, offset: m.offset),
                                  receivedAt: now, inputRead: source != nil && sourceIsRead(source, receivedAt: now))
        }
        sendFindings()
    }

    /// Records the runtime found deleted before this task read them: one `truncated` finding,
    /// and what follows the gap is judged knowing it (an output whose input was deleted is not
    /// an orphan, an input whose output or dead letter was deleted is not missing).
    public func recordsDeleted(source: Int, from: Int64, to: Int64) throws {
        let c = role.configuration, r = c.pipeline
        let side: AuditTruncation.Side, topic: String, accounted: String
        switch source {
        case AuditRole.input:
            (side, topic, accounted) = (.input, r.inputTopic, "their outputs and dead letters are not orphans")
            next[AuditRole.input] = to
            readUpTo[Int(partition)] = max(readUpTo[Int(partition)], to)
        case AuditRole.output:
            (side, topic, accounted) = (.output, r.outputTopic, "inputs whose outputs were among them are not missing")
        case AuditRole.deadLetter:
            (side, topic, accounted) = (.deadLetter, r.deadLetterTopic, "rejected inputs whose dead letters were among them are not mismatches")
        default:
            (side, topic, accounted) = (.repartition, c.repartitionTopic, "inputs forwarded there went unchecked; their outputs are not orphans")
        }
        if truncation.deleted(side, partition: partition, below: to) {
            reconciler.updateTruncation(truncation, inputTopic: inputTopic, lane: partition)
        }
        reconciler.report(.truncated(side, topic: topic, partition: partition, from: from, to: to, accounted: accounted))
        if side == .input { reconciler.drainOrphans() }
        sendFindings()
    }

    /// Whether the auditor has read the input partition `source` names past it (or it names
    /// none, or another topic, or a partition the input does not have), or a probe begun after
    /// the output arrived found the input partition's end at or before it: its input cannot come.
    private func sourceIsRead(_ source: AuditPosition?, receivedAt: Int64) -> Bool {
        guard case .record(let topic, let p, let offset)? = source, topic == inputTopic, p >= 0, p < partitionCount else { return true }
        if offset < readUpTo[Int(p)] { return true }
        if let end = progress.inputEnd(p, after: receivedAt), offset >= end { return true }
        return false
    }

    private func sourcePosition(_ m: borrowing KafkaRecordView) -> AuditPosition? {
        m.header(HeaderName.source).flatMap {
            TopicAudit.position($0, inputTopic: inputTopic, inputTopicBytes: role.inputTopicBytes)
        }
    }

    /// A valid input whose card belongs to another partition goes there, through the auditor's
    /// repartition topic, by the processor's rule; true when it went. Unlike the processor's
    /// forward it drops the input's headers: the audit reads only the value and its source.
    private func forwardIfAway(_ m: borrowing KafkaRecordView, value: UnsafeRawBufferPointer, view: TransactionView) -> Bool {
        let record = value.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let escaped: Transaction? = view.idsAreRaw ? nil : decoder.transaction(from: view, in: value)
        var home: Int32 = partition
        FraudDetectionRole.withCardBytes(view: view, record: record, escaped: escaped) { card in
            home = role.configuration.pipeline.partitioner.partition(of: card, count: partitionCount)
            guard home != partition else { return }
            writeSource(partition: m.partition, offset: m.offset)
            let source = source
            collector.send(to: role.topics!.repartition, partition: home, key: UnsafeRawBufferPointer(card), value: value,
                           timestamp: m.timestamp) { headers in
                headers.add(HeaderName.source, source.bytes)
            }
        }
        return home != partition
    }

    private func writeSource(partition p: Int32, offset: Int64) {
        source.removeAll()
        source.append(role.inputTopicBytes)
        source.append(UInt8(ascii: "/"))
        source.appendInteger(Int64(p))
        source.append(UInt8(ascii: "/"))
        source.appendInteger(offset)
    }

    /// Tells every other task how far this one has read its input partition, behind the inputs
    /// it forwarded them: when it moved, and every few seconds (a task that moved here after a
    /// rebalance learns it again).
    private func sendReadProgress(now: Int64) {
        let read = next[AuditRole.input]
        let heartbeat = now - sentAt >= Self.progressHeartbeat
        guard heartbeat || sentReadUpTo.contains(where: { $0 != read }) else { return }
        sentAt = now
        writeSource(partition: partition, offset: read)
        let source = source
        let readFrom: [UInt8]? = truncation.inputs[partition].map { first in
            Array(role.inputTopicBytes) + Array("/\(partition)/\(first)".utf8)
        }
        for q in 0..<partitionCount where q != partition && (heartbeat || sentReadUpTo[Int(q)] != read) {
            collector.send(to: role.topics!.repartition, partition: q, key: nil, value: nil) { headers in
                headers.add(Self.readProgressHeader, source.bytes)
                if let readFrom { readFrom.withUnsafeBytes { headers.add(Self.readFromHeader, $0) } }
            }
            sentReadUpTo[Int(q)] = read
        }
    }

    private func sendFindings() {
        let findings = reconciler.takeFindings()
        guard !findings.isEmpty else { return }
        for finding in findings { role.send(finding, collector: collector) }
        cycleFindings += findings
    }

    public func heldBack(source: Int) -> Int64? {
        guard source == AuditRole.output, case .record(_, _, let offset)? = reconciler.firstWaitingOutput(lane: partition) else {
            return nil
        }
        return offset
    }

    public func punctuate(wallClock: Int64) throws -> Bool {
        var changed = false
        sendReadProgress(now: wallClock)
        if reconciler.drainOrphans() { changed = true }
        // Outputs are reconciled up to the first one still waiting for its input.
        var reconciledOutputs = next[AuditRole.output]
        if case .record(_, _, let offset)? = reconciler.firstWaitingOutput(lane: partition) { reconciledOutputs = offset }
        if let due = progress.due(for: partition, output: reconciledOutputs, deadLetters: next[AuditRole.deadLetter]),
           reconciler.decideMissing(below: due, inputTopic: inputTopic) {
            changed = true
        }
        if reconciler.expire(olderThan: wallClock - settleMilliseconds) { changed = true }
        if checkStall(now: wallClock) { changed = true }
        sendFindings()
        return changed
    }

    /// One `stalled` finding when this input partition's oldest input waits for the processor
    /// longer than the stall time, and one `resumed` when its committed offset moves again.
    private func checkStall(now: Int64) -> Bool {
        let w = progress.waiting(partition)
        let group = role.configuration.processorGroup
        func finding(_ kind: AuditFinding.Kind, message: String) -> AuditFinding {
            AuditFinding(kind: kind, input: .record(topic: inputTopic, partition: partition, offset: max(w.committed, 0)),
                         message: message, group: group, waitingInputs: w.count, waitingSince: w.since)
        }
        if let at = stalledAt {
            guard w.committed > at || w.count == 0 else { return false }
            stalledAt = nil
            emit(finding(.resumed, message: "the processor's group committed past the stalled input"))
            return true
        }
        // A group with no committed offset here has not started on this partition (or commits
        // where this cluster does not keep it): the progress thread says so once, in the log.
        guard w.committed >= 0, let since = w.since, now - since >= stallMilliseconds else { return false }
        stalledAt = w.committed
        emit(finding(.stalled, message: "the processor's group has not committed past this input for \((now - since) / 1000) s"))
        return true
    }

    /// Sends a finding of the task's own (not the reconciler's) in the open cycle.
    private func emit(_ finding: AuditFinding) {
        role.send(finding, collector: collector)
        cycleFindings.append(finding)
        ownCounts.count(finding.kind)
    }
    private var ownCounts = AuditCounts()

    public func sealed() {
        sealedFindings += cycleFindings
        cycleFindings.removeAll()
        sealedCounts.add(reconciler.takeCounts())
        sealedCounts.add(ownCounts)
        ownCounts = AuditCounts()
    }

    public func committed() {
        role.publish(sealedFindings, sealedCounts)
        sealedFindings.removeAll()
        sealedCounts = AuditCounts()
    }

    public func rolledBack() {
        // The store (ledger and windows) is back at the last commit; what the reconciler holds in
        // memory (waiting outputs, the lane's detector) is derived from records read since then,
        // which the runtime reads again.
        reconciler = AuditReconciler(configuration: role.configuration.audit, ledger: store.ledger, windows: { [store] _ in store.windows })
        reconciler.sourceIsRead = { [unowned self] in self.sourceIsRead($0, receivedAt: $1) }
        truncation = store.ledger.knownGaps.truncation(outputTopic: outputTopic, deadLetterTopic: deadLetterTopic)
        reconciler.updateTruncation(truncation, inputTopic: inputTopic, lane: partition)
        cycleFindings.removeAll()
        sealedFindings.removeAll()
        sealedCounts = AuditCounts()
        ownCounts = AuditCounts()
        stalledAt = nil
        // Positions go back to the last commit, which the runtime rewinds to; what other tasks
        // said of their reading comes again with their next read-progress records.
        resetPositions()
    }

    private func resetPositions() {
        let positions = store.checkpoint?.positions ?? []
        next = (0..<4).map { $0 < positions.count ? max(0, positions[$0]) : 0 }
        readUpTo = Array(repeating: 0, count: Int(partitionCount))
        readUpTo[Int(partition)] = next[AuditRole.input]
        sentReadUpTo = Array(repeating: -1, count: Int(partitionCount))
    }
}

extension RoleRunner where Role == AuditRole {
    /// `observer` hears of each commit (``RoleMetrics`` is one).
    public convenience init(configuration: AuditorConfiguration, logger: Logger = Logger(label: "polyglot.audit"),
                            observer: (any RuntimeObserver)? = nil) throws(ConfigurationError) {
        try configuration.validate()
        self.init(role: AuditRole(configuration: configuration, logger: logger),
                  runtimeConfiguration: RuntimeConfiguration(role: configuration.pipeline), logger: logger, observer: observer)
        let runtime = self.runtime
        let isStopping: @Sendable () -> Bool = { runtime.isStopping || runtime.statistics.phase == .stopped }
        for thread in runtime.runtimes { thread.role.runtimeIsStopping = isStopping }
    }

    /// Committed counts: records read and findings by kind.
    public var counts: AuditCounts { role.counts }
}
