import KafkaClient
import StateStore

/// The product's version and the C libraries it runs with.
public enum ProductVersion {
    /// The polyglot release; also the `polyglot-version` Kafka header.
    public static let version = "0.1.0"

    /// What `polyglot --version` prints.
    public static var description: String {
        """
        polyglot \(version)
        librdkafka \(KafkaLibrary.runtimeVersion) (compiled against \(KafkaLibrary.compiledVersion))
        SQLite \(SQLiteLibrary.runtimeVersion) (compiled against \(SQLiteLibrary.compiledVersion))
        """
    }
}
