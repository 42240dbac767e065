import ArgumentParser
import Core

/// The detector's parameters, shared by every command that runs the detector.
struct DetectorOptions: ParsableArguments {
    @Option(parsing: .unconditional, help: "Tumbling window size (ms, s, m, h; a bare number is ms).")
    var window: String = "60s"

    @Option(parsing: .unconditional, help: "Flag a transaction when its window's count exceeds this.")
    var threshold: Int64 = 3

    @Option(parsing: .unconditional, help: "How long after its end a window still accepts records.")
    var grace: String = "0s"

    @Option(parsing: .unconditional, help: "How far behind stream time a window is kept.")
    var retention: String = "1h"

    func parameters() throws -> DetectorParameters {
        do {
            return try DetectorParameters(
                window: Durations.milliseconds(window, setting: "--window"),
                threshold: threshold,
                grace: Durations.milliseconds(grace, setting: "--grace"),
                retention: Durations.milliseconds(retention, setting: "--retention"))
        } catch {
            throw ValidationError(error.message)
        }
    }
}
