/// An invalid setting: a flag, environment variable or config file value.
///
/// Its message is one line meant for the operator; start-up stops with it.
public struct ConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
