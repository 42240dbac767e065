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

    /// Every case of the vectors' README table, with its replay flags, so a vector added to
    /// shared/ runs here without a change to this file.
    static let cases: [Case] = (try? readCases()) ?? []

    static func readCases() throws -> [Case] {
        let readme = try String(contentsOf: TestPaths.vectors.appendingPathComponent("README.md"), encoding: .utf8)
        var cases: [Case] = []
        for line in readme.split(separator: "\n") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
            guard cells.count == 2, !cells[0].isEmpty, cells[0] != "case", !cells[0].hasPrefix("-") else { continue }
            let flags = cells[1].replacingOccurrences(of: "`", with: "")
            var values: [String: Int64] = [:]
            if flags != "(defaults)" {
                let words = flags.split(separator: " ")
                for i in stride(from: 0, to: words.count - 1, by: 2) {
                    values[String(words[i])] = Int64(words[i + 1])
                }
            }
            let parameters = try DetectorParameters(
                window: values["--window"] ?? 60_000, threshold: values["--threshold"] ?? 3,
                grace: values["--grace"] ?? 0, retention: values["--retention"] ?? 3_600_000)
            cases.append(Case(name: cells[0], parameters: parameters))
        }
        return cases
    }

    /// Every `NAME.in.jsonl` has its row in the table (and so runs above), and the table holds
    /// the four cases this project was built against.
    @Test func everyVectorFileIsACase() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: TestPaths.vectors.path)
            .filter { $0.hasSuffix(".in.jsonl") }.map { String($0.dropLast(".in.jsonl".count)) }
        #expect(Set(names) == Set(Self.cases.map(\.name)))
        #expect(Set(["basic", "disorder", "hostile", "surrogates"]).isSubset(of: Set(Self.cases.map(\.name))))
    }

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
