import Foundation
import PolyglotSupport
import FraudModel

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
    /// A duration.
    public var stallAfter: String?
    /// A JSON number.
    public var highValue: String?

    public init() {}

    /// Environment variables read, the auditor's own and the processor's, for `--help`.
    public static let environmentHelp = Setting.environmentHelp(for: .audit)

    /// Resolves and validates; a bad setting gives a one-line ``ConfigurationError``.
    public func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws(ConfigurationError) -> AuditorConfiguration {
        try resolve(layers: SettingsLayers(configFile: processor.configFile, environment: environment))
    }

    /// Resolves over settings already read (the file is read once per start).
    public func resolve(layers: SettingsLayers) throws(ConfigurationError) -> AuditorConfiguration {
        func pick(_ flag: String?, _ setting: Setting) -> String? { layers.pick(flag, setting) }
        var settings = processor
        let processorGroup = pick(processor.applicationID, .applicationID) ?? Setting.applicationID.defaultText
        settings.applicationID = pick(group, .auditGroup) ?? Setting.auditGroup.defaultText
        var pipeline = try settings.resolve(layers: layers)
        if pick(processor.streamThreads, .streamThreads) == nil { pipeline.streamThreads = Setting.auditStreamThreads }
        let highValueText = pick(highValue, .auditHighValue) ?? Setting.auditHighValue.defaultText
        guard let threshold = DecimalText(highValueText.trimmingCharacters(in: .whitespaces)) else {
            throw ConfigurationError("\(highValue != nil ? Setting.auditHighValue.flag : Setting.auditHighValue.variable) must be a JSON number, got '\(highValueText)'")
        }
        let settleText = pick(settle, .auditSettle) ?? Setting.auditSettle.defaultText
        let settleMs = try Durations.milliseconds(settleText, setting: settle != nil ? Setting.auditSettle.flag : Setting.auditSettle.variable)
        let stallText = pick(stallAfter, .auditStallAfter) ?? Setting.auditStallAfter.defaultText
        let stallMs = try Durations.milliseconds(stallText, setting: stallAfter != nil ? Setting.auditStallAfter.flag : Setting.auditStallAfter.variable)
        let configuration = AuditorConfiguration(
            pipeline: pipeline,
            audit: AuditConfiguration(parameters: pipeline.parameters, highValueThreshold: threshold,
                                      fingerprintDigest: pipeline.fingerprintDigest),
            findingsTopic: pick(findingsTopic, .auditFindingsTopic) ?? Setting.auditFindingsTopic.defaultText,
            processorGroup: processorGroup, settle: .milliseconds(settleMs), stallAfter: .milliseconds(stallMs))
        try configuration.validate()
        return configuration
    }
}
