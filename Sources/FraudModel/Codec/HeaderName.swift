/// The Kafka header names polyglot writes and reads, one constant each, so that a writer and
/// its readers cannot drift apart.
public enum HeaderName {
    /// Where an output, dead letter or repartitioned record came from: its input's topic,
    /// partition and offset.
    public static let source = "polyglot-source"
    /// A dead letter's rejection code.
    public static let error = "polyglot-error"
    /// A dead letter's one-line reason.
    public static let errorMessage = "polyglot-error-message"
    /// The environment fingerprint of the binary that wrote the record.
    public static let fingerprint = "polyglot-fingerprint"
    /// The version of the binary that wrote the record.
    public static let version = "polyglot-version"
    /// The window kind of the detector that wrote a changelog.
    public static let detector = "polyglot-detector"
    /// The source positions a changelog record covers.
    public static let positions = "polyglot-positions"
    /// The auditor's read progress, on its repartition topic.
    public static let auditRead = "polyglot-audit-read"
    /// Beside it: the sender's input partition lost records (retention) below this position.
    public static let auditReadFrom = "polyglot-audit-read-from"
}
