import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import KafkaClient
import StateStore
import Observability

/// What a polyglot binary runs on: the facts that, if any changed between bake and boot, could
/// change its behaviour or its verdicts.
///
/// The kernel is left out on purpose: the local bake runs in a chroot on the build host's kernel,
/// and a kernel update does not touch the user space that decides verdicts.
///
/// `digest` is the `polyglot-fingerprint` Kafka header that `process` and `audit` put on the
/// records they write; `polyglot image fingerprint` prints `canonicalJSON` and
/// `polyglot image verify` compares it with the file baked into the image.
public struct EnvironmentFingerprint: Codable, Sendable, Hashable {
    /// Hex SHA-256 of the running executable.
    public var binarySha256: String
    /// The polyglot release (`ProductVersion.version`).
    public var polyglotVersion: String
    /// Runtime glibc version, e.g. `2.36`.
    public var glibc: String
    /// Runtime librdkafka version.
    public var librdkafka: String
    /// librdkafka version of the headers the binary was compiled against.
    public var librdkafkaCompiled: String
    /// Runtime SQLite version.
    public var sqlite: String
    /// SQLite version of the headers the binary was compiled against.
    public var sqliteCompiled: String
    /// The operating system, from os-release: `PRETTY_NAME`, else `ID VERSION_ID`.
    public var os: String
    /// Machine architecture as the kernel reports it, e.g. `x86_64`.
    public var arch: String

    public init(
        binarySha256: String,
        polyglotVersion: String,
        glibc: String,
        librdkafka: String,
        librdkafkaCompiled: String,
        sqlite: String,
        sqliteCompiled: String,
        os: String,
        arch: String
    ) {
        self.binarySha256 = binarySha256
        self.polyglotVersion = polyglotVersion
        self.glibc = glibc
        self.librdkafka = librdkafka
        self.librdkafkaCompiled = librdkafkaCompiled
        self.sqlite = sqlite
        self.sqliteCompiled = sqliteCompiled
        self.os = os
        self.arch = arch
    }

    /// Where `polyglot image verify` looks for the baked fingerprint unless told otherwise;
    /// `provision.sh` writes it there.
    public static let defaultPath = "/etc/polyglot/fingerprint.json"

    /// The fingerprint of this process's environment.
    ///
    /// It hashes the whole executable (about 90 MiB for a static release build: a few tenths
    /// of a second), so call it once at start-up and keep the result. On Linux the executable is read through `/proc/self/exe`,
    /// which a chroot must have mounted.
    public static func current() throws(ImageError) -> EnvironmentFingerprint {
        try current(executablePath: runningExecutablePath, osReleasePaths: ["/etc/os-release", "/usr/lib/os-release"])
    }

    /// The running environment's digest, computed once per process: hashing the binary takes
    /// a fraction of a second, and every role resolving its settings needs it.
    public static func runningDigest() throws(ImageError) -> String { try runningDigestResult.get() }

    private static let runningDigestResult = Result { () throws(ImageError) -> String in try current().digest }

    /// `current()` with the sources of its facts made explicit, for tests.
    static func current(executablePath: String, osReleasePaths: [String]) throws(ImageError) -> EnvironmentFingerprint {
        EnvironmentFingerprint(
            binarySha256: try FileDigest.sha256Hex(ofFileAtPath: executablePath, missing: .executableUnreadable),
            polyglotVersion: ProductVersion.version,
            glibc: runtimeGlibcVersion,
            librdkafka: KafkaLibrary.runtimeVersion,
            librdkafkaCompiled: KafkaLibrary.compiledVersion,
            sqlite: SQLiteLibrary.runtimeVersion,
            sqliteCompiled: SQLiteLibrary.compiledVersion,
            os: OSRelease.name(fromFirstReadableOf: osReleasePaths),
            arch: machineArchitecture
        )
    }

    /// The fields as (name, value) pairs sorted by name: the one order used for the canonical
    /// JSON, the digest and the comparison.
    public var fields: [(name: String, value: String)] {
        [
            ("arch", arch),
            ("binarySha256", binarySha256),
            ("glibc", glibc),
            ("librdkafka", librdkafka),
            ("librdkafkaCompiled", librdkafkaCompiled),
            ("os", os),
            ("polyglotVersion", polyglotVersion),
            ("sqlite", sqlite),
            ("sqliteCompiled", sqliteCompiled),
        ]
    }

    /// One-line JSON, members sorted by name, no spaces, strings escaped as SEMANTICS.md §3
    /// escapes them: the same fingerprint always gives the same bytes, on any machine.
    public var canonicalJSON: String {
        CanonicalJSON.object(fields.map { ($0.name, $0.value) })
    }

    /// Hex SHA-256 of `canonicalJSON`: the `polyglot-fingerprint` header.
    public var digest: String {
        FileDigest.hex(SHA256.hash(data: Array(canonicalJSON.utf8)))
    }

    /// Each field whose value differs between `self` (the running environment) and `baked`,
    /// in field-name order; empty when they match.
    public func differences(fromBaked baked: BakedFingerprint) -> [FingerprintDifference] {
        let running = Dictionary(uniqueKeysWithValues: fields.map { ($0.name, $0.value) })
        let names = Set(running.keys).union(baked.values.keys).sorted()
        return names.compactMap { name in
            let was = baked.values[name]
            let now = running[name]
            return was == now ? nil : FingerprintDifference(field: name, baked: was, running: now)
        }
    }

    /// `differences(fromBaked:)` against another fingerprint of this version.
    public func differences(from baked: EnvironmentFingerprint) -> [FingerprintDifference] {
        differences(fromBaked: BakedFingerprint(baked))
    }
}

/// A fingerprint as read back from a file, kept as raw name/value pairs so that a file written by
/// another polyglot version, with fields added or removed, still compares field by field.
public struct BakedFingerprint: Sendable, Equatable {
    public let values: [String: String]

    public init(_ fingerprint: EnvironmentFingerprint) {
        values = Dictionary(uniqueKeysWithValues: fingerprint.fields.map { ($0.name, $0.value) })
    }

    /// Parses a fingerprint file: one JSON object whose members are all strings.
    public init(json: some Collection<UInt8>, source: String) throws(ImageError) {
        do {
            values = try JSONDecoder().decode([String: String].self, from: Data(json))
        } catch {
            throw ImageError(.malformedFingerprint, "\(source) is not a polyglot fingerprint (a JSON object of strings)")
        }
    }

    /// Reads and parses the fingerprint file at `path`.
    public init(contentsOfFile path: String) throws(ImageError) {
        try self.init(json: FileDigest.contents(ofFileAtPath: path, limit: Self.sizeLimit), source: path)
    }

    /// A fingerprint is a few hundred bytes; anything past this is not one.
    static let sizeLimit = 64 * 1024

    /// The digest the baked environment had, computed as `EnvironmentFingerprint.digest` is.
    public var digest: String {
        let canonical = CanonicalJSON.object(values.sorted { $0.key < $1.key }.map { ($0.key, $0.value) })
        return FileDigest.hex(SHA256.hash(data: Array(canonical.utf8)))
    }
}

/// One field that differs between the baked fingerprint and the running environment.
public struct FingerprintDifference: Sendable, Equatable, CustomStringConvertible {
    public let field: String
    /// The baked value; `nil` when the baked file has no such field.
    public let baked: String?
    /// The running value; `nil` when this version has no such field.
    public let running: String?

    public init(field: String, baked: String?, running: String?) {
        self.field = field
        self.baked = baked
        self.running = running
    }

    /// `field: baked "a", running "b"`, quoting values so empty and absent ones stay visible.
    public var description: String {
        "\(field): baked \(Self.show(baked)), running \(Self.show(running))"
    }

    private static func show(_ value: String?) -> String {
        value.map { CanonicalJSON.string($0) } ?? "(absent)"
    }
}

/// The outcome of `polyglot image verify`.
public enum FingerprintVerification: Sendable, Equatable {
    /// The running environment is the baked one; carries the shared digest.
    case match(digest: String)
    /// At least one field differs.
    case drift([FingerprintDifference])

    /// Compares the running environment with the fingerprint file at `path`.
    public static func verify(running: EnvironmentFingerprint, bakedFileAt path: String) throws(ImageError) -> FingerprintVerification {
        let baked = try BakedFingerprint(contentsOfFile: path)
        let differences = running.differences(fromBaked: baked)
        return differences.isEmpty ? .match(digest: running.digest) : .drift(differences)
    }

    /// What `polyglot image verify` prints: one line on a match; on drift a heading and one
    /// indented line per differing field.
    public func report(bakedFile path: String) -> String {
        switch self {
        case .match(let digest):
            return "polyglot image verify: the environment matches \(path) (fingerprint \(digest))"
        case .drift:
            return "polyglot image verify: " + driftReport(bakedFile: path)
        }
    }

    /// The drift as the failure `image verify` prints after `polyglot: `: a first line saying how
    /// many fields differ, then one indented line per field. Empty on a match.
    public func driftReport(bakedFile path: String) -> String {
        guard case .drift(let differences) = self else { return "" }
        let noun = differences.count == 1 ? "field differs" : "fields differ"
        return (["the environment drifted from \(path): \(differences.count) \(noun)"] + differences.map { "  \($0)" })
            .joined(separator: "\n")
    }
}

// MARK: - Facts of the running system

extension EnvironmentFingerprint {
    static var runningExecutablePath: String {
        #if os(Linux)
        return "/proc/self/exe"
        #else
        return CommandLine.arguments[0]
        #endif
    }

    /// glibc's own version string, from `confstr` (which, unlike `gnu_get_libc_version`, the C
    /// module map already exposes); `none` elsewhere.
    static var runtimeGlibcVersion: String {
        #if os(Linux)
        let length = confstr(Int32(_CS_GNU_LIBC_VERSION), nil, 0)
        guard length > 0 else { return "unknown" }
        var buffer = [CChar](repeating: 0, count: length)
        _ = confstr(Int32(_CS_GNU_LIBC_VERSION), &buffer, length)
        let text = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // "glibc 2.36" -> "2.36"
        return text.hasPrefix("glibc ") ? String(text.dropFirst("glibc ".count)) : text
        #else
        return "none"
        #endif
    }

    static var machineArchitecture: String {
        var info = utsname()
        guard uname(&info) == 0 else { return "unknown" }
        return withUnsafeBytes(of: &info.machine) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

/// Reads os-release files (os-release(5)).
enum OSRelease {
    /// `PRETTY_NAME`, else `ID VERSION_ID`, else `ID`, from the first readable file; `unknown`
    /// when there is none.
    static func name(fromFirstReadableOf paths: [String]) -> String {
        for path in paths {
            guard let data = FileManager.default.contents(atPath: path) else { continue }
            let values = parse(String(decoding: data, as: UTF8.self))
            if let pretty = values["PRETTY_NAME"], !pretty.isEmpty { return pretty }
            if let id = values["ID"], !id.isEmpty {
                if let version = values["VERSION_ID"], !version.isEmpty { return "\(id) \(version)" }
                return id
            }
        }
        return "unknown"
    }

    /// `KEY=VALUE` lines; values may be single- or double-quoted, with backslash escapes in
    /// double quotes, as the shell would read them.
    static func parse(_ text: String) -> [String: String] {
        var values: [String: String] = [:]
        for line in text.split(whereSeparator: \.isNewline) {
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            guard !trimmed.hasPrefix("#"), let equals = trimmed.firstIndex(of: "=") else { continue }
            let key = String(trimmed[..<equals])
            var raw = Substring(trimmed[trimmed.index(after: equals)...])
            while let last = raw.last, last == " " || last == "\t" { raw = raw.dropLast() }
            values[key] = unquote(raw)
        }
        return values
    }

    private static func unquote(_ raw: Substring) -> String {
        guard let first = raw.first, first == "\"" || first == "'", raw.count >= 2, raw.last == first else {
            return String(raw)
        }
        let inner = raw.dropFirst().dropLast()
        guard first == "\"" else { return String(inner) }
        var result = ""
        var escaped = false
        for character in inner {
            if escaped {
                result.append(character)
                escaped = false
            } else if character == "\\" {
                escaped = true
            } else {
                result.append(character)
            }
        }
        return result
    }
}

/// SHA-256 of files and hex output.
enum FileDigest {
    static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for byte in digest {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The whole file, failing with `readFailed` (and its errno) when it cannot be read or is
    /// larger than `limit` bytes.
    static func contents(ofFileAtPath path: String, limit: Int) throws(ImageError) -> [UInt8] {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw ImageError(.readFailed, "cannot read \(path): \(String(cString: strerror(code)))", systemError: code)
        }
        defer { close(fd) }
        var bytes = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                throw ImageError(.readFailed, "cannot read \(path): \(String(cString: strerror(code)))", systemError: code)
            }
            if count == 0 { return bytes }
            bytes += chunk[0..<count]
            guard bytes.count <= limit else {
                throw ImageError(.readFailed, "\(path) is larger than \(limit) bytes: not a fingerprint file")
            }
        }
    }

    /// Streams the file through SHA-256 in 1 MiB reads, so hashing a large binary needs no more.
    static func sha256Hex(ofFileAtPath path: String, missing: ImageError.Code) throws(ImageError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let code = errno
            throw ImageError(missing, "cannot open \(path) to hash it: \(String(cString: strerror(code)))", systemError: code)
        }
        defer { close(fd) }
        var hasher = SHA256()
        let size = 1 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 16)
        defer { buffer.deallocate() }
        while true {
            let count = read(fd, buffer.baseAddress, size)
            if count < 0 {
                let code = errno
                if code == EINTR { continue }
                throw ImageError(missing, "cannot read \(path) to hash it: \(String(cString: strerror(code)))", systemError: code)
            }
            if count == 0 { break }
            hasher.update(bufferPointer: UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
        return hex(hasher.finalize())
    }
}

/// The few JSON shapes `polyglot image` writes, byte-stable.
enum CanonicalJSON {
    static func object(_ members: [(String, String)]) -> String {
        "{" + members.map { string($0.0) + ":" + string($0.1) }.joined(separator: ",") + "}"
    }

    /// A JSON string: `"`, `\` and U+0000...U+001F escaped (short forms where JSON has them,
    /// else lowercase `\u00xx`), nothing else.
    static func string(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{00}"..."\u{1F}":
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}
