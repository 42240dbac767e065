import Foundation
import Testing
@testable import Roles

enum ImageFixtures {
    /// The package root, found from this file's path (Tests/CoreTests/ImageTestSupport.swift).
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
        "temporary_sg_from_builder": [text(src["temporary_security_group_source_public_ip"])],
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
    static let cfnLint = ExternalTool(name: "cfn-lint", probe: ["cfn-lint", "--version"])
    static let motoAndAWS = ExternalTool(name: "moto_server and aws", probe: ["sh", "-c", "command -v moto_server && aws --version"])
    static let actionlint = ExternalTool(name: "actionlint", probe: ["actionlint", "--version"])
    static let zizmor = ExternalTool(name: "zizmor", probe: ["zizmor", "--version"])

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
