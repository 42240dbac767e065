import ArgumentParser
import Foundation
import PolyglotSupport
import FraudModel
import Roles

/// The detector's parameters, shared by every command that runs the detector.
struct DetectorOptions: ParsableArguments {
    @Option(help: "tumbling (epoch-aligned windows) or sliding (the window ending at each record); env POLYGLOT_WINDOW_KIND (default: \(Setting.windowKind.defaultText)).")
    var windowKind: String?

    @Option(parsing: .unconditional, help: "Window size (ms, s, m, h; a bare number is ms).")
    var window: String = "60s"

    @Option(parsing: .unconditional, help: "Flag a transaction when its window's count exceeds this.")
    var threshold: Int64 = 3

    @Option(parsing: .unconditional, help: "How long after its end a window still accepts records.")
    var grace: String = "0s"

    @Option(parsing: .unconditional, help: "How far behind stream time a window is kept.")
    var retention: String = "1h"

    /// The flag, else `POLYGLOT_WINDOW_KIND`, else tumbling: the kind must be the one `process`
    /// and `audit` run with, and those read it from the environment.
    private func kind() throws(ConfigurationError) -> WindowKind {
        if let windowKind { return try WindowKind(parsing: windowKind, setting: Setting.windowKind.flag) }
        if let text = ProcessInfo.processInfo.environment[Setting.windowKind.variable], !text.isEmpty {
            return try WindowKind(parsing: text, setting: Setting.windowKind.variable)
        }
        return DetectorParameters.default.kind
    }

    func parameters() throws -> DetectorParameters {
        do {
            return try DetectorParameters(
                kind: kind(),
                window: Durations.milliseconds(window, setting: "--window"),
                threshold: threshold,
                grace: Durations.milliseconds(grace, setting: "--grace"),
                retention: Durations.milliseconds(retention, setting: "--retention"))
        } catch {
            throw ValidationError(error.message)
        }
    }
}
