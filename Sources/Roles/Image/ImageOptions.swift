import PolyglotSupport
import Observability

/// Everything `polyglot image render` can vary, with the defaults the committed `image/` folder
/// is rendered with.
///
/// Values land in Packer variable defaults, the unit and the user data; `validate()` applies the
/// same rules the Packer template's `validation` blocks apply (the patterns are shared), so a bad
/// value fails at render time rather than halfway through a bake.
public struct ImageOptions: Sendable, Equatable {
    /// AWS region to build in.
    public var region: String = "eu-central-1"
    /// Instance type of the build instance (amd64: the base AMI filter is amd64).
    public var instanceType: String = "t3.small"
    /// The polyglot release the image carries.
    public var version: String = ProductVersion.version
    /// Where `provision.sh` installs the binary and the unit runs it from.
    public var installPath: String = "/usr/local/bin/polyglot"
    /// Path of the release binary, relative to where `packer build` runs.
    public var binaryPath: String = ".build-release/release/polyglot"
    /// Expected hex SHA-256 of the binary; `nil` leaves the Packer variable required at build time.
    public var binarySha256: String? = nil
    /// Git commit the binary was built from; `nil` leaves the Packer variable required at build time.
    public var gitSha: String? = nil
    /// KMS key (id, alias or ARN) for the root volume and the AMI; empty means the account's
    /// default EBS key.
    public var kmsKeyId: String = ""
    /// An exact base AMI; empty means the newest official Debian 12 amd64 AMI.
    public var sourceAMI: String = ""
    /// Root volume size in GiB.
    public var rootVolumeSize: Int = 8
    /// Days after the build at which the AMI is deprecated.
    public var deprecateAfterDays: Int = 365
    /// `KAFKA_BOOTSTRAP_SERVERS` written by the user data of both roles.
    public var bootstrapServers: String = "localhost:9092"
    /// `TimeoutStopSec` of the unit: long enough for a role to finish or abort its open Kafka
    /// transaction, commit and leave the group (the processor promises 10 s).
    public var stopTimeoutSeconds: Int = 30
    /// SSM Parameter Store path holding the Kafka secrets (one librdkafka property per
    /// parameter, SecureString for passwords), read at every start through the instance profile;
    /// empty fetches nothing.
    public var secretsParameterPath: String = "/polyglot/kafka"

    public init() {}

    /// Shared with the Packer template's `validation` blocks; each is RE2- and Swift-compatible,
    /// free of backslashes and of `${` so it is written into HCL as is.
    enum Pattern {
        static let region = "^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-[0-9]+$"
        static let instanceType = "^[a-z][a-z0-9-]*[.][a-z0-9]+$"
        static let version = "^[0-9]+[.][0-9]+[.][0-9]+(-[0-9A-Za-z.-]+)?$"
        static let sha256 = "^[0-9a-f]{64}$"
        static let gitSha = "^[0-9a-f]{40}$"
        static let kmsKey = "^(arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:(key|alias)/[A-Za-z0-9/_-]+|alias/[A-Za-z0-9/_-]+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|mrk-[0-9a-f]{32})$"
        static let sourceAMI = "^ami-([0-9a-f]{8}|[0-9a-f]{17})$"
        static let vpcID = "^vpc-([0-9a-f]{8}|[0-9a-f]{17})$"
        static let subnetID = "^subnet-([0-9a-f]{8}|[0-9a-f]{17})$"
        static let securityGroupID = "^sg-([0-9a-f]{8}|[0-9a-f]{17})$"
        static let binaryPath = "^[A-Za-z0-9._/@+-]+$"
        static let installPath = "^/[A-Za-z0-9._/@+-]*[A-Za-z0-9._@+-]$"
        /// An SSM parameter path: `/`-separated names of the characters SSM accepts, no
        /// trailing `/`, not under the reserved `/aws` and `/ssm` prefixes.
        static let secretsParameterPath = "^(/[A-Za-z0-9_.-]+)+$"
        /// `host:port` pairs, comma-separated; IPv6 hosts in brackets. Checked in Swift only.
        static let bootstrapServers = #"^([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5}(,([A-Za-z0-9.-]+|\[[0-9A-Fa-f:]+\]):[0-9]{1,5})*$"#
    }

    static let rootVolumeRange = 8...1024
    static let deprecateRange = 1...3650
    static let stopTimeoutRange = 10...600

    /// Throws the first invalid value, naming its flag.
    public func validate() throws(ConfigurationError) {
        try Self.check(region, Pattern.region, flag: "--region", example: "eu-central-1")
        try Self.check(instanceType, Pattern.instanceType, flag: "--instance-type", example: "t3.small")
        try Self.check(version, Pattern.version, flag: "--image-version", example: "1.2.3")
        try Self.check(installPath, Pattern.installPath, flag: "--install-path", example: "/usr/local/bin/polyglot")
        try Self.check(binaryPath, Pattern.binaryPath, flag: "--binary-path", example: ".build-release/release/polyglot")
        if let binarySha256 {
            try Self.check(binarySha256, Pattern.sha256, flag: "--binary-sha256", example: "64 lowercase hex digits")
        }
        if let gitSha {
            try Self.check(gitSha, Pattern.gitSha, flag: "--git-sha", example: "40 lowercase hex digits")
        }
        if !kmsKeyId.isEmpty {
            try Self.check(kmsKeyId, Pattern.kmsKey, flag: "--kms-key-id", example: "alias/polyglot or a key id or ARN")
        }
        if !sourceAMI.isEmpty {
            try Self.check(sourceAMI, Pattern.sourceAMI, flag: "--source-ami", example: "ami-0123456789abcdef0")
        }
        if !secretsParameterPath.isEmpty {
            try Self.check(secretsParameterPath, Pattern.secretsParameterPath, flag: "--secrets-parameter-path", example: "/polyglot/kafka")
            let first = secretsParameterPath.split(separator: "/").first.map { $0.lowercased() }
            if first == "aws" || first == "ssm" {
                throw ConfigurationError("--secrets-parameter-path \(CanonicalJSON.string(secretsParameterPath)) is invalid: /aws and /ssm are reserved by AWS")
            }
        }
        try Self.check(bootstrapServers, Pattern.bootstrapServers, flag: "--bootstrap-servers", example: "kafka-1:9092,kafka-2:9092")
        try Self.check(rootVolumeSize, Self.rootVolumeRange, flag: "--root-volume-size", unit: "GiB")
        try Self.check(deprecateAfterDays, Self.deprecateRange, flag: "--deprecate-after-days", unit: "days")
        try Self.check(stopTimeoutSeconds, Self.stopTimeoutRange, flag: "--stop-timeout", unit: "seconds")
    }

    private static func check(_ value: String, _ pattern: String, flag: String, example: String) throws(ConfigurationError) {
        let matches: Bool
        do {
            matches = try Regex(pattern).wholeMatch(in: value) != nil
        } catch {
            preconditionFailure("invalid built-in pattern \(pattern): \(error)")
        }
        guard matches else {
            throw ConfigurationError("\(flag) \(CanonicalJSON.string(value)) is invalid: expected something like \(example)")
        }
    }

    private static func check(_ value: Int, _ range: ClosedRange<Int>, flag: String, unit: String) throws(ConfigurationError) {
        guard range.contains(value) else {
            throw ConfigurationError("\(flag) \(value) is out of range: \(range.lowerBound) to \(range.upperBound) \(unit)")
        }
    }
}
