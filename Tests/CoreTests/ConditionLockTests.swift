import Foundation
import Testing
@testable import PolyglotSupport

/// The one helper a thread blocks on until another has done something, and the queue built on
/// it: waits end when the condition holds, timed waits end at their timeout, a closed queue
/// drains then ends.
@Suite("Condition lock")
struct ConditionLockTests {
    @Test func aWaitEndsWhenAnotherThreadMakesTheConditionHold() {
        let lock = ConditionLock(0)
        let thread = DedicatedThread.start(name: "test-counter") {
            for _ in 0..<1_000 { lock.withLock { $0 += 1 } }
        }
        let seen = lock.wait(until: { $0 == 1_000 }) { $0 }
        thread.join()
        #expect(seen == 1_000)
    }

    @Test func aTimedWaitEndsAtItsTimeoutWhenTheConditionNeverHolds() {
        let lock = ConditionLock(false)
        let start = ContinuousClock.now
        let ready = lock.wait(until: { $0 }, timeout: .milliseconds(50)) { _, ready in ready }
        let waited = ContinuousClock.now - start
        #expect(!ready)
        #expect(waited >= .milliseconds(50))
        #expect(waited < .seconds(10))
    }

    @Test func aTimedWaitReturnsAsSoonAsTheConditionHolds() {
        let lock = ConditionLock(false)
        let thread = DedicatedThread.start { lock.withLock { $0 = true } }
        let ready = lock.wait(until: { $0 }, timeout: .seconds(60)) { _, ready in ready }
        thread.join()
        #expect(ready)
    }

    @Test func aQueueHandsOverInOrderWithinItsLimitThenDrainsWhenClosed() {
        let queue = HandoffQueue<Int>(limit: 4)
        let consumed = ConditionLock<[Int]>([])
        let consumer = DedicatedThread.start(name: "test-take") {
            while let n = queue.take() { consumed.withLock { $0.append(n) } }
        }
        for n in 0..<10_000 { #expect(queue.put(n)) }
        queue.close()
        consumer.join()
        #expect(consumed.withLock { $0 } == Array(0..<10_000))
        #expect(!queue.put(1), "a closed queue refuses more")
    }

    @Test func aWorkerRunsItsJobsInOrderAndStopsAfterThem() {
        let worker = DedicatedWorker(queueLimit: 2)
        let ran = ConditionLock<[Int]>([])
        for n in 0..<100 { worker.submit { ran.withLock { $0.append(n) } } }
        worker.stop()
        #expect(ran.withLock { $0 } == Array(0..<100))
    }
}
