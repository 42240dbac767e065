import Foundation
import PolyglotSupport
import FraudModel

/// When a running role counts as unhealthy.
public struct HealthPolicy: Sendable, Hashable {
    /// How long the group consumer may have no broker connected before the role is unhealthy:
    /// librdkafka reconnects by itself, so a short outage is not a reason to replace an instance.
    public var brokerUnreachableLimit: Duration
    /// How long the run loop may go without returning from a poll (a commit or a rebalance
    /// hook that hangs).
    public var pollStallLimit: Duration
    /// Transactions aborted in a row, with none committed between, after which commits count
    /// as failing (one abort is retried at once and is no reason).
    public var abortsLimit: Int

    public static let defaultBrokerUnreachableLimit: Duration = .seconds(30)

    public init(brokerUnreachableLimit: Duration = defaultBrokerUnreachableLimit, pollStallLimit: Duration = .seconds(30),
                abortsLimit: Int = 3) {
        self.brokerUnreachableLimit = brokerUnreachableLimit
        self.pollStallLimit = pollStallLimit
        self.abortsLimit = abortsLimit
    }
}

/// Whether a role on the stream runtime does its work, from the runtime's statistics: what
/// `/healthz` answers and the progress line's `state`.
public struct RoleHealth: Sendable, Hashable {
    public enum State: String, Sendable, Hashable {
        case starting
        /// Subscribed, no partition assigned yet (joining the group, or more members than partitions).
        case waitingForAssignment = "waiting-for-assignment"
        case restoring
        case running
        case brokerUnreachable = "broker-unreachable"
        case commitFailing = "commit-failing"
        /// The run loop has not polled for longer than the policy allows.
        case stalled
        case stopping
        case stopped
    }

    public var state: State
    /// One line on why the role is not healthy; nil when it is.
    public var reason: String?

    /// Running with every assigned partition restored and polling.
    public var isHealthy: Bool { state == .running }

    public static func evaluate(_ s: RuntimeStatistics, now: ContinuousClock.Instant = .now,
                                policy: HealthPolicy = HealthPolicy()) -> RoleHealth {
        switch s.phase {
        case .starting: return RoleHealth(state: .starting, reason: "starting: checking topics and connecting to Kafka")
        case .stopping: return RoleHealth(state: .stopping, reason: "stopping: committing and leaving the group")
        case .stopped: return RoleHealth(state: .stopped, reason: "stopped")
        case .running: break
        }
        if let down = s.broker.unreachableFor(at: now), down >= policy.brokerUnreachableLimit {
            var reason = "broker unreachable for \(Self.seconds(down))"
            if let error = s.broker.lastError { reason += " (\(error))" }
            return RoleHealth(state: .brokerUnreachable, reason: reason)
        }
        if let polled = s.lastPollAt, now - polled >= policy.pollStallLimit {
            return RoleHealth(state: .stalled, reason: "no poll for \(Self.seconds(now - polled))")
        }
        if s.consecutiveAborts >= policy.abortsLimit {
            let since = s.lastCommitAt.map { "last commit \(Self.seconds(now - $0)) ago" } ?? "no commit yet"
            return RoleHealth(state: .commitFailing, reason: "commit failing: \(s.consecutiveAborts) transactions aborted in a row, \(since)")
        }
        if s.assignedPartitions == 0 {
            return RoleHealth(state: .waitingForAssignment, reason: "no partitions assigned yet")
        }
        if s.tasks < s.assignedPartitions {
            var reason = "restoring \(s.assignedPartitions - s.tasks) of \(s.assignedPartitions) partitions, \(s.restoreRemaining) changelog records left"
            // A restore that stopped advancing says where it stands and why it waits.
            let stalled = s.restores.filter { $0.stall != nil }
            if !stalled.isEmpty {
                reason += "; " + stalled.prefix(3).map(\.summary).joined(separator: "; ")
                if stalled.count > 3 { reason += "; \(stalled.count - 3) more stalled" }
            }
            return RoleHealth(state: .restoring, reason: reason)
        }
        return RoleHealth(state: .running, reason: nil)
    }

    /// The `/healthz` body: one line of JSON.
    public var json: String {
        let out = ByteBuffer(capacity: 128)
        out.append(Array(#"{"status":"#.utf8))
        JSONOutput.appendString(isHealthy ? "ok" : "unavailable", to: out)
        out.append(Array(#","state":"#.utf8))
        JSONOutput.appendString(state.rawValue, to: out)
        if let reason {
            out.append(Array(#","reason":"#.utf8))
            JSONOutput.appendString(reason, to: out)
        }
        out.append(Array("}\n".utf8))
        return String(decoding: out.bytes, as: UTF8.self)
    }

    static func seconds(_ d: Duration) -> String {
        "\(d.components.seconds)s"
    }
}
