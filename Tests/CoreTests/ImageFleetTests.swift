import Foundation
import Testing
@testable import Roles

/// The fleet as code: the CloudFormation template under cfn-lint and deployed on a local moto
/// server, the instance policy, the secrets fetch, and the image workflow under actionlint and
/// zizmor. The tools come from PyPI (`scripts/install-deps.sh --ci`); locally a missing one skips
/// its test, under CI=true the test runs and fails.
@Suite("Image fleet")
struct ImageFleetTests {
    /// `ROLE:PORT` of every role, as the stack check takes them.
    static let rolePorts = ImageRenderer.roles.map { "\($0):\(FleetTemplate.metricsPort($0))" }

    @Test func policyReadsTheSecretsPathOnly() throws {
        var options = ImageOptions()
        options.secretsParameterPath = "/prod/kafka"
        let text = InstancePolicy.render(options)
        let policy = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let statements = try #require(policy["Statement"] as? [[String: Any]])
        #expect(statements.count == 1)
        #expect(statements.first?["Effect"] as? String == "Allow")
        #expect(statements.first?["Action"] as? [String] == ["ssm:GetParametersByPath"])
        #expect(statements.first?["Resource"] as? [String] == [
            "arn:aws:ssm:eu-central-1:*:parameter/prod/kafka", "arn:aws:ssm:eu-central-1:*:parameter/prod/kafka/*",
        ])
        options.secretsParameterPath = ""
        let empty = try #require(try JSONSerialization.jsonObject(with: Data(InstancePolicy.render(options).utf8)) as? [String: Any])
        #expect((empty["Statement"] as? [Any])?.isEmpty == true)
    }

    @Test func templateTakesItsFactsFromTheOtherFiles() throws {
        let files = try Dictionary(uniqueKeysWithValues: ImageRenderer.render(ImageOptions()).map { ($0.name, $0.contents) })
        let fleet = try #require(files["fleet.cfn.yaml"])
        for role in ImageRenderer.roles {
            let port = FleetTemplate.metricsPort(role)
            #expect(fleet.contains("      Port: \(port)\n"), "\(role): no target group on \(port)")
            #expect(fleet.contains("          FromPort: \(port)\n"), "\(role): port \(port) not opened")
            #expect(fleet.contains("  \(FleetTemplate.title(role))Group:\n"))
            #expect(fleet.contains("- [systemctl, enable, --now, polyglot@\(role).service]\n"))
        }
        #expect(!fleet.contains("FromPort: 22"), "SSH is open")
        #expect(!fleet.contains("KeyName"), "the instances get an SSH key")
        #expect(fleet.contains("HealthCheckType: ELB\n"))
        #expect(fleet.contains("HealthCheckPath: /healthz\n"))
        #expect(fleet.contains("HttpTokens: required\n"))
        #expect(fleet.contains("Encrypted: true\n"))
        #expect(fleet.contains("MaxBatchSize: 1\n"))
        #expect(fleet.contains("Type: AWS::EC2::Image::Id\n"))
        #expect(!fleet.contains(Setting.kafkaProperties.variable), "Kafka properties (and so secrets) in the user data")
    }

    @Test(.enabled(if: ExternalTool.cfnLint.isUsable, ExternalTool.cfnLint.skipMessage))
    func templatePassesCfnLint() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let template = directory.appendingPathComponent("fleet.cfn.yaml").path
        let result = try ExternalTool.run("cfn-lint", [template])
        #expect(result.status == 0, "cfn-lint: \(result.stdout)\(result.stderr)")

        // The check is real: a health check type CloudFormation does not know fails it.
        let text = try String(contentsOfFile: template, encoding: .utf8)
        try Data(text.replacingOccurrences(of: "HealthCheckType: ELB", with: "HealthCheckType: HTTP").utf8)
            .write(to: URL(fileURLWithPath: template))
        #expect(try ExternalTool.run("cfn-lint", [template]).status != 0)
    }

    /// Deploys the default render on moto with `aws cloudformation create-stack` and compares
    /// what the stack made with the rendered files; the same check must catch a launch template
    /// starting the wrong role and a policy allowing more than reading the secrets.
    @Test(.enabled(if: ExternalTool.motoAndAWS.isUsable, ExternalTool.motoAndAWS.skipMessage),
          arguments: StackBreakage.allCases)
    func stackOnMotoMatchesTheRenderedFiles(breakage: StackBreakage) throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let template = directory.appendingPathComponent("fleet.cfn.yaml")
        let text = try String(contentsOf: template, encoding: .utf8)
        let broken = breakage.apply(text)
        #expect(breakage == .none || broken != text, "\(breakage) changed nothing")
        try Data(broken.utf8).write(to: template)

        let script = ImageFixtures.repositoryRoot.appendingPathComponent("scripts/test-fleet-stack.sh").path
        let result = try ExternalTool.run("timeout", ["-s", "KILL", "180", "bash", script, directory.path] + Self.rolePorts)
        switch breakage {
        case .none:
            #expect(result.status == 0, "test-fleet-stack.sh: \(result.stdout)\(result.stderr)")
            #expect(result.stdout.contains("OK: stack created on moto"), "\(result.stdout)")
        case .processRunsAudit:
            #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("process launch template: user data differs from user-data-process.yaml"), "\(result.stderr)")
        case .policyWritesParameters:
            #expect(result.status == 1, "\(result.stdout)\(result.stderr)")
            #expect(result.stderr.contains("instance profile policy \(InstancePolicy.name) differs from instance-policy.json"), "\(result.stderr)")
        }
    }

    enum StackBreakage: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case none, processRunsAudit, policyWritesParameters

        var testDescription: String { rawValue }

        func apply(_ template: String) -> String {
            switch self {
            case .none:
                return template
            case .processRunsAudit:
                guard let range = template.range(of: "polyglot@process.service]") else { return template }
                return template.replacingCharacters(in: range, with: "polyglot@audit.service]")
            case .policyWritesParameters:
                return template.replacingOccurrences(
                    of: "                  - ssm:GetParametersByPath\n",
                    with: "                  - ssm:GetParametersByPath\n                  - ssm:PutParameter\n")
            }
        }
    }

    @Test(.enabled(if: ExternalTool.bash.isUsable, ExternalTool.bash.skipMessage))
    func secretsFetchWithoutAPathFetchesNothing() throws {
        let directory = try ImageFixtures.renderDefaults()
        defer { try? FileManager.default.removeItem(at: directory) }
        let run = directory.appendingPathComponent("run")
        try FileManager.default.createDirectory(at: run, withIntermediateDirectories: true)
        let stale = run.appendingPathComponent("process-secrets.env")
        try Data("POLYGLOT_KAFKA_PROPERTIES=old\n".utf8).write(to: stale)
        let script = directory.appendingPathComponent("fetch-secrets.sh").path
        let source = directory.appendingPathComponent("kafka-secrets.conf")
        let environment = ["SECRETS_SOURCE_FILE=\(source.path)", "SECRETS_OUTPUT_DIR=\(run.path)"]

        let none = try ExternalTool.run("env", environment + ["bash", script, "process"])
        #expect(none.status == 0 && none.stdout.contains("none fetched"), "\(none.stdout)\(none.stderr)")
        #expect(!FileManager.default.fileExists(atPath: stale.path), "a stale secrets file was kept")

        try Data("AWS_REGION=eu-central-1\nPARAMETER_PATH=relative\n".utf8).write(to: source)
        let bad = try ExternalTool.run("env", environment + ["bash", script, "process"])
        #expect(bad.status == 1 && bad.stderr.contains("is not an SSM parameter path"), "\(bad.stderr)")
        let noRole = try ExternalTool.run("env", environment + ["bash", script, "../x"])
        #expect(noRole.status == 1 && noRole.stderr.contains("usage"), "\(noRole.stderr)")
    }

    @Test(.enabled(if: ExternalTool.actionlint.isUsable, ExternalTool.actionlint.skipMessage))
    func workflowPassesActionlint() throws {
        let workflow = ImageFixtures.repositoryRoot.appendingPathComponent(".github/workflows/image.yml")
        let result = try ExternalTool.run("actionlint", ["-no-color", workflow.path])
        #expect(result.status == 0, "actionlint: \(result.stdout)\(result.stderr)")

        // The check is real: a step output that no step sets fails it.
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let broken = directory.appendingPathComponent("image.yml")
        let text = try String(contentsOf: workflow, encoding: .utf8)
        try Data(text.replacingOccurrences(of: "steps.binary.outputs.version", with: "steps.binry.outputs.version").utf8).write(to: broken)
        #expect(try ExternalTool.run("actionlint", ["-no-color", broken.path]).status != 0)
    }

    @Test(.enabled(if: ExternalTool.zizmor.isUsable, ExternalTool.zizmor.skipMessage))
    func workflowPassesZizmor() throws {
        let workflow = ImageFixtures.repositoryRoot.appendingPathComponent(".github/workflows/image.yml")
        let result = try ExternalTool.run("zizmor", ["--offline", "--no-progress", workflow.path])
        #expect(result.status == 0, "zizmor: \(result.stdout)\(result.stderr)")

        // The check is real: an action pinned by tag instead of commit fails it.
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let broken = directory.appendingPathComponent("image.yml")
        let text = try String(contentsOf: workflow, encoding: .utf8)
        let pinned = try #require(text.firstMatch(of: /configure-aws-credentials@[0-9a-f]{40} # (v[0-9]+)/))
        try Data(text.replacingOccurrences(of: String(pinned.0), with: "configure-aws-credentials@\(pinned.1)").utf8).write(to: broken)
        #expect(try ExternalTool.run("zizmor", ["--offline", "--no-progress", broken.path]).status != 0)
    }
}
