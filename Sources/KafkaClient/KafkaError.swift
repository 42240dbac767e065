internal import CRdKafka
import PolyglotSupport

/// An error from librdkafka or from this Kafka layer.
///
/// Carries the underlying `rd_kafka_resp_err_t` code and, when librdkafka returned an
/// `rd_kafka_error_t`, its retriable / fatal / abortable classification. Transactional callers
/// switch on ``transactionAction``.
public struct KafkaError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The raw `rd_kafka_resp_err_t` value (negative values are client-side errors).
    public let code: Int32
    /// librdkafka's symbolic name, e.g. `_TRANSPORT` or `NOT_LEADER_FOR_PARTITION`.
    public let name: String
    /// Human-readable detail.
    public let message: String
    /// The operation may succeed if retried as is.
    public let isRetriable: Bool
    /// The client instance is no longer usable; it must be destroyed.
    public let isFatal: Bool
    /// The current transaction must be aborted (transactional API only).
    public let txnRequiresAbort: Bool

    public init(code: Int32, name: String, message: String,
                isRetriable: Bool = false, isFatal: Bool = false, txnRequiresAbort: Bool = false) {
        self.code = code
        self.name = name
        self.message = message
        self.isRetriable = isRetriable
        self.isFatal = isFatal
        self.txnRequiresAbort = txnRequiresAbort
    }

    /// An error from a response code, with an optional detail replacing librdkafka's text.
    init(_ err: rd_kafka_resp_err_t, detail: String? = nil) {
        self.init(code: err.rawValue,
                  name: String(cString: rd_kafka_err2name(err)),
                  message: detail ?? String(cString: rd_kafka_err2str(err)),
                  isRetriable: KafkaError.retriableCodes.contains(err.rawValue))
    }

    /// Takes ownership of `error` (destroys it) and keeps its classification.
    init(consuming error: OpaquePointer) {
        defer { rd_kafka_error_destroy(error) }
        self.init(code: rd_kafka_error_code(error).rawValue,
                  name: String(cString: rd_kafka_error_name(error)),
                  message: String(cString: rd_kafka_error_string(error)),
                  isRetriable: rd_kafka_error_is_retriable(error) != 0,
                  isFatal: rd_kafka_error_is_fatal(error) != 0,
                  txnRequiresAbort: rd_kafka_error_txn_requires_abort(error) != 0)
    }

    /// Throws when `error` is non-nil (consuming it).
    static func check(_ error: OpaquePointer?) throws(KafkaError) {
        if let error { throw KafkaError(consuming: error) }
    }

    /// Throws when `err` is not `RD_KAFKA_RESP_ERR_NO_ERROR`.
    static func check(_ err: rd_kafka_resp_err_t, _ context: String? = nil) throws(KafkaError) {
        guard err != RD_KAFKA_RESP_ERR_NO_ERROR else { return }
        let base = KafkaError(err)
        guard let context else { throw base }
        throw KafkaError(code: base.code, name: base.name, message: "\(context): \(base.message)",
                         isRetriable: base.isRetriable)
    }

    /// What a transactional producer must do after this error.
    public enum TransactionAction: Sendable, Hashable {
        /// Call the same operation again.
        case retry
        /// Abort the transaction, rewind, and start a new one.
        case abort
        /// The producer is unusable: destroy it and create a new one (a fenced producer, say).
        case fatal
    }

    /// The transactional classification: fatal wins over abortable, which wins over retriable.
    /// An error that is none of them is treated as abortable, the safe default.
    public var transactionAction: TransactionAction {
        if isFatal { return .fatal }
        if txnRequiresAbort { return .abort }
        if isRetriable { return .retry }
        return .abort
    }

    public var description: String { "\(name) (\(code)): \(message)" }

    /// Response codes that are transient for a plain (non-`rd_kafka_error_t`) result.
    static let retriableCodes: Set<Int32> = [
        RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__QUEUE_FULL,
        RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_NOT_COORDINATOR,
        RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    ].reduce(into: []) { $0.insert($1.rawValue) }
}

extension KafkaError {
    /// Well-known codes, for matching without importing the C module.
    public enum Code {
        public static let timedOut = RD_KAFKA_RESP_ERR__TIMED_OUT.rawValue
        public static let queueFull = RD_KAFKA_RESP_ERR__QUEUE_FULL.rawValue
        public static let transport = RD_KAFKA_RESP_ERR__TRANSPORT.rawValue
        public static let unknownTopicOrPartition = RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART.rawValue
        public static let topicAlreadyExists = RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS.rawValue
        public static let notLeaderForPartition = RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION.rawValue
        public static let leaderNotAvailable = RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE.rawValue
        public static let requestTimedOut = RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT.rawValue
        public static let notEnoughReplicas = RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS.rawValue
        public static let unsupportedFeature = RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE.rawValue
        public static let invalidArgument = RD_KAFKA_RESP_ERR__INVALID_ARG.rawValue
        public static let state = RD_KAFKA_RESP_ERR__STATE.rawValue
        public static let fenced = RD_KAFKA_RESP_ERR__FENCED.rawValue
        public static let producerFenced = RD_KAFKA_RESP_ERR_PRODUCER_FENCED.rawValue
        public static let invalidProducerEpoch = RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH.rawValue
        public static let concurrentTransactions = RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS.rawValue
        public static let topicAuthorizationFailed = RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED.rawValue
        public static let groupAuthorizationFailed = RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED.rawValue
        public static let coordinatorNotAvailable = RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE.rawValue
        public static let notCoordinator = RD_KAFKA_RESP_ERR_NOT_COORDINATOR.rawValue
        public static let invalidTransactionState = RD_KAFKA_RESP_ERR_INVALID_TXN_STATE.rawValue
        public static let unknownProducerID = RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID.rawValue
        public static let invalidRecord = RD_KAFKA_RESP_ERR_INVALID_RECORD.rawValue
        public static let allBrokersDown = RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN.rawValue
        public static let destroyed = RD_KAFKA_RESP_ERR__DESTROY.rawValue
    }

    /// The name librdkafka gives a response code (`NOT_LEADER_FOR_PARTITION`, `_TRANSPORT`, ...).
    public static func name(ofCode code: Int32) -> String {
        String(cString: rd_kafka_err2name(rd_kafka_resp_err_t(rawValue: code)))
    }
}

/// The broker has no admin API (librdkafka's mock cluster, or a broker denying it): the caller
/// creates topics another way or checks they exist.
public struct KafkaAdminUnavailable: Error, Sendable, CustomStringConvertible {
    /// The operation that failed, e.g. `CreateTopics`.
    public let operation: String
    /// The error librdkafka reported.
    public let underlying: KafkaError
    public var description: String {
        "the broker does not support the admin operation \(operation) (\(underlying.name): \(underlying.message))"
    }
}
