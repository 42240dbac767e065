import Foundation
import Testing
@testable import FraudModel
@testable import Observability
@testable import Roles

extension ProcessorTests {
    /// Every shared vector through `process` (one partition, so one stream in file order, as
    /// replay reads a file): outputs byte for byte and dead-letter codes as the vector's files
    /// say, and each record's headers exact: `polyglot-source` naming the input record,
    /// the fingerprint, the version, the detector's parameters, and the dead letters' code and
    /// message.
    @Test(arguments: VectorTests.cases)
    func sharedVectorThroughProcess(_ vector: VectorTests.Case) async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 1)
        let input = try Data(contentsOf: vector.file("in.jsonl"))
        // Blank lines are not records in Kafka; line numbers still count them, as replay's do.
        let lines = input.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated()
            .filter { !$0.element.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D } }
            .map { (line: $0.offset + 1, bytes: Array($0.element)) }
        try await topics.produce(lines.map { (key: nil, value: $0.bytes) })
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        // Vector timestamps are what they are: the Kafka-timestamp skew rule (which replay
        // skips) must not reject any of them here.
        let p = vector.parameters
        let parameters = try DetectorParameters(kind: p.kind, window: p.window, threshold: p.threshold, grace: p.grace, retention: p.retention,
                                                maxFutureSkew: Int64.max)
        let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, parameters: parameters), logger: logger)
        try await run(processor)

        let expected = try Data(contentsOf: vector.file("out.jsonl"))
        let expectedLines = expected.split(separator: 0x0A).map { Array($0) }
        let outputs = try await topics.read(topics.output, count: expectedLines.count).sorted { $0.offset < $1.offset }
        #expect(outputs.map { $0.value ?? [] } == expectedLines, "outputs differ from \(vector.name).out.jsonl")
        let digest = String(repeating: "ab", count: 32)
        var decoder = TransactionDecoder()
        for m in outputs {
            let headers = Dictionary(m.headers.map { ($0.name, String(decoding: $0.value ?? [], as: UTF8.self)) }, uniquingKeysWith: { a, _ in a })
            // The source is the input record this output is for: the same transaction id.
            let source = try #require(headers["polyglot-source"].flatMap { AuditPosition(source: $0) })
            guard case .record(let topic, let partition, let offset) = source else { Issue.record("bad source"); continue }
            #expect(topic == topics.input && partition == 0)
            let inputRecord = lines[Int(offset)].bytes
            #expect(try decoder.decode(inputRecord).transactionId == (try decoder.decode(m.value!).transactionId))
            #expect(headers["polyglot-fingerprint"] == digest)
            #expect(headers["polyglot-version"] == ProductVersion.version)
            #expect(headers["polyglot-detector"] == parameters.header)
        }

        let expectedDLQ = try VectorTests.lineAndCode(vector.file("dlq.jsonl"))
        let deadLetters = try await topics.read(topics.deadLetters, count: expectedDLQ.count).sorted { $0.offset < $1.offset }
        var actualDLQ: [String] = []
        for m in deadLetters {
            let headers = Dictionary(m.headers.map { ($0.name, String(decoding: $0.value ?? [], as: UTF8.self)) }, uniquingKeysWith: { a, _ in a })
            guard case .record(_, _, let offset)? = headers["polyglot-source"].flatMap({ AuditPosition(source: $0) }) else {
                Issue.record("dead letter without a source")
                continue
            }
            let line = lines[Int(offset)]
            actualDLQ.append("\(line.line):\(headers["polyglot-error"] ?? "")")
            #expect(m.value == line.bytes, "a dead letter carries its record's bytes")
            #expect(headers["polyglot-fingerprint"] == digest)
            #expect(headers["polyglot-detector"] == parameters.header)
            #expect(!(headers["polyglot-error-message"] ?? "").isEmpty)
            var d = TransactionDecoder()
            #expect(headers["polyglot-error-message"] == d.rejection(of: line.bytes)?.message)
        }
        #expect(actualDLQ == expectedDLQ)
    }
}

extension TransactionDecoder {
    /// The rejection of a record, or nil when it is valid.
    mutating func rejection(of bytes: [UInt8]) -> Rejection? {
        do {
            _ = try decode(bytes)
            return nil
        } catch {
            return error
        }
    }
}
