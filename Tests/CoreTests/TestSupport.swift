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

/// Runs a suite that starts brokers and processors while no other such suite runs: each test
/// spends several threads on a mock cluster, clients and a processor, and two suites at once
/// oversubscribe a 2-core machine until timeouts and rebalances decide the results. Apply with
/// `.serialized`, which orders the suite's own tests.
struct BrokerHeavyTrait: SuiteTrait, TestScoping {
    /// One scope around the whole suite, not one per test.
    var isRecursive: Bool { false }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        await Self.gate.acquire()
        defer { Self.gate.release() }
        try await function()
    }

    static let gate = AsyncGate()
}

extension Trait where Self == BrokerHeavyTrait {
    static var brokerHeavy: Self { BrokerHeavyTrait() }
}

/// A lock held across suspension points, granted in request order.
final class AsyncGate: Sendable {
    private let state = Mutex<(isHeld: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    func acquire() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let granted = state.withLock { state in
                if state.isHeld {
                    state.waiters.append(continuation)
                    return false
                }
                state.isHeld = true
                return true
            }
            if granted { continuation.resume() }
        }
    }

    func release() {
        let next = state.withLock { state -> CheckedContinuation<Void, Never>? in
            guard !state.waiters.isEmpty else {
                state.isHeld = false
                return nil
            }
            return state.waiters.removeFirst()
        }
        next?.resume()
    }
}
