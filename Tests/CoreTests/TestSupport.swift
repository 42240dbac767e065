import Foundation
import Synchronization
import Testing
@testable import FraudModel

/// Paths the tests read: the repository and the shared vectors beside it.
enum TestPaths {
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `../shared/vectors` beside the repository (or `POLYGLOT_VECTORS`).
    static var vectors: URL {
        if let override = ProcessInfo.processInfo.environment["POLYGLOT_VECTORS"] {
            return URL(fileURLWithPath: override)
        }
        return repositoryRoot.deletingLastPathComponent().appendingPathComponent("shared/vectors")
    }

    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("polyglot-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

extension TransactionDecoder {
    /// Decodes a string's UTF-8 bytes; the rejection code or nil.
    mutating func code(of text: String, kafkaTimestamp: Int64? = nil) -> RejectionCode? {
        code(of: Array(text.utf8), kafkaTimestamp: kafkaTimestamp)
    }

    mutating func code(of bytes: [UInt8], kafkaTimestamp: Int64? = nil) -> RejectionCode? {
        do {
            _ = try decode(bytes, kafkaTimestamp: kafkaTimestamp)
            return nil
        } catch {
            return error.code
        }
    }
}

/// Permission bits of a file.
func fileMode(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

/// Bounds how many tests that start brokers and processors run at once, whichever suite they
/// are in. Such a test mostly waits (a group join on the dev broker takes 3 s, a rebalance
/// `session.timeout.ms` minus 1 s, a slow broker by design), so six side by side still leave a
/// 2-core machine under one core busy on average over a full `swift test`; many more at once and
/// timeouts and rebalances, not the code, would decide the results. Each test has its own mock
/// cluster, topics and state directories, so they share nothing but the CPU. Apply to a suite:
/// each of its test cases takes a slot for its whole run, tests marked ``LongBrokerTestTrait``
/// first, so the longest ones do not start last and hold up the end of the run.
struct BrokerHeavyTrait: SuiteTrait, TestTrait, TestScoping {
    /// A scope per test case (and none for the suite, which would hold a slot while its own
    /// tests wait for one).
    var isRecursive: Bool { true }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> Self? {
        testCase == nil ? nil : self
    }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        let isLong = test.traits.contains { $0 is LongBrokerTestTrait }
        await Self.gate.acquire(first: isLong)
        defer { Self.gate.release() }
        try await function()
    }

    /// Broker-heavy test cases running at once.
    static let slots = 6
    static let gate = AsyncGate(permits: slots)
}

/// Marks a broker-heavy test that takes far longer than most (tens of seconds: several group
/// joins, a slow broker by design), so it gets a slot before the others.
struct LongBrokerTestTrait: TestTrait {}

extension Trait where Self == BrokerHeavyTrait {
    static var brokerHeavy: Self { BrokerHeavyTrait() }
}

extension Trait where Self == LongBrokerTestTrait {
    static var longOnTheBroker: Self { LongBrokerTestTrait() }
}

/// A counting semaphore held across suspension points, granted in request order, except that
/// requests made with `first` go ahead of the others.
final class AsyncGate: Sendable {
    private struct State {
        var free: Int
        var first: [CheckedContinuation<Void, Never>] = []
        var others: [CheckedContinuation<Void, Never>] = []
    }

    private let state: Mutex<State>

    init(permits: Int) {
        precondition(permits > 0)
        state = Mutex(State(free: permits))
    }

    func acquire(first: Bool = false) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state in
                guard state.free > 0 else {
                    if first { state.first.append(continuation) } else { state.others.append(continuation) }
                    return false
                }
                state.free -= 1
                return true
            }
            if granted { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            if !state.first.isEmpty { return state.first.removeFirst() }
            if !state.others.isEmpty { return state.others.removeFirst() }
            state.free += 1
            return nil
        }
        next?.resume()
    }
}
