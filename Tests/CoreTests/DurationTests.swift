import Foundation
import Testing
@testable import PolyglotSupport
@testable import Roles

@Suite("Durations")
struct DurationTests {
    @Test func acceptsCompoundForms() throws {
        #expect(try Durations.milliseconds("1m30s", setting: "x") == 90_000)
        #expect(try Durations.milliseconds("1h15m", setting: "x") == 4_500_000)
        #expect(try Durations.milliseconds("2h3m4s5ms", setting: "x") == 7_384_005)
        #expect(try Durations.milliseconds(" 1s500ms ", setting: "x") == 1_500)
        for bad in ["1s1m", "1m1m", "1m30", "m30s", "1ms1s", "1h 30m", "1h-5m"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { try Durations.milliseconds(bad, setting: "--window") }
        }
    }

    @Test func saysANegativeDurationIsNegative() {
        let error = #expect(throws: ConfigurationError.self) { try Durations.milliseconds("-5s", setting: "--window") }
        #expect(error?.message == "--window: '-5s' is negative; a duration is 0 or more (e.g. 0s, 250ms, 1m30s)")
    }

    @Test func compoundFormsWorkInTheEnvironmentAndSettingsFiles() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("process.env")
        try "POLYGLOT_GRACE=1m30s\n".write(to: file, atomically: true, encoding: .utf8)
        var settings = ProcessorSettings()
        settings.configFile = file.path
        settings.stateDirectory = dir.path
        settings.fingerprintDigest = String(repeating: "0", count: 64)
        settings.retention = "1h15m"
        let resolved = try settings.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1", "POLYGLOT_WINDOW": "2m30s"])
        #expect(resolved.parameters.window == 150_000)
        #expect(resolved.parameters.grace == 90_000)
        #expect(resolved.parameters.retention == 4_500_000)
    }
}
