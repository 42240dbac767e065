import Foundation
import Testing
@testable import PolyglotSupport
@testable import Roles

@Suite("Image")
struct ImageTests {
    // MARK: Renderer

    @Test func committedImageFolderIsTheDefaultRender() throws {
        let files = try ImageRenderer.render(ImageOptions())
        #expect(files.map(\.name) == ImageRenderer.fileNames)
        for file in files {
            let path = ImageFixtures.repositoryRoot.appendingPathComponent("image").appendingPathComponent(file.name).path
            let committed = try #require(FileManager.default.contents(atPath: path), "image/\(file.name) is missing: run `polyglot image render`")
            #expect(committed == Data(file.contents.utf8), "image/\(file.name) differs from `polyglot image render` with defaults: re-render it")
            let mode = try #require(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
            #expect((mode & 0o111 != 0) == file.isExecutable, "image/\(file.name) has mode \(String(mode, radix: 8))")
        }
    }

    @Test func renderWritesEveryFileWithItsMode() throws {
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let out = directory.appendingPathComponent("nested/out").path
        let files = try ImageRenderer.render(ImageOptions())
        try ImageRenderer.write(files, to: out)
        for file in files {
            let path = out + "/" + file.name
            #expect(FileManager.default.contents(atPath: path) == Data(file.contents.utf8))
            let mode = try #require(FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int)
            #expect(mode == (file.isExecutable ? 0o755 : 0o644))
        }
    }

    @Test(arguments: [
        (\ImageOptions.region, "eu_central_1", "--region"),
        (\ImageOptions.region, "", "--region"),
        (\ImageOptions.instanceType, "t3", "--instance-type"),
        (\ImageOptions.version, "1.2", "--image-version"),
        (\ImageOptions.version, "1.2.3\nx", "--image-version"),
        (\ImageOptions.binaryPath, "my binary", "--binary-path"),
        (\ImageOptions.installPath, "usr/local/bin/polyglot", "--install-path"),
        (\ImageOptions.installPath, "/usr/local/bin/", "--install-path"),
        (\ImageOptions.kmsKeyId, "my key", "--kms-key-id"),
        (\ImageOptions.sourceAMI, "ami-123", "--source-ami"),
        (\ImageOptions.sourceAMI, "ami-0123456789ABCDEF0", "--source-ami"),
        (\ImageOptions.bootstrapServers, "kafka:9092 other:9092", "--bootstrap-servers"),
        (\ImageOptions.bootstrapServers, "kafka", "--bootstrap-servers"),
        (\ImageOptions.bootstrapServers, "a:1\nEVIL=1", "--bootstrap-servers"),
        (\ImageOptions.secretsParameterPath, "polyglot/kafka", "--secrets-parameter-path"),
        (\ImageOptions.secretsParameterPath, "/polyglot/kafka/", "--secrets-parameter-path"),
        (\ImageOptions.secretsParameterPath, "/polyglot kafka", "--secrets-parameter-path"),
        (\ImageOptions.secretsParameterPath, "/aws/kafka", "--secrets-parameter-path"),
        (\ImageOptions.secretsParameterPath, "/SSM/kafka", "--secrets-parameter-path"),
    ] as [(WritableKeyPath<ImageOptions, String> & Sendable, String, String)])
    func invalidTextOptionIsRejectedNamingItsFlag(field: WritableKeyPath<ImageOptions, String> & Sendable, value: String, flag: String) {
        var options = ImageOptions()
        options[keyPath: field] = value
        #expect {
            try ImageRenderer.render(options)
        } throws: { error in
            (error as? ConfigurationError)?.message.hasPrefix(flag + " ") == true
        }
    }

    @Test(arguments: [
        (\ImageOptions.rootVolumeSize, 7, "--root-volume-size"),
        (\ImageOptions.rootVolumeSize, 1025, "--root-volume-size"),
        (\ImageOptions.deprecateAfterDays, 0, "--deprecate-after-days"),
        (\ImageOptions.stopTimeoutSeconds, 5, "--stop-timeout"),
    ] as [(WritableKeyPath<ImageOptions, Int> & Sendable, Int, String)])
    func outOfRangeNumberIsRejectedNamingItsFlag(field: WritableKeyPath<ImageOptions, Int> & Sendable, value: Int, flag: String) {
        var options = ImageOptions()
        options[keyPath: field] = value
        #expect {
            try ImageRenderer.render(options)
        } throws: { error in
            (error as? ConfigurationError)?.message.hasPrefix(flag + " ") == true
        }
    }

    @Test func invalidDigestsAreRejected() {
        var options = ImageOptions()
        options.binarySha256 = String(repeating: "A", count: 64)
        #expect(throws: ConfigurationError.self) { try ImageRenderer.render(options) }
        options.binarySha256 = nil
        options.gitSha = "abc123"
        #expect(throws: ConfigurationError.self) { try ImageRenderer.render(options) }
    }

    @Test func acceptedForms() throws {
        var options = ImageOptions()
        for key in ["alias/polyglot", "1234abcd-12ab-34cd-56ef-1234567890ab", "arn:aws:kms:eu-central-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", "mrk-1234567890abcdef1234567890abcdef"] {
            options.kmsKeyId = key
            #expect(throws: Never.self) { try options.validate() }
        }
        options.bootstrapServers = "b-1.kafka.internal:9094,[::1]:9092,10.0.0.7:9092"
        options.region = "us-gov-west-1"
        options.version = "1.2.3-rc.1"
        options.sourceAMI = "ami-12345678"
        try options.validate()
    }

    @Test func optionsAreReflectedInTheFiles() throws {
        var options = ImageOptions()
        options.region = "us-west-2"
        options.instanceType = "c7a.large"
        options.version = "2.3.4"
        options.binaryPath = "dist/polyglot"
        options.binarySha256 = String(repeating: "ab", count: 32)
        options.gitSha = String(repeating: "c", count: 40)
        options.kmsKeyId = "alias/images"
        options.sourceAMI = "ami-0123456789abcdef0"
        options.rootVolumeSize = 16
        options.deprecateAfterDays = 30
        options.installPath = "/opt/polyglot/bin/polyglot"
        options.bootstrapServers = "k1:9092,k2:9092"
        options.stopTimeoutSeconds = 45
        options.secretsParameterPath = "/prod/kafka"
        let files = try Dictionary(uniqueKeysWithValues: ImageRenderer.render(options).map { ($0.name, $0.contents) })
        let hcl = try #require(files["polyglot.pkr.hcl"])
        for expected in [
            #"default     = "us-west-2""#, #"default     = "c7a.large""#, #"default     = "2.3.4""#,
            #"default     = "dist/polyglot""#, #"default     = "\#(String(repeating: "ab", count: 32))""#,
            #"default     = "\#(String(repeating: "c", count: 40))""#, #"default     = "alias/images""#,
            #"default     = "ami-0123456789abcdef0""#, "default     = 16", #"default     = "720h""#,
        ] {
            #expect(hcl.contains(expected), "missing \(expected)")
        }
        let unit = try #require(files["polyglot@.service"])
        #expect(unit.contains("ExecStart=/opt/polyglot/bin/polyglot %i\n"))
        #expect(unit.contains("ExecStartPre=/opt/polyglot/bin/polyglot image verify\n"))
        #expect(unit.contains("TimeoutStopSec=45s\n"))
        #expect(unit.contains("ExecStartPre=+/opt/polyglot/bin/polyglot-fetch-secrets %i\n"))
        #expect(unit.contains("StartLimitIntervalSec=0\n"))
        #expect(try #require(files["provision.sh"]).contains("readonly install_path=/opt/polyglot/bin/polyglot\n"))
        // A stopped auditor's verdict (exit 1) is no failure; a failed processor's exit 1 is.
        #expect(!unit.contains("SuccessExitStatus"))
        #expect(try #require(files["provision.sh"]).contains(
            "readonly audit_dropin_path=/etc/systemd/system/polyglot@audit.service.d/verdict.conf\n"))
        #expect(try #require(files["provision.sh"]).contains(#"printf '%s\n' '[Service]' 'SuccessExitStatus=1' >"$audit_dropin_path.new""#))
        #expect(try #require(files["polyglot.env"]).contains("\nKAFKA_BOOTSTRAP_SERVERS=k1:9092,k2:9092\n"))
        for role in ImageRenderer.roles {
            let userData = try #require(files["user-data-\(role).yaml"])
            #expect(userData.hasPrefix("#cloud-config\n"))
            #expect(userData.contains("      KAFKA_BOOTSTRAP_SERVERS=k1:9092,k2:9092\n"))
            #expect(userData.contains("  - [systemctl, enable, --now, polyglot@\(role).service]\n"))
            #expect(userData.contains("  - path: /etc/polyglot/\(role).env\n"))
            #expect(userData.contains("      AWS_REGION=us-west-2\n      PARAMETER_PATH=/prod/kafka\n"))
        }
        #expect(try #require(files["instance-policy.json"]).contains(#""arn:aws:ssm:us-west-2:*:parameter/prod/kafka/*""#))
        let fleet = try #require(files["fleet.cfn.yaml"])
        #expect(fleet.contains("    Default: \"k1:9092,k2:9092\"\n"))
        #expect(fleet.contains("    Default: /prod/kafka\n"))
        #expect(fleet.contains("    Default: 16\n"))
        for (name, contents) in files where name != "instance-policy.json" {
            #expect(contents.contains("(polyglot 2.3.4)"), "\(name) does not name the version")
        }
    }

    @Test func digestVariablesAreRequiredUnlessGiven() throws {
        let hcl = try #require(ImageRenderer.render(ImageOptions()).first { $0.name == "polyglot.pkr.hcl" }).contents
        for name in ["binary_sha256", "git_sha"] {
            let block = try #require(hcl.components(separatedBy: "variable \"\(name)\" {").dropFirst().first)
            let body = try #require(block.components(separatedBy: "\n}\n").first)
            #expect(!body.contains("default"), "\(name) has a default")
            #expect(body.contains("validation {"))
        }
    }

    @Test func environmentFileDocumentsEverySetting() throws {
        let env = try #require(ImageRenderer.render(ImageOptions()).first { $0.name == "polyglot.env" }).contents
        let names = [
            "KAFKA_BOOTSTRAP_SERVERS", "POLYGLOT_KAFKA_PROPERTIES", "POLYGLOT_CONNECT_TIMEOUT", "POLYGLOT_PARTITIONER",
            "POLYGLOT_INPUT_TOPIC", "POLYGLOT_OUTPUT_TOPIC", "POLYGLOT_DLQ_TOPIC",
            "POLYGLOT_APPLICATION_ID", "POLYGLOT_STATE_DIR", "POLYGLOT_GUARANTEE", "POLYGLOT_COMMIT_INTERVAL",
            "POLYGLOT_STREAM_THREADS", "POLYGLOT_INSTANCE_ID", "POLYGLOT_UNTIL_END",
            "POLYGLOT_WINDOW_KIND", "POLYGLOT_WINDOW", "POLYGLOT_THRESHOLD", "POLYGLOT_GRACE", "POLYGLOT_RETENTION", "POLYGLOT_MAX_FUTURE_SKEW",
            "POLYGLOT_AUDIT_GROUP", "POLYGLOT_AUDIT_FINDINGS_TOPIC", "POLYGLOT_AUDIT_SETTLE", "POLYGLOT_AUDIT_STALL_AFTER",
            "POLYGLOT_AUDIT_HIGH_VALUE", "POLYGLOT_LOG_LEVEL", "POLYGLOT_METRICS_PORT", "POLYGLOT_METRICS_ADDRESS", "POLYGLOT_HEALTH_BROKER_TIMEOUT",
        ]
        let lines = env.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        for name in names {
            let index = try #require(lines.firstIndex { $0.hasPrefix(name + "=") || $0.hasPrefix("#" + name + "=") }, "\(name) missing")
            #expect(index > 0 && lines[index - 1].hasPrefix("# "), "\(name) has no comment above it")
        }
        let settings = lines.filter { $0.contains("=") && !$0.hasPrefix("# ") }
        #expect(settings.count == names.count, "undocumented settings: \(settings)")
        // Exactly the table's settings of the long-running roles, each once, and only the
        // servers set.
        let listed = settings.map { String($0.drop { $0 == "#" }.prefix { $0 != "=" }) }
        let longRunning = Setting.all.filter { $0.roles.contains(.process) || $0.roles.contains(.audit) }.map(\.variable)
        #expect(listed == longRunning)
        #expect(Set(listed) == Set(names))
        #expect(settings.filter { !$0.hasPrefix("#") } == ["KAFKA_BOOTSTRAP_SERVERS=localhost:9092"])
        #expect(env.contains("#POLYGLOT_WINDOW=60s\n"))
        #expect(env.contains("#POLYGLOT_THRESHOLD=3\n"))
        #expect(env.contains("#POLYGLOT_GRACE=0s\n"))
        #expect(env.contains("#POLYGLOT_RETENTION=1h\n"))
        #expect(env.contains("#POLYGLOT_MAX_FUTURE_SKEW=1h\n"))
        #expect(env.contains("#POLYGLOT_STATE_DIR=/var/lib/polyglot/process\n"))
        #expect(env.contains("#POLYGLOT_AUDIT_SETTLE=30s\n") && env.contains("#POLYGLOT_AUDIT_STALL_AFTER=5m\n"))
        #expect(env.contains("#POLYGLOT_AUDIT_HIGH_VALUE=10000\n"))
        #expect(env.contains("#POLYGLOT_HEALTH_BROKER_TIMEOUT=30s\n"))
        #expect(env.contains("#POLYGLOT_LOG_LEVEL=info\n"))
        #expect(env.contains("#POLYGLOT_KAFKA_PROPERTIES=\n"))
        #expect(env.contains("#POLYGLOT_METRICS_PORT=\n"))
        #expect(env.contains("9464 for process, 9465 for audit"))
        let prose = lines.filter { $0.hasPrefix("# ") }.map { $0.dropFirst(2) }.joined(separator: " ")
        #expect(prose.contains("key=value pairs separated by newlines, or by ';' before a property name"))
        for setting in EnvironmentFile.settings { #expect(prose.contains(setting.help), "\(setting.variable): help not shown") }
        #expect(env.contains("\n# ---- Auditor (read by `audit` only) ----\n"))
        #expect(!lines.dropFirst().contains { $0.count > 80 }, "a line is over 80 characters")
    }

    /// The file with every setting uncommented is a settings file, and each long-running role
    /// resolves from it what it resolves with nothing set.
    @Test func theUncommentedEnvironmentFileResolvesToTheDefaults() throws {
        let env = try #require(ImageRenderer.render(ImageOptions()).first { $0.name == "polyglot.env" }).contents
        let uncommented = env.split(separator: "\n", omittingEmptySubsequences: false).map { line in
            line.hasPrefix("#") && !line.hasPrefix("# ") && line.contains("=") ? String(line.dropFirst()) : String(line)
        }.joined(separator: "\n")
        let directory = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("polyglot.env").path
        try Data(uncommented.utf8).write(to: URL(fileURLWithPath: path))
        #expect(try ProcessorSettings.readFile(path).count == EnvironmentFile.settings.count)

        var processor = ProcessorSettings()
        processor.stateDirectory = directory.path
        processor.instanceID = "i-1"
        processor.fingerprintDigest = String(repeating: "0", count: 64)
        var withFile = processor
        withFile.configFile = path
        let bare = ["KAFKA_BOOTSTRAP_SERVERS": ImageOptions().bootstrapServers]
        #expect("\(try withFile.resolve(environment: [:]))" == "\(try processor.resolve(environment: bare))")
        var auditor = AuditorSettings()
        auditor.processor = processor
        var auditorWithFile = AuditorSettings()
        auditorWithFile.processor = withFile
        #expect("\(try auditorWithFile.resolve(environment: [:]))" == "\(try auditor.resolve(environment: bare))")
        for port in [ObservabilitySettings.processMetricsPort, ObservabilitySettings.auditMetricsPort] {
            #expect(try ObservabilitySettings().resolve(environment: SettingsLayers(configFile: withFile.configFile, environment: [:]).environment, defaultMetricsPort: port)
                    == ObservabilitySettings().resolve(environment: [:], defaultMetricsPort: port))
        }
    }

    @Test func durationText() {
        #expect(DurationText.format(milliseconds: 0) == "0s")
        #expect(DurationText.format(milliseconds: 60_000) == "60s")
        #expect(DurationText.format(milliseconds: 7_200_000) == "2h")
        #expect(DurationText.format(milliseconds: 3_600_000) == "1h")
        #expect(DurationText.format(milliseconds: 5_000) == "5s")
        #expect(DurationText.format(milliseconds: 1_500) == "1500ms")
    }

    @Test func hclStringsCannotInterpolate() {
        #expect(PackerTemplate.hcl(#"a"b\c"#) == #""a\"b\\c""#)
        #expect(PackerTemplate.hcl("${var.x} %{if}") == #""$${var.x} %%{if}""#)
    }
}
