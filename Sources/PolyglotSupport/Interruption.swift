import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// What a file-writing command (`replay`, `generate`) does on SIGINT or SIGTERM: it removes
/// the temporary files its outputs are written to (``FileStream/openForWriting(_:)``), so the
/// files it was to replace stay as they were and nothing half-written is left beside them, says
/// so in one line on stderr, and exits with the shell's status for that signal, 128 plus its
/// number: 130 for SIGINT (Ctrl-C), 143 for SIGTERM.
public enum Interruption {
    /// The temporary files being written, and whether a signal has come.
    private static let state = Mutex<(temporaries: Set<String>, interrupted: Bool)>(([], false))
    /// The signal sources, kept so they stay installed. `nonisolated(unsafe)`: written only by
    /// the one ``install(command:)`` call that `installed` lets through, and never read.
    nonisolated(unsafe) private static var sources: [DispatchSourceSignal] = []
    private static let installed = Atomic<Bool>(false)

    /// The exit status for `signal`: 128 plus its number.
    public static func exitStatus(for signal: Int32) -> Int32 { 128 + signal }

    /// Handles SIGINT and SIGTERM from now on, once per process: `command` names the command in
    /// the line it prints.
    public static func install(command: String) {
        guard !installed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        // Dispatch's signal sources, not a dedicated thread in sigwait(): sigwait needs the
        // signal blocked in every thread, and threads started before this call (the Swift
        // runtime's, librdkafka's) keep the signal mask they started with.
        let queue = DispatchQueue(label: "polyglot.interruption")
        for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
            // The default action would end the process at once; the source receives it instead.
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler { interrupted(by: number, name: name, command: command) }
            source.resume()
            sources.append(source)
        }
    }

    private static func interrupted(by number: Int32, name: String, command: String) {
        // The lock is held until the process ends: no temporary is renamed into place, or
        // created, after this point.
        state.withLock { s in
            s.interrupted = true
            for path in s.temporaries { unlink(path) }
            let removed = s.temporaries.isEmpty ? "" : "; its unfinished output removed, existing files left as they were"
            StandardError.write("polyglot: \(command) interrupted by \(name)\(removed)\n")
            _exit(exitStatus(for: number))
        }
    }

    /// Records a temporary file just created; false when a signal already came (the caller
    /// removes it).
    static func register(temporary path: String) -> Bool {
        state.withLock { s in
            guard !s.interrupted else { return false }
            s.temporaries.insert(path)
            return true
        }
    }

    /// Runs `finish` (the rename of a temporary into place, or its removal) with no signal
    /// handled meanwhile, then forgets the temporary.
    static func finish<T>(temporary path: String, _ finish: () -> T) -> T {
        state.withLock { s in
            defer { s.temporaries.remove(path) }
            return finish()
        }
    }
}
