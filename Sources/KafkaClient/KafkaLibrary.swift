internal import CRdKafka
import PolyglotSupport

/// Facts about the librdkafka this process runs with.
public enum KafkaLibrary {
    /// Runtime version, e.g. `2.0.2`.
    public static var runtimeVersion: String { String(cString: rd_kafka_version_str()) }
    /// Version of the headers the binary was compiled against.
    public static var compiledVersion: String {
        let v = RD_KAFKA_VERSION
        return "\((v >> 24) & 0xff).\((v >> 16) & 0xff).\((v >> 8) & 0xff)"
    }
}
