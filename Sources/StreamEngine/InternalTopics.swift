import Logging
import PolyglotSupport
import KafkaClient

/// The start-up check of a role's topics: the first source must exist; internal topics (the
/// changelog, and sources the role writes itself) must have as many partitions as the first
/// source, and are created through the admin API where the cluster has one (on `polyglot dev
/// broker`, which has none, by asking the broker's host); sinks must exist.
/// The check is also the first contact with the cluster, so an unreachable one fails here,
/// within the connect timeout, naming the servers.
package struct InternalTopics {
    let sources: [SourceTopic]
    let changelogTopic: String
    let sinkTopics: [String]

    /// Returns the partition count of every topic checked (the first source's at `sources[0].name`).
    func check(kafka: KafkaConfiguration, connectTimeout: Duration, isStopping: () -> Bool, logger: Logger) throws -> [String: Int] {
        let admin = try KafkaAdmin(configuration: kafka, logger: logger)
        defer { admin.close() }
        let input = sources[0].name
        let internalTopics = sources.dropFirst().filter(\.isInternal).map(\.name) + [changelogTopic]
        let external = sources.dropFirst().filter { !$0.isInternal }.map(\.name)
        let all = [input] + external + internalTopics + sinkTopics
        var counts = try Self.partitionCounts(admin, all, kafka: kafka, timeout: connectTimeout, isStopping: isStopping)
        guard let inputCount = counts[input] else { throw RuntimeError("input topic \(input) does not exist") }
        let missing = internalTopics.filter { counts[$0] == nil }
        if !missing.isEmpty {
            let specs = missing.map { name in
                KafkaTopicSpecification(name: name, partitions: inputCount,
                                        config: name == changelogTopic ? ["cleanup.policy": "compact"] : [:])
            }
            do {
                try admin.createTopics(specs)
                logger.info("created internal topics", metadata: ["topics": "\(missing.joined(separator: ","))"])
            } catch let error as KafkaAdminUnavailable {
                // Without an admin API only `polyglot dev broker` (a mock cluster) can still
                // create them, on request; any other cluster has no request topic.
                guard try MockTopicRequests.request(specs, configuration: kafka, timeout: connectTimeout, logger: logger) else {
                    throw RuntimeError("internal topic \(missing.joined(separator: " and ")) missing and the cluster cannot create topics (\(error.underlying.message)): create it with \(inputCount) partitions")
                }
                logger.info("the dev broker created internal topics", metadata: ["topics": "\(missing.joined(separator: ","))"])
            }
            counts = try Self.partitionCounts(admin, all, kafka: kafka, timeout: connectTimeout, isStopping: isStopping)
        }
        for topic in internalTopics + external {
            guard let n = counts[topic] else { throw RuntimeError("topic \(topic) does not exist") }
            if n != inputCount {
                throw RuntimeError("topic \(topic) has \(n) partitions but input topic \(input) has \(inputCount): they must match (recreate \(topic) with \(inputCount) partitions, or use another --application-id)")
            }
        }
        for topic in sinkTopics where counts[topic] == nil {
            throw RuntimeError("topic \(topic) does not exist")
        }
        if let policy = try? admin.topicConfig(changelogTopic, name: "cleanup.policy", timeout: connectTimeout), !policy.contains("compact") {
            logger.warning("the changelog topic is not compacted: it grows without bound, and a restore reads all of it (set cleanup.policy=compact)",
                           metadata: ["topic": "\(changelogTopic)", "cleanup.policy": "\(policy)"])
        }
        return counts
    }

    /// Partition counts, asked in short slices so a stop request is seen at once; a cluster
    /// that does not answer within `timeout` is an error naming the servers.
    package static func partitionCounts(_ admin: KafkaAdmin, _ topics: [String], kafka: KafkaConfiguration, timeout: Duration,
                                isStopping: () -> Bool) throws -> [String: Int] {
        do throws(ClusterWaitFailure) {
            return try ClusterWait.partitionCounts(timeout: timeout, isStopping: isStopping,
                                                   authenticationFailure: { admin.authenticationFailure }) { (slice) throws(KafkaError) in
                try admin.partitionCounts(topics, timeout: slice)
            }
        } catch {
            switch error {
            case .stopped: throw RuntimeStopped()
            case .authentication(let reason): throw RuntimeError("authentication failed: \(reason)")
            case .failed(let failure): throw failure
            case .unreachable(let failure):
                throw RuntimeError(ClusterWaitFailure.unreachableMessage(failure, kafka: kafka, timeout: timeout))
            }
        }
    }
}

extension ClusterWaitFailure {
    /// What every role says when no broker answered in time: the servers it tried, the last
    /// error, and what to check.
    package static func unreachableMessage(_ failure: KafkaError, kafka: KafkaConfiguration, timeout: Duration) -> String {
        "cannot reach Kafka at \(kafka.bootstrapServers ?? "(no servers)") within \(timeout) (\(failure.message)); check --bootstrap-servers and that the brokers are up, or raise --connect-timeout"
    }
}

/// A stop was requested before the run got going: not a failure.
package struct RuntimeStopped: Error {}
