/// A growable byte buffer for building output records.
///
/// Hand-written rather than `[UInt8]`: profiling replay showed `Array.append(contentsOf:)`
/// taking the generic element-by-element path, which cost more than the JSON work itself.
/// Here every append is a capacity check and a `memcpy`.
public final class ByteBuffer {
    public private(set) var count = 0
    private(set) var capacity: Int
    private var storage: UnsafeMutablePointer<UInt8>

    public init(capacity: Int = 4_096) {
        self.capacity = max(capacity, 64)
        storage = .allocate(capacity: self.capacity)
    }

    deinit { storage.deallocate() }

    /// The bytes written so far; valid until the next write.
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: storage, count: count) }

    /// The first byte, valid until the buffer next grows.
    var baseAddress: UnsafePointer<UInt8> { UnsafePointer(storage) }

    /// A copy of the bytes written so far.
    public var array: [UInt8] { Array(UnsafeBufferPointer(start: storage, count: count)) }

    public var isEmpty: Bool { count == 0 }

    /// Forgets the contents, keeping the capacity.
    public func removeAll() { count = 0 }

    @inline(__always)
    public func reserve(_ extra: Int) {
        if count + extra > capacity { grow(count + extra) }
    }

    private func grow(_ needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let newStorage = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        newStorage.update(from: storage, count: count)
        storage.deallocate()
        storage = newStorage
        capacity = newCapacity
    }

    @inline(__always)
    public func append(_ byte: UInt8) {
        reserve(1)
        storage[count] = byte
        count += 1
    }

    @inline(__always)
    public func append(_ p: UnsafeRawPointer, count n: Int) {
        reserve(n)
        (storage + count).update(from: p.assumingMemoryBound(to: UInt8.self), count: n)
        count += n
    }

    @inline(__always)
    public func append(_ bytes: UnsafeRawBufferPointer) {
        if let base = bytes.baseAddress { append(base, count: bytes.count) }
    }

    public func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    @inline(__always)
    func append(_ s: StaticString) {
        append(s.utf8Start, count: s.utf8CodeUnitCount)
    }

    /// Appends the UTF-8 bytes of `s`.
    func appendText(_ s: String) {
        var s = s
        s.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    /// Appends the decimal digits of `v`, two at a time (event times have 13 digits, and this
    /// runs three times per output record).
    @inline(__always)
    public func appendInteger(_ v: Int64) {
        reserve(20)
        if v < 0 {
            storage[count] = UInt8(ascii: "-")
            count += 1
        }
        var m = v.magnitude
        var digits = 1
        var bound: UInt64 = 10
        while digits < 20 && m >= bound {
            digits += 1
            if digits < 20 { bound &*= 10 }
        }
        var i = count + digits
        count = i
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
    private static let digitPairs: [UInt8] = {
        var pairs: [UInt8] = []
        for n in 0..<100 {
            let tens: Int = n / 10, ones: Int = n % 10
            pairs.append(UInt8(48 + tens))
            pairs.append(UInt8(48 + ones))
        }
        return pairs
    }()
}
