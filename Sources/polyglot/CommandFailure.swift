import ArgumentParser
import Core

/// A run-time failure: printed as one line `polyglot: <reason>`, exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
