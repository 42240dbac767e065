import Foundation
import Testing
@testable import FraudModel
@testable import StateStore
@testable import Roles

/// The shared vectors of SEMANTICS.md, byte for byte.
@Suite("Vectors")
struct VectorTests {
    struct Case: CustomStringConvertible, Sendable {
        let name: String
        /// The case's folder under the vectors (empty at the top, `sliding` for its subfolder).
        let folder: String
        let parameters: DetectorParameters
        var description: String { folder.isEmpty ? name : "\(folder)/\(name)" }

        /// `NAME.<suffix>` in the case's folder.
        func file(_ suffix: String) -> URL {
            let dir = folder.isEmpty ? TestPaths.vectors : TestPaths.vectors.appendingPathComponent(folder)
            return dir.appendingPathComponent("\(name).\(suffix)")
        }
    }

    /// Every case of every README table under the vectors (subfolders included), with its
    /// replay flags, so a vector added to shared/ runs here without a change to this file.
    static let cases: [Case] = (try? readCases()) ?? []

    /// The folders (relative to the vectors) holding a README.md.
    static func folders() throws -> [String] {
        let root = TestPaths.vectors
        var folders: [String] = []
        guard let walk = FileManager.default.enumerator(atPath: root.path) else { return [] }
        while let path = walk.nextObject() as? String {
            if path == "README.md" { folders.append("") } else if path.hasSuffix("/README.md") { folders.append(String(path.dropLast("/README.md".count))) }
        }
        return folders.sorted()
    }

    static func readCases() throws -> [Case] {
        var cases: [Case] = []
        for folder in try folders() {
            let dir = folder.isEmpty ? TestPaths.vectors : TestPaths.vectors.appendingPathComponent(folder)
            let readme = try String(contentsOf: dir.appendingPathComponent("README.md"), encoding: .utf8)
            for line in readme.split(separator: "\n") {
                let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
                guard cells.count == 2, !cells[0].isEmpty, cells[0] != "case", !cells[0].hasPrefix("-") else { continue }
                cases.append(Case(name: cells[0], folder: folder, parameters: try parameters(flags: cells[1])))
            }
        }
        return cases
    }

    /// The parameters a README row's replay flags give.
    static func parameters(flags cell: String) throws -> DetectorParameters {
        let flags = cell.replacingOccurrences(of: "`", with: "")
        var values: [String: String] = [:]
        if flags != "(defaults)" {
            let words = flags.split(separator: " ").map(String.init)
            for i in stride(from: 0, to: words.count - 1, by: 2) { values[words[i]] = words[i + 1] }
        }
        return try DetectorParameters(
            kind: values["--window-kind"].map { try WindowKind(parsing: $0, setting: "--window-kind") } ?? .tumbling,
            window: values["--window"].flatMap { Int64($0) } ?? 60_000, threshold: values["--threshold"].flatMap { Int64($0) } ?? 3,
            grace: values["--grace"].flatMap { Int64($0) } ?? 0, retention: values["--retention"].flatMap { Int64($0) } ?? 3_600_000)
    }

    /// Every `NAME.in.jsonl` of every folder has its row in its folder's table (and so runs
    /// above), and the tables hold the cases this project was built against.
    @Test func everyVectorFileIsACase() throws {
        for folder in try Self.folders() {
            let dir = folder.isEmpty ? TestPaths.vectors : TestPaths.vectors.appendingPathComponent(folder)
            let names = try FileManager.default.contentsOfDirectory(atPath: dir.path)
                .filter { $0.hasSuffix(".in.jsonl") }.map { String($0.dropLast(".in.jsonl".count)) }
            #expect(Set(names) == Set(Self.cases.filter { $0.folder == folder }.map(\.name)), "folder '\(folder)'")
        }
        #expect(Set(["basic", "disorder", "hostile", "surrogates", "sliding", "sliding-disorder"]).isSubset(of: Set(Self.cases.map(\.name))))
        #expect(Self.cases.filter { $0.parameters.kind == .sliding }.map(\.name).sorted() == ["sliding", "sliding-disorder"])
    }

    @Test(arguments: cases)
    func replayMatchesVector(_ vector: Case) throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = vector.file("in.jsonl")
        let output = dir.appendingPathComponent("out.jsonl")
        let dlq = dir.appendingPathComponent("dlq.jsonl")
        let summary = try Replay(options: ReplayOptions(
            input: input.path, output: output.path, deadLetters: dlq.path, parameters: vector.parameters)).run()

        let expected = try Data(contentsOf: vector.file("out.jsonl"))
        let actual = try Data(contentsOf: output)
        #expect(actual == expected, "output differs from \(vector.name).out.jsonl")

        let expectedDLQ = try Self.lineAndCode(vector.file("dlq.jsonl"))
        let actualDLQ = try Self.lineAndCode(dlq)
        #expect(actualDLQ == expectedDLQ)
        #expect(summary.rejectedTotal == expectedDLQ.count)
        #expect(summary.records == String(decoding: expected, as: UTF8.self).split(separator: "\n").count)
    }

    /// The same vectors through the decoder and each partition detector directly (the SQLite one
    /// is the path `process` takes), one record at a time from owned byte arrays.
    @Test(arguments: cases)
    func recordByRecordMatchesVector(_ vector: Case) throws {
        let input = try Data(contentsOf: vector.file("in.jsonl"))
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let inMemory = InMemoryDetector(parameters: vector.parameters)
        let sqlite = try SQLiteDetectorStore(directory: dir.path, parameters: vector.parameters)
        defer { try? sqlite.close() }
        var decoder = TransactionDecoder()
        let encoder = EnrichedRecordEncoder(parameters: vector.parameters)
        let expected = try Data(contentsOf: vector.file("out.jsonl"))
        for detector in [inMemory, sqlite] as [any PartitionDetector] {
            var out: [UInt8] = []
            for line in input.split(separator: 0x0A, omittingEmptySubsequences: false) where !line.isEmpty {
                guard let transaction = try? decoder.decode(Array(line)) else { continue }
                let verdict = detector.process(card: transaction.cardId, eventTime: transaction.timestamp)
                out += encoder.encode(transaction, verdict)
                out.append(0x0A)
            }
            #expect(Data(out) == expected, "\(type(of: detector))")
        }
    }

    static func lineAndCode(_ url: URL) throws -> [String] {
        let text = try String(contentsOf: url, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return "\(object["line"]!):\(object["error"]!)"
        }
    }
}
