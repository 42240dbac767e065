import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif
@testable import PolyglotSupport

/// `polyglot replay` stopped by SIGINT or SIGTERM while it reads stdin: it removes its temporary
/// output files, leaves the files they were to replace untouched, says it was interrupted in
/// one line and exits 128 plus the signal's number.
@Suite("Interrupted replay", .serialized,
       PolyglotBinary.enabled)
struct InterruptedReplayTests {
    @Test(arguments: [SIGINT, SIGTERM])
    func aSignalRemovesTheTemporariesAndSaysSo(_ signal: Int32) async throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let old = Data("an earlier run's output\n".utf8)
        try old.write(to: directory.appendingPathComponent("out.jsonl"))

        let process = Process()
        process.executableURL = try PolyglotBinary.required()
        process.arguments = ["replay", "-", "-o", "out.jsonl", "--dlq", "dlq.jsonl", "--no-progress"]
        process.currentDirectoryURL = directory
        process.environment = ["PATH": "/usr/bin:/bin", "HOME": directory.path]
        let input = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Records arrive and the pipe stays open: replay is mid-read when the signal comes.
        input.fileHandleForWriting.write(Data(transactionLines(count: 5_000, cards: 100).joined(separator: "\n").utf8 + [0x0A]))

        let deadline = ContinuousClock.now + .seconds(30)
        var temporaries: [String] = []
        while ContinuousClock.now < deadline {
            temporaries = try temporaryFiles(in: directory)
            if temporaries.count == 2 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        try #require(temporaries.count == 2, "replay did not create its two temporary files: \(temporaries)")

        kill(process.processIdentifier, signal)
        let exited = try await waitForExit(process, within: .seconds(30))
        try #require(exited, "replay still runs 30 s after the signal")
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(process.terminationReason == .exit)
        #expect(process.terminationStatus == 128 + signal, "\(stderr)")
        #expect(stderr.split(separator: "\n").count == 1, "\(stderr)")
        #expect(stderr.hasPrefix("polyglot: replay interrupted by \(signal == SIGINT ? "SIGINT" : "SIGTERM")"), "\(stderr)")
        #expect(try temporaryFiles(in: directory).isEmpty)
        #expect(try Data(contentsOf: directory.appendingPathComponent("out.jsonl")) == old)
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("dlq.jsonl").path))
        try? input.fileHandleForWriting.close()
    }

    private func temporaryFiles(in directory: URL) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".tmp") }
    }

    private func waitForExit(_ process: Process, within timeout: Duration) async throws -> Bool {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning {
            if ContinuousClock.now >= deadline { return false }
            try await Task.sleep(for: .milliseconds(20))
        }
        return true
    }
}
