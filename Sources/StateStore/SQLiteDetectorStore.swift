import Foundation
import FraudModel

/// One input partition's detector and its state in SQLite, of the kind its parameters name: a
/// ``SQLiteWindowStore`` (tumbling) or a ``SQLiteSlidingStore`` (sliding). The store of
/// `polyglot process`'s tasks and the continuous auditor's windows.
///
/// **Parameters that cannot drift** (SEMANTICS.md §2c). The parameters that decide verdicts are
/// kept beside the state, in the task directory's ``parametersFileName`` file, and written to the
/// changelog (a `'p'` record) at the first commit after every open. Opening a directory written
/// under other parameters, or restoring a changelog that says so, or that holds the other kind's
/// cards, fails with an error naming the parameter that changed: reading such state would give
/// verdicts of neither setting, and rebuilding it silently would lose it.
///
/// Threading and the commit cycle are the inner store's (see ``SQLiteWindowStore``).
public final class SQLiteDetectorStore: PartitionDetector {
    /// The file in a task directory holding the parameters its state was written with.
    public static let parametersFileName = "detector"

    public let parameters: DetectorParameters
    public let directory: String
    /// Exactly one of the two is set, by ``parameters``' kind.
    public let tumblingStore: SQLiteWindowStore?
    public let slidingStore: SQLiteSlidingStore?
    private var tumbling: Detector
    private var sliding: SlidingDetector
    /// Until a commit carries it, each batch of changelog records starts with the parameters.
    private var parametersRecordPending = true

    /// Opens the task's store in `directory` (created when missing). Throws
    /// ``SQLiteError/Code/otherParameters`` when the directory was written with other
    /// parameters; other errors as ``SQLiteWindowStore/init(directory:parameters:options:)``'s.
    public init(directory: String, parameters: DetectorParameters, options: StoreOptions = StoreOptions()) throws(SQLiteError) {
        self.parameters = parameters
        self.directory = directory
        try Self.checkParameters(directory: directory, parameters: parameters)
        tumbling = Detector(parameters: parameters)
        sliding = SlidingDetector(parameters: parameters)
        switch parameters.kind {
        case .tumbling:
            tumblingStore = try SQLiteWindowStore(directory: directory, parameters: parameters, options: options)
            slidingStore = nil
        case .sliding:
            tumblingStore = nil
            slidingStore = try SQLiteSlidingStore(directory: directory, parameters: parameters, options: options)
        }
    }

    /// Deletes both kinds' database files in `directory` (a store to rebuild from the
    /// changelog). The parameters file stays: the changelog was written with them.
    public static func destroy(directory: String) throws(SQLiteError) {
        try SQLiteWindowStore.destroy(directory: directory)
        try SQLiteSlidingStore.destroy(directory: directory)
    }

    /// What to do when state of other parameters is found.
    static let remedy = "use a new application id (--application-id), or delete the state directory and the changelog topic, to start afresh with these parameters; or run with the parameters the state was written with"

    /// Compares the directory's parameters file with `parameters`, writing it when absent (a new
    /// directory, or one of a build that did not keep it).
    static func checkParameters(directory: String, parameters: DetectorParameters) throws(SQLiteError) {
        let path = StoreDatabase.path(directory: directory, fileName: parametersFileName)
        if let data = FileManager.default.contents(atPath: path) {
            let stored = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            let differences = parameters.differences(fromHeader: stored)
            guard differences.isEmpty else {
                throw SQLiteError(code: .otherParameters, resultCode: 0, message:
                    "state directory \(directory) was written with other detector parameters: \(differences.joined(separator: ", ")) (written, then this run's); \(remedy)")
            }
            return
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            try Data((parameters.header + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw SQLiteError(code: .cantOpen, resultCode: 0, message: "cannot write \(path): \(error.localizedDescription)")
        }
    }

    // MARK: - PartitionDetector

    @inline(__always)
    public func process(card: CardBytes, eventTime: Int64) -> Verdict {
        if var store = tumblingStore {
            return tumbling.process(card: card, eventTime: eventTime, store: &store)
        }
        var store = slidingStore.unsafelyUnwrapped
        return sliding.process(card: card, eventTime: eventTime, store: &store)
    }

    /// A fresh purge schedule: the rolled-back records may have moved it.
    public func rolledBack() {
        tumbling = Detector(parameters: parameters)
        sliding = SlidingDetector(parameters: parameters)
    }

    // MARK: - The task store (the conformance is declared where the runtime meets the store)

    public var checkpoint: StoreCheckpoint? { tumblingStore?.checkpoint ?? slidingStore?.checkpoint }
    public var streamTime: Int64? { tumblingStore?.streamTime ?? slidingStore?.streamTime }
    /// Whether opening created the database.
    public var wasCreated: Bool { tumblingStore?.wasCreated ?? slidingStore!.wasCreated }

    public func pendingChanges(into batch: inout ChangelogBatch) throws(SQLiteError) {
        if let tumblingStore { try tumblingStore.pendingChanges(into: &batch) } else { try slidingStore!.pendingChanges(into: &batch) }
        if parametersRecordPending { batch.appendParameters(parameters.header) }
    }

    public func seal() throws(SQLiteError) {
        if let tumblingStore { try tumblingStore.seal() } else { try slidingStore!.seal() }
    }

    public func commit(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        if let tumblingStore { try tumblingStore.commit(checkpoint: checkpoint) } else { try slidingStore!.commit(checkpoint: checkpoint) }
        parametersRecordPending = false
    }

    public func rollback() {
        if let tumblingStore { tumblingStore.rollback() } else { slidingStore!.rollback() }
        rolledBack()
    }

    /// Applies one changelog record; a parameters record of other parameters, or a card of the
    /// other window kind, stops the restore with the parameter that changed.
    public func apply(key: UnsafeRawBufferPointer, value: UnsafeRawBufferPointer?) throws {
        if key.count == 2, key[0] == ChangelogRecord.version, key[1] == ChangelogRecord.parametersTag {
            guard let value else { return }
            let differences = parameters.differences(fromHeader: String(decoding: value, as: UTF8.self))
            guard differences.isEmpty else {
                throw SQLiteError(code: .otherParameters, resultCode: 0, message:
                    "the changelog was written with other detector parameters: \(differences.joined(separator: ", ")) (written, then this run's); \(Self.remedy)")
            }
            return
        }
        if key.count > 2, key[0] == ChangelogRecord.version {
            let other: WindowKind? = switch key[1] {
            case ChangelogRecord.cardTag where parameters.kind != .tumbling: .tumbling
            case ChangelogRecord.slidingCardTag where parameters.kind != .sliding: .sliding
            default: nil
            }
            if let other {
                throw SQLiteError(code: .otherParameters, resultCode: 0, message:
                    "the changelog was written with other detector parameters: kind=\(other.rawValue) (\(parameters.kind.rawValue)) (written, then this run's); \(Self.remedy)")
            }
        }
        if let tumblingStore { try tumblingStore.apply(key: key, value: value) } else { try slidingStore!.apply(key: key, value: value) }
    }

    public func commitRestore(checkpoint: StoreCheckpoint) throws(SQLiteError) {
        if let tumblingStore { try tumblingStore.commitRestore(checkpoint: checkpoint) } else { try slidingStore!.commitRestore(checkpoint: checkpoint) }
    }

    public func close() throws(SQLiteError) {
        if let tumblingStore { try tumblingStore.close() } else { try slidingStore!.close() }
    }
}

extension ChangelogBatch {
    /// Appends the parameters record (SEMANTICS.md §2c): `header` as the value.
    mutating func appendParameters(_ header: String) {
        let start = bytes.count
        bytes.append(ChangelogRecord.version)
        bytes.append(ChangelogRecord.parametersTag)
        bytes.append(contentsOf: header.utf8)
        entries.append(Entry(keyStart: Int32(start), keyCount: 2, valueStart: Int32(start + 2), valueCount: Int32(header.utf8.count)))
    }
}
