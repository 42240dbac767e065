import ArgumentParser
import KafkaClient
import StreamEngine
import Observability

/// A run-time failure: printed as one line `polyglot: <reason>`, exit status 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Runs `body`, turning the failures a role's run ends with into the one line every command
/// prints for them.
func failingInOneLine(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as RuntimeError {
        throw CommandFailure(error.message)
    } catch let error as KafkaError {
        throw CommandFailure("Kafka: \(error)")
    } catch let error as ObservabilityError {
        throw CommandFailure(error.message)
    }
}
