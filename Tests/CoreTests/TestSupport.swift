import Foundation
@testable import Core

/// Paths the tests read: the repository and the shared vectors beside it.
enum TestPaths {
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// `../shared/vectors` beside the repository (or `POLYGLOT_VECTORS`).
    static var vectors: URL {
        if let override = ProcessInfo.processInfo.environment["POLYGLOT_VECTORS"] {
            return URL(fileURLWithPath: override)
        }
        return repositoryRoot.deletingLastPathComponent().appendingPathComponent("shared/vectors")
    }

    static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("polyglot-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }
}

extension TransactionDecoder {
    /// Decodes a string's UTF-8 bytes; the rejection code or nil.
    mutating func code(of text: String, kafkaTimestamp: Int64? = nil) -> RejectionCode? {
        code(of: Array(text.utf8), kafkaTimestamp: kafkaTimestamp)
    }

    mutating func code(of bytes: [UInt8], kafkaTimestamp: Int64? = nil) -> RejectionCode? {
        do {
            _ = try decode(bytes, kafkaTimestamp: kafkaTimestamp)
            return nil
        } catch {
            return error.code
        }
    }
}

/// Permission bits of a file.
func fileMode(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}
