import ArgumentParser
import PolyglotSupport
import Roles

/// `polyglot image`: the machine image as code, and the drift check run at every start.
struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Render the machine image as code; fingerprint and verify the environment.",
        subcommands: [Render.self, Fingerprint.self, Verify.self]
    )

    struct Render: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write the Packer template, provision.sh, the unit, user data, polyglot.env, the instance policy and the fleet's CloudFormation template.",
            usage: "polyglot image render [--out DIR] [--region REGION] [--binary-sha256 SHA256] [--git-sha SHA] [<options>]",
            discussion: """
            With no options it writes the files committed under image/. Values land in the \
            Packer variables' defaults; those without a default (binary_sha256, git_sha) are \
            then required by `packer build`. fleet.cfn.yaml takes the image id, subnets, sizes \
            and the rest per environment as stack parameters.
            """
        )

        @Option(help: "Folder to write into (created if missing).")
        var out = "image"
        @Option(help: "AWS region to build in.")
        var region = ImageOptions().region
        @Option(help: "Instance type of the build instance (amd64).")
        var instanceType = ImageOptions().instanceType
        @Option(help: "The polyglot release the image carries.")
        var imageVersion = ImageOptions().version
        @Option(help: "Release binary, relative to where packer runs.")
        var binaryPath = ImageOptions().binaryPath
        @Option(help: "SHA-256 of the binary (default: required by packer build).")
        var binarySha256: String?
        @Option(help: "Git commit of the binary (default: required by packer build).")
        var gitSha: String?
        @Option(help: "KMS key id, alias or ARN for the root volume and AMI (default: the account's EBS key).")
        var kmsKeyId = ImageOptions().kmsKeyId
        @Option(help: "Exact base AMI (default: newest official Debian 12 amd64).")
        var sourceAmi = ImageOptions().sourceAMI
        @Option(help: "Root volume size in GiB.")
        var rootVolumeSize = ImageOptions().rootVolumeSize
        @Option(help: "Days after the build at which the AMI is deprecated.")
        var deprecateAfterDays = ImageOptions().deprecateAfterDays
        @Option(help: "Where provision.sh installs the binary and the unit runs it.")
        var installPath = ImageOptions().installPath
        @Option(help: "KAFKA_BOOTSTRAP_SERVERS of polyglot.env and of both roles' user data.")
        var bootstrapServers = ImageOptions().bootstrapServers
        @Option(help: "TimeoutStopSec of the unit, in seconds.")
        var stopTimeout = ImageOptions().stopTimeoutSeconds
        @Option(help: "SSM Parameter Store path of the Kafka secrets, read at every start through the instance profile (empty: none).")
        var secretsParameterPath = ImageOptions().secretsParameterPath

        func run() throws {
            var options = ImageOptions()
            options.region = region
            options.instanceType = instanceType
            options.version = imageVersion
            options.binaryPath = binaryPath
            options.binarySha256 = binarySha256
            options.gitSha = gitSha
            options.kmsKeyId = kmsKeyId
            options.sourceAMI = sourceAmi
            options.rootVolumeSize = rootVolumeSize
            options.deprecateAfterDays = deprecateAfterDays
            options.installPath = installPath
            options.bootstrapServers = bootstrapServers
            options.stopTimeoutSeconds = stopTimeout
            options.secretsParameterPath = secretsParameterPath
            let files: [RenderedFile]
            do {
                files = try ImageRenderer.render(options)
            } catch {
                throw ValidationError(error.message)
            }
            do {
                try ImageRenderer.write(files, to: out)
            } catch {
                throw CommandFailure(error.description)
            }
            for file in files { print("\(out)/\(file.name)") }
        }
    }

    struct Fingerprint: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the fingerprint of the environment this binary runs on, as canonical JSON.",
            discussion: """
            Fields: binarySha256 (of the running executable), polyglotVersion, glibc, librdkafka \
            and sqlite (runtime) with librdkafkaCompiled and sqliteCompiled, os and arch. Its \
            digest, the hex SHA-256 of the JSON, is the polyglot-fingerprint Kafka header.
            """
        )

        @Flag(help: "Print only the digest.")
        var digest = false

        func run() throws {
            let fingerprint: EnvironmentFingerprint
            do {
                fingerprint = try EnvironmentFingerprint.current()
            } catch {
                throw CommandFailure(error.description)
            }
            print(digest ? fingerprint.digest : fingerprint.canonicalJSON)
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Compare the running environment with the baked fingerprint.",
            discussion: """
            Exits 0 when they match, 1 naming each differing field when they do not, 2 when \
            the fingerprint file cannot be read. The unit runs it before every start.
            """
        )

        @Option(help: "The baked fingerprint.")
        var fingerprint = EnvironmentFingerprint.defaultPath

        func run() throws {
            let outcome: FingerprintVerification
            do {
                outcome = try FingerprintVerification.verify(running: EnvironmentFingerprint.current(), bakedFileAt: fingerprint)
            } catch {
                StandardError.write("polyglot: \(error)\n")
                throw ExitCode(2)
            }
            switch outcome {
            case .match:
                print(outcome.report(bakedFile: fingerprint))
            case .drift:
                StandardError.write("polyglot: " + outcome.driftReport(bakedFile: fingerprint) + "\n")
                throw ExitCode(1)
            }
        }
    }
}
