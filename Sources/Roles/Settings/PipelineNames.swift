/// Every name the pipeline gives a topic or a consumer group, in one place: the settings'
/// defaults, the dev broker's topics, the topics each group owns and the demo's.
///
/// The engine below knows no product name: a role hands it its sources, sinks and changelog.
public enum PipelineNames {
    /// The processor's default application id: its consumer group, and the prefix of its
    /// internal topics.
    public static let applicationID = "fraud-detector-processor"
    /// The default input topic.
    public static let inputTopic = "financial-transactions"
    /// The default output topic (enriched records).
    public static let outputTopic = "enriched-transactions"
    /// The default dead-letter topic.
    public static let deadLetterTopic = "financial-transactions.dlq"
    /// The continuous auditor's default consumer group, and the prefix of its internal topics.
    public static let auditorGroupID = "fraud-auditor"
    /// The default findings topic.
    public static let findingsTopic = "audit-findings"

    /// The processor's store changelog: `<application-id>-windows-changelog`.
    public static func windowsChangelog(applicationID: String) -> String { "\(applicationID)-windows-changelog" }
    /// The auditor's store changelog: `<group>-ledger-changelog`.
    public static func ledgerChangelog(auditorGroup: String) -> String { "\(auditorGroup)-ledger-changelog" }
    /// A group's repartition topic: `<group>-repartition`.
    public static func repartitionTopic(group: String) -> String { "\(group)-repartition" }

    /// Every topic the pipeline uses with `applicationID` and the auditor's default group:
    /// input, output, dead letters, the processor's changelog and repartition topics, and the
    /// auditor's findings, ledger changelog and repartition topics.
    public static func allTopics(applicationID: String) -> [String] {
        [inputTopic, outputTopic, deadLetterTopic,
         windowsChangelog(applicationID: applicationID), repartitionTopic(group: applicationID),
         findingsTopic, ledgerChangelog(auditorGroup: auditorGroupID), repartitionTopic(group: auditorGroupID)]
    }
}
