import Foundation
import Testing
@testable import Core

/// The shared vectors of SEMANTICS.md, byte for byte.
@Suite("Vectors")
struct VectorTests {
    struct Case: CustomStringConvertible, Sendable {
        let name: String
        let parameters: DetectorParameters
        var description: String { name }
    }

    static let cases: [Case] = [
        Case(name: "basic", parameters: .default),
        Case(name: "disorder", parameters: try! DetectorParameters(window: 30_000, threshold: 2, grace: 5_000, retention: 600_000)),
        Case(name: "hostile", parameters: .default),
    ]

    @Test(arguments: cases)
    func replayMatchesVector(_ vector: Case) throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = TestPaths.vectors.appendingPathComponent("\(vector.name).in.jsonl")
        let output = dir.appendingPathComponent("out.jsonl")
        let dlq = dir.appendingPathComponent("dlq.jsonl")
        let summary = try Replay(options: ReplayOptions(
            input: input.path, output: output.path, deadLetters: dlq.path, parameters: vector.parameters)).run()

        let expected = try Data(contentsOf: TestPaths.vectors.appendingPathComponent("\(vector.name).out.jsonl"))
        let actual = try Data(contentsOf: output)
        #expect(actual == expected, "output differs from \(vector.name).out.jsonl")

        let expectedDLQ = try Self.lineAndCode(TestPaths.vectors.appendingPathComponent("\(vector.name).dlq.jsonl"))
        let actualDLQ = try Self.lineAndCode(dlq)
        #expect(actualDLQ == expectedDLQ)
        #expect(summary.rejectedTotal == expectedDLQ.count)
        #expect(summary.records == String(decoding: expected, as: UTF8.self).split(separator: "\n").count)
    }

    /// The same vectors through the decoder and detector directly (the path `process` takes),
    /// one record at a time from owned byte arrays.
    @Test(arguments: cases)
    func recordByRecordMatchesVector(_ vector: Case) throws {
        let input = try Data(contentsOf: TestPaths.vectors.appendingPathComponent("\(vector.name).in.jsonl"))
        var decoder = TransactionDecoder()
        var detector = Detector(parameters: vector.parameters)
        var store = InMemoryWindowStore(parameters: vector.parameters)
        let encoder = EnrichedRecordEncoder(parameters: vector.parameters)
        var out: [UInt8] = []
        for line in input.split(separator: 0x0A, omittingEmptySubsequences: false) where !line.isEmpty {
            guard let transaction = try? decoder.decode(Array(line)) else { continue }
            let verdict = detector.process(card: transaction.cardId, eventTime: transaction.timestamp, store: &store)
            out += encoder.encode(transaction, verdict)
            out.append(0x0A)
        }
        let expected = try Data(contentsOf: TestPaths.vectors.appendingPathComponent("\(vector.name).out.jsonl"))
        #expect(Data(out) == expected)
    }

    static func lineAndCode(_ url: URL) throws -> [String] {
        let text = try String(contentsOf: url, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return "\(object["line"]!):\(object["error"]!)"
        }
    }
}
