/// What a ``CheckpointedStore`` keeps per key: how the value says the key is absent, how it
/// compares, its bytes and its rank.
///
/// The bytes are both the changelog record's value and the SQLite row's, so a restore and a
/// read from SQLite decode the same thing with the same checks.
public protocol StoreValue: Equatable {
    /// The value of a key the store does not hold: never written to SQLite, a tombstone on the
    /// changelog.
    static var absent: Self { get }
    /// Whether the key holds a value (false for ``absent``).
    var exists: Bool { get }
    /// The changelog key tag of this type's entries (the byte after the encoding version); it
    /// must differ from the stream time's tag.
    static var changelogTag: UInt8 { get }
    /// The longest key id (the bytes after the tag) a changelog record of this type may hold.
    static var maxKeyByteCount: Int { get }
    /// Stored in SQLite beside the value, for ``CheckpointedStore/forEachEntry(rankAtMost:_:)``.
    /// Read only from existing values.
    var rank: Int64 { get }
    /// Appends the value's bytes (of an existing value) to `bytes`.
    func encode(into bytes: inout [UInt8])
    /// The existing value that `bytes` encode. The bytes come from the changelog or SQLite, that
    /// is from outside: anything ``encode(into:)`` could not have written, or no valid state
    /// could hold, throws.
    static func decode(_ bytes: UnsafeRawBufferPointer) throws(ChangelogDecodingError) -> Self
}

extension StoreValue {
    /// Ids are the input's: 1 to 1024 bytes (SEMANTICS.md §1).
    static var maxKeyByteCount: Int { ChangelogRecord.maxIdByteCount }
}
