import Foundation
import PolyglotSupport

/// Settings for synthetic transactions.
public struct GeneratorOptions: Sendable, Equatable {
    public var count: Int
    public var cards: Int
    public var seed: UInt64
    /// Mean transactions per second of event time.
    public var ratePerSecond: Int
    /// Fraction of lines (0 ... 1) that are malformed, one rejection kind after another.
    public var badFraction: Double
    /// Up to this many ms subtracted from each event time, so records arrive out of order.
    public var jitter: Int64
    /// Event time of the first record (epoch ms).
    public var startTime: Int64

    /// The default first event time, 2026-01-01T00:00:00Z: fixed, so the same arguments give
    /// the same bytes on every machine and every day.
    public static let defaultStartTime: Int64 = 1_767_225_600_000

    public init(count: Int, cards: Int = 10_000, seed: UInt64 = 1, ratePerSecond: Int = 100,
                badFraction: Double = 0, jitter: Int64 = 0, startTime: Int64 = defaultStartTime) throws(ConfigurationError) {
        guard count >= 0 else { throw ConfigurationError("<count> must be 0 or more, got \(count)") }
        guard startTime >= 0 else { throw ConfigurationError("--start must be now or epoch milliseconds (0 or more), got \(startTime)") }
        guard cards >= 1 else { throw ConfigurationError("--cards must be at least 1") }
        guard ratePerSecond >= 1 else { throw ConfigurationError("--rate must be at least 1 per second") }
        guard badFraction >= 0 && badFraction <= 1 else { throw ConfigurationError("--bad must be between 0 and 1") }
        guard jitter >= 0 else { throw ConfigurationError("--jitter must not be negative") }
        self.count = count
        self.cards = cards
        self.seed = seed
        self.ratePerSecond = ratePerSecond
        self.badFraction = badFraction
        self.jitter = jitter
        self.startTime = startTime
    }
}

extension GeneratorOptions {
    /// `--start`: `now` (the clock's epoch milliseconds at `now`) or epoch milliseconds.
    public static func startTime(_ text: String, now: Int64 = Int64(Date().timeIntervalSince1970 * 1000)) throws(ConfigurationError) -> Int64 {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        if trimmed.lowercased() == "now" { return now }
        guard let ms = Int64(trimmed), ms >= 0 else {
            throw ConfigurationError("--start must be now or epoch milliseconds (0 or more), got '\(text)'")
        }
        return ms
    }
}

/// Deterministic synthetic card transactions as JSONL: the same options give the same bytes on
/// every machine (integer arithmetic only, its own PRNG), realistic amounts, bursts that trip
/// the detector, and optionally late and malformed lines.
public struct TransactionGenerator: Sendable {
    public let options: GeneratorOptions
    private var random: SplitMix64
    private var index = 0
    private var eventTime: Int64
    /// Remaining records of a burst on one card, and that card.
    private var burstLeft = 0
    private var burstCard = 0
    private var badKind = 0
    private let badThreshold: UInt64

    public init(options: GeneratorOptions) {
        self.options = options
        random = SplitMix64(seed: options.seed)
        eventTime = options.startTime
        // The one floating-point step happens once, here, and is exact for the usual fractions.
        badThreshold = options.badFraction >= 1 ? .max : UInt64(options.badFraction * 18_446_744_073_709_551_616.0)
    }

    /// Whether all `count` lines were produced.
    public var isFinished: Bool { index >= options.count }

    /// Appends the next line (with its newline) to `out`.
    public mutating func appendNext(to out: ByteBuffer) {
        precondition(!isFinished)
        index += 1
        let meanGap = max(1, 1_000 / Int64(options.ratePerSecond))
        let sub = Int64(options.ratePerSecond) > 1_000 ? (Int64(options.ratePerSecond) / 1_000) : 1
        // Average gap of 1000/rate ms: at high rates, several records share a millisecond.
        if random.next() % UInt64(sub) == 0 { eventTime += Int64(random.next() % UInt64(2 * meanGap)) }

        if badThreshold > 0 && random.next() < badThreshold {
            appendMalformed(to: out)
            return
        }
        let card: Int
        if burstLeft > 0 {
            burstLeft -= 1
            card = burstCard
        } else if random.next() % 50 == 0 {
            // A burst: 4 to 6 transactions on one card within seconds, over the default threshold.
            burstCard = Int(random.next() % UInt64(options.cards))
            burstLeft = 3 + Int(random.next() % 3)
            card = burstCard
        } else {
            card = Int(random.next() % UInt64(options.cards))
        }
        var t = eventTime
        if options.jitter > 0 { t = max(0, t - Int64(random.next() % UInt64(options.jitter + 1))) }

        out.append("{\"transactionId\":\"tx-")
        out.appendInteger(Int64(truncatingIfNeeded: options.seed))
        out.append(UInt8(ascii: "-"))
        out.appendInteger(Int64(index))
        out.append("\",\"cardId\":\"card-")
        out.appendInteger(Int64(card))
        out.append("\",\"amount\":")
        appendAmount(to: out)
        out.append(",\"timestamp\":")
        out.appendInteger(t)
        out.append("}\n")
    }

    /// Amounts in cents with a long tail: most small, some large, a few above 10,000.
    private mutating func appendAmount(to out: ByteBuffer) {
        let bucket = random.next() % 1_000
        let cents: UInt64
        switch bucket {
        case 0..<700: cents = 100 + random.next() % 9_900  // 1.00 – 99.99
        case 700..<950: cents = 10_000 + random.next() % 90_000  // 100 – 999.99
        case 950..<999: cents = 100_000 + random.next() % 900_000  // 1,000 – 9,999.99
        default: cents = 1_000_000 + random.next() % 4_000_000  // 10,000 – 49,999.99
        }
        out.appendInteger(Int64(cents / 100))
        out.append(UInt8(ascii: "."))
        let c = cents % 100
        out.append(UInt8(c / 10) + 48)
        out.append(UInt8(c % 10) + 48)
    }

    /// One malformed line per rejection kind in turn (too_large excepted: 1 MiB lines would
    /// swamp a sample file).
    private mutating func appendMalformed(to out: ByteBuffer) {
        let id = "bad-\(options.seed)-\(index)"
        let line: [UInt8]
        switch badKind % 9 {
        case 0: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":\"card-1\",\"amount\":12.50".utf8)
        case 1: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":\"card-1\",\"timestamp\":\(eventTime)}".utf8)
        case 2: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":1,\"amount\":12.50,\"timestamp\":\(eventTime)}".utf8)
        case 3: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":\"card-1\",\"amount\":12.50,\"timestamp\":-1}".utf8)
        case 4: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":\"card-1\",\"cardId\":\"card-2\",\"amount\":1,\"timestamp\":\(eventTime)}".utf8)
        case 5: line = Array("[\"\(id)\"]".utf8)
        case 6: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":\"card-".utf8) + [0xFF] + Array("\",\"amount\":1,\"timestamp\":\(eventTime)}".utf8)
        case 7: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":\"card-1\",\"amount\":1,\"timestamp\":\(eventTime).5}".utf8)
        default: line = Array("{\"transactionId\":\"\(id)\",\"cardId\":\"\\udc00\",\"amount\":1,\"timestamp\":\(eventTime)}".utf8)
        }
        badKind += 1
        out.append(line)
        out.append(0x0A)
    }
}

/// SplitMix64: tiny, fast, and the same sequence everywhere (also the tests' seeded generator).
struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Writes a generator's lines to a file or stdout.
public enum GeneratedFile {
    public static func write(options: GeneratorOptions, to path: String) throws(FileIOError) {
        let stream = try FileStream.openForWriting(path)
        var generator = TransactionGenerator(options: options)
        let buffer = ByteBuffer(capacity: 1 << 20 + 4_096)
        while !generator.isFinished {
            generator.appendNext(to: buffer)
            if buffer.count >= 1 << 20 { try stream.drain(buffer) }
        }
        try stream.drain(buffer)
        try stream.close()
    }
}
