import Foundation
import Logging
import Synchronization
import Testing
@testable import PolyglotSupport
@testable import Observability

/// The log lines' two forms: JSON with numbers as numbers and units in the keys, and text with
/// the message first, as Go's slog and Rust's tracing write them.
@Suite("Log format")
struct LogFormatTests {
    private func capture(_ make: @escaping @Sendable (String, @escaping @Sendable (UnsafeRawBufferPointer) -> Void) -> any LogHandler,
                         _ body: (Logger) -> Void) -> [String] {
        let lines = Mutex<[String]>([])
        let logger = Logger(label: "polyglot.process") { label in
            make(label) { bytes in lines.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) } }
        }
        body(logger)
        return lines.withLock { $0 }
    }

    @Test func jsonLinesWriteNumbersAsNumbers() throws {
        let lines = capture({ JSONLogHandler(label: $0, level: .info, write: $1) }) { logger in
            logger.notice("stopped", metadata: [
                "records": .number(30_000), "average_rate_per_second": .number(375_036), "processing_seconds": .number(0.0801),
                "restore_seconds": .number(1.5, decimals: 3), "state": "running", "id": "42",
            ])
        }
        let line = try #require(lines.first)
        #expect(line.contains(#""records":30000"#) && line.contains(#""average_rate_per_second":375036"#), "\(line)")
        #expect(line.contains(#""processing_seconds":0.08"#) && line.contains(#""restore_seconds":1.500"#), "\(line)")
        // A string that looks like a number stays a string: only typed numbers are numbers.
        #expect(line.contains(#""id":"42""#) && line.contains(#""state":"running""#))
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
        #expect(object["records"] as? Int == 30_000)
        #expect(object["processing_seconds"] as? Double == 0.08)
        #expect(object["message"] as? String == "stopped")
    }

    @Test func textLinesPutTheMessageFirst() throws {
        let lines = capture({ TextLogHandler(label: $0, level: .info, write: $1) }) { logger in
            logger.info("progress", metadata: ["records": .number(120), "state": "running", "reason": "no broker for 31 s"])
            logger.warning("two\nlines")
        }
        #expect(lines.count == 2)
        let pattern = try Regex(#"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z  INFO polyglot\.process: progress reason="no broker for 31 s" records=120 state=running\n$"#)
        #expect(lines[0].wholeMatch(of: pattern) != nil, "\(lines[0])")
        #expect(lines[1].hasSuffix("  WARN polyglot.process: two lines\n"), "\(lines[1])")
        #expect(TextLogHandler.quotedIfNeeded("a\"b") == #""a\"b""#)
        #expect(TextLogHandler.quotedIfNeeded("") == #""""#)
        #expect(TextLogHandler.quotedIfNeeded("k=v") == #""k=v""#)
    }

    @Test func numbersAndKeysAreSpeltOneWay() {
        #expect(LogNumber(2.005, decimals: 2).description == "2.01" || LogNumber(2.005, decimals: 2).description == "2.00")
        #expect(LogNumber(12, decimals: 2).description == "12.00")
        #expect(LogNumber(-0.5, decimals: 1).description == "-0.5")
        #expect(LogNumber(.nan).description == "0")
        #expect(LogNumber(7.4, decimals: 0).description == "7")
        #expect("deadLetters".snakeCased == "dead_letters" && "records".snakeCased == "records")
    }

    /// A line written while a progress line is drawn goes above it, whole, and the progress
    /// line is drawn again below it.
    @Test func aLogLineNeverLandsInsideTheStatusLine() {
        let framed = StandardError.framed(Array("warning\n".utf8), status: "records 10/20")
        #expect(String(decoding: framed, as: UTF8.self) == "\r\u{1B}[Kwarning\nrecords 10/20")
        let unterminated = StandardError.framed(Array("note".utf8), status: "s")
        #expect(String(decoding: unterminated, as: UTF8.self) == "\r\u{1B}[Knote\ns")
    }
}
