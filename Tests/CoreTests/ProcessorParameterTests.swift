import Foundation
import Testing
@testable import FraudModel
@testable import Roles

extension ProcessorTests {
    /// A processor restarted with another window kind (or window) on the state directory of an
    /// earlier run refuses to start, naming the parameter; with its state directory deleted, the
    /// changelog's parameters stop it the same way; with its own parameters it carries on.
    @Test(.longOnTheBroker) func restartWithOtherDetectorParametersIsRefused() async throws {
        let cluster = try TestCluster()
        let topics = try ProcessorTopics(cluster: cluster, partitions: 2)
        let first = Workload.valid(count: 100, cards: 5)
        let state = try TestPaths.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: state) }
        let tumbling = DetectorParameters.default
        let sliding = try DetectorParameters(kind: .sliding)
        try await topics.produce(first.kafkaRecords)
        try await run(try StreamProcessor(configuration: topics.configuration(stateDirectory: state, parameters: tumbling), logger: logger))

        func refusal(_ parameters: DetectorParameters) async throws -> String {
            let processor = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, parameters: parameters), logger: logger)
            let error = await #expect(throws: (any Error).self) { try await processor.runOnDedicatedThread() }
            #expect(processor.statistics.outputs == 0)
            return error.map { "\($0)" } ?? ""
        }
        let byKind = try await refusal(sliding)
        #expect(byKind.contains("state directory") && byKind.contains("kind=tumbling (sliding)"), "\(byKind)")
        #expect(byKind.contains("new application id"))
        let byWindow = try await refusal(try DetectorParameters(window: 30_000))
        #expect(byWindow.contains("window=60000 (30000)"), "\(byWindow)")

        // Without the state directory the changelog says the same.
        try FileManager.default.removeItem(at: state)
        let fromChangelog = try await refusal(sliding)
        #expect(fromChangelog.contains("changelog") && fromChangelog.contains("kind=tumbling (sliding)"), "\(fromChangelog)")

        // The parameters that wrote it restore it and carry on.
        try FileManager.default.removeItem(at: state)
        let second = Workload.valid(count: 100, cards: 5, first: 100)
        try await topics.produce(second.kafkaRecords)
        let resumed = try StreamProcessor(configuration: topics.configuration(stateDirectory: state, parameters: tumbling), logger: logger)
        try await run(resumed)
        #expect(resumed.statistics.outputs == 100)
        let outputs = try await topics.read(topics.output, count: 200)
        var seen: [String: [UInt8]] = [:]
        for m in outputs {
            seen[try #require(transactionID(of: m.value))] = m.value
            #expect(m.header(DetectorParameters.headerName).map { String(decoding: $0, as: UTF8.self) } == tumbling.header)
        }
        #expect(differences(seen, try Workload.expected(first.records + second.records)) == [])
    }
}
