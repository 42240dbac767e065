import Foundation
import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import Roles

@Suite("Replay")
struct ReplayTests {
    func run(_ input: [UInt8], parameters: DetectorParameters = .default) throws -> (output: String, dlq: [[String: Any]], summary: ReplaySummary) {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let inURL = dir.appendingPathComponent("in.jsonl"), outURL = dir.appendingPathComponent("out.jsonl"), dlqURL = dir.appendingPathComponent("dlq.jsonl")
        try Data(input).write(to: inURL)
        let summary = try Replay(options: ReplayOptions(input: inURL.path, output: outURL.path, deadLetters: dlqURL.path, parameters: parameters)).run()
        let dlq = try String(contentsOf: dlqURL, encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        return (try String(contentsOf: outURL, encoding: .utf8), dlq, summary)
    }

    static let record = #"{"transactionId":"a","cardId":"b","amount":1,"timestamp":1}"#

    @Test func skipsBlankLinesButCountsThem() throws {
        let input = Array(" \t\r\n\n\(Self.record)\r\nbad\n\(Self.record)".utf8)  // last line has no newline
        let r = try run(input)
        #expect(r.output.split(separator: "\n").count == 2)
        #expect(r.dlq.count == 1)
        #expect(r.dlq.first?["line"] as? Int == 4)
        #expect(r.dlq.first?["error"] as? String == "invalid_json")
        #expect(r.dlq.first?["raw"] as? String == "bad")
        #expect(r.summary.lines == 5)
        #expect(r.summary.records == 2)
    }

    @Test func rejectsAnOversizeLineAndKeepsGoing() throws {
        var input = Array("\(Self.record)\n{\"x\":\"".utf8) + Array(repeating: UInt8(ascii: "a"), count: 9 << 20)
        input += Array("\"}\n\(Self.record)\n".utf8)
        let r = try run(input)
        #expect(r.summary.records == 2)
        #expect(r.dlq.count == 1)
        #expect(r.dlq[0]["line"] as? Int == 2)
        #expect(r.dlq[0]["error"] as? String == "too_large")
        #expect((r.dlq[0]["raw"] as? String)?.utf8.count == TransactionDecoder.maxRecordBytes + 1)
        #expect((r.dlq[0]["message"] as? String)?.contains("\(9 << 20 + 8) bytes") == true)
    }

    @Test func aLineOfExactlyOneMebibyteIsNotTooLarge() throws {
        let head = #"{"transactionId":"a","cardId":"b","amount":1,"timestamp":1,"pad":""#
        let pad = TransactionDecoder.maxRecordBytes - head.utf8.count - 2
        let line = head + String(repeating: "p", count: pad) + "\"}"
        #expect(line.utf8.count == TransactionDecoder.maxRecordBytes)
        let r = try run(Array((line + "\n" + line + "x\n").utf8))
        #expect(r.summary.records == 1)
        #expect(r.dlq.map { $0["error"] as? String } == ["too_large"])
    }

    @Test func streamsManyBatchesInOrder() throws {
        let options = try GeneratorOptions(count: 25_000, cards: 50, seed: 7, badFraction: 0.01, jitter: 3_000)
        var generator = TransactionGenerator(options: options)
        let buffer = ByteBuffer()
        while !generator.isFinished { generator.appendNext(to: buffer) }
        let r = try run(buffer.array)
        // Same result as the record-by-record path.
        var decoder = TransactionDecoder()
        var detector = Detector(parameters: .default)
        var store = InMemoryWindowStore(parameters: .default)
        let encoder = EnrichedRecordEncoder(parameters: .default)
        var expected: [UInt8] = []
        var rejected = 0
        for line in buffer.array.split(separator: 0x0A) {
            guard let t = try? decoder.decode(Array(line)) else { rejected += 1; continue }
            expected += encoder.encode(t, detector.process(card: t.cardId, eventTime: t.timestamp, store: &store)) + [0x0A]
        }
        #expect(Array(r.output.utf8) == expected)
        #expect(r.dlq.count == rejected)
        #expect(r.summary.rejectedTotal == rejected)
    }

    @Test func reportsAnUnreadableInput() throws {
        #expect(throws: ReplayError.self) {
            try Replay(options: ReplayOptions(input: "/nonexistent/in.jsonl", output: "/dev/null")).run()
        }
        do {
            _ = try Replay(options: ReplayOptions(input: "/nonexistent/in.jsonl", output: "/dev/null")).run()
        } catch {
            #expect(error.description == "cannot open '/nonexistent/in.jsonl': No such file or directory")
        }
    }

    /// Output is written by the decoding thread as it recycles batches: a failed write must still
    /// end the run with the error, for the output and for the dead-letter file alike.
    @Test(arguments: [false, true])
    func reportsAFailedWrite(toDeadLetters: Bool) throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in.jsonl")
        let options = try GeneratorOptions(count: 20_000, cards: 100, badFraction: 0.2)
        try GeneratedFile.write(options: options, to: input.path)
        let replay = Replay(options: ReplayOptions(
            input: input.path, output: toDeadLetters ? "/dev/null" : "/dev/full",
            deadLetters: toDeadLetters ? "/dev/full" : nil))
        do {
            _ = try replay.run()
            Issue.record("a write to /dev/full succeeded")
        } catch {
            #expect(error.description == "cannot write '/dev/full': No space left on device")
        }
    }

    @Test func summaryLine() {
        var s = ReplaySummary()
        s.records = 300
        s.flagged = 10
        s.late = 2
        s.rejected = [.invalidJSON: 3, .tooLarge: 1]
        s.seconds = 0.5
        #expect(s.line == "replay: 300 records in 0.50 s (600 records/s): 10 flagged, 2 late, 4 rejected (too_large 1, invalid_json 3)")
    }

    @Test func parsesDurations() throws {
        #expect(try Durations.milliseconds("250", setting: "x") == 250)
        #expect(try Durations.milliseconds("250ms", setting: "x") == 250)
        #expect(try Durations.milliseconds("30s", setting: "x") == 30_000)
        #expect(try Durations.milliseconds("5m", setting: "x") == 300_000)
        #expect(try Durations.milliseconds("1h", setting: "x") == 3_600_000)
        for bad in ["", "s", "-5s", "1.5s", "10d", "abc", "99999999999999999999h"] {
            #expect(throws: ConfigurationError.self) { try Durations.milliseconds(bad, setting: "--window") }
        }
    }
}

@Suite("Generation")
struct GenerationTests {
    func generate(_ options: GeneratorOptions) -> [UInt8] {
        var generator = TransactionGenerator(options: options)
        let buffer = ByteBuffer()
        while !generator.isFinished { generator.appendNext(to: buffer) }
        return buffer.array
    }

    @Test func isDeterministic() throws {
        let a = generate(try GeneratorOptions(count: 5_000, seed: 42, badFraction: 0.1, jitter: 2_000))
        let b = generate(try GeneratorOptions(count: 5_000, seed: 42, badFraction: 0.1, jitter: 2_000))
        let c = generate(try GeneratorOptions(count: 5_000, seed: 43, badFraction: 0.1, jitter: 2_000))
        #expect(a == b)
        #expect(a != c)
    }

    @Test func producesValidRecordsBurstsAndEveryBadKind() throws {
        let bytes = generate(try GeneratorOptions(count: 20_000, cards: 2_000, seed: 1, ratePerSecond: 100, badFraction: 0.05))
        var decoder = TransactionDecoder()
        var detector = Detector(parameters: .default)
        var store = InMemoryWindowStore(parameters: .default)
        var codes = Set<RejectionCode>()
        var flagged = 0, highValue = 0, valid = 0
        for line in bytes.split(separator: 0x0A) {
            do {
                let t = try decoder.decode(Array(line))
                valid += 1
                if detector.process(card: t.cardId, eventTime: t.timestamp, store: &store).isFlagged { flagged += 1 }
                if t.amount.isGreater(than: DecimalText("10000")!) { highValue += 1 }
            } catch {
                codes.insert(error.code)
            }
        }
        #expect(valid > 18_000)
        #expect(flagged > 0)
        #expect(highValue > 0)
        #expect(codes == Set(RejectionCode.allCases).subtracting([.tooLarge]))
    }

    @Test func validatesOptions() {
        #expect(throws: ConfigurationError.self) { try GeneratorOptions(count: 1, cards: 0) }
        #expect(throws: ConfigurationError.self) { try GeneratorOptions(count: 1, badFraction: 1.5) }
        #expect(throws: ConfigurationError.self) { try GeneratorOptions(count: 1, ratePerSecond: 0) }
    }
}
