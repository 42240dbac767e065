import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport

/// One instance of a role: its stream threads, as Kafka Streams' `num.stream.threads`. Each
/// thread is a ``StreamRuntime`` of its own (a group member with its own consumer, transactional
/// producer, tasks and role instance), so the threads share nothing on the record path; the
/// group's range assignment gives each of them whole partitions, every source's partition p to
/// one thread.
///
/// The group starts its threads together (they join the consumer group at once, one
/// rebalance), stops them together, ends `--until-end` when every thread has reached its end
/// (``UntilEndAgreement``), stops the others when one fails, and reports them as one: its
/// ``statistics``, and one final log line.
public final class StreamThreadGroup<Role: StreamRole>: Sendable {
    /// The threads' run loops, thread 1 first.
    public let runtimes: [StreamRuntime<Role>]
    let coordination: StreamThreadCoordination
    let logger: Logger

    /// `roles`: one instance per thread (a role is used on its thread only). Thread 1 uses
    /// `configuration` as given; thread n's transactional id ends in `-n`
    /// (``RuntimeConfiguration/forThread(_:of:)``).
    public init(roles: [Role], configuration: RuntimeConfiguration, logger: Logger, observer: (any RuntimeObserver)? = nil) {
        precondition(!roles.isEmpty, "a role runs on at least one thread")
        let coordination = StreamThreadCoordination(threads: roles.count)
        self.coordination = coordination
        self.logger = logger
        runtimes = roles.enumerated().map { i, role in
            // Each thread's lines say which thread wrote them, when there are several.
            var threadLogger = logger
            if roles.count > 1 { threadLogger[metadataKey: "stream_thread"] = .stringConvertible(i + 1) }
            let runtime = StreamRuntime(role: role, configuration: configuration.forThread(i, of: roles.count), logger: threadLogger, observer: observer)
            runtime.coordination = roles.count > 1 ? coordination : nil
            runtime.threadIndex = i
            return runtime
        }
    }

    /// Thread 1's role (each thread has its own instance; what they count is shared).
    public var role: Role { runtimes[0].role }
    /// Thread 1's settings.
    public var configuration: RuntimeConfiguration { runtimes[0].configuration }

    /// Makes every thread's run loop call a copy of the per-record path compiled for `Role`
    /// (``StreamRuntime/specializeRecordHandling()``): call it where `Role` is concrete.
    @inlinable
    public func specializeRecordHandling() {
        for runtime in runtimes { runtime.specializeRecordHandling() }
    }

    /// Asks every thread to finish (``StreamRuntime/requestStop()``). Any thread.
    public func requestStop() {
        coordination.stop()
        for runtime in runtimes { runtime.requestStop() }
    }

    public var isStopping: Bool { runtimes[0].isStopping }

    /// The threads' statistics as one (``RuntimeStatistics/merging(_:)``). Any thread.
    public var statistics: RuntimeStatistics {
        runtimes.count == 1 ? runtimes[0].statistics : RuntimeStatistics.merging(runtimes.map(\.statistics))
    }

    // MARK: - Run

    /// Blocking: the whole run, thread 1 on the calling thread and the others on threads named
    /// `threadName-2`, `threadName-3`, ... (cut to 15 bytes). Call on a dedicated thread.
    public func run(threadName: String) throws {
        let started = ContinuousClock.now
        guard runtimes.count > 1 else {
            logEnd(started: try runtimes[0].runThread(), since: started)
            return
        }
        let results = ConditionLock<[Result<Bool, any Error>?]>(Array(repeating: nil, count: runtimes.count))
        for i in 1..<runtimes.count {
            let suffix = "-\(i + 1)"
            DedicatedThread.detach(name: String(decoding: threadName.utf8.prefix(15 - suffix.utf8.count), as: UTF8.self) + suffix, stackSize: 8 << 20) {
                let result = self.runThread(i)
                results.withLock { $0[i] = result }
            }
        }
        let first = runThread(0)
        results.withLock { $0[0] = first }
        let all = results.wait(until: { $0.allSatisfy { $0 != nil } }) { $0.map { $0! } }
        var anyStarted = false
        for result in all {
            switch result {
            case .failure(let error): throw error
            case .success(let didStart): anyStarted = anyStarted || didStart
            }
        }
        logEnd(started: anyStarted, since: started)
    }

    private func logEnd(started: Bool, since start: ContinuousClock.Instant) {
        if started {
            runtimes[0].logStopped(statistics: statistics, elapsed: ContinuousClock.now - start, on: logger)
        } else {
            logger.notice("stopped before start-up finished")
        }
    }

    /// One thread's run; a failure stops the others, which commit what they hold and leave.
    private func runThread(_ i: Int) -> Result<Bool, any Error> {
        let result = Result { try runtimes[i].runThread() }
        if case .failure = result { requestStop() }
        return result
    }

    /// Runs on a dedicated thread (named `threadName`, at most 15 bytes) until stopped, bridged
    /// to async.
    public func runOnDedicatedThread(threadName: String) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            DedicatedThread.detach(name: threadName, stackSize: 8 << 20) {
                continuation.resume(with: Result { try self.run(threadName: threadName) })
            }
        }
    }

    /// Runs on dedicated threads until stopped or until the service group shuts down
    /// gracefully (SIGTERM, SIGINT), which stops the run the way ``requestStop()`` does. So
    /// does cancellation: the group cancels it when a service beside it fails (the HTTP
    /// endpoints cannot listen), and the run then commits what it holds and leaves the group.
    public func runUntilGracefulShutdown(threadName: String) async throws {
        try await withTaskCancellationOrGracefulShutdownHandler {
            try await runOnDedicatedThread(threadName: threadName)
        } onCancelOrGracefulShutdown: {
            self.requestStop()
        }
    }
}

/// What an instance's stream threads agree on: starting together and, under `--until-end`,
/// stopping together. Any thread.
final class StreamThreadCoordination: Sendable {
    private struct State {
        var arrived = 0
        var stopped = false
        var untilEnd: UntilEndAgreement
    }
    private let state: ConditionLock<State>
    let threads: Int

    init(threads: Int) {
        self.threads = threads
        state = ConditionLock(State(untilEnd: UntilEndAgreement(threads: threads)))
    }

    /// Blocks until every thread is ready to join the consumer group, so they join in one
    /// rebalance rather than one each. Throws ``RuntimeStopped`` once the group is stopping (a
    /// thread failed to start, or a stop was requested).
    func arriveAtStart() throws(RuntimeStopped) {
        state.withLock { $0.arrived += 1 }
        let stopped = state.wait(until: { $0.arrived >= self.threads || $0.stopped }) { $0.stopped }
        if stopped { throw RuntimeStopped() }
    }

    /// Wakes a thread waiting at the start: the group is stopping.
    func stop() { state.withLock { $0.stopped = true } }

    /// Thread `thread` checked whether it has reached its end: whether it stops now
    /// (``UntilEndAgreement``).
    func reportEnd(thread: Int, atEnd: Bool) -> Bool {
        state.withLock { $0.untilEnd.report(thread: thread, atEnd: atEnd) }
    }
}
