import Foundation
import Testing
@testable import PolyglotSupport
@testable import Roles

@Suite("Output files")
struct OutputFileTests {
    @Test func anUnfinishedWriteLeavesTheOldFileAndNoTemporary() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("out.jsonl").path
        try "old\n".write(toFile: path, atomically: false, encoding: .utf8)
        chmod(path, 0o640)
        do {
            let stream = try FileStream.openForWriting(path)
            try stream.write(Array("half".utf8))
        }
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "old\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["out.jsonl"])
        let stream = try FileStream.openForWriting(path)
        try stream.write(Array("new\n".utf8))
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "old\n")
        try stream.close()
        #expect(try String(contentsOfFile: path, encoding: .utf8) == "new\n")
        #expect(try fileMode(path) == 0o640)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["out.jsonl"])
    }

    @Test func aFailedReplayLeavesItsOutputsAsTheyWere() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in.jsonl").path
        let output = dir.appendingPathComponent("out.jsonl").path
        try GeneratedFile.write(options: GeneratorOptions(count: 100, cards: 10), to: input)
        try "old\n".write(toFile: output, atomically: false, encoding: .utf8)
        let replay = Replay(options: ReplayOptions(input: input, output: output, deadLetters: dir.path + "/missing/dlq.jsonl"))
        #expect(throws: ReplayError.self) { try replay.run() }
        #expect(try String(contentsOfFile: output, encoding: .utf8) == "old\n")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["in.jsonl", "out.jsonl"])
    }

    @Test func replayRefusesToWriteOverItsInputWhateverTheSpelling() throws {
        let dir = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: dir) }
        let input = dir.appendingPathComponent("in.jsonl").path
        try GeneratedFile.write(options: GeneratorOptions(count: 100, cards: 10), to: input)
        let before = try Data(contentsOf: URL(fileURLWithPath: input))
        let link = dir.appendingPathComponent("link.jsonl").path
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: input)
        let hardLink = dir.appendingPathComponent("hard.jsonl").path
        try FileManager.default.linkItem(atPath: input, toPath: hardLink)
        let spellings = [input, dir.path + "/./in.jsonl", dir.path + "/../" + dir.lastPathComponent + "/in.jsonl", link, hardLink]
        for spelling in spellings {
            for options in [ReplayOptions(input: input, output: spelling), ReplayOptions(input: input, output: "/dev/null", deadLetters: spelling)] {
                let error = #expect(throws: ReplayError.self, "\(spelling)") { try Replay(options: options).run() }
                #expect(error?.description.contains("is the input file") == true)
            }
        }
        let fresh = dir.appendingPathComponent("new.jsonl").path
        let same = #expect(throws: ConfigurationError.self) {
            try ReplayOptions(input: input, output: fresh, deadLetters: dir.path + "/./new.jsonl").validate()
        }
        #expect(same?.message == "-o and --dlq are the same file (\(fresh)); give them different files")
        #expect(throws: ConfigurationError.self) { try ReplayOptions(input: input, output: "-", deadLetters: "-").validate() }
        try ReplayOptions(input: "-", output: "-", deadLetters: fresh).validate()
        #expect(try Data(contentsOf: URL(fileURLWithPath: input)) == before)
        #expect(!FileManager.default.fileExists(atPath: fresh))
    }
}
