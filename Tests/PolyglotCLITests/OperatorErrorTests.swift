import Core
import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What a new user or an operator gets wrong first: a missing setting, a negative number, a
/// broker that refuses the credentials, a port another process holds. Each is a usage error
/// (64) or a failure (1) at once, in one line that names what to change.
@Suite("Operator errors", .serialized,
       .enabled(if: PolyglotBinary.url != nil, "the polyglot binary was not found next to the test bundle (set POLYGLOT_BINARY)"))
final class OperatorErrorTests {
    let directory: URL
    init() throws { directory = try temporaryDirectory() }
    deinit { try? FileManager.default.removeItem(at: directory) }

    /// SASL against a broker without it (the dev broker has no SASL handshake): the reason is
    /// librdkafka's, after "authentication failed", within a second or two rather than the
    /// connect timeout; the password is never shown, and nothing but it is redacted.
    @Test func aRefusedAuthenticationSaysSoWithLibrdkafkasReason() throws {
        let logger = Logger(label: "polyglot.test.sasl") { _ in SwiftLogNoOpLogHandler() }
        let cluster = try MockCluster(brokers: 1, logger: logger)
        defer { cluster.destroy() }
        try cluster.createTopic("financial-transactions", partitions: 1)
        try Data(lines.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        let sasl = ["--bootstrap-servers", cluster.bootstrapServers, "-X", "security.protocol=SASL_PLAINTEXT",
                    "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=u", "-X", "sasl.password=hunter2"]
        for command in [["produce", "in.jsonl", "--log-level", "error"],
                        ["process", "--state-dir", "state", "--metrics-port", "0", "--log-level", "error"]] {
            let started = ContinuousClock.now
            let run = try polyglot(command + sasl, in: directory)
            #expect(run.status == 1, "\(command): \(run.stderr)")
            let last = String(run.stderrLines.last ?? "")
            #expect(last.hasPrefix("polyglot: authentication failed: "), "\(command): \(run.stderr)")
            #expect(last.contains(": Failed to initialize SASL authentication: ") && last.contains("PLAIN"), "\(last)")
            #expect(!last.contains("127.0.0.1"), "the reason without the broker's name: \(last)")
            #expect(!last.contains("cannot reach Kafka"))
            #expect(!run.stderr.contains("hunter2"))
            // The username `u` is no secret: words holding a `u` stay whole.
            #expect(!run.stderr.contains("[redacted]"), "\(run.stderr)")
            #expect(ContinuousClock.now - started < .seconds(12), "\(command) waited for the connect timeout")
        }
    }

}
