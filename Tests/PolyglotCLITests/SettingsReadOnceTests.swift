import Foundation
import Testing

/// The settings file is read once per start: the log level logging starts with and every other
/// setting come from one reading. A pipe (`--config /dev/stdin`, `--config <(...)`) can be read
/// only once, so a second reading would find it empty and silently run on the defaults: each
/// command here is given a bad value through a pipe and must refuse it.
@Suite("Settings read once", PolyglotBinary.enabled)
final class SettingsReadOnceTests {
    let directory: URL
    init() throws { directory = try temporaryDirectory() }
    deinit { try? FileManager.default.removeItem(at: directory) }

    @Test(arguments: [
        (["process", "--state-dir", "state"], "POLYGLOT_COMMIT_INTERVAL=soon", "'soon'"),
        (["audit", "--files", "in.jsonl", "out.jsonl"], "POLYGLOT_THRESHOLD=many", "'many'"),
        (["audit", "--once"], "POLYGLOT_PARTITIONER=fnv", "'fnv'"),
        (["audit", "--state-dir", "state"], "POLYGLOT_AUDIT_SETTLE=later", "'later'"),
        (["produce", "in.jsonl"], "POLYGLOT_PARTITIONER=fnv", "'fnv'"),
    ])
    func aSettingsFileOnAPipeIsReadOnce(command: [String], settings: String, named: String) throws {
        try Data(lines.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        try Data().write(to: directory.appendingPathComponent("out.jsonl"))
        // A log level and the cluster in the file too: read in the same pass as the bad value.
        let text = "POLYGLOT_LOG_LEVEL=warning\nKAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1\n\(settings)\n"
        let run = try polyglot(command + ["--config", "/dev/stdin"], in: directory, stdin: Data(text.utf8))
        #expect(run.status == 64, "\(command): \(run.stderr)")
        #expect(run.stderrLines.count == 1, "\(command): \(run.stderr)")
        #expect(run.stderr.contains(named), "\(command): \(run.stderr)")
    }

    @Test func settingsOnAPipeTakeEffect() throws {
        try Data(lines.utf8).write(to: directory.appendingPathComponent("in.jsonl"))
        let replay = try polyglot(["replay", "in.jsonl", "-o", "out.jsonl", "--dlq", "dlq.jsonl", "--no-progress"], in: directory)
        #expect(replay.status == 0, "\(replay.stderr)")
        let audit = ["audit", "--files", "in.jsonl", "out.jsonl", "--dlq", "dlq.jsonl"]
        #expect(try polyglot(audit, in: directory).status == 0)
        // Two records of one card in one window: flagged under a threshold of 1, which replay
        // (at the default, 3) did not use, so the audit finds a mismatch.
        let run = try polyglot(audit + ["--config", "/dev/stdin"], in: directory,
                               stdin: Data("POLYGLOT_LOG_LEVEL=warning\nPOLYGLOT_THRESHOLD=1\n".utf8))
        #expect(run.status == 1, "\(run.stdout) \(run.stderr)")
        #expect(run.stdout.contains("mismatch"), "\(run.stdout)")
    }
}
