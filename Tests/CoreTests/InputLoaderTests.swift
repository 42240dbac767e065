import Foundation
import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import Roles

@Suite("Input loader", .brokerHeavy)
struct InputLoaderTests {
    /// Lines of every kind: valid records (one card id escaped, one line ending in CRLF), a record
    /// rejected after its members were read (keyed by its card all the same), lines with no
    /// readable card id, and blank lines.
    static func lines() -> (text: String, keyed: [String: String], unkeyed: Set<String>) {
        var keyed: [String: String] = [:]
        var text = ""
        for i in 0..<600 {
            let card = "card-\(i % 37)"
            let line = #"{"transactionId":"t-\#(i)","cardId":"\#(card)","amount":\#(i).50,"timestamp":\#(Workload.epoch + Int64(i))}"#
            keyed[line] = card
            text += line + (i % 100 == 7 ? "\r\n" : "\n")
        }
        let escaped = #"{"transactionId":"t-escaped","cardId":"card-\u0031","amount":1,"timestamp":\#(Workload.epoch)}"#
        keyed[escaped] = "card-1"
        let missingAmount = #"{"transactionId":"t-missing","cardId":"card-2","timestamp":\#(Workload.epoch)}"#
        keyed[missingAmount] = "card-2"
        let unkeyed: Set<String> = ["not json", #"{"transactionId":"t-x","cardId":5,"amount":1,"timestamp":1}"#,
                                    #"{"cardId":"card-3","cardId":"card-4"}"#, #"{"transactionId":"t-y","cardId":"","amount":1,"timestamp":1}"#]
        text += escaped + "\n" + missingAmount + "\n\n  \t\r\n"
        for line in unkeyed.sorted() { text += line + "\n" }
        return (text, keyed, unkeyed)
    }

    @Test(arguments: KafkaPartitioner.allCases)
    func everyRecordLandsOnItsCardsPartitionUnchanged(_ partitioner: KafkaPartitioner) async throws {
        let cluster = try TestCluster()
        let partitions = 5
        let topic = try cluster.topic("load", partitions: partitions)
        let directory = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let (text, keyed, unkeyed) = Self.lines()
        let file = directory.appendingPathComponent("in.jsonl")
        try Data(text.utf8).write(to: file)

        let loader = InputLoader(configuration: InputLoaderConfiguration(
            input: file.path, kafka: cluster.configuration, topic: topic, partitioner: partitioner), logger: TestCluster.quietLogger)
        let summary = try await loader.runOnDedicatedThread()
        #expect(summary.records == keyed.count + unkeyed.count)
        #expect(summary.keyed == keyed.count)
        #expect(summary.unkeyed == unkeyed.count)
        #expect(summary.blankLines == 2)
        #expect(summary.partitions == partitions)
        #expect(summary.line.hasPrefix("produce: \(summary.records) records to \(topic) (5 partitions) in "))

        let consumer = try cluster.consumer()
        let messages = try await offPool {
            try readAll(consumer, topic: topic, partitions: partitions, count: summary.records, timeout: .seconds(30))
                + consumer.poll(maxMessages: 1_000, timeout: .milliseconds(300))
        }
        await consumer.close()
        #expect(messages.count == summary.records)
        var seen: Set<String> = []
        for m in messages {
            let value = String(decoding: m.value ?? [], as: UTF8.self)
            #expect(seen.insert(value).inserted, "delivered twice: \(value)")
            if let card = keyed[value] {
                let key = Array(card.utf8)
                #expect(m.key == key, "\(value)")
                #expect(m.partition == key.withUnsafeBufferPointer { partitioner.partition(of: $0, count: Int32(partitions)) }, "\(value)")
            } else {
                #expect(unkeyed.contains(value), "not a line of the input, or not as it was: \(value)")
                #expect(m.key == nil, "\(value)")
            }
        }
        #expect(seen == Set(keyed.keys).union(unkeyed))
    }

    @Test func aMissingTopicOrInputFailsWithItsReason() async throws {
        let cluster = try TestCluster()
        let directory = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("in.jsonl")
        try Data("{}\n".utf8).write(to: file)
        let missingTopic = InputLoader(configuration: InputLoaderConfiguration(
            input: file.path, kafka: cluster.configuration, topic: "no-such-topic-\(UUID().uuidString.prefix(8))"), logger: TestCluster.quietLogger)
        await #expect { _ = try await missingTopic.runOnDedicatedThread() } throws: { error in
            (error as? InputLoaderError)?.code == .missingTopic
        }
        let missingFile = InputLoader(configuration: InputLoaderConfiguration(
            input: directory.appendingPathComponent("missing.jsonl").path, kafka: cluster.configuration), logger: TestCluster.quietLogger)
        await #expect { _ = try await missingFile.runOnDedicatedThread() } throws: { error in
            (error as? InputLoaderError)?.code == .input
        }
    }

    @Test func settingsResolveLikeProcess() throws {
        let directory = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("settings.env")
        try Data("KAFKA_BOOTSTRAP_SERVERS=file:9092\nPOLYGLOT_PARTITIONER=crc32\nPOLYGLOT_KAFKA_PROPERTIES=linger.ms=7\nPOLYGLOT_STATE_DIR=/ignored\n".utf8).write(to: file)
        var settings = InputLoaderSettings(input: "-")
        settings.configFile = file.path
        settings.kafkaProperties = ["client.id=loader"]
        let fromFile = try settings.resolve(environment: ["POLYGLOT_INPUT_TOPIC": "env-topic"])
        #expect(fromFile.kafka.bootstrapServers == "file:9092")
        #expect(fromFile.kafka["linger.ms"] == "7")
        #expect(fromFile.kafka["client.id"] == "loader")
        #expect(fromFile.partitioner == .crc32)
        #expect(fromFile.topic == "env-topic")
        settings.partitioner = "murmur2"
        settings.bootstrapServers = "flag:9092"
        let flags = try settings.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "env:9092"])
        #expect(flags.kafka.bootstrapServers == "flag:9092")
        #expect(flags.partitioner == .murmur2)
        #expect(flags.topic == "financial-transactions")
        settings.kafkaProperties = ["transactional.id=x"]
        #expect(throws: ConfigurationError.self) { try settings.resolve(environment: [:]) }
    }
}
