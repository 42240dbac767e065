#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import FraudModel
import PolyglotSupport

/// Timings of ``SQLiteWindowStore`` on its three hot paths, for a benchmark command and for
/// tuning. Not a test: the figures depend on the machine.
///
/// 1. **detect**: records through ``Detector`` and the store in commit cycles
///    (``SQLiteWindowStore/pendingChanges(into:)``, then commit), as one `polyglot process` task
///    runs them.
/// 2. **commit+flush**: one commit of a dirty set of a given size and its write to SQLite, first
///    inserting every key, then updating every key.
/// 3. **restore**: applying the changelog that run 1 produced to a new store.
///
/// Run it from a release build (`swift build -c release`); the figures vary with the card count
/// and records per commit: `Configuration(records: 100_000, cards: 312, recordsPerCommit: 625,
/// eventTimeStep: 320)` is one partition of `process` at 200,000 records/s over 32 partitions
/// with generator data over 10,000 cards, the defaults a harder case (50,000 cards, a new key
/// for nearly every record).
public enum WindowStoreBenchmark {
    public struct Configuration: Sendable {
        public var records: Int
        public var cards: Int
        /// Records per commit cycle in run 1.
        public var recordsPerCommit: Int
        /// Event-time step between records in run 1, in ms (with the default 1 h retention, 10 ms
        /// makes 500,000 records span 83 minutes, so retention purges happen too).
        public var eventTimeStep: Int64
        /// Dirty keys in run 2 (half windows, half card maxima), committed and flushed to SQLite.
        public var commitKeys: Int
        public var parameters: DetectorParameters

        public init(records: Int = 500_000, cards: Int = 50_000, recordsPerCommit: Int = 20_000, eventTimeStep: Int64 = 10,
                    commitKeys: Int = 20_000, parameters: DetectorParameters = .default) {
            self.records = records
            self.cards = cards
            self.recordsPerCommit = recordsPerCommit
            self.eventTimeStep = eventTimeStep
            self.commitKeys = commitKeys
            self.parameters = parameters
        }
    }

    public struct Figures: Sendable, CustomStringConvertible {
        public var records = 0
        public var detectSeconds = 0.0
        public var commits = 0
        public var commitSecondsInDetect = 0.0
        public var pendingChangesSecondsInDetect = 0.0
        public var flushesInDetect = 0
        public var keysFlushedInDetect = 0
        public var flushSecondsInDetect = 0.0
        public var changelogRecords = 0
        public var commitKeys = 0
        public var commitInsertSeconds = 0.0
        public var commitUpdateSeconds = 0.0
        public var restoreSeconds = 0.0
        /// CPU time of this thread per phase: on a shared machine a fairer figure than wall time.
        public var detectCPUSeconds = 0.0
        public var commitInsertCPUSeconds = 0.0
        public var commitUpdateCPUSeconds = 0.0
        public var restoreCPUSeconds = 0.0

        public var description: String {
            func rate(_ n: Int, _ s: Double) -> String { s > 0 ? "\(Int((Double(n) / s).rounded()))/s" : "n/a" }
            func ms(_ s: Double) -> String { String(Int((s * 1000).rounded())) + " ms" }
            return """
                detect:  \(records) records, \(commits) commits in \(ms(detectSeconds)) = \(rate(records, detectSeconds)) \
                (of which pendingChanges \(ms(pendingChangesSecondsInDetect)), commit \(ms(commitSecondsInDetect)) including \(flushesInDetect) flushes of \
                \(keysFlushedInDetect) keys in \(ms(flushSecondsInDetect))); CPU \(ms(detectCPUSeconds)) = \(rate(records, detectCPUSeconds))
                commit+flush: \(commitKeys) changed cards: insert \(ms(commitInsertSeconds)) (CPU \(ms(commitInsertCPUSeconds))), \
                update \(ms(commitUpdateSeconds)) (CPU \(ms(commitUpdateCPUSeconds)))
                restore: \(changelogRecords) changelog records in \(ms(restoreSeconds)) = \(rate(changelogRecords, restoreSeconds)); \
                CPU \(ms(restoreCPUSeconds)) = \(rate(changelogRecords, restoreCPUSeconds))
                """
        }
    }

    /// Runs the three measurements in `directory` (three store subdirectories are created there
    /// and left for inspection; delete the directory afterwards).
    public static func run(directory: String, configuration c: Configuration = Configuration()) throws -> Figures {
        var figures = Figures()
        let clock = ContinuousClock()
        let options = SQLiteWindowStore.Options(integrityCheck: .none)
        let cardIds = (0..<c.cards).map { "card-" + String(1_000_000_000 + $0) }

        // 1. Detector through the store in commit cycles; keep the changelog for run 3.
        var store = try SQLiteWindowStore(directory: directory + "/detect", parameters: c.parameters, options: options)
        var detector = Detector(parameters: c.parameters)
        var changelog: [ChangelogRecord] = []
        var random = UInt64(0x2545_F491_4F6C_DD1D)
        var offset: Int64 = 0
        let detectStart = clock.now
        let detectCPU = threadCPUSeconds()
        var commitTime = Duration.zero
        var pendingTime = Duration.zero
        var untimed = Duration.zero
        var batch = ChangelogBatch()
        for i in 0..<c.records {
            // xorshift64: cheap and deterministic, so the figures are comparable run to run.
            random ^= random << 13
            random ^= random >> 7
            random ^= random << 17
            let card = cardIds[Int(random % UInt64(c.cards))]
            _ = detector.process(card: card, eventTime: Int64(i) * c.eventTimeStep, store: &store)
            if (i + 1) % c.recordsPerCommit == 0 || i + 1 == c.records {
                let t0 = clock.now
                try store.pendingChanges(into: &batch)
                let t1 = clock.now
                pendingTime += t1 - t0
                offset = Int64(i + 1)
                try store.commit(checkpoint: StoreCheckpoint(sourceOffset: offset, changelogOffset: Int64(changelog.count + batch.count)))
                let t2 = clock.now
                commitTime += t2 - t1
                // Kept for run 3; not part of the timed cycle.
                changelog += batch.records
                untimed += clock.now - t2
                figures.commits += 1
            }
        }
        figures.records = c.records
        figures.flushesInDetect = store.statistics.flushes
        figures.keysFlushedInDetect = store.statistics.keysFlushed
        figures.flushSecondsInDetect = store.statistics.flushTime.inSeconds
        figures.detectSeconds = (clock.now - detectStart - untimed).inSeconds
        figures.detectCPUSeconds = threadCPUSeconds() - detectCPU - untimed.inSeconds
        figures.commitSecondsInDetect = commitTime.inSeconds
        figures.pendingChangesSecondsInDetect = pendingTime.inSeconds
        try store.close()

        // 2. One commit of `commitKeys` changed cards, inserted, then updated.
        let commitStore = try SQLiteWindowStore(directory: directory + "/commit", parameters: c.parameters, options: options)
        let commitCards = (0..<c.commitKeys).map { "card-" + String(1_000_000_000 + $0) }
        for round in 0..<2 {
            for (k, card) in commitCards.enumerated() {
                // A key is a card: one row and one changelog record each.
                commitStore.putAccepted(card, windowStart: 0, count: Int64(round + 1),
                                        cardMax: Int64(round) * 1_000 + Int64(k % 1_000), streamTime: Int64(k))
            }
            let t0 = clock.now
            let cpu0 = threadCPUSeconds()
            try commitStore.commit(checkpoint: StoreCheckpoint(sourceOffset: Int64(round), changelogOffset: Int64(round)))
            try commitStore.flush()
            let elapsed = (clock.now - t0).inSeconds
            let cpu = threadCPUSeconds() - cpu0
            if round == 0 {
                figures.commitInsertSeconds = elapsed
                figures.commitInsertCPUSeconds = cpu
            } else {
                figures.commitUpdateSeconds = elapsed
                figures.commitUpdateCPUSeconds = cpu
            }
        }
        figures.commitKeys = c.commitKeys
        try commitStore.close()

        // 3. Restore run 1's changelog into a new store, committing every 250,000 records.
        let restored = try SQLiteWindowStore(directory: directory + "/restore", parameters: c.parameters, options: options)
        let restoreStart = clock.now
        let restoreCPU = threadCPUSeconds()
        for (i, record) in changelog.enumerated() {
            try restored.apply(record)
            if (i + 1) % 250_000 == 0 {
                try restored.commitRestore(checkpoint: StoreCheckpoint(sourceOffset: -1, changelogOffset: Int64(i + 1)))
            }
        }
        try restored.commitRestore(checkpoint: StoreCheckpoint(sourceOffset: offset, changelogOffset: Int64(changelog.count)))
        figures.restoreSeconds = (clock.now - restoreStart).inSeconds
        figures.restoreCPUSeconds = threadCPUSeconds() - restoreCPU
        figures.changelogRecords = changelog.count
        try restored.close()
        return figures
    }

    static func threadCPUSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
