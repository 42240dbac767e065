import Foundation
import Synchronization

/// Whether a client reaches its brokers, as librdkafka tells it: its error callback (all brokers
/// down, connections failing) and its statistics, in which each broker's connection state comes
/// once per `statistics.interval.ms`. No request is made for it.
///
/// A client created with a tracker (``KafkaConsumer/init(configuration:hooks:brokerState:logger:)``)
/// feeds it from whichever thread serves its callbacks; ``reachability`` may be read from any thread.
public final class KafkaBrokerState: Sendable {
    private let state = Mutex(KafkaBrokerReachability())

    public init() {}

    /// The latest view.
    public var reachability: KafkaBrokerReachability { state.withLock { $0 } }

    /// librdkafka's statistics interval for a tracked client: how soon a broker coming back is seen.
    static let statisticsIntervalMilliseconds = "1000"

    /// An error from librdkafka's error callback: losing every broker marks the client
    /// unreachable at once; other errors are only remembered.
    func recordError(name: String, reason: String, now: ContinuousClock.Instant = .now) {
        state.withLock { s in
            s.lastError = "\(name): \(reason)"
            if Self.meansUnreachable(name) {
                if s.unreachableSince == nil { s.unreachableSince = now }
                s.brokersUp = 0
            }
        }
    }

    /// Errors after which no broker is connected until a later statistics report says otherwise.
    static func meansUnreachable(_ name: String) -> Bool {
        name == "_ALL_BROKERS_DOWN" || name == "_RESOLVE" || name == "_AUTHENTICATION"
    }

    /// One statistics report (librdkafka's JSON): reachable while at least one real broker's
    /// connection is up.
    func recordStatistics(_ json: UnsafeRawBufferPointer, now: ContinuousClock.Instant = .now) {
        guard let brokers = Self.brokerStates(json) else { return }
        recordBrokerStates(brokers, now: now)
    }

    func recordBrokerStates(_ brokers: [String], now: ContinuousClock.Instant = .now) {
        let up = brokers.filter { $0 == "UP" || $0 == "UPDATE" }.count
        state.withLock { s in
            s.brokers = brokers.count
            s.brokersUp = up
            s.statisticsReports += 1
            if up > 0 {
                s.unreachableSince = nil
            } else if !brokers.isEmpty, s.unreachableSince == nil {
                s.unreachableSince = now
            }
        }
    }

    private struct Statistics: Decodable {
        struct Broker: Decodable {
            var state: String
            /// configured, learned, internal or logical: the last two are not connections.
            var source: String?
        }
        var brokers: [String: Broker]
    }

    /// The connection state of each broker the client connects to (bootstrap and learned ones).
    static func brokerStates(_ json: UnsafeRawBufferPointer) -> [String]? {
        guard let statistics = try? JSONDecoder().decode(Statistics.self, from: Data(json)) else { return nil }
        return statistics.brokers.values.filter { $0.source != "internal" && $0.source != "logical" }.map(\.state)
    }
}

/// A client's view of its brokers.
public struct KafkaBrokerReachability: Sendable, Hashable {
    /// Since when no broker has been connected; nil while one is (or before anything is known).
    public var unreachableSince: ContinuousClock.Instant?
    /// Brokers in the last statistics report, and how many of them were connected.
    public var brokers = 0
    public var brokersUp = 0
    public var statisticsReports = 0
    /// The last error librdkafka reported, as `NAME: reason`.
    public var lastError: String?

    public init() {}

    /// How long no broker has been connected, at `now`.
    public func unreachableFor(at now: ContinuousClock.Instant = .now) -> Duration? {
        unreachableSince.map { now - $0 }
    }
}
