import Foundation
import Testing
@testable import PolyglotSupport
@testable import KafkaClient
@testable import Roles

@Suite("Settings files")
struct SettingsFileTests {
    func write(_ bytes: [UInt8]) throws -> (URL, String) {
        let dir = try TestPaths.temporaryDirectory()
        let file = dir.appendingPathComponent("process.env")
        try Data(bytes).write(to: file)
        return (dir, file.path)
    }

    @Test func readsCRLFLinesAndReportsUnknownNamesInThem() throws {
        let (dir, path) = try write(Array("# comment\r\nPOLYGLOT_WINDOW=30s\r\nPOLYGLOT_THRESHOLD=5\r\n".utf8))
        defer { try? FileManager.default.removeItem(at: dir) }
        let values = try ProcessorSettings.readFile(path)
        #expect(values == ["POLYGLOT_WINDOW": "30s", "POLYGLOT_THRESHOLD": "5"])
        try Data("POLYGLOT_WINDOW=30s\r\nPOLYGLOT_WINDOWS=1m\r\n".utf8).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: ConfigurationError.self) { try ProcessorSettings.readFile(path) }
        #expect(error?.message == "\(path):2: unknown setting POLYGLOT_WINDOWS")
    }

    @Test func skipsAByteOrderMarkAndReadsCROnlyLines() throws {
        let (dir, path) = try write([0xEF, 0xBB, 0xBF] + Array("POLYGLOT_WINDOW=30s\rPOLYGLOT_GRACE=1s\r".utf8))
        defer { try? FileManager.default.removeItem(at: dir) }
        #expect(try ProcessorSettings.readFile(path) == ["POLYGLOT_WINDOW": "30s", "POLYGLOT_GRACE": "1s"])
    }

    @Test func anUnreadableFileGetsOneLine() {
        let error = #expect(throws: ConfigurationError.self) { try ProcessorSettings.readFile("/nonexistent/process.env") }
        #expect(error?.message == "settings file: cannot open '/nonexistent/process.env': No such file or directory")
    }

    @Test func kafkaPropertiesKeepASemicolonInsideAValue() throws {
        #expect(KafkaConfiguration.splitPropertyList("sasl.password=ab;cd;linger.ms=5\nclient.id=x; acks=all")
                == ["sasl.password=ab;cd", "linger.ms=5", "client.id=x", "acks=all"])
        let (dir, path) = try write(Array("POLYGLOT_KAFKA_PROPERTIES=sasl.password=p;w=d\r\nPOLYGLOT_KAFKA_PROPERTIES=linger.ms=7\r\n".utf8))
        defer { try? FileManager.default.removeItem(at: dir) }
        var settings = ProcessorSettings()
        settings.configFile = path
        settings.stateDirectory = dir.path
        settings.fingerprintDigest = String(repeating: "0", count: 64)
        let fromFile = try settings.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1"])
        #expect(fromFile.kafka["sasl.password"] == "p;w=d")
        #expect(fromFile.kafka["linger.ms"] == "7")
        settings.configFile = nil
        let fromEnvironment = try settings.resolve(environment: [
            "KAFKA_BOOTSTRAP_SERVERS": "h:1", "POLYGLOT_KAFKA_PROPERTIES": "sasl.password=a;b;client.id=c",
        ])
        #expect(fromEnvironment.kafka["sasl.password"] == "a;b")
        #expect(fromEnvironment.kafka["client.id"] == "c")
    }
}
