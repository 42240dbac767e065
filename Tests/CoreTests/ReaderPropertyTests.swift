import Foundation
import Testing
@testable import PolyglotSupport
@testable import FraudModel
@testable import StateStore

/// The hand-written readers against independent ones, on generated input: the transaction
/// reader against Foundation's `JSONSerialization`, the line reader against a plain split at
/// every chunk size, and the changelog decoder on arbitrary bytes.
@Suite("Reader properties")
struct ReaderPropertyTests {
    /// A JSON string literal for `text`, escaping some characters that need no escape.
    static func literal(_ text: String, using random: inout SeededGenerator) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            case _ where scalar.value < 0x10000 && Bool.random(using: &random) && scalar.value > 0x7f:
                out += String(format: "\\u%04X", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    static let alphabet: [Character] = Array("abcXYZ019-_ \"\\/\n\té€😀\u{1}")

    static func text(_ random: inout SeededGenerator) -> String {
        String((0..<Int.random(in: 1...12, using: &random)).map { _ in alphabet.randomElement(using: &random)! })
    }

    static func number(_ random: inout SeededGenerator) -> String {
        let forms = ["\(Int.random(in: 0...99_999, using: &random))",
                     "\(Int.random(in: 0...999, using: &random)).\(Int.random(in: 0...99, using: &random))",
                     "\(Int.random(in: 1...9, using: &random))e\(Int.random(in: -3...3, using: &random))",
                     "-\(Int.random(in: 0...50, using: &random)).5", "0.000\(Int.random(in: 1...9, using: &random))"]
        return forms.randomElement(using: &random)!
    }

    /// A record with the four members in random order, sometimes an extra one, random spacing.
    static func record(_ random: inout SeededGenerator) -> String {
        var members = [
            "\"transactionId\":\(literal(text(&random), using: &random))",
            "\"cardId\":\(literal(text(&random), using: &random))",
            "\"amount\":\(number(&random))",
            "\"timestamp\":\(Int64.random(in: 0...4_000_000_000_000, using: &random))",
        ]
        if Bool.random(using: &random) { members.append("\"extra\":[1,{\"a\":null},true,\"x\"]") }
        members.shuffle(using: &random)
        let space = [" ", "", "\n", "\t"].randomElement(using: &random)!
        return "{" + space + members.joined(separator: "," + space) + space + "}"
    }

    static func mutate(_ bytes: [UInt8], _ random: inout SeededGenerator) -> [UInt8] {
        var b = bytes
        for _ in 0..<Int.random(in: 1...3, using: &random) where !b.isEmpty {
            let i = Int.random(in: 0..<b.count, using: &random)
            switch Int.random(in: 0..<4, using: &random) {
            case 0: b.remove(at: i)
            case 1: b.insert(Array("\"{}[],:\\0.e-x ".utf8).randomElement(using: &random)!, at: i)
            case 2: b[i] = UInt8.random(in: 0...255, using: &random)
            default: b.insert(contentsOf: b[i..<min(b.count, i + 5)], at: i)
            }
        }
        return b
    }

    @Test func readerAgreesWithJSONSerialization() throws {
        var random = SeededGenerator()
        let note = random.note
        var bothAccepted = 0, mutatedAccepted = 0
        for i in 0..<4_000 {
            let valid = Array(Self.record(&random).utf8)
            let bytes = i % 2 == 0 ? valid : Self.mutate(valid, &random)
            var decoder = TransactionDecoder()
            let ours = try? decoder.decode(bytes)
            let theirs = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any]
            if i % 2 == 0 {
                #expect(ours != nil, "a valid record was rejected: \(String(decoding: bytes, as: UTF8.self)); \(note)")
            }
            guard let ours else { continue }
            // Whatever the reader accepts is a JSON object to an independent parser too.
            guard let theirs else {
                Issue.record("accepted, but not JSON to JSONSerialization: \(String(decoding: bytes, as: UTF8.self)); \(note)")
                continue
            }
            bothAccepted += 1
            if i % 2 == 1 { mutatedAccepted += 1 }
            #expect(theirs["transactionId"] as? String == ours.transactionId, "\(String(decoding: bytes, as: UTF8.self)); \(note)")
            #expect(theirs["cardId"] as? String == ours.cardId, "\(String(decoding: bytes, as: UTF8.self)); \(note)")
            let timestamp = (theirs["timestamp"] as? NSNumber)?.int64Value
            #expect(timestamp == ours.timestamp, "\(String(decoding: bytes, as: UTF8.self)); \(note)")
            let amount = (theirs["amount"] as? NSNumber)?.doubleValue
            #expect(amount != nil && Double(ours.amount.text) == amount, "amount \(ours.amount.text) vs \(amount.map { "\($0)" } ?? "none"); \(note)")
        }
        #expect(bothAccepted >= 2_000, "\(bothAccepted) records accepted by both; \(note)")
        #expect(mutatedAccepted > 0, "no mutated record was still valid: the mutations test only rejection; \(note)")
    }

    @Test func lineReaderSplitsAlikeAtEveryChunkSize() throws {
        var random = SeededGenerator()
        let note = random.note
        let directory = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        for round in 0..<200 {
            let maxLine = Int.random(in: 4...40, using: &random)
            var lines: [[UInt8]] = []
            for _ in 0..<Int.random(in: 0...30, using: &random) {
                let length = [0, 1, maxLine, maxLine + 1, Int.random(in: 0...(3 * maxLine), using: &random)].randomElement(using: &random)!
                lines.append((0..<length).map { _ in UInt8.random(in: 0...255, using: &random) }.map { $0 == 0x0A ? 0x41 : $0 })
            }
            let finalNewline = Bool.random(using: &random)
            var file: [UInt8] = []
            for (i, line) in lines.enumerated() {
                file += line
                if i < lines.count - 1 || finalNewline { file.append(0x0A) }
            }
            // A final empty line without a newline is no line.
            let expected = (!finalNewline && lines.last?.isEmpty == true) ? Array(lines.dropLast()) : lines
            let url = directory.appendingPathComponent("lines-\(round)")
            try Data(file).write(to: url)
            let chunk = Int.random(in: 1...64, using: &random)
            let reader = LineReader(stream: try FileStream.openForReading(url.path), maxLineBytes: maxLine, chunkSize: chunk)
            var seen: [(view: [UInt8], number: Int, full: Int, consumed: Int)] = []
            try reader.forEachLine { (view, number, full, consumed) throws(Never) in
                seen.append((Array(view), number, full, consumed))
            }
            let context = "chunk \(chunk), max \(maxLine), \(expected.count) lines; \(note)"
            #expect(seen.count == expected.count, "\(context)")
            var offset = 0
            for (i, (got, line)) in zip(seen, expected).enumerated() {
                #expect(got.number == i + 1, "\(context)")
                #expect(got.full == line.count, "line \(i + 1): length \(got.full) of \(line.count); \(context)")
                // The whole line, or (past the limit) at least its first maxLine + 1 bytes.
                #expect(got.view == Array(line.prefix(got.view.count)) && got.view.count >= min(line.count, maxLine + 1),
                        "line \(i + 1): wrong bytes; \(context)")
                offset += line.count + (i < lines.count - 1 || finalNewline ? 1 : 0)
                #expect(got.consumed == offset, "line \(i + 1): consumed \(got.consumed) of \(offset); \(context)")
            }
        }
    }

    @Test func changelogDecodeOnRandomBytesThrowsNeverCrashes() {
        var random = SeededGenerator()
        let note = random.note
        var decoded = 0, rejected = 0
        for _ in 0..<20_000 {
            var key = (0..<Int.random(in: 0...12, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            // Often a valid header, so the id and value checks run too.
            if key.count >= 2, Bool.random(using: &random) {
                key[0] = ChangelogRecord.version
                key[1] = Bool.random(using: &random) ? ChangelogRecord.cardTag : ChangelogRecord.streamTimeTag
            }
            let value: [UInt8]? = Int.random(in: 0..<5, using: &random) == 0 ? nil
                : (0..<Int.random(in: 0...48, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            do {
                _ = try ChangelogRecord(key: key, value: value).decode()
                decoded += 1
            } catch {
                rejected += 1
                #expect(!error.description.isEmpty && !error.description.contains("\n"), "\(note)")
            }
        }
        #expect(decoded > 0 && rejected > 0, "\(decoded) decoded, \(rejected) rejected; \(note)")
    }
}
