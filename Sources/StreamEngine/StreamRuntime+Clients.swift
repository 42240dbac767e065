import Dispatch
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import PolyglotSupport
import KafkaClient
import StateStore

// The run's Kafka clients: the producer's defaults and its transactional start, and the
// consumers' (group and restore) settings.
extension StreamRuntime {
    func producerConfiguration() -> KafkaConfiguration {
        let c = configuration
        var config = c.kafka
        // A short linger under exactly-once too: whatever still lingers when a commit starts is
        // sent by the commit itself, on the critical path of every record's latency. With 5 ms
        // instead of 50 ms the Kafka commit took half as long (20 ms against 38 ms on average,
        // at 20,000 and 100,000 records/s through the dev broker, scripts/bench-latency.sh),
        // and the backlog throughput did not drop (scripts/bench-process.sh 300000, two
        // alternating pairs: 168,504 and 193,451 records/s against 145,999 and 138,589).
        config.setDefault("linger.ms", "5")
        config.setDefault("batch.num.messages", "10000")
        config.setDefault("queue.buffering.max.messages", "1000000")
        config.setDefault("queue.buffering.max.kbytes", "1048576")
        // Records the role sends by key land where Kafka Streams would put them.
        config.setDefault("partitioner", "murmur2_random")
        // A record just over the 1 MiB input limit must still fit in its dead letter.
        config.setDefault("message.max.bytes", "4194304")
        if c.guarantee == .exactlyOnce {
            config.set("transactional.id", c.transactionalID)
            config.setDefault("transaction.timeout.ms", "30000")
        }
        return config
    }

    /// `init_transactions` in one-second slices, so a stop request is seen while the
    /// coordinator is found and an older instance with the same id is fenced.
    func initTransactions() throws {
        let deadline = ContinuousClock.now + max(configuration.connectTimeout, .seconds(60))
        while true {
            if isStopping { throw RuntimeStopped() }
            let failure: KafkaError
            do {
                try producer.initTransactions(timeout: .seconds(1))
                return
            } catch {
                failure = error
            }
            if failure.isRetriable, !failure.isFatal, ContinuousClock.now < deadline { continue }
            throw RuntimeError("cannot initialise the transactional producer \(configuration.transactionalID): \(failure)")
        }
    }

    /// The restore consumer: no group of its own (a fresh id each run), committed data only.
    func restoreConsumerConfiguration() -> KafkaConfiguration {
        let c = configuration
        var restoreConfig = c.kafka
        restoreConfig.set("isolation.level", "read_committed")
        restoreConfig.set("group.id", "\(c.groupID)-restore-\(UUID().uuidString.lowercased())")
        restoreConfig.set("auto.offset.reset", "earliest")
        restoreConfig.setDefault("fetch.wait.max.ms", "10")
        restoreConfig.setDefault("max.partition.fetch.bytes", "4194304")
        restoreConfig.setDefault("queued.max.messages.kbytes", c.consumerPrefetchKilobytes)
        restoreConfig.setConsumerPrefetchDefaults()
        return restoreConfig
    }

    /// The group member's consumer.
    func groupConsumerConfiguration() -> KafkaConfiguration {
        let c = configuration
        var consumerConfig = c.kafka
        consumerConfig.set("group.id", c.groupID)
        consumerConfig.set("isolation.level", "read_committed")
        consumerConfig.set("partition.assignment.strategy", "range")
        // --until-end must see past the transaction markers that end its own repartition writes
        // (and any transactional input): the end-of-partition events carry the fetch position.
        if c.untilEnd { consumerConfig.set("enable.partition.eof", "true") }
        consumerConfig.setDefault("auto.offset.reset", "earliest")
        consumerConfig.setDefault("fetch.wait.max.ms", "10")
        consumerConfig.setDefault("queued.max.messages.kbytes", c.consumerPrefetchKilobytes)
        consumerConfig.setConsumerPrefetchDefaults()
        return consumerConfig
    }
}
