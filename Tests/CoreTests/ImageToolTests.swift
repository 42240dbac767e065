import Foundation
import Testing
@testable import Roles

/// The rendered files under the tools that read them in production: Packer, systemd, shellcheck,
/// cloud-init. Each runs when its tool is installed; locally a missing tool skips the test with a
/// message, under CI=true the test runs and fails. CI installs: packer, shellcheck, cloud-init,
/// systemd (Debian) and python-hcl2 (PyPI).
@Suite("Image tools")
struct ImageToolTests {
    @Test(.enabled(if: ExternalTool.python3WithHCL2.isUsable, ExternalTool.python3WithHCL2.skipMessage))
    func templateParsesWithPythonHCL2() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let result = try ExternalTool.run("python3", ["-c", ImageFixtures.hclFactsScript, directory.appendingPathComponent("polyglot.pkr.hcl").path])
        try #require(result.status == 0, "python-hcl2 failed: \(result.stderr)")
        let facts = try JSONDecoder().decode([String: [String]].self, from: Data(result.stdout.utf8))
        #expect(facts["amazon_plugin"] == ["github.com/hashicorp/amazon"])
        #expect(facts["variables"] == ["binary_path", "binary_sha256", "deprecate_after", "git_sha", "instance_type", "kms_key_id", "region", "root_volume_size", "security_group_id", "source_ami", "subnet_id", "version", "vpc_id"])
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
        #expect(facts["temporary_sg_from_builder"] == ["true"])
        #expect(facts["uploads"] == ["${path.root}/fetch-secrets.sh", "${path.root}/polyglot.env", "${path.root}/polyglot@.service", "${var.binary_path}"])
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
        var options = ImageOptions()
        options.installPath = binary.path
        for executable in [binary.path, SecretsScript.installPath(options)] {
            try Data("#!/bin/sh\nexit 0\n".utf8).write(to: URL(fileURLWithPath: executable))
            try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: executable)
        }
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
            let missing = [ImageOptions().installPath, SecretsScript.installPath(ImageOptions())].map { "\($0) is not executable" }
            #expect(ours.allSatisfy { line in missing.contains { line.contains($0) } }, "\(failure.stderr)")
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
            directory.appendingPathComponent("fetch-secrets.sh").path,
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
