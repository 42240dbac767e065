import Foundation
import PolyglotSupport

/// How a card's records are grouped for counting (SEMANTICS.md §2 and §2b).
public enum WindowKind: String, Sendable, Hashable, Codable, CaseIterable {
    /// Epoch-aligned windows of `W` ms: a record counts the records of its card in its window.
    case tumbling
    /// The `W` ms ending at each record's own event time: a record counts the records of its
    /// card accepted before it within that span.
    case sliding

    /// Parses a `--window-kind` value; `setting` names where it came from in the error.
    public init(parsing text: String, setting: String) throws(ConfigurationError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        guard let kind = WindowKind(rawValue: trimmed) else {
            throw ConfigurationError("\(setting): '\(text)' is not a window kind (tumbling or sliding)")
        }
        self = kind
    }
}

extension DetectorParameters {
    /// The name of the header that carries ``header`` on every output and dead letter (§2c).
    public static let headerName = HeaderName.detector

    /// The parameters that decide every verdict, as the `polyglot-detector` header writes them
    /// (SEMANTICS.md §2c): `kind=…;window=…;threshold=…;grace=…;retention=…`, in milliseconds.
    /// The future skew is not in it: it decides which records are rejected, and a rejection
    /// carries its own code.
    public var header: String {
        "kind=\(kind.rawValue);window=\(window);threshold=\(threshold);grace=\(grace);retention=\(retention)"
    }

    /// The names of the parameters in which `header` (another process's ``header``) differs from
    /// these, in header order, each as `name=theirs (ours)`; the whole header when it cannot be
    /// read. Empty when they agree.
    public func differences(fromHeader other: String) -> [String] {
        let ours = Self.fields(header)
        guard let theirs = Self.fields(other) else { return ["polyglot-detector=\(other) (\(header))"] }
        var differences: [String] = []
        for (name, value) in ours! {
            let their = theirs.first { $0.name == name }?.value
            if their != value { differences.append("\(name)=\(their ?? "(none)") (\(value))") }
        }
        for (name, value) in theirs where !ours!.contains(where: { $0.name == name }) {
            differences.append("\(name)=\(value) (none)")
        }
        return differences
    }

    private static func fields(_ header: String) -> [(name: String, value: String)]? {
        var fields: [(name: String, value: String)] = []
        for part in header.split(separator: ";", omittingEmptySubsequences: false) {
            guard let eq = part.firstIndex(of: "=") else { return nil }
            fields.append((String(part[..<eq]), String(part[part.index(after: eq)...])))
        }
        return fields
    }
}
