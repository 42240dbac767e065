import Foundation

/// The settings of the continuous auditor (and of `audit --once`) as given on the command line
/// (nil: not given): the processor's settings, resolved the same way, so both roles read the
/// same topics with the same detector, plus the auditor's own. The auditor's group comes from
/// its own setting only: `POLYGLOT_APPLICATION_ID` is the processor's, and one settings file
/// serves both roles.
public struct AuditorSettings: Sendable {
    public var processor = ProcessorSettings()
    public var group: String?
    public var findingsTopic: String?
    /// A duration.
    public var settle: String?
    /// A JSON number.
    public var highValue: String?

    public init() {}

    /// The auditor's own variables, for `--help`.
    public static let environmentHelp = """
        POLYGLOT_AUDIT_GROUP, POLYGLOT_AUDIT_FINDINGS_TOPIC, POLYGLOT_AUDIT_SETTLE, POLYGLOT_AUDIT_HIGH_VALUE; \
        and the processor's: \(ProcessorSettings.environmentHelp)
        """

    /// Resolves and validates; a bad setting gives a one-line ``ConfigurationError``.
    public func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> AuditorConfiguration {
        let merged = try processor.mergedEnvironment(environment)
        func pick(_ flag: String?, _ variable: String) -> String? {
            if let flag { return flag }
            if let value = merged[variable], !value.isEmpty { return value }
            return nil
        }
        var settings = processor
        settings.applicationID = pick(group, "POLYGLOT_AUDIT_GROUP") ?? AuditorConfiguration.defaultGroupID
        let runtime = try settings.resolve(environment: environment)
        let highValueText = pick(highValue, "POLYGLOT_AUDIT_HIGH_VALUE") ?? AuditConfiguration.defaultHighValueThreshold.text
        guard let threshold = DecimalText(highValueText.trimmingCharacters(in: .whitespaces)) else {
            throw ConfigurationError("\(highValue != nil ? "--high-value" : "POLYGLOT_AUDIT_HIGH_VALUE") must be a JSON number, got '\(highValueText)'")
        }
        let settleText = pick(settle, "POLYGLOT_AUDIT_SETTLE") ?? "30s"
        let settleMs = try Durations.milliseconds(settleText, setting: settle != nil ? "--settle" : "POLYGLOT_AUDIT_SETTLE")
        let configuration = AuditorConfiguration(
            runtime: runtime,
            audit: AuditConfiguration(parameters: runtime.parameters, highValueThreshold: threshold,
                                      fingerprintDigest: runtime.fingerprintDigest),
            findingsTopic: pick(findingsTopic, "POLYGLOT_AUDIT_FINDINGS_TOPIC") ?? AuditorConfiguration.defaultFindingsTopic,
            settle: .milliseconds(settleMs))
        try configuration.validate()
        return configuration
    }
}
