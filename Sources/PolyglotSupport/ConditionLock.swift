#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// State guarded by a lock that a thread can wait on until a condition over it holds: the one
/// way a thread of this package blocks until another has done something (a queue has room, a
/// commit has returned, a loop has ended). Everything that only needs mutual exclusion uses
/// Synchronization's `Mutex`.
///
/// A pthread mutex and condition variable, because `Mutex` has no condition to wait on. Every
/// change made under the lock wakes every waiter, which re-checks its own condition: waiters
/// are few (one or two threads per lock), so a broadcast costs next to nothing, and no caller
/// can forget to signal.
///
/// Only for dedicated threads: waiting blocks the thread, which must never be one of the Swift
/// cooperative pool's.
///
/// @unchecked: `state` is only read or written with `mutex` held.
package final class ConditionLock<State>: @unchecked Sendable {
    private var state: State
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    package init(_ state: State) {
        self.state = state
        pthread_mutex_init(mutex, nil)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        #if os(Linux)
        // Timed waits measure from the monotonic clock: a wall-clock step does not shorten them.
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        #endif
        pthread_cond_init(changed, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        changed.deallocate()
        mutex.deallocate()
    }

    /// Reads or changes the state; every waiter then re-checks its condition.
    package func withLock<Result, Failure: Error>(_ body: (inout State) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        return try body(&state)
    }

    /// Blocks until `ready` holds, then runs `body` with the lock still held.
    package func wait<Result, Failure: Error>(until ready: (State) -> Bool,
                                              then body: (inout State) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        while !ready(state) { pthread_cond_wait(changed, mutex) }
        return try body(&state)
    }

    /// Blocks until `ready` holds or `timeout` has passed, then runs `body` with the lock still
    /// held and whether `ready` holds.
    package func wait<Result>(until ready: (State) -> Bool, timeout: Duration,
                              then body: (inout State, _ ready: Bool) -> Result) -> Result {
        let deadline = Self.deadline(after: timeout)
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        while !ready(state) {
            var until = deadline
            if pthread_cond_timedwait(changed, mutex, &until) == ETIMEDOUT { break }
        }
        return body(&state, ready(state))
    }

    /// The absolute time `timeout` from now on the clock the condition measures with.
    private static func deadline(after timeout: Duration) -> timespec {
        var now = timespec()
        #if os(Linux)
        clock_gettime(CLOCK_MONOTONIC, &now)
        #else
        clock_gettime(CLOCK_REALTIME, &now)
        #endif
        let (seconds, attoseconds) = max(timeout, .zero).components
        var nanoseconds = Int(now.tv_nsec) + Int(attoseconds / 1_000_000_000)
        var wholeSeconds = Int(now.tv_sec) + Int(seconds)
        if nanoseconds >= 1_000_000_000 {
            nanoseconds -= 1_000_000_000
            wholeSeconds += 1
        }
        return timespec(tv_sec: wholeSeconds, tv_nsec: nanoseconds)
    }
}
