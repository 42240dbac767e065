/// A growable byte buffer for building output records.
///
/// Hand-written rather than `[UInt8]`: profiling replay showed `Array.append(contentsOf:)`
/// taking the generic element-by-element path, which cost more than the JSON work itself.
/// Here every append is a capacity check and a `memcpy`.
///
/// The encoders that fill it live in another module, so the appends are `@inlinable` (with the
/// storage `@usableFromInline`): a call per byte across the module boundary would cost more than
/// the append.
public final class ByteBuffer {
    /// The bytes written so far.
    @inlinable public var count: Int { used }
    @usableFromInline var used = 0
    @usableFromInline var capacity: Int
    @usableFromInline var storage: UnsafeMutablePointer<UInt8>

    public init(capacity: Int = 4_096) {
        self.capacity = max(capacity, 64)
        storage = .allocate(capacity: self.capacity)
    }

    deinit { storage.deallocate() }

    /// The bytes written so far; valid until the next write.
    @inlinable public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: storage, count: count) }

    /// The first byte, valid until the buffer next grows.
    @inlinable package var baseAddress: UnsafePointer<UInt8> { UnsafePointer(storage) }

    /// A copy of the bytes written so far.
    public var array: [UInt8] { Array(UnsafeBufferPointer(start: storage, count: count)) }

    @inlinable public var isEmpty: Bool { used == 0 }

    /// Forgets the contents, keeping the capacity.
    public func removeAll() { used = 0 }

    @inlinable @inline(__always)
    public func reserve(_ extra: Int) {
        if used + extra > capacity { grow(used + extra) }
    }

    @usableFromInline func grow(_ needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let newStorage = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        newStorage.update(from: storage, count: used)
        storage.deallocate()
        storage = newStorage
        capacity = newCapacity
    }

    @inlinable @inline(__always)
    public func append(_ byte: UInt8) {
        reserve(1)
        storage[used] = byte
        used += 1
    }

    @inlinable @inline(__always)
    public func append(_ p: UnsafeRawPointer, count n: Int) {
        reserve(n)
        (storage + used).update(from: p.assumingMemoryBound(to: UInt8.self), count: n)
        used += n
    }

    @inlinable @inline(__always)
    public func append(_ bytes: UnsafeRawBufferPointer) {
        if let base = bytes.baseAddress { append(base, count: bytes.count) }
    }

    public func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    /// Public, as every `@inlinable` member here: an `@inlinable package` one is not inlined in
    /// other modules.
    @inlinable @inline(__always)
    public func append(_ s: StaticString) {
        append(s.utf8Start, count: s.utf8CodeUnitCount)
    }

    /// Appends the UTF-8 bytes of `s`.
    package func appendText(_ s: String) {
        var s = s
        s.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    /// Appends the decimal digits of `v`, two at a time (event times have 13 digits, and this
    /// runs three times per output record).
    @inlinable @inline(__always)
    public func appendInteger(_ v: Int64) {
        reserve(20)
        if v < 0 {
            storage[used] = UInt8(ascii: "-")
            used += 1
        }
        var m = v.magnitude
        var digits = 1
        var bound: UInt64 = 10
        while digits < 20 && m >= bound {
            digits += 1
            if digits < 20 { bound &*= 10 }
        }
        var i = used + digits
        used = i
        Self.digitPairs.withUnsafeBufferPointer { pairs in
            while m >= 100 {
                let r = Int(m % 100)
                m /= 100
                i -= 2
                storage[i] = pairs[2 * r]
                storage[i + 1] = pairs[2 * r + 1]
            }
            if m >= 10 {
                let r = Int(m)
                storage[i - 2] = pairs[2 * r]
                storage[i - 1] = pairs[2 * r + 1]
            } else {
                storage[i - 1] = UInt8(truncatingIfNeeded: m) + 48
            }
        }
    }

    /// "00", "01", ... "99".
    @usableFromInline static let digitPairs: [UInt8] = {
        var pairs: [UInt8] = []
        for n in 0..<100 {
            let tens: Int = n / 10, ones: Int = n % 10
            pairs.append(UInt8(48 + tens))
            pairs.append(UInt8(48 + ones))
        }
        return pairs
    }()
}
