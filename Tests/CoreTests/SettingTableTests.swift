import Foundation
import Testing
@testable import PolyglotSupport
@testable import StateStore
@testable import Roles

@Suite("Config: the settings table")
struct SettingTableTests {
    /// A value of each setting that differs from its default and is valid for every role.
    static let probes: [String: String] = [
        "KAFKA_BOOTSTRAP_SERVERS": "probe:7", "POLYGLOT_KAFKA_PROPERTIES": "linger.ms=7",
        "POLYGLOT_CONNECT_TIMEOUT": "7s", "POLYGLOT_PARTITIONER": "crc32",
        "POLYGLOT_INPUT_TOPIC": "probe-in", "POLYGLOT_OUTPUT_TOPIC": "probe-out", "POLYGLOT_DLQ_TOPIC": "probe-dlq",
        "POLYGLOT_APPLICATION_ID": "probe-app", "POLYGLOT_STATE_DIR": "(the fixture's other state directory)", "POLYGLOT_GUARANTEE": "at-least-once",
        "POLYGLOT_COMMIT_INTERVAL": "7s", "POLYGLOT_STREAM_THREADS": "7", "POLYGLOT_INSTANCE_ID": "probe-instance", "POLYGLOT_UNTIL_END": "true",
        "POLYGLOT_WINDOW_KIND": "sliding", "POLYGLOT_WINDOW": "7s", "POLYGLOT_THRESHOLD": "7", "POLYGLOT_GRACE": "7s", "POLYGLOT_RETENTION": "7h",
        "POLYGLOT_MAX_FUTURE_SKEW": "7m",
        "POLYGLOT_AUDIT_GROUP": "probe-group", "POLYGLOT_AUDIT_FINDINGS_TOPIC": "probe-findings",
        "POLYGLOT_AUDIT_SETTLE": "7s", "POLYGLOT_AUDIT_STALL_AFTER": "7s", "POLYGLOT_AUDIT_HIGH_VALUE": "7",
        "POLYGLOT_LOG_LEVEL": "debug", "POLYGLOT_METRICS_PORT": "7777", "POLYGLOT_METRICS_ADDRESS": "127.0.0.1",
        "POLYGLOT_HEALTH_BROKER_TIMEOUT": "7s",
    ]

    /// Two state directories, each with a kept instance id, so every resolution is repeatable.
    struct Fixture {
        let root: URL
        let state: String
        let otherState: String

        init() throws {
            root = try TestPaths.temporaryDirectory()
            state = root.appendingPathComponent("state").path
            otherState = root.appendingPathComponent("other-state").path
            for (directory, id) in [(state, "kept-a"), (otherState, "kept-b")] {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                try Data(id.utf8).write(to: URL(fileURLWithPath: directory + "/" + StateDirectory.instanceIDFile))
            }
        }

        /// Writes `values` over the base settings (servers, state directory) as a settings file.
        func file(_ values: [String: String]) throws -> String {
            let all = ["KAFKA_BOOTSTRAP_SERVERS": "h:1", "POLYGLOT_STATE_DIR": state].merging(values) { _, new in new }
            let path = root.appendingPathComponent("settings-\(UUID().uuidString).env").path
            try Data(all.map { "\($0.key)=\($0.value)\n" }.joined().utf8).write(to: URL(fileURLWithPath: path))
            return path
        }

        /// Everything `role` resolves from the settings file at `path`, as text.
        func resolved(_ role: Setting.Role, file path: String) throws -> String {
            let environment = [Setting.configFileVariable: path]
            var processor = ProcessorSettings()
            processor.fingerprintDigest = String(repeating: "0", count: 64)
            let merged = try SettingsLayers(configFile: processor.configFile, environment: environment).environment
            switch role {
            case .process:
                let observability = try ObservabilitySettings().resolve(environment: merged, defaultMetricsPort: ObservabilitySettings.processMetricsPort)
                return "\(try processor.resolve(environment: environment)) \(observability)"
            case .audit:
                var auditor = AuditorSettings()
                auditor.processor = processor
                let observability = try ObservabilitySettings().resolve(environment: merged, defaultMetricsPort: ObservabilitySettings.auditMetricsPort)
                return "\(try auditor.resolve(environment: environment)) \(observability)"
            case .produce:
                let loader = try InputLoaderSettings(input: "-").resolve(environment: environment)
                return "\(loader) \(try ObservabilitySettings().resolveLogLevel(environment: merged))"
            }
        }
    }

    @Test func everySettingHasAProbeAndAFlag() {
        #expect(Set(Self.probes.keys) == Setting.fileNames)
        #expect(Setting.fileNames.count == Setting.all.count, "a variable is declared twice")
        for setting in Setting.all {
            #expect(setting.flag.hasPrefix("-"), "\(setting.variable) has no flag")
            #expect(!setting.help.isEmpty && !setting.help.contains("\n"), "\(setting.variable): help must be one line")
            #expect(!setting.roles.isEmpty, "\(setting.variable) is read by no role")
        }
    }

    /// The roles column is right both ways: a setting in a settings file changes what each of
    /// its roles resolves, and nothing another role resolves. A name a resolver reads that the
    /// table lacks is refused in the file; one the table lists that no resolver reads changes
    /// nothing.
    @Test func eachSettingInAFileChangesExactlyItsRoles() throws {
        let fixture = try Fixture()
        defer { try? FileManager.default.removeItem(at: fixture.root) }
        var baselines: [Setting.Role: String] = [:]
        for role in Setting.Role.allCases { baselines[role] = try fixture.resolved(role, file: fixture.file([:])) }
        for setting in Setting.all {
            let value = setting == .stateDirectory ? fixture.otherState : try #require(Self.probes[setting.variable])
            let path = try fixture.file([setting.variable: value])
            for role in Setting.Role.allCases {
                let changed = try fixture.resolved(role, file: path) != baselines[role]
                if setting.roles.contains(role) {
                    #expect(changed, "\(role.rawValue) does not read \(setting.variable)")
                } else {
                    #expect(!changed, "\(role.rawValue) reads \(setting.variable), which the table does not list for it")
                }
            }
        }
    }

    /// Every `POLYGLOT_*` or `KAFKA_*` name in the sources is the table's (or the settings file's
    /// own variable, or the image build's).
    @Test func theSourcesNameNoVariableOutsideTheTable() throws {
        let sources = ImageFixtures.repositoryRoot.appendingPathComponent("Sources")
        let enumerator = try #require(FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil))
        let pattern = try Regex(#"\b(POLYGLOT|KAFKA)_[A-Z0-9_]*[A-Z0-9]"#)
        let allowed = Setting.fileNames.union([Setting.configFileVariable, "POLYGLOT_BINARY_SHA256"])
        var seen = 0
        var outside: Set<String> = []
        for case let url as URL in enumerator where url.pathExtension == "swift" {
            let text = try String(contentsOf: url, encoding: .utf8)
            for match in text.matches(of: pattern) {
                seen += 1
                let name = String(text[match.range])
                if !allowed.contains(name) { outside.insert("\(url.lastPathComponent): \(name)") }
            }
        }
        #expect(outside.isEmpty, "not in the table: \(outside.sorted())")
        #expect(seen > Setting.all.count)
    }

    @Test func theExampleSettingsFileUsesOnlyTheTablesNames() throws {
        let path = ImageFixtures.repositoryRoot.appendingPathComponent("config/process.example.env").path
        let names = Set(try ProcessorSettings.readFile(path).keys)
        #expect(names.isSubset(of: Setting.fileNames) && names.count > 10)
    }

    @Test func aBadValueNamesItsVariable() throws {
        let bad = [
            "POLYGLOT_WINDOW_KIND", "POLYGLOT_WINDOW", "POLYGLOT_GRACE", "POLYGLOT_RETENTION", "POLYGLOT_MAX_FUTURE_SKEW", "POLYGLOT_THRESHOLD",
            "POLYGLOT_AUDIT_SETTLE", "POLYGLOT_AUDIT_STALL_AFTER", "POLYGLOT_AUDIT_HIGH_VALUE",
        ]
        for variable in bad {
            var auditor = AuditorSettings()
            auditor.processor.stateDirectory = FileManager.default.temporaryDirectory.path
            auditor.processor.instanceID = "i"
            auditor.processor.fingerprintDigest = String(repeating: "0", count: 64)
            let error = #expect(throws: ConfigurationError.self) {
                try auditor.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1", variable: "bad"])
            }
            #expect(error?.message.hasPrefix(variable) == true, "\(variable): \(error?.message ?? "")")
        }
        for variable in ["POLYGLOT_LOG_LEVEL", "POLYGLOT_METRICS_PORT", "POLYGLOT_METRICS_ADDRESS", "POLYGLOT_HEALTH_BROKER_TIMEOUT"] {
            let error = #expect(throws: ConfigurationError.self) {
                try ObservabilitySettings().resolve(environment: [variable: "bad"], defaultMetricsPort: 9464)
            }
            #expect(error?.message.hasPrefix(variable) == true, "\(variable): \(error?.message ?? "")")
        }
    }

    @Test func runtimeOwnedPropertiesAreRefusedWithTheSettingToUse() throws {
        var settings = ProcessorSettings()
        settings.stateDirectory = FileManager.default.temporaryDirectory.path
        settings.instanceID = "i"
        settings.fingerprintDigest = String(repeating: "0", count: 64)
        let expected = [
            "bootstrap.servers": "use --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS instead",
            "group.id": "use --application-id or POLYGLOT_APPLICATION_ID (audit: --group or POLYGLOT_AUDIT_GROUP) instead",
            "transactional.id": "use --instance-id or POLYGLOT_INSTANCE_ID instead",
            "isolation.level": "use --guarantee or POLYGLOT_GUARANTEE instead",
            "enable.auto.commit": "use (offsets commit with the state) instead",
        ]
        for (property, instead) in expected {
            settings.kafkaProperties = ["\(property)=x"]
            let error = #expect(throws: ConfigurationError.self) {
                try settings.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1"])
            }
            #expect(error?.message == "-X \(property) is set by polyglot itself; \(instead)")
        }
        // Given through POLYGLOT_KAFKA_PROPERTIES too, and to produce, which has no other way.
        settings.kafkaProperties = []
        #expect(throws: ConfigurationError("-X bootstrap.servers is set by polyglot itself; use --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS instead")) {
            try settings.resolve(environment: ["POLYGLOT_KAFKA_PROPERTIES": "linger.ms=5;bootstrap.servers=h:2"])
        }
        var loader = InputLoaderSettings(input: "-")
        loader.kafkaProperties = ["bootstrap.servers=h:2"]
        #expect(throws: ConfigurationError("-X bootstrap.servers is set by polyglot itself; use --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS instead")) {
            try loader.resolve(environment: ["KAFKA_BOOTSTRAP_SERVERS": "h:1"])
        }
        // The servers themselves, from the flag or the variable, are no -X.
        settings.bootstrapServers = "h:3"
        #expect(try settings.resolve(environment: [:]).kafka.bootstrapServers == "h:3")
    }

    @Test func environmentHelpListsEachRolesVariables() {
        let process = ProcessorSettings.environmentHelp
        #expect(process.contains("POLYGLOT_APPLICATION_ID") && !process.contains("POLYGLOT_AUDIT_GROUP"))
        #expect(process.contains("POLYGLOT_KAFKA_PROPERTIES (key=value pairs separated by newlines, or by ';' before a property name)"))
        #expect(process.contains("POLYGLOT_METRICS_PORT (0: off)") && process.hasSuffix("POLYGLOT_CONFIG (the settings file)"))
        let audit = AuditorSettings.environmentHelp
        #expect(audit.contains("POLYGLOT_AUDIT_GROUP") && audit.contains("POLYGLOT_WINDOW") && audit.contains("POLYGLOT_APPLICATION_ID"))
        let produce = InputLoaderSettings.environmentHelp
        #expect(produce == "KAFKA_BOOTSTRAP_SERVERS, POLYGLOT_KAFKA_PROPERTIES (key=value pairs separated by newlines, or by ';' before a property name), POLYGLOT_CONNECT_TIMEOUT, POLYGLOT_PARTITIONER, POLYGLOT_INPUT_TOPIC, POLYGLOT_LOG_LEVEL, POLYGLOT_CONFIG (the settings file)")
    }
}
