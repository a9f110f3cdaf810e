/// A compact binary encoding for the supervisor<->worker link: big-endian integers and
/// length-prefixed byte strings. Frames never leave the host, and the worker must stay small, so
/// no JSON and no Foundation here. The reader is strict: every read is bounds-checked, because
/// the supervisor decodes what a (possibly compromised) worker sends. Decoding is linear in the
/// payload: every byte is read once, and no count makes it reserve more than the payload holds.
public struct BinaryWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    public mutating func u32(_ v: UInt32) {
        bytes.append(UInt8(truncatingIfNeeded: v >> 24)); bytes.append(UInt8(truncatingIfNeeded: v >> 16))
        bytes.append(UInt8(truncatingIfNeeded: v >> 8)); bytes.append(UInt8(truncatingIfNeeded: v))
    }
    public mutating func i32(_ v: Int32) { u32(UInt32(bitPattern: v)) }
    public mutating func u64(_ v: UInt64) { u32(UInt32(truncatingIfNeeded: v >> 32)); u32(UInt32(truncatingIfNeeded: v)) }
    public mutating func i64(_ v: Int64) { u64(UInt64(bitPattern: v)) }
    public mutating func bytes<C: Collection>(_ v: C) where C.Element == UInt8 {
        u32(UInt32(truncatingIfNeeded: v.count)); bytes.append(contentsOf: v)
    }
    public mutating func string(_ v: String) { bytes(Array(v.utf8)) }
    public mutating func strings(_ v: [String]) { u32(UInt32(v.count)); for s in v { string(s) } }
    public mutating func optionalI32(_ v: Int32?) {
        if let v { u8(1); i32(v) } else { u8(0) }
    }
}

public struct BinaryReader: Sendable {
    public enum Failure: Error, Equatable, Sendable { case truncated, invalidUTF8, tooMany, badValue }

    private let storage: [UInt8]
    private var offset = 0

    public init(_ bytes: [UInt8]) { self.storage = bytes }

    public var isAtEnd: Bool { offset == storage.count }

    private mutating func take(_ n: Int) throws(Failure) -> ArraySlice<UInt8> {
        guard n >= 0, storage.count - offset >= n else { throw .truncated }
        defer { offset += n }
        return storage[offset..<(offset + n)]
    }

    public mutating func u8() throws(Failure) -> UInt8 { try take(1).first! }
    public mutating func bool() throws(Failure) -> Bool {
        switch try u8() {
        case 0: return false;
        case 1: return true;
        default: throw .badValue
        }
    }
    public mutating func u32() throws(Failure) -> UInt32 {
        var v: UInt32 = 0
        for b in try take(4) { v = (v << 8) | UInt32(b) }
        return v
    }
    public mutating func i32() throws(Failure) -> Int32 { Int32(bitPattern: try u32()) }
    public mutating func u64() throws(Failure) -> UInt64 { (UInt64(try u32()) << 32) | UInt64(try u32()) }
    public mutating func i64() throws(Failure) -> Int64 { Int64(bitPattern: try u64()) }
    public mutating func bytes() throws(Failure) -> [UInt8] { Array(try take(Int(try u32()))) }
    public mutating func string() throws(Failure) -> String {
        let raw = try take(Int(try u32()))
        guard let s = String(validating: raw, as: UTF8.self) else { throw .invalidUTF8 }
        return s
    }
    public mutating func strings(max: Int) throws(Failure) -> [String] {
        let n = Int(try u32())
        guard n <= max else { throw .tooMany }
        // Each string takes at least its 4-byte length: a count the rest of the payload cannot
        // hold is refused before anything is reserved for it.
        guard n <= (storage.count - offset) / 4 else { throw .truncated }
        var out: [String] = []
        out.reserveCapacity(n)
        for _ in 0..<n { out.append(try string()) }
        return out
    }
    public mutating func optionalI32() throws(Failure) -> Int32? {
        try bool() ? try i32() : nil
    }
}
