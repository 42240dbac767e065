import ArgumentParser
import Core

@main
struct Polyglot: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "polyglot",
        abstract: "Card-fraud stream pipeline: one binary for the processor, the auditor and replay.",
        version: ProductVersion.description,
        subcommands: [
            ReplayCommand.self,
            GenerateCommand.self,
            ProcessCommand.self,
            DevCommand.self,
        ]
    )
}
