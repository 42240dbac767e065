import Foundation
import Testing
@testable import PolyglotSupport
@testable import FraudModel

@Suite("Codec")
struct CodecTests {
    static let valid = #"{"transactionId":"t-1","cardId":"c-9","amount":12.30,"timestamp":1700000000000}"#

    @Test func decodesAValidRecord() throws {
        var decoder = TransactionDecoder()
        let t = try decoder.decode(Array(Self.valid.utf8))
        #expect(t.transactionId == "t-1")
        #expect(t.cardId == "c-9")
        #expect(t.amount.text == "12.30")
        #expect(t.timestamp == 1_700_000_000_000)
    }

    @Test func keepsAmountTextByteForByte() throws {
        var decoder = TransactionDecoder()
        for amount in ["12.30", "1E3", "-0", "0.000", "1e-5", "123456789012345678901234567890.12345678", "9.5E+2"] {
            let t = try decoder.decode(Array(#"{"transactionId":"a","cardId":"b","amount":\#(amount),"timestamp":1}"#.utf8))
            #expect(t.amount.text == amount)
        }
    }

    @Test func ignoresOtherMembersAndWhitespace() throws {
        var decoder = TransactionDecoder()
        let text = " {\"x\":[1,{\"y\":null}], \"transactionId\" : \"a\",\t\"cardId\":\"b\",\r\n\"amount\":1,\"timestamp\":2,\"z\":true} "
        #expect(decoder.code(of: text) == nil)
    }

    @Test(arguments: [
        // (record, expected code)
        ("not json", RejectionCode.invalidJSON),
        ("", .invalidJSON),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":NaN,\"timestamp\":1}", .invalidJSON),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":01,\"timestamp\":1}", .invalidJSON),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1.,\"timestamp\":1}", .invalidJSON),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":.5,\"timestamp\":1}", .invalidJSON),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1} x", .invalidJSON),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1,}", .invalidJSON),
        ("{\"transactionId\":\"a\tb\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1}", .invalidJSON),
        ("{\"transactionId\":\"abcdefghijklmnopqrstuvw\u{1}xyz\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1}", .invalidJSON),
        ("{\"transactionId\":\"a\\x\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1}", .invalidJSON),
        ("\u{FEFF}{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1}", .invalidJSON),
        ("[1,2]", .notObject),
        ("\"text\"", .notObject),
        ("42", .notObject),
        ("null", .notObject),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"amount\":2,\"timestamp\":1}", .duplicateField),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1,\"x\":{\"y\":1,\"y\":2}}", .duplicateField),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1,\"x\":[{\"y\":1,\"\\u0079\":2}]}", .duplicateField),
        ("{\"cardId\":\"b\",\"amount\":1,\"timestamp\":1}", .missingField),
        ("{}", .missingField),
        ("{\"transactionId\":\"a\",\"cardId\":7,\"amount\":1,\"timestamp\":1}", .wrongType),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":\"12.00\",\"timestamp\":1}", .wrongType),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":true,\"timestamp\":1}", .wrongType),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1.5}", .wrongType),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1e3}", .wrongType),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":\"1\"}", .wrongType),
        ("{\"transactionId\":\"\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":1}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":-5}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":9223372036854775808}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1,\"timestamp\":99999999999999999999999}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1e200,\"timestamp\":1}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1e-129,\"timestamp\":1}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":123456789012345678901234567890123456789,\"timestamp\":1}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"b\",\"amount\":1e99999999999999999999999999,\"timestamp\":1}", .invalidValue),
        ("{\"transactionId\":\"a\",\"cardId\":\"c\\ud800\",\"amount\":1,\"timestamp\":1}", .invalidUTF8),
        ("{\"transactionId\":\"a\",\"cardId\":\"c\\udc00\\ud800\",\"amount\":1,\"timestamp\":1}", .invalidUTF8),
        ("{\"\\ud800\":1,\"transactionId\":\"a\",\"cardId\":\"c\",\"amount\":1,\"timestamp\":1}", .invalidUTF8),
    ])
    func rejects(_ record: String, _ code: RejectionCode) {
        var decoder = TransactionDecoder()
        #expect(decoder.code(of: record) == code, "\(record)")
    }

    @Test func acceptsBoundaryValues() {
        var decoder = TransactionDecoder()
        let id1024 = String(repeating: "x", count: 1024)
        #expect(decoder.code(of: #"{"transactionId":"\#(id1024)","cardId":"b","amount":1,"timestamp":9223372036854775807}"#) == nil)
        #expect(decoder.code(of: #"{"transactionId":"\#(id1024)x","cardId":"b","amount":1,"timestamp":1}"#) == .invalidValue)
        // 38 digits, exponent limits, trailing zeros kept (so 100e-129 is out of range).
        #expect(decoder.code(of: #"{"transactionId":"a","cardId":"b","amount":12345678901234567890123456789012345678,"timestamp":0}"#) == nil)
        #expect(decoder.code(of: #"{"transactionId":"a","cardId":"b","amount":0.00012345678901234567890123456789012345678,"timestamp":0}"#) == nil)
        #expect(decoder.code(of: #"{"transactionId":"a","cardId":"b","amount":1e127,"timestamp":0}"#) == nil)
        #expect(decoder.code(of: #"{"transactionId":"a","cardId":"b","amount":1e-128,"timestamp":0}"#) == nil)
        #expect(decoder.code(of: #"{"transactionId":"a","cardId":"b","amount":1e128,"timestamp":0}"#) == .invalidValue)
        #expect(decoder.code(of: #"{"transactionId":"a","cardId":"b","amount":100e-129,"timestamp":0}"#) == .invalidValue)
        // An id of 1024 bytes counted after unescaping: 512 two-byte characters.
        let twoByte = String(repeating: "\\u00e9", count: 512)
        #expect(decoder.code(of: #"{"transactionId":"\#(twoByte)","cardId":"b","amount":1,"timestamp":0}"#) == nil)
        #expect(decoder.code(of: #"{"transactionId":"\#(twoByte)a","cardId":"b","amount":1,"timestamp":0}"#) == .invalidValue)
    }

    @Test func scansLongStringsWordByWord() throws {
        var decoder = TransactionDecoder()
        // Quotes, escapes and non-ASCII at every offset within an 8-byte word.
        for k in 0..<17 {
            let pad = String(repeating: "x", count: k)
            let t = try decoder.decode(Array(#"{"transactionId":"\#(pad)\"\#(pad)é\#(pad)","cardId":"\#(pad)c","amount":1,"timestamp":1}"#.utf8))
            #expect(t.transactionId == pad + "\"" + pad + "é" + pad)
            #expect(t.cardId == pad + "c")
        }
    }

    @Test func decodesEscapesAndSurrogatePairs() throws {
        var decoder = TransactionDecoder()
        let t = try decoder.decode(Array(#"{"transactionId":"a\"b\\c\/d\n\u00e9\ud83d\ude00","cardId":"\u0063","amount":1,"timestamp":1}"#.utf8))
        #expect(t.transactionId == "a\"b\\c/d\né😀")
        #expect(t.cardId == "c")
    }

    @Test func precedenceFollowsTheTable() {
        var decoder = TransactionDecoder()
        // Invalid UTF-8 beats invalid JSON, even when the bad byte comes after the JSON error.
        #expect(decoder.code(of: Array("{\"a\" oops ".utf8) + [0xFF]) == .invalidUTF8)
        // An escaped lone surrogate counts only in valid JSON: a later JSON error wins.
        #expect(decoder.code(of: #"{"transactionId":"\ud800" garbage"#) == .invalidJSON)
        #expect(decoder.code(of: #"{"transactionId":"\ud800"}"#) == .invalidUTF8)
        // Deeper than 128 levels is not valid JSON, so a surrogate before the depth error loses.
        let deep = #"{"a":"\udc00","b":"# + String(repeating: "[", count: 200) + String(repeating: "]", count: 200) + "}"
        #expect(decoder.code(of: deep) == .invalidJSON)
        let shallow = #"{"a":"\udc00","b":"# + String(repeating: "[", count: 127) + String(repeating: "]", count: 127) + "}"
        #expect(decoder.code(of: shallow) == .invalidUTF8)
        // JSON errors beat duplicates; duplicates beat missing members; missing beats wrong type.
        #expect(decoder.code(of: #"{"a":1,"a":2"#) == .invalidJSON)
        #expect(decoder.code(of: #"{"a":1,"a":2}"#) == .duplicateField)
        #expect(decoder.code(of: #"{"transactionId":1,"cardId":"b","amount":1}"#) == .missingField)
        #expect(decoder.code(of: #"{"transactionId":"","cardId":1,"amount":1,"timestamp":1}"#) == .wrongType)
        // Too large beats everything.
        var huge = Array("{\"x\":\"".utf8) + Array(repeating: UInt8(ascii: "a"), count: 1 << 20) + Array("\"}".utf8)
        huge.append(0xFF)
        #expect(decoder.code(of: huge) == .tooLarge)
    }

    @Test func rejectsInvalidUTF8Sequences() {
        var decoder = TransactionDecoder()
        let prefix = Array("{\"transactionId\":\"a\",\"cardId\":\"".utf8)
        let suffix = Array("\",\"amount\":1,\"timestamp\":1}".utf8)
        for bad: [UInt8] in [[0xFF], [0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xC3], [0x80]] {
            #expect(decoder.code(of: prefix + bad + suffix) == .invalidUTF8, "\(bad)")
        }
        for good: [UInt8] in [[0xC3, 0xA9], [0xE2, 0x82, 0xAC], [0xF0, 0x9F, 0x98, 0x80], [0xEF, 0xBF, 0xBF]] {
            #expect(decoder.code(of: prefix + good + suffix) == nil, "\(good)")
        }
    }

    @Test func validatesUTF8AtEveryLength() {
        // Lengths around the 8- and 32-byte steps, with and without a bad byte at the end.
        for n in 1..<80 {
            let ascii = [UInt8](repeating: UInt8(ascii: "a"), count: n)
            #expect(UTF8Validation.firstInvalidByte(ascii, n) == nil)
            #expect(UTF8Validation.firstInvalidByte(ascii + [0xFF], n + 1) == n)
            #expect(UTF8Validation.firstInvalidByte(ascii + [0xC3, 0xA9], n + 2) == nil)
            #expect(UTF8Validation.firstInvalidByte(ascii + [0xC3], n + 1) == n)
        }
    }

    /// The canonical-layout fast path accepts only what the general parser accepts, with the
    /// same members: checked on every one-byte mutation of a canonical record.
    @Test func fastPathAgreesWithTheGeneralParser() {
        let canonical = Array(#"{"transactionId":"tx-1","cardId":"card-22","amount":12.50,"timestamp":1767225600000}"#.utf8)
        let alphabet = Array(#"{}[]":,\ 0123456789-+.eEatx"#.utf8) + [0x01, 0x7F]
        var inputs: [[UInt8]] = [canonical]
        for i in 0..<canonical.count {
            var deleted = canonical
            deleted.remove(at: i)
            inputs.append(deleted)
            for c in alphabet {
                var replaced = canonical
                replaced[i] = c
                inputs.append(replaced)
                var inserted = canonical
                inserted.insert(c, at: i)
                inputs.append(inserted)
            }
        }
        var accepted = 0
        for input in inputs {
            input.withUnsafeBufferPointer { buffer in
                let base = buffer.baseAddress!
                var fast = JSONScanner(base: base, end: buffer.count, names: [], nameBytes: [])
                guard fast.matchCanonicalRecord() else { return }
                accepted += 1
                var general = JSONScanner(base: base, end: buffer.count, names: [], nameBytes: [])
                let top = try? general.parseDocument()
                #expect(top?.isObject == true, "\(String(decoding: input, as: UTF8.self))")
                #expect(general.duplicateName == nil)
                #expect(general.members.transactionId == fast.members.transactionId)
                #expect(general.members.cardId == fast.members.cardId)
                #expect(general.members.amount == fast.members.amount)
                #expect(general.members.timestamp == fast.members.timestamp)
            }
        }
        #expect(accepted > 100)
    }

    @Test func boundsNestingDepth() {
        var decoder = TransactionDecoder()
        func record(depth: Int) -> String {
            // The record itself is level 1; `depth - 1` arrays nest inside it.
            let open = String(repeating: "[", count: depth - 1), close = String(repeating: "]", count: depth - 1)
            return #"{"transactionId":"a","cardId":"b","amount":1,"timestamp":1,"deep":\#(open)\#(close)}"#
        }
        #expect(decoder.code(of: record(depth: 128)) == nil)
        #expect(decoder.code(of: record(depth: 129)) == .invalidJSON)
    }

    @Test func survivesHostileInput() {
        var decoder = TransactionDecoder()
        // 100,000 nested brackets: a clear code, no stack overflow.
        #expect(decoder.code(of: String(repeating: "[", count: 100_000)) == .invalidJSON)
        #expect(decoder.code(of: String(repeating: "{\"a\":", count: 100_000)) == .invalidJSON)
        // A 5 MiB string.
        #expect(decoder.code(of: "{\"x\":\"" + String(repeating: "a", count: 5 << 20) + "\"}") == .tooLarge)
        // An object with very many members stays linear (a hash set past 16 names).
        var wide = "{"
        for i in 0..<50_000 { wide += "\"k\(i)\":0," }
        wide += #""transactionId":"a","cardId":"b","amount":1,"timestamp":1}"#
        #expect(decoder.code(of: wide) == nil)
        #expect(decoder.code(of: String(wide.dropLast()) + #","k49999":1}"#) == .duplicateField)
    }

    @Test func checksFutureSkewAgainstKafkaTimestamp() {
        var decoder = TransactionDecoder()
        let record = #"{"transactionId":"a","cardId":"b","amount":1,"timestamp":5000000}"#
        #expect(decoder.code(of: record, kafkaTimestamp: 5_000_000 - 3_600_000) == nil)
        #expect(decoder.code(of: record, kafkaTimestamp: 5_000_000 - 3_600_001) == .invalidValue)
        #expect(decoder.code(of: record) == nil)
        // Near the top of the range nothing overflows.
        let top = #"{"transactionId":"a","cardId":"b","amount":1,"timestamp":9223372036854775807}"#
        #expect(decoder.code(of: top, kafkaTimestamp: .max) == nil)
    }

    @Test func writesOutputByteForByte() throws {
        let encoder = EnrichedRecordEncoder(parameters: .default)
        var decoder = TransactionDecoder()
        let t = try decoder.decode(Array(Self.valid.utf8))
        let plain = encoder.encode(t, Verdict(windowStart: 1_699_999_980_000, count: 1, isFlagged: false, isLate: false))
        #expect(String(decoding: plain, as: UTF8.self)
            == #"{"transactionId":"t-1","cardId":"c-9","amount":12.30,"isFlagged":false,"reason":"","timestamp":1700000000000,"windowStart":1699999980000,"count":1}"#)
        let flagged = encoder.encode(t, Verdict(windowStart: 0, count: 4, isFlagged: true, isLate: false))
        #expect(String(decoding: flagged, as: UTF8.self).contains(#""isFlagged":true,"reason":"Flagged: 4 transactions in 1 minute""#))
        let late = encoder.encode(t, Verdict(windowStart: 0, count: 0, isFlagged: false, isLate: true))
        #expect(String(decoding: late, as: UTF8.self).contains(#""isFlagged":false,"reason":"Late: window closed""#))
        // The encoder's reason bytes and Detector.reason agree.
        let detector = Detector(parameters: try DetectorParameters(window: 1_500))
        #expect(detector.reason(for: Verdict(windowStart: 0, count: 7, isFlagged: true, isLate: false)) == "Flagged: 7 transactions in 1500 ms")
    }

    @Test func escapesOnlyWhatSemanticsSays() throws {
        var decoder = TransactionDecoder()
        let t = try decoder.decode(Array(#"{"transactionId":"q\"b\\s\/é\u0001\u001f\b\f\n\r\t\u007f","cardId":"c","amount":1,"timestamp":1}"#.utf8))
        let out = String(decoding: EnrichedRecordEncoder(parameters: .default).encode(t, Verdict(windowStart: 0, count: 1, isFlagged: false, isLate: false)), as: UTF8.self)
        #expect(out.hasPrefix(#"{"transactionId":"q\"b\\s/é\u0001\u001f\b\f\n\r\t"# + "\u{7f}\""))
    }

    @Test(arguments: [0, 5, 9, 10, 42, 99, 100, 101, 999, 1_000, 1_767_225_600_000, -1, -10, -99, -100, Int64.max, Int64.min, Int64.max - 1])
    func writesIntegers(_ v: Int64) {
        let buffer = ByteBuffer(capacity: 1)
        buffer.appendInteger(v)
        #expect(String(decoding: buffer.array, as: UTF8.self) == String(v))
    }

    @Test func comparesDecimalsExactly() {
        let limit = DecimalText("10000")!
        #expect(DecimalText("10000.0000000000000001")!.isGreater(than: limit))
        #expect(!DecimalText("10000.000")!.isGreater(than: limit))
        #expect(!DecimalText("1E4")!.isGreater(than: limit))
        #expect(DecimalText("1.00000000000000000001E4")!.isGreater(than: limit))
        #expect(!DecimalText("9999.99999999999999999999")!.isGreater(than: limit))
        #expect(!DecimalText("-20000")!.isGreater(than: limit))
        #expect(DecimalText.compare(DecimalText("-0")!, DecimalText("0.000")!) == 0)
        #expect(DecimalText.compare(DecimalText("-1")!, DecimalText("-0.5")!) < 0)
        #expect(DecimalText.compare(DecimalText("123e-2")!, DecimalText("1.23")!) == 0)
        #expect(DecimalText.compare(DecimalText("0.001")!, DecimalText("1e-4")!) > 0)
        #expect(DecimalText("abc") == nil)
        #expect(DecimalText("01") == nil)
    }

    @Test func writesDeadLetterLines() throws {
        let buffer = ByteBuffer()
        let raw: [UInt8] = Array("bad \"line\"".utf8) + [0xFF]
        raw.withUnsafeBytes { DeadLetterLine.append(line: 7, rejection: Rejection(.invalidUTF8, "invalid UTF-8 at byte 10"), raw: $0, to: buffer) }
        let text = String(decoding: buffer.array, as: UTF8.self)
        #expect(text == "{\"line\":7,\"error\":\"invalid_utf8\",\"message\":\"invalid UTF-8 at byte 10\",\"raw\":\"bad \\\"line\\\"\u{FFFD}\"}\n")
        let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        #expect(object?["line"] as? Int == 7)
    }

    @Test(arguments: [
        (#"{"transactionId":"t","cardId":"c-1","amount":1,"timestamp":1}"#, CardKeyReading.valid, "c-1"),
        (#"{"transactionId":"t","cardId":"c\u002d1","amount":1,"timestamp":1}"#, .valid, "c-1"),
        (#"{"transactionId":"t","cardId":"c-2","timestamp":1}"#, .rejected(.missingField), "c-2"),
        (#"{"transactionId":7,"cardId":"c-3","amount":1,"timestamp":1}"#, .rejected(.wrongType), "c-3"),
        (#"{"transactionId":"t","cardId":"c-4","amount":1,"timestamp":-1}"#, .rejected(.invalidValue), "c-4"),
        (#"{"transactionId":"t","cardId":"","amount":1,"timestamp":1}"#, .unreadable(.invalidValue), ""),
        (#"{"transactionId":"t","cardId":5,"amount":1,"timestamp":1}"#, .unreadable(.wrongType), ""),
        (#"{"cardId":"a","cardId":"b"}"#, .unreadable(.duplicateField), ""),
        (#"["c-5"]"#, .unreadable(.notObject), ""),
        ("not json", .unreadable(.invalidJSON), ""),
        ("", .unreadable(.invalidJSON), ""),
    ])
    func cardKeyReadsTheCardIdTheProcessorPartitionsBy(_ record: String, _ reading: CardKeyReading, _ key: String) {
        var decoder = TransactionDecoder()
        var bytes: [UInt8] = [0x78]  // not emptied by the caller: the reader empties it
        let result = Array(record.utf8).withUnsafeBytes { decoder.cardKey(of: $0, into: &bytes) }
        #expect(result == reading)
        #expect(bytes == Array(key.utf8))
    }
}
