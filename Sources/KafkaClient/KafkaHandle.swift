internal import CRdKafka
import Dispatch
import Foundation
import Logging
import Synchronization
import PolyglotSupport

/// State shared with librdkafka's C callbacks through the configuration opaque.
///
/// Kept alive by the owning client for at least as long as its `rd_kafka_t`.
///
/// `@unchecked Sendable`: `logger`, `brokerState` and `authenticationFailure` (a mutex) are
/// immutable references, and `redactedValues` is
/// written only by ``KafkaHandleFactory/make(type:configuration:context:configure:)`` before
/// `rd_kafka_new` starts the threads that call back, and never again.
class KafkaCallbackContext: @unchecked Sendable {
    let logger: Logger
    /// The client's secret property values, redacted from librdkafka's log lines.
    var redactedValues: [String] = []
    /// Fed by the error and statistics callbacks, when the client is tracked.
    let brokerState: KafkaBrokerState?
    /// librdkafka's reason for the first failed authentication (SASL), redacted.
    let authenticationFailure = Mutex<String?>(nil)
    init(logger: Logger, brokerState: KafkaBrokerState? = nil) {
        self.logger = logger
        self.brokerState = brokerState
    }

    /// Keeps the first authentication failure's reason: `text` without the broker's name
    /// before it and the time and state librdkafka appends.
    func recordAuthenticationFailure(_ text: String) {
        authenticationFailure.withLock { $0 = $0 ?? Self.authenticationReason(text) }
    }

    /// `[thrd:sasl_plaintext://host:9092/bootstrap]: sasl_plaintext://host:9092/bootstrap: SASL
    /// authentication error: … (after 3ms in state AUTH_REQ)` is `SASL authentication error: …`.
    static func authenticationReason(_ text: String) -> String {
        var reason = Substring(text)
        // The thread's and the broker's names, each a word with a slash in it, then ": ".
        while let separator = reason.range(of: ": "), reason[..<separator.lowerBound].contains("/"),
              !reason[..<separator.lowerBound].contains(" ") {
            reason = reason[separator.upperBound...]
        }
        if let suffix = reason.range(of: " (after ", options: .backwards), reason.hasSuffix(")") {
            reason = reason[..<suffix.lowerBound]
        }
        return String(reason)
    }

    var opaque: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    static func from(_ opaque: UnsafeMutableRawPointer?) -> KafkaCallbackContext? {
        guard let opaque else { return nil }
        return Unmanaged<KafkaCallbackContext>.fromOpaque(opaque).takeUnretainedValue()
    }
}

/// Creates `rd_kafka_t` handles with librdkafka's log lines routed to swift-log.
enum KafkaHandleFactory {
    /// Builds a configured handle. `configure` may install extra callbacks on the conf.
    static func make(
        type: rd_kafka_type_t,
        configuration: KafkaConfiguration,
        context: KafkaCallbackContext,
        configure: (OpaquePointer) -> Void = { _ in }
    ) throws(KafkaError) -> OpaquePointer {
        var configuration = configuration
        if context.brokerState != nil {
            configuration.setDefault("statistics.interval.ms", KafkaBrokerState.statisticsIntervalMilliseconds)
        }
        let conf: OpaquePointer
        do {
            conf = try configuration.makeNativeConfiguration()
        } catch {
            throw KafkaError(code: RD_KAFKA_RESP_ERR__INVALID_ARG.rawValue, name: "_INVALID_ARG", message: error.message)
        }
        context.redactedValues = configuration.redactedValues
        rd_kafka_conf_set_opaque(conf, context.opaque)
        rd_kafka_conf_set_log_cb(conf) { rk, level, facility, buffer in
            guard let rk, let context = KafkaCallbackContext.from(rd_kafka_opaque(rk)) else { return }
            let text = KafkaConfiguration.redacting(buffer.map { String(cString: $0) } ?? "", values: context.redactedValues)
            let fac = facility.map { String(cString: $0) } ?? ""
            // A connection that fails in authentication is logged as FAIL with no error code.
            if fac == "FAIL", text.contains("SASL") { context.recordAuthenticationFailure(text) }
            context.logger.log(level: logLevel(librdkafkaLevel: level, facility: fac, text: text), "\(text)",
                               metadata: ["librdkafka": "\(String(cString: rd_kafka_name(rk)))", "facility": "\(fac)"])
        }
        if context.brokerState != nil {
            // With an error callback librdkafka no longer logs these errors itself: this does.
            rd_kafka_conf_set_error_cb(conf) { rk, err, reason, _ in
                guard let rk, let context = KafkaCallbackContext.from(rd_kafka_opaque(rk)) else { return }
                let error = KafkaError(rd_kafka_resp_err_t(rawValue: err))
                let text = KafkaConfiguration.redacting(reason.map { String(cString: $0) } ?? "", values: context.redactedValues)
                context.brokerState?.recordError(name: error.name, reason: text)
                if err == RD_KAFKA_RESP_ERR__AUTHENTICATION.rawValue { context.recordAuthenticationFailure(text) }
                let fatal = err == RD_KAFKA_RESP_ERR__FATAL.rawValue
                context.logger.log(level: fatal ? .error : .warning, "\(text)", metadata: [
                    "librdkafka": "\(String(cString: rd_kafka_name(rk)))", "code": "\(error.name)",
                ])
            }
            rd_kafka_conf_set_stats_cb(conf) { rk, json, length, _ in
                guard let rk, let json, let context = KafkaCallbackContext.from(rd_kafka_opaque(rk)) else { return 0 }
                context.brokerState?.recordStatistics(UnsafeRawBufferPointer(start: json, count: length))
                return 0  // librdkafka frees the JSON
            }
        }
        configure(conf)
        var errstr = [CChar](repeating: 0, count: 512)
        guard let rk = rd_kafka_new(type, conf, &errstr, errstr.count) else {
            // On failure the configuration is still ours.
            rd_kafka_conf_destroy(conf)
            throw KafkaError(code: RD_KAFKA_RESP_ERR__INVALID_ARG.rawValue, name: "_INVALID_ARG",
                             message: "cannot create Kafka client: \(configuration.redacting(cString(errstr)))")
        }
        return rk
    }

    /// The fatal error of a handle, if one was raised.
    static func fatalError(_ rk: OpaquePointer) -> KafkaError? {
        var errstr = [CChar](repeating: 0, count: 512)
        let err = rd_kafka_fatal_error(rk, &errstr, errstr.count)
        guard err != RD_KAFKA_RESP_ERR_NO_ERROR else { return nil }
        let base = KafkaError(err)
        return KafkaError(code: base.code, name: base.name, message: cString(errstr), isFatal: true)
    }
}

/// Runs blocking librdkafka calls off the Swift cooperative pool, on a serial dispatch queue
/// (its threads are not the cooperative pool's), and bridges the result back with a continuation.
///
/// Not a `DedicatedWorker`: a worker's thread lives until its owner stops and joins it, but the
/// async `close` of a client runs on this executor (a worker could not join itself there), and
/// most clients never make an async call, so each would park a thread for nothing. A dispatch
/// queue takes a thread only while it has work, and needs no stopping.
struct BlockingExecutor: Sendable {
    private let queue: DispatchQueue
    init(label: String) {
        queue = DispatchQueue(label: label)
    }

    /// Runs `body` on the queue and waits for it: its result, or the error it threw.
    func run<T: Sendable, Failure: Error>(_ body: @escaping @Sendable () throws(Failure) -> T) async throws(Failure) -> T {
        let result: Result<T, Failure> = await withCheckedContinuation { continuation in
            queue.async {
                do throws(Failure) {
                    continuation.resume(returning: .success(try body()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        return try result.get()
    }
}
/// The log level of a librdkafka log line (syslog levels). A client that shares `-X` properties
/// with the others `process` creates gets consumer-only ones on its producer and the reverse;
/// librdkafka warns that it ignores them, which is expected there, so that warning is debug.
func logLevel(librdkafkaLevel level: Int32, facility: String, text: String) -> Logger.Level {
    if facility == "CONFWARN", text.contains(" property and will be ignored by this ") { return .debug }
    return switch level {
    case ...3: .error
    case 4: .warning
    case 5, 6: .info
    default: .debug
    }
}
