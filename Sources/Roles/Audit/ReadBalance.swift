/// Keeps a batch audit's inputs and outputs read in step, so that what waits for its match stays
/// bounded whatever the topics' sizes: an output waits in memory until its input is read, and an
/// input until its output is. When one side runs far ahead (the cluster serves one topic's
/// fetches faster), its partitions are paused until the other side catches up.
///
/// A value that returns what to do, tested apart from the consumer. Only one side is paused at a
/// time, and a paused side is resumed as soon as the other side stops making progress or is read
/// to its end, so the balance can slow the audit but never stop it.
struct ReadBalance: Equatable {
    enum Side: Equatable { case inputs, outputs }
    enum Action: Equatable {
        case pause(Side)
        case resume(Side)
    }

    /// Waiting records past which the side ahead is paused, and under which it is resumed.
    let high: Int
    let low: Int
    private(set) var paused: Side?

    init(high: Int = 20_000, low: Int = 5_000) {
        precondition(low < high)
        self.high = high
        self.low = low
    }

    /// After a poll: inputs waiting for their outputs, outputs waiting for their inputs, what the
    /// poll read of each side, and which sides are read to their end.
    mutating func update(pendingInputs: Int, waitingOutputs: Int, inputsRead: Int, outputsRead: Int,
                         inputsDone: Bool, outputsDone: Bool) -> Action? {
        switch paused {
        case .inputs?:
            guard pendingInputs <= low || outputsDone || outputsRead == 0 else { return nil }
            paused = nil
            return .resume(.inputs)
        case .outputs?:
            guard waitingOutputs <= low || inputsDone || inputsRead == 0 else { return nil }
            paused = nil
            return .resume(.outputs)
        case nil:
            if pendingInputs > high, waitingOutputs <= low, !outputsDone, !inputsDone {
                paused = .inputs
                return .pause(.inputs)
            }
            if waitingOutputs > high, pendingInputs <= low, !inputsDone, !outputsDone {
                paused = .outputs
                return .pause(.outputs)
            }
            return nil
        }
    }
}
