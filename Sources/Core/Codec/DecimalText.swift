/// A JSON number kept as its exact source text (SEMANTICS.md §1: never binary floating point).
public struct DecimalText: Sendable, Hashable, CustomStringConvertible {
    /// The number's bytes as they appeared in the input, e.g. `12.30`, `1E3`, `-0`.
    public let text: String
    public init(unchecked text: String) { self.text = text }
    public var description: String { text }
}
