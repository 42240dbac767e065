/// Why ``ClusterWait/partitionCounts(timeout:isStopping:authenticationFailure:ask:)`` gave up.
package enum ClusterWaitFailure: Error {
    /// `isStopping` said so.
    case stopped
    /// The broker refused the credentials (librdkafka's reason).
    case authentication(String)
    /// No broker answered within the timeout; the last error.
    case unreachable(KafkaError)
    /// A failure that is not about reaching the cluster.
    case failed(KafkaError)
}

/// Waits for a cluster to answer a metadata request: every client that needs partition counts
/// before it starts asks through here.
package enum ClusterWait {
    /// Asks `ask` in short slices (it is given the slice) until it answers, the timeout passes,
    /// `isStopping` says so, or the broker refuses the credentials (no reason to wait out the
    /// timeout then).
    package static func partitionCounts(
        timeout: Duration, isStopping: () -> Bool = { false }, authenticationFailure: () -> String?,
        ask: (Duration) throws(KafkaError) -> [String: Int]
    ) throws(ClusterWaitFailure) -> [String: Int] {
        let deadline = ContinuousClock.now + timeout
        while true {
            if isStopping() { throw .stopped }
            let failure: KafkaError
            do throws(KafkaError) {
                return try ask(.milliseconds(500))
            } catch {
                failure = error
            }
            if let reason = authenticationFailure() { throw .authentication(reason) }
            let unreachable = [KafkaError.Code.timedOut, KafkaError.Code.transport, KafkaError.Code.allBrokersDown].contains(failure.code)
            guard unreachable else { throw .failed(failure) }
            if ContinuousClock.now >= deadline { throw .unreachable(failure) }
        }
    }
}
