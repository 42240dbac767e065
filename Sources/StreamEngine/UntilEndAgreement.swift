/// When the stream threads of one instance may stop under `--until-end`: only once every thread
/// has found its tasks at their end, and has found so again after the last of them did.
///
/// One round is not enough. A thread's check covers what the other threads had committed when
/// it ran; a thread still working may then forward records (a repartition topic) to a partition
/// whose thread already said it was done. A thread only says it is at its end once what it sent
/// is committed, so a second round of checks, each made after every thread's first, sees every
/// such record in the partition's end offset.
///
/// A value that returns decisions, apart from the threads and locks (the coordinator keeps it
/// under its lock), so the rule is tested on its own.
struct UntilEndAgreement: Sendable, Hashable {
    enum Phase: Sendable, Hashable {
        /// Waiting for every thread to be at its end once.
        case collecting
        /// Every thread was: waiting for each to confirm it with a check made since.
        case confirming
        /// Every thread confirmed: all stop.
        case agreed
    }

    private(set) var phase = Phase.collecting
    private var atEnd: [Bool]
    private var confirmed: [Bool]

    init(threads: Int) {
        precondition(threads > 0)
        atEnd = Array(repeating: false, count: threads)
        confirmed = atEnd
        // A single thread has nothing to wait for: its own check covers what it sent.
        if threads == 1 { phase = .confirming }
    }

    /// Thread `thread` checked its tasks: whether they are at their end. Returns whether it
    /// stops now. Once the threads have agreed, every later report says stop.
    mutating func report(thread: Int, atEnd isAtEnd: Bool) -> Bool {
        switch phase {
        case .agreed:
            return true
        case .collecting:
            atEnd[thread] = isAtEnd
            if atEnd.allSatisfy({ $0 }) {
                phase = .confirming
                confirmed = Array(repeating: false, count: atEnd.count)
            }
            return false
        case .confirming:
            guard isAtEnd else {
                // Work came in after all: the others' first round still stands, this one starts over.
                atEnd[thread] = false
                if atEnd.count > 1 { phase = .collecting }
                return false
            }
            confirmed[thread] = true
            if confirmed.allSatisfy({ $0 }) {
                phase = .agreed
                return true
            }
            return false
        }
    }
}
