import Crypto
import Foundation
import Testing
@testable import Core

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
        #expect(try #require(files["provision.sh"]).contains("readonly install_path=/opt/polyglot/bin/polyglot\n"))
        #expect(try #require(files["polyglot.env"]).contains("\nKAFKA_BOOTSTRAP_SERVERS=k1:9092,k2:9092\n"))
        for role in ImageRenderer.roles {
            let userData = try #require(files["user-data-\(role).yaml"])
            #expect(userData.hasPrefix("#cloud-config\n"))
            #expect(userData.contains("      KAFKA_BOOTSTRAP_SERVERS=k1:9092,k2:9092\n"))
            #expect(userData.contains("  - [systemctl, enable, --now, polyglot@\(role).service]\n"))
            #expect(userData.contains("  - path: /etc/polyglot/\(role).env\n"))
        }
        for (name, contents) in files {
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
            "POLYGLOT_INSTANCE_ID", "POLYGLOT_UNTIL_END",
            "POLYGLOT_WINDOW", "POLYGLOT_THRESHOLD", "POLYGLOT_GRACE", "POLYGLOT_RETENTION", "POLYGLOT_MAX_FUTURE_SKEW",
            "POLYGLOT_AUDIT_GROUP", "POLYGLOT_AUDIT_FINDINGS_TOPIC", "POLYGLOT_AUDIT_SETTLE", "POLYGLOT_AUDIT_HIGH_VALUE",
            "POLYGLOT_LOG_LEVEL", "POLYGLOT_METRICS_PORT", "POLYGLOT_HEALTH_BROKER_TIMEOUT",
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
        #expect(env.contains("#POLYGLOT_AUDIT_SETTLE=30s\n"))
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
            #expect(try ObservabilitySettings().resolve(environment: withFile.mergedEnvironment([:]), defaultMetricsPort: port)
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

    // MARK: Fingerprint

    @Test func currentFingerprintHasEveryField() throws {
        let fingerprint = try EnvironmentFingerprint.current()
        for field in fingerprint.fields {
            #expect(!field.value.isEmpty && field.value != "unknown", "\(field.name) is \(field.value)")
        }
        let executable = try Data(contentsOf: URL(fileURLWithPath: "/proc/self/exe"))
        #expect(fingerprint.binarySha256 == SHA256.hash(data: executable).map { String(format: "%02x", $0) }.joined())
        #expect(fingerprint.glibc.wholeMatch(of: /[0-9]+\.[0-9]+(\.[0-9]+)?/) != nil)
        #expect(fingerprint.librdkafka == KafkaLibrary.runtimeVersion)
        #expect(fingerprint.librdkafkaCompiled == KafkaLibrary.compiledVersion)
        #expect(fingerprint.sqlite == SQLiteLibrary.runtimeVersion)
        #expect(fingerprint.sqliteCompiled == SQLiteLibrary.compiledVersion)
        #expect(fingerprint.polyglotVersion == ProductVersion.version)
        #expect(fingerprint.arch == ImageFixtures.compiledArchitecture)
        #expect(try EnvironmentFingerprint.current() == fingerprint)
    }

    @Test func canonicalJSONAndDigestAreStable() throws {
        let fingerprint = ImageFixtures.sample
        let expected = #"{"arch":"x86_64","binarySha256":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","glibc":"2.36","librdkafka":"2.0.2","librdkafkaCompiled":"2.0.2","os":"Debian GNU/Linux 12 (bookworm)","polyglotVersion":"0.1.0","sqlite":"3.40.1","sqliteCompiled":"3.40.1"}"#
        #expect(fingerprint.canonicalJSON == expected)
        // Independently: printf '%s' "$expected" | sha256sum
        #expect(fingerprint.digest == "48df2493f4bec405e013e2f96b746d7b54e328d0fa7a8c8d99be1da80e975584")
        #expect(fingerprint.digest == SHA256.hash(data: Data(expected.utf8)).map { String(format: "%02x", $0) }.joined())
        // The same fingerprint decoded from its file gives the same digest.
        #expect(try BakedFingerprint(json: Array(expected.utf8), source: "test").digest == fingerprint.digest)
        // Codable round trip.
        let decoded = try JSONDecoder().decode(EnvironmentFingerprint.self, from: JSONEncoder().encode(fingerprint))
        #expect(decoded == fingerprint)
        #expect(try JSONDecoder().decode(EnvironmentFingerprint.self, from: Data(expected.utf8)) == fingerprint)
    }

    @Test func canonicalJSONEscapesLikeTheOutputWriter() {
        var fingerprint = ImageFixtures.sample
        fingerprint.os = "a\"b\\c\u{01}\n\té/"
        #expect(fingerprint.canonicalJSON.contains(#""os":"a\"b\\c\u0001\n\té/""#))
    }

    @Test func everyFieldChangeChangesTheDigestAndIsNamed() {
        let baked = ImageFixtures.sample
        for index in baked.fields.indices {
            let name = baked.fields[index].name
            var pairs = Dictionary(uniqueKeysWithValues: baked.fields.map { ($0.name, $0.value) })
            pairs[name] = pairs[name]! + "-changed"
            let running = ImageFixtures.fingerprint(pairs)
            #expect(running.digest != baked.digest, "\(name) does not reach the digest")
            #expect(running.differences(from: baked) == [
                FingerprintDifference(field: name, baked: baked.fields[index].value, running: baked.fields[index].value + "-changed"),
            ])
        }
        #expect(baked.differences(from: baked).isEmpty)
    }

    @Test func verifyMatchesAndDetectsDrift() throws {
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let running = try EnvironmentFingerprint.current()
        let path = directory.appendingPathComponent("fingerprint.json").path

        try Data((running.canonicalJSON + "\n").utf8).write(to: URL(fileURLWithPath: path))
        let match = try FingerprintVerification.verify(running: running, bakedFileAt: path)
        #expect(match == .match(digest: running.digest))
        #expect(match.report(bakedFile: path) == "polyglot image verify: the environment matches \(path) (fingerprint \(running.digest))")

        var baked = running
        baked.glibc = "2.31"
        baked.librdkafka = "1.9.2"
        try Data(baked.canonicalJSON.utf8).write(to: URL(fileURLWithPath: path))
        let drift = try FingerprintVerification.verify(running: running, bakedFileAt: path)
        #expect(drift == .drift([
            FingerprintDifference(field: "glibc", baked: "2.31", running: running.glibc),
            FingerprintDifference(field: "librdkafka", baked: "1.9.2", running: running.librdkafka),
        ]))
        #expect(drift.report(bakedFile: path) == """
        polyglot image verify: the environment drifted from \(path): 2 fields differ
          glibc: baked "2.31", running "\(running.glibc)"
          librdkafka: baked "1.9.2", running "\(running.librdkafka)"
        """)
    }

    @Test func fieldsAddedOrRemovedBetweenVersionsAreNamed() throws {
        var pairs = Dictionary(uniqueKeysWithValues: ImageFixtures.sample.fields.map { ($0.name, $0.value) })
        pairs["os"] = nil
        pairs["kernel"] = "6.1.0"
        let json = try JSONEncoder().encode(pairs)
        let baked = try BakedFingerprint(json: json, source: "test")
        #expect(ImageFixtures.sample.differences(fromBaked: baked) == [
            FingerprintDifference(field: "kernel", baked: "6.1.0", running: nil),
            FingerprintDifference(field: "os", baked: nil, running: "Debian GNU/Linux 12 (bookworm)"),
        ])
        #expect(FingerprintDifference(field: "kernel", baked: "6.1.0", running: nil).description == #"kernel: baked "6.1.0", running (absent)"#)
    }

    @Test func unreadableOrMalformedFingerprintFileIsAnError() throws {
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let running = ImageFixtures.sample
        let missing = directory.appendingPathComponent("none.json").path
        #expect { try FingerprintVerification.verify(running: running, bakedFileAt: missing) } throws: { error in
            (error as? ImageError)?.code == .readFailed && "\(error)".contains(missing)
        }
        for text in ["", "[]", #"{"arch":1}"#, "{\"arch\":\"x\"} trailing"] {
            let path = directory.appendingPathComponent("bad.json").path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            #expect { try FingerprintVerification.verify(running: running, bakedFileAt: path) } throws: { error in
                (error as? ImageError)?.code == .malformedFingerprint
            }
        }
    }

    @Test func executableThatCannotBeReadIsAnError() {
        #expect {
            try EnvironmentFingerprint.current(executablePath: "/nonexistent/polyglot", osReleasePaths: [])
        } throws: { error in
            (error as? ImageError)?.code == .executableUnreadable && (error as? ImageError)?.systemError == ENOENT
        }
    }

    @Test func osReleaseParsing() throws {
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        func write(_ name: String, _ text: String) throws -> String {
            let path = directory.appendingPathComponent(name).path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            return path
        }
        let pretty = try write("pretty", "# comment\nID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (book\\\"worm\\\")\"\nVERSION_ID=\"12\"\n")
        #expect(OSRelease.name(fromFirstReadableOf: [pretty]) == "Debian GNU/Linux 12 (book\"worm\")")
        let plain = try write("plain", "ID=alpine\nVERSION_ID='3.20.1'  \n")
        #expect(OSRelease.name(fromFirstReadableOf: ["/nonexistent", plain]) == "alpine 3.20.1")
        let idOnly = try write("id", "ID=arch\n")
        #expect(OSRelease.name(fromFirstReadableOf: [idOnly]) == "arch")
        #expect(OSRelease.name(fromFirstReadableOf: ["/nonexistent"]) == "unknown")
    }

    // MARK: Offline validation with external tools
    //
    // Each runs when its tool is installed; locally a missing tool skips the test with a message,
    // under CI=true the test runs and fails. CI installs: packer, shellcheck, cloud-init, systemd
    // (Debian) and python-hcl2 (PyPI).

    @Test(.enabled(if: ExternalTool.python3WithHCL2.isUsable, ExternalTool.python3WithHCL2.skipMessage))
    func templateParsesWithPythonHCL2() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try ExternalTool.run("python3", ["-c", ImageFixtures.hclFactsScript, directory.appendingPathComponent("polyglot.pkr.hcl").path])
        try #require(result.status == 0, "python-hcl2 failed: \(result.stderr)")
        let facts = try JSONDecoder().decode([String: [String]].self, from: Data(result.stdout.utf8))
        #expect(facts["amazon_plugin"] == ["github.com/hashicorp/amazon"])
        #expect(facts["variables"] == ["binary_path", "binary_sha256", "deprecate_after", "git_sha", "instance_type", "kms_key_id", "region", "root_volume_size", "source_ami", "version"])
        #expect(facts["validated"] == facts["variables"])
        #expect(facts["required"] == ["binary_sha256", "git_sha"])
        #expect(facts["http_tokens"] == ["required"])
        #expect(facts["imds_support"] == ["v2.0"])
        #expect(facts["root_encrypted"] == ["true"])
        #expect(facts["encrypt_boot"] == ["true"])
        #expect(facts["ami_owners"] == [PackerTemplate.debianOwner])
        #expect(facts["ami_name"] == [PackerTemplate.debianNamePattern])
        #expect(facts["deprecate_at"] == ["${timeadd(local.build_time, var.deprecate_after)}"])
        #expect(facts["tags"] == ["Application", "BinarySha256", "GitSha", "Name", "SourceAMI", "SourceAMIName", "Version"])
        #expect(facts["post_processors"] == ["manifest"])
        #expect(facts["scripts"] == ["${path.root}/provision.sh"])
        #expect(facts["uploads"] == ["${path.root}/polyglot.env", "${path.root}/polyglot@.service", "${var.binary_path}"])
    }

    @Test(.enabled(if: ExternalTool.packer.isUsable, ExternalTool.packer.skipMessage))
    func templatePassesPackerFmtAndSyntaxCheck() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let template = directory.appendingPathComponent("polyglot.pkr.hcl").path
        let fmt = try ExternalTool.run("packer", ["fmt", "-check", "-diff", template])
        #expect(fmt.status == 0, "packer fmt -check: \(fmt.stdout)\(fmt.stderr)")

        // Packer 1.6 (Debian 12's) predates the `packer {}` block: strip it for this check only.
        let stripped = directory.appendingPathComponent("syntax")
        try FileManager.default.createDirectory(at: stripped, withIntermediateDirectories: true)
        let text = try String(contentsOfFile: template, encoding: .utf8)
        try Data(ImageFixtures.removingPackerBlock(text).utf8).write(to: stripped.appendingPathComponent("polyglot.pkr.hcl"))
        let validate = try ExternalTool.run("packer", ["validate", "-syntax-only", stripped.path])
        #expect(validate.status == 0, "packer validate -syntax-only: \(validate.stdout)\(validate.stderr)")

        // The check is real: a broken template fails it.
        try Data(ImageFixtures.removingPackerBlock(text).replacingOccurrences(of: "timestamp()", with: "timestamp(").utf8)
            .write(to: stripped.appendingPathComponent("polyglot.pkr.hcl"))
        #expect(try ExternalTool.run("packer", ["validate", "-syntax-only", stripped.path]).status != 0)
    }

    @Test(.enabled(if: ExternalTool.systemdAnalyze.isUsable, ExternalTool.systemdAnalyze.skipMessage))
    func unitPassesSystemdAnalyzeVerify() throws {
        // verify checks that ExecStart= exists: render with an install path that does.
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let binary = directory.appendingPathComponent("bin/polyglot")
        try FileManager.default.createDirectory(at: binary.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("#!/bin/sh\nexit 0\n".utf8).write(to: binary)
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: binary.path)
        var options = ImageOptions()
        options.installPath = binary.path
        let unit = try #require(ImageRenderer.render(options).first { $0.name == "polyglot@.service" })
        let unitPath = directory.appendingPathComponent("polyglot@.service").path
        try Data(unit.contents.utf8).write(to: URL(fileURLWithPath: unitPath))
        let result = try ExternalTool.run("systemd-analyze", ["verify", "--man=no", "--recursive-errors=yes", unitPath])
        // Other lines could only be about the host's own units (dependencies are checked too).
        let ours = result.stderr.split(separator: "\n").filter { $0.contains("polyglot") }
        #expect(result.status == 0 && ours.isEmpty, "systemd-analyze verify: \(result.stderr)")

        // And the default unit fails it for the one reason expected here: no installed binary.
        let defaultPath = directory.appendingPathComponent("default/polyglot@.service")
        try FileManager.default.createDirectory(at: defaultPath.deletingLastPathComponent(), withIntermediateDirectories: true)
        let defaultUnit = try #require(ImageRenderer.render(ImageOptions()).first { $0.name == "polyglot@.service" })
        try Data(defaultUnit.contents.utf8).write(to: defaultPath)
        if !FileManager.default.fileExists(atPath: ImageOptions().installPath) {
            let failure = try ExternalTool.run("systemd-analyze", ["verify", "--man=no", "--recursive-errors=yes", defaultPath.path])
            let ours = failure.stderr.split(separator: "\n").filter { $0.contains("polyglot") }
            #expect(failure.status != 0 && !ours.isEmpty)
            #expect(ours.allSatisfy { $0.contains("\(ImageOptions().installPath) is not executable") }, "\(failure.stderr)")
        } else {
            Issue.record("the default unit's failure not checked: \(ImageOptions().installPath) exists on this host", severity: .warning)
        }
    }

    @Test(.enabled(if: ExternalTool.systemdAnalyze.isUsable, ExternalTool.systemdAnalyze.skipMessage))
    func unitExposureIsAtMostThree() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try ExternalTool.run(
            "systemd-analyze", ["security", "--offline=yes", "--no-pager", "polyglot@.service"], in: directory
        )
        let line = try #require(result.stdout.split(separator: "\n").last { $0.contains("Overall exposure level") }, "\(result.stdout)\(result.stderr)")
        let score = try #require(line.firstMatch(of: /: ([0-9]+\.[0-9]+)/).flatMap { Double($0.1) })
        #expect(score <= 3.0, "\(line)")
    }

    @Test(.enabled(if: ExternalTool.shellcheck.isUsable, ExternalTool.shellcheck.skipMessage))
    func scriptsPassShellcheck() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let scripts = [
            directory.appendingPathComponent("provision.sh").path,
            ImageFixtures.repositoryRoot.appendingPathComponent("image/bake-local.sh").path,
        ] + (try FileManager.default.contentsOfDirectory(atPath: ImageFixtures.repositoryRoot.appendingPathComponent("scripts").path))
            .filter { $0.hasSuffix(".sh") }.sorted().map { ImageFixtures.repositoryRoot.appendingPathComponent("scripts/\($0)").path }
        for script in scripts {
            let result = try ExternalTool.run("shellcheck", [script])
            #expect(result.status == 0, "shellcheck \(script): \(result.stdout)\(result.stderr)")
        }
    }

    @Test(.enabled(if: ExternalTool.cloudInit.isUsable, ExternalTool.cloudInit.skipMessage))
    func userDataPassesCloudInitSchema() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        for role in ImageRenderer.roles {
            let path = directory.appendingPathComponent("user-data-\(role).yaml").path
            let result = try ExternalTool.run("cloud-init", ["schema", "--config-file", path])
            #expect(result.status == 0 && result.stdout.contains("Valid cloud-config"), "cloud-init schema \(role): \(result.stdout)\(result.stderr)")
        }
        // The check is real: an unknown key fails it.
        let bad = directory.appendingPathComponent("bad.yaml").path
        try Data("#cloud-config\nruncmd: 7\n".utf8).write(to: URL(fileURLWithPath: bad))
        #expect(try ExternalTool.run("cloud-init", ["schema", "--config-file", bad]).status != 0)
    }

    @Test(.enabled(if: ExternalTool.bash.isUsable, ExternalTool.bash.skipMessage))
    func provisionRefusesABinaryWithAnotherDigest() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data("not the binary\n".utf8).write(to: directory.appendingPathComponent("polyglot"))
        let wrong = String(repeating: "0", count: 64)
        let script = directory.appendingPathComponent("provision.sh").path
        let result = try ExternalTool.run("env", ["POLYGLOT_BINARY_SHA256=\(wrong)", "bash", script, directory.path])
        #expect(result.status == 1)
        #expect(result.stderr.contains("expected \(wrong)"), "\(result.stderr)")
        let malformed = try ExternalTool.run("env", ["POLYGLOT_BINARY_SHA256=xyz", "bash", script, directory.path])
        #expect(malformed.status == 1 && malformed.stderr.contains("POLYGLOT_BINARY_SHA256"), "\(malformed.stderr)")
    }
}

// MARK: - Helpers

enum ImageFixtures {
    /// The package root, found from this file's path (Tests/CoreTests/ImageTests.swift).
    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static let sample = EnvironmentFingerprint(
        binarySha256: "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        polyglotVersion: "0.1.0",
        glibc: "2.36",
        librdkafka: "2.0.2",
        librdkafkaCompiled: "2.0.2",
        sqlite: "3.40.1",
        sqliteCompiled: "3.40.1",
        os: "Debian GNU/Linux 12 (bookworm)",
        arch: "x86_64"
    )

    static func fingerprint(_ pairs: [String: String]) -> EnvironmentFingerprint {
        EnvironmentFingerprint(
            binarySha256: pairs["binarySha256"]!, polyglotVersion: pairs["polyglotVersion"]!, glibc: pairs["glibc"]!,
            librdkafka: pairs["librdkafka"]!, librdkafkaCompiled: pairs["librdkafkaCompiled"]!, sqlite: pairs["sqlite"]!,
            sqliteCompiled: pairs["sqliteCompiled"]!, os: pairs["os"]!, arch: pairs["arch"]!
        )
    }

    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("polyglot-image-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// A temporary folder holding the default render.
    static func renderDefaults() throws -> URL {
        let directory = try temporaryDirectory()
        try ImageRenderer.write(ImageRenderer.render(ImageOptions()), to: directory.path)
        return directory
    }

    /// The template without its top-level `packer { ... }` block (Packer 1.6 cannot read it).
    static func removingPackerBlock(_ text: String) -> String {
        var lines = text.components(separatedBy: "\n")
        guard let start = lines.firstIndex(of: "packer {"),
              let end = lines[start...].firstIndex(of: "}") else { return text }
        lines.removeSubrange(start...end)
        return lines.joined(separator: "\n")
    }

    /// What `uname -m` says on the architecture these tests were compiled for.
    static var compiledArchitecture: String {
        #if arch(x86_64)
        return "x86_64"
        #elseif arch(arm64)
        return "aarch64"
        #else
        return "unknown"
        #endif
    }

    /// Reads the template with python-hcl2 and prints the facts the test checks, as JSON lists of
    /// strings. Strips the quotes some python-hcl2 versions keep around strings and block labels.
    static let hclFactsScript = #"""
    import hcl2, json, sys

    def n(v):
        if isinstance(v, str):
            return v[1:-1] if len(v) >= 2 and v[0] == '"' and v[-1] == '"' else v
        if isinstance(v, dict):
            return {n(k): n(x) for k, x in v.items() if k not in ("__is_block__", "__comments__")}
        if isinstance(v, list):
            return [n(x) for x in v]
        return v

    def text(v):
        return str(v).lower() if isinstance(v, bool) else str(v)

    with open(sys.argv[1]) as f:
        d = n(hcl2.load(f))
    variables = {name: body for block in d["variable"] for name, body in block.items()}
    src = d["source"][0]["amazon-ebs"]["debian12"]
    dyn = [b["source_ami_filter"] for b in src["dynamic"] if "source_ami_filter" in b][0]["content"][0]
    build = d["build"][0]
    provisioners = [(kind, body) for p in build["provisioner"] for kind, body in p.items()]
    locals_ = {k: v for block in d["locals"] for k, v in block.items()}
    facts = {
        "amazon_plugin": [d["packer"][0]["required_plugins"][0]["amazon"]["source"]],
        "variables": sorted(variables),
        "validated": sorted(k for k, v in variables.items() if v.get("validation")),
        "required": sorted(k for k, v in variables.items() if "default" not in v),
        "http_tokens": [src["metadata_options"][0]["http_tokens"]],
        "imds_support": [src["imds_support"]],
        "root_encrypted": [text(src["launch_block_device_mappings"][0]["encrypted"])],
        "encrypt_boot": [text(src["encrypt_boot"])],
        "ami_owners": dyn["owners"],
        "ami_name": [dyn["filters"]["name"]],
        "deprecate_at": [src["deprecate_at"]],
        "tags": sorted(locals_["image_tags"]),
        "post_processors": [k for p in build["post-processor"] for k in p],
        "scripts": [b["script"] for k, b in provisioners if k == "shell" and "script" in b],
        "uploads": sorted(b["source"] for k, b in provisioners if k == "file"),
    }
    json.dump(facts, sys.stdout)
    """#
}

/// An external program a test runs, and whether it may run here.
struct ExternalTool: Sendable {
    let name: String
    let probe: [String]

    static let packer = ExternalTool(name: "packer", probe: ["packer", "version"])
    static let shellcheck = ExternalTool(name: "shellcheck", probe: ["shellcheck", "--version"])
    static let cloudInit = ExternalTool(name: "cloud-init", probe: ["cloud-init", "--version"])
    static let systemdAnalyze = ExternalTool(name: "systemd-analyze", probe: ["systemd-analyze", "--version"])
    static let bash = ExternalTool(name: "bash", probe: ["bash", "--version"])
    static let python3WithHCL2 = ExternalTool(name: "python-hcl2", probe: ["python3", "-c", "import hcl2"])

    static var isCI: Bool { ProcessInfo.processInfo.environment["CI"] == "true" }

    /// True when the tool runs here, and always under CI, where a missing tool must fail the test.
    var isUsable: Bool {
        if Self.isCI { return true }
        return (try? Self.run(probe[0], Array(probe.dropFirst())).status) == 0
    }

    var skipMessage: Comment {
        "\(name) is not installed: skipped locally (CI=true runs it and fails without it)"
    }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    /// Runs `program` (looked up in PATH) and collects its output through files, so a chatty
    /// tool cannot fill a pipe and stall.
    static func run(_ program: String, _ arguments: [String], in directory: URL? = nil) throws -> Result {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("polyglot-tool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let out = scratch.appendingPathComponent("stdout")
        let err = scratch.appendingPathComponent("stderr")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [program] + arguments
        if let directory { process.currentDirectoryURL = directory }
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: out)
        process.standardError = try FileHandle(forWritingTo: err)
        try process.run()
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus,
            stdout: String(decoding: try Data(contentsOf: out), as: UTF8.self),
            stderr: String(decoding: try Data(contentsOf: err), as: UTF8.self)
        )
    }
}
