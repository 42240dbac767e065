import Testing
@testable import Core

@Suite("Detection")
struct DetectionTests {
    @Test func windowPhrase() throws {
        #expect(try DetectorParameters(window: 60_000).windowPhrase == "1 minute")
        #expect(try DetectorParameters(window: 120_000).windowPhrase == "2 minutes")
        #expect(try DetectorParameters(window: 1_000).windowPhrase == "1 second")
        #expect(try DetectorParameters(window: 30_000).windowPhrase == "30 seconds")
        #expect(try DetectorParameters(window: 1_500).windowPhrase == "1500 ms")
    }
}
