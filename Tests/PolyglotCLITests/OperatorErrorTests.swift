import Foundation
import Logging
import Testing

#if canImport(Glibc)
import Glibc
#endif
@testable import KafkaClient

/// What a new user or an operator gets wrong first: a missing setting, a negative number, a
/// broker that refuses the credentials, a port another process holds. Each is a usage error
/// (64) or a failure (1) at once, in one line that names what to change.
@Suite("Operator errors", .serialized,
       PolyglotBinary.enabled)
final class OperatorErrorTests {
    let directory: URL
    init() throws { directory = try temporaryDirectory() }
    deinit { try? FileManager.default.removeItem(at: directory) }

    @Test func produceWithoutBootstrapServersIsAUsageErrorAtOnce() throws {
        try Data(lines.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        let started = ContinuousClock.now
        for command in [["produce", "in.jsonl"], ["process", "--state-dir", "state"]] {
            let run = try polyglot(command, in: directory)
            #expect(run.status == 64, "\(command): \(run.stderr)")
            #expect(run.stderr == "polyglot: no Kafka bootstrap servers: set --bootstrap-servers or KAFKA_BOOTSTRAP_SERVERS\n", "\(command)")
        }
        // Not after the connect timeout (15 s) spent on a cluster it was never told about.
        #expect(ContinuousClock.now - started < .seconds(10))
    }

    @Test(arguments: [
        (["generate", "-5"], "polyglot: <count> must be 0 or more, got -5\n"),
        (["generate", "10", "--cards", "-1"], "polyglot: --cards must be at least 1\n"),
        (["demo", "--records", "-1"], "polyglot: --records must be at least 1, got -1\n"),
        (["demo", "--cards", "-2"], "polyglot: --cards must be at least 1, got -2\n"),
        (["generate", "10", "--start", "yesterday"], "polyglot: --start must be now or epoch milliseconds (0 or more), got 'yesterday'\n"),
        (["process", "--bootstrap-servers", "h:1", "--metrics-address", "localhost:1"],
         "polyglot: --metrics-address: 'localhost:1' is not an IP address (0.0.0.0 for every interface, 127.0.0.1 for this host only)\n"),
    ])
    func negativeAndInvalidNumbersAreNamed(arguments: [String], expected: String) throws {
        let run = try polyglot(arguments, in: directory)
        #expect(run.status == 64)
        #expect(run.stderr == expected)
        #expect(run.stdout.isEmpty)
    }

    @Test func generateStartsAtTheGivenTimeOrNow() throws {
        func firstTimestamp(_ arguments: [String]) throws -> Int64 {
            let run = try polyglot(["generate", "3"] + arguments, in: directory)
            #expect(run.status == 0, "\(run.stderr)")
            let first = try #require(run.stdout.split(separator: "\n").first)
            let marker = try #require(first.range(of: #""timestamp":"#))
            return try #require(Int64(first[marker.upperBound...].prefix { $0.isNumber }))
        }
        #expect(try firstTimestamp([]) >= 1_767_225_600_000 && firstTimestamp([]) < 1_767_225_600_000 + 60_000)
        #expect(try firstTimestamp(["--start", "1700000000000"]) < 1_700_000_000_000 + 60_000)
        let before = Int64(Date().timeIntervalSince1970 * 1000)
        let now = try firstTimestamp(["--start", "now"])
        #expect(now >= before && now < before + 120_000)
    }

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

    /// A port another process listens on: one line naming it and the flag, before any role
    /// starts; the demo says so before it prints any address.
    @Test func aPortInUseIsOneLineNamingItsFlag() throws {
        let held = try ListeningSocket()
        let port = held.port
        let process = try polyglot(["process", "--bootstrap-servers", "127.0.0.1:1", "--state-dir", "state",
                                    "--metrics-port", "\(port)"], in: directory)
        #expect(process.status == 1)
        #expect(process.stderrLines.count == 1, "\(process.stderr)")
        #expect(process.stderr == "polyglot: cannot serve /metrics and /healthz on 0.0.0.0:\(port): port \(port) is in use on 0.0.0.0 (another polyglot on this host?); choose another port with --metrics-port, or 0 to turn them off\n")
        let demo = try polyglot(["demo", "--records", "100", "--audit-metrics-port", "\(port)", "--process-metrics-port", "0"], in: directory)
        #expect(demo.status == 1)
        #expect(demo.stderrLines.count == 1, "\(demo.stderr)")
        #expect(demo.stderr.contains("port \(port) is in use") && demo.stderr.contains("--audit-metrics-port"), "\(demo.stderr)")
        #expect(!demo.stderr.contains("http://"))
    }
}

/// A TCP socket listening on a free loopback-and-every-interface port, closed on deinit.
final class ListeningSocket {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr = in_addr(s_addr: INADDR_ANY)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && listen(fd, 1) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        try #require(fd >= 0 && bound, "cannot listen: errno \(errno)")
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    deinit { close(fd) }
}
