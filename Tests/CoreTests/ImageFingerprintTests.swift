import Crypto
import Foundation
import Testing
@testable import KafkaClient
@testable import StateStore
@testable import Observability
@testable import Roles

@Suite("Image fingerprint")
struct ImageFingerprintTests {
    @Test func currentFingerprintHasEveryField() throws {
        let fingerprint = try EnvironmentFingerprint.current()
        for field in fingerprint.fields {
            #expect(!field.value.isEmpty && field.value != "unknown", "\(field.name) is \(field.value)")
        }
        let executable = try Data(contentsOf: URL(fileURLWithPath: "/proc/self/exe"))
        #expect(fingerprint.binarySha256 == SHA256.hash(data: executable).map { String(format: "%02x", $0) }.joined())
        #expect(fingerprint.glibc.wholeMatch(of: /[0-9]+\.[0-9]+(\.[0-9]+)?/) != nil)
        #expect(fingerprint.librdkafka == KafkaLibrary.runtimeVersion)
        #expect(fingerprint.librdkafkaCompiled == KafkaLibrary.compiledVersion)
        #expect(fingerprint.sqlite == SQLiteLibrary.runtimeVersion)
        #expect(fingerprint.sqliteCompiled == SQLiteLibrary.compiledVersion)
        #expect(fingerprint.polyglotVersion == ProductVersion.version)
        #expect(fingerprint.arch == ImageFixtures.compiledArchitecture)
        #expect(try EnvironmentFingerprint.current() == fingerprint)
    }

    @Test func canonicalJSONAndDigestAreStable() throws {
        let fingerprint = ImageFixtures.sample
        let expected = #"{"arch":"x86_64","binarySha256":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","glibc":"2.36","librdkafka":"2.0.2","librdkafkaCompiled":"2.0.2","os":"Debian GNU/Linux 12 (bookworm)","polyglotVersion":"0.1.0","sqlite":"3.40.1","sqliteCompiled":"3.40.1"}"#
        #expect(fingerprint.canonicalJSON == expected)
        // Independently: printf '%s' "$expected" | sha256sum
        #expect(fingerprint.digest == "48df2493f4bec405e013e2f96b746d7b54e328d0fa7a8c8d99be1da80e975584")
        #expect(fingerprint.digest == SHA256.hash(data: Data(expected.utf8)).map { String(format: "%02x", $0) }.joined())
        // The same fingerprint decoded from its file gives the same digest.
        #expect(try BakedFingerprint(json: Array(expected.utf8), source: "test").digest == fingerprint.digest)
        // Codable round trip.
        let decoded = try JSONDecoder().decode(EnvironmentFingerprint.self, from: JSONEncoder().encode(fingerprint))
        #expect(decoded == fingerprint)
        #expect(try JSONDecoder().decode(EnvironmentFingerprint.self, from: Data(expected.utf8)) == fingerprint)
    }

    @Test func canonicalJSONEscapesLikeTheOutputWriter() {
        var fingerprint = ImageFixtures.sample
        fingerprint.os = "a\"b\\c\u{01}\n\té/"
        #expect(fingerprint.canonicalJSON.contains(#""os":"a\"b\\c\u0001\n\té/""#))
    }

    @Test func everyFieldChangeChangesTheDigestAndIsNamed() {
        let baked = ImageFixtures.sample
        for index in baked.fields.indices {
            let name = baked.fields[index].name
            var pairs = Dictionary(uniqueKeysWithValues: baked.fields.map { ($0.name, $0.value) })
            pairs[name] = pairs[name]! + "-changed"
            let running = ImageFixtures.fingerprint(pairs)
            #expect(running.digest != baked.digest, "\(name) does not reach the digest")
            #expect(running.differences(from: baked) == [
                FingerprintDifference(field: name, baked: baked.fields[index].value, running: baked.fields[index].value + "-changed"),
            ])
        }
        #expect(baked.differences(from: baked).isEmpty)
    }

    @Test func verifyMatchesAndDetectsDrift() throws {
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let running = try EnvironmentFingerprint.current()
        let path = directory.appendingPathComponent("fingerprint.json").path

        try Data((running.canonicalJSON + "\n").utf8).write(to: URL(fileURLWithPath: path))
        let match = try FingerprintVerification.verify(running: running, bakedFileAt: path)
        #expect(match == .match(digest: running.digest))
        #expect(match.report(bakedFile: path) == "polyglot image verify: the environment matches \(path) (fingerprint \(running.digest))")

        var baked = running
        baked.glibc = "2.31"
        baked.librdkafka = "1.9.2"
        try Data(baked.canonicalJSON.utf8).write(to: URL(fileURLWithPath: path))
        let drift = try FingerprintVerification.verify(running: running, bakedFileAt: path)
        #expect(drift == .drift([
            FingerprintDifference(field: "glibc", baked: "2.31", running: running.glibc),
            FingerprintDifference(field: "librdkafka", baked: "1.9.2", running: running.librdkafka),
        ]))
        #expect(drift.report(bakedFile: path) == """
        polyglot image verify: the environment drifted from \(path): 2 fields differ
          glibc: baked "2.31", running "\(running.glibc)"
          librdkafka: baked "1.9.2", running "\(running.librdkafka)"
        """)
    }

    @Test func fieldsAddedOrRemovedBetweenVersionsAreNamed() throws {
        var pairs = Dictionary(uniqueKeysWithValues: ImageFixtures.sample.fields.map { ($0.name, $0.value) })
        pairs["os"] = nil
        pairs["kernel"] = "6.1.0"
        let json = try JSONEncoder().encode(pairs)
        let baked = try BakedFingerprint(json: json, source: "test")
        #expect(ImageFixtures.sample.differences(fromBaked: baked) == [
            FingerprintDifference(field: "kernel", baked: "6.1.0", running: nil),
            FingerprintDifference(field: "os", baked: nil, running: "Debian GNU/Linux 12 (bookworm)"),
        ])
        #expect(FingerprintDifference(field: "kernel", baked: "6.1.0", running: nil).description == #"kernel: baked "6.1.0", running (absent)"#)
    }

    @Test func unreadableOrMalformedFingerprintFileIsAnError() throws {
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let running = ImageFixtures.sample
        let missing = directory.appendingPathComponent("none.json").path
        #expect { try FingerprintVerification.verify(running: running, bakedFileAt: missing) } throws: { error in
            (error as? ImageError)?.code == .readFailed && "\(error)".contains(missing)
        }
        for text in ["", "[]", #"{"arch":1}"#, "{\"arch\":\"x\"} trailing"] {
            let path = directory.appendingPathComponent("bad.json").path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            #expect { try FingerprintVerification.verify(running: running, bakedFileAt: path) } throws: { error in
                (error as? ImageError)?.code == .malformedFingerprint
            }
        }
    }

    @Test func executableThatCannotBeReadIsAnError() {
        #expect {
            try EnvironmentFingerprint.current(executablePath: "/nonexistent/polyglot", osReleasePaths: [])
        } throws: { error in
            (error as? ImageError)?.code == .executableUnreadable && (error as? ImageError)?.systemError == ENOENT
        }
    }

    @Test func osReleaseParsing() throws {
        let directory = try ImageFixtures.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        func write(_ name: String, _ text: String) throws -> String {
            let path = directory.appendingPathComponent(name).path
            try Data(text.utf8).write(to: URL(fileURLWithPath: path))
            return path
        }
        let pretty = try write("pretty", "# comment\nID=debian\nPRETTY_NAME=\"Debian GNU/Linux 12 (book\\\"worm\\\")\"\nVERSION_ID=\"12\"\n")
        #expect(OSRelease.name(fromFirstReadableOf: [pretty]) == "Debian GNU/Linux 12 (book\"worm\")")
        let plain = try write("plain", "ID=alpine\nVERSION_ID='3.20.1'  \n")
        #expect(OSRelease.name(fromFirstReadableOf: ["/nonexistent", plain]) == "alpine 3.20.1")
        let idOnly = try write("id", "ID=arch\n")
        #expect(OSRelease.name(fromFirstReadableOf: [idOnly]) == "arch")
        #expect(OSRelease.name(fromFirstReadableOf: ["/nonexistent"]) == "unknown")
    }

}
