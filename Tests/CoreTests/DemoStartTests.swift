import Testing
@testable import FraudModel
@testable import Roles

/// The demo's event times start on the hour, so the same seed gives the same windows, and the
/// same verdicts, whenever it runs; and they end before now, so none is future-skewed.
@Suite("Demo start time")
struct DemoStartTests {
    @Test func eventTimesStartOnTheHourAndEndBeforeNow() {
        let hour: Int64 = 3_600_000
        for now in [Int64(1_767_225_600_000), 1_767_225_600_001, 1_767_229_199_999, 1_780_000_123_456] {
            let start = PipelineDemo.startTime(records: 20_000, ratePerSecond: 200, now: now)
            #expect(start % hour == 0)
            #expect(start + 100_000 <= now && now - start < 2 * hour + 100_000)
            #expect(start % DetectorParameters.default.window == 0)
        }
    }
}
