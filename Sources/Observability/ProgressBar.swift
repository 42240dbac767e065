#if canImport(Glibc)
import Glibc
#endif
import PolyglotSupport

/// A one-line progress display on a terminal's stderr, redrawn at most ten times a second.
public struct ProgressBar {
    private let total: Int?
    private let started: ContinuousClock.Instant
    private var lastDraw: ContinuousClock.Instant
    private var drewOnce = false

    /// Whether stderr is a terminal (a progress bar would only clutter a log file).
    public static var stderrIsTerminal: Bool { isatty(2) == 1 }

    /// `totalBytes` gives a percentage when the input's size is known.
    public init(totalBytes: Int?) {
        total = totalBytes
        started = .now
        lastDraw = started
    }

    /// Redraws when 100 ms have passed since the last draw.
    public mutating func update(bytes: Int, records: Int) {
        let now = ContinuousClock.now
        guard now - lastDraw >= .milliseconds(100) else { return }
        lastDraw = now
        drewOnce = true
        let elapsed = (now - started).inSeconds
        let rate = elapsed > 0 ? Int(Double(records) / elapsed) : 0
        var line = "\r"
        if let total, total > 0 {
            let fraction = min(1.0, Double(bytes) / Double(total))
            let width = 30
            let filled = Int(fraction * Double(width))
            line += "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "] "
            line += "\(Int(fraction * 100))% "
        }
        line += "\(records) records, \(rate) records/s\u{1B}[K"
        StandardError.write(line)
    }

    /// Clears the line before the summary is printed.
    public func finish() {
        if drewOnce { StandardError.write("\r\u{1B}[K") }
    }
}
