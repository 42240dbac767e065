import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A bounded blocking queue between two dedicated threads (never the Swift cooperative pool:
/// `take` and `put` block).
///
/// A ``ConditionLock`` rather than an actor or AsyncStream: the replay pipeline hands over a
/// batch every few thousand records from plain threads, and an await per batch would put its
/// threads' work on the cooperative pool.
package final class HandoffQueue<Element>: Sendable {
    private struct Contents {
        var items: [Element] = []
        var closed = false
    }

    private let contents = ConditionLock(Contents())
    private let limit: Int

    package init(limit: Int) {
        self.limit = limit
    }

    /// Blocks while the queue is full. Returns false (dropping `element`) once closed.
    @discardableResult
    package func put(_ element: Element) -> Bool {
        let limit = self.limit
        return contents.wait(until: { $0.items.count < limit || $0.closed }) { c in
            if c.closed { return false }
            c.items.append(element)
            return true
        }
    }

    /// Blocks until an element is available; nil once closed and drained.
    package func take() -> Element? {
        contents.wait(until: { !$0.items.isEmpty || $0.closed }) { c in
            c.items.isEmpty ? nil : c.items.removeFirst()
        }
    }

    /// Wakes every waiter; `take` drains what is left, then returns nil.
    package func close() {
        contents.withLock { $0.closed = true }
    }
}

/// Runs a closure on a new OS thread and lets the caller wait for it: the one way this package
/// starts a thread of its own for blocking work (C calls, SQLite, file I/O) that must stay off
/// the Swift cooperative pool.
///
/// @unchecked: `thread` is written once, by `start`, before the handle is shared, and `body`
/// is immutable; `pthread_join` is itself thread-safe.
package final class DedicatedThread: @unchecked Sendable {
    private var thread = pthread_t()
    private let name: String?
    private let body: () -> Void

    private init(name: String?, body: @escaping () -> Void) {
        self.name = name
        self.body = body
    }

    /// Starts `body` on its own thread, named `name` (at most 15 bytes reach the OS), with a
    /// stack of `stackSize` bytes (nil: the system's default). Call ``join()`` once.
    package static func start(name: String? = nil, stackSize: Int? = nil, _ body: @escaping () -> Void) -> DedicatedThread {
        let t = DedicatedThread(name: name, body: body)
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        if let stackSize { pthread_attr_setstacksize(&attributes, stackSize) }
        let box = Unmanaged.passRetained(t).toOpaque()
        let rc = pthread_create(&t.thread, &attributes, { arg in
            let t = Unmanaged<DedicatedThread>.fromOpaque(arg!).takeRetainedValue()
            // Named from inside: on Linux a name set before start does not reach the OS thread.
            if let name = t.name { Thread.current.name = name }
            t.body()
            return nil
        }, box)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        return t
    }

    /// Starts `body` on its own thread that nobody joins: it tells its waiters itself (a
    /// continuation, a flag) when it is done.
    package static func detach(name: String? = nil, stackSize: Int? = nil, _ body: @escaping () -> Void) {
        let t = start(name: name, stackSize: stackSize, body)
        pthread_detach(t.thread)
    }

    /// Waits for the thread to finish.
    package func join() { pthread_join(thread, nil) }
}

/// One dedicated thread that runs the jobs handed to it, in order: for blocking work that
/// recurs (a transaction commit every interval), which then costs no thread start each time.
///
/// Call ``stop()`` when done: it runs what was handed over, then ends the thread.
package final class DedicatedWorker: Sendable {
    private let jobs: HandoffQueue<@Sendable () -> Void>
    private let thread: DedicatedThread

    /// Starts the thread; at most `queueLimit` jobs wait, `submit` blocks beyond that.
    package init(queueLimit: Int = 16) {
        let jobs = HandoffQueue<@Sendable () -> Void>(limit: queueLimit)
        self.jobs = jobs
        thread = DedicatedThread.start {
            while let job = jobs.take() { job() }
        }
    }

    /// Hands `job` to the thread. Returns false (dropping it) once stopped.
    @discardableResult
    package func submit(_ job: @escaping @Sendable () -> Void) -> Bool { jobs.put(job) }

    /// Runs the jobs already handed over, then ends the thread and waits for it.
    package func stop() {
        jobs.close()
        thread.join()
    }
}
