/// Base64 (RFC 4648, with padding) for file chunks (`data_b64`): table lookups over raw
/// buffers, no Foundation and no String in between. A chunk is up to a few MiB and every byte of
/// a transfer passes through here twice (encoded by one side, decoded by the other), so this is
/// the hot loop of `file.put` and `file.get`.
///
/// Encoding looks up twelve bits at a time (a 4,096-entry table of character pairs: two lookups
/// and two 16-bit stores per three bytes, instead of four of each); decoding uses one table per
/// position of a quad, each holding its character's six bits already shifted into place, so a
/// quad is four lookups and three ORs, and a byte outside the alphabet sets a bit no valid quad
/// has (one test per quad, checked once per run of quads).
public enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    /// Twelve bits to their two characters, the first in the low byte (stored little-endian).
    private static let pairs: [UInt16] = (0..<4096).map { v in UInt16(alphabet[v >> 6]) | UInt16(alphabet[v & 63]) << 8 }
    /// 0...63 for the alphabet, 0xFF for anything else.
    private static let values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()
    /// `values` shifted for each position of a quad; an invalid byte is 1 << 24 in every table.
    private static let quadTables: [UInt32] = {
        var t = [UInt32](repeating: 1 << 24, count: 4 * 256)
        for (i, c) in alphabet.enumerated() {
            t[Int(c)] = UInt32(i) << 18
            t[256 + Int(c)] = UInt32(i) << 12
            t[512 + Int(c)] = UInt32(i) << 6
            t[768 + Int(c)] = UInt32(i)
        }
        return t
    }()

    public static func encodedCount(_ n: Int) -> Int { (n + 2) / 3 * 4 }

    /// Appends the encoding of `bytes` to `out` (an `output` frame is written this way: one pass,
    /// no Data or String in between).
    public static func encode<C: Collection>(_ bytes: C, appendingTo out: inout [UInt8]) where C.Element == UInt8 {
        let done: Void? = bytes.withContiguousStorageIfAvailable { src in encode(UnsafeRawBufferPointer(src), into: &out) }
        if done == nil { Array(bytes).withUnsafeBytes { encode($0, into: &out) } }
    }

    /// Appends the encoding of `input` to `out`.
    ///
    /// In pieces of 3 KiB through a small buffer, appended with a memcpy each: an Array cannot be
    /// grown without initializing, and growing it by `repeatElement(0, count:)` went element by
    /// element through generic code (tens of ns per byte: a stream's 64 KiB output chunk took
    /// milliseconds of the event loop, profiled under hostile clients).
    public static func encode(_ input: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        let n = input.count
        guard n > 0 else { return }
        out.reserveCapacity(out.count + encodedCount(n))
        let piece = 3 * 1024
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: encodedCount(piece)) { tmp in
            guard let dst = tmp.baseAddress else { return }
            var i = 0
            while i < n {
                let m = min(piece, n - i)
                encode(UnsafeRawBufferPointer(rebasing: input[i..<(i + m)]), to: dst)
                out.append(contentsOf: UnsafeBufferPointer(start: dst, count: encodedCount(m)))
                i += m
            }
        }
    }

    /// Writes `encodedCount(input.count)` bytes at `dst`.
    public static func encode(_ input: UnsafeRawBufferPointer, to dst: UnsafeMutablePointer<UInt8>) {
        let n = input.count
        guard n > 0, let src = input.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        let out = UnsafeMutableRawPointer(dst)
        pairs.withUnsafeBufferPointer { pb in
            guard let t = pb.baseAddress else { return }
            var i = 0, o = 0
            while i + 3 <= n {
                let v = Int(src[i]) << 16 | Int(src[i + 1]) << 8 | Int(src[i + 2])
                out.storeBytes(of: t[v >> 12].littleEndian, toByteOffset: o, as: UInt16.self)
                out.storeBytes(of: t[v & 0xFFF].littleEndian, toByteOffset: o + 2, as: UInt16.self)
                i += 3; o += 4
            }
            let rest = n - i
            if rest > 0 {
                alphabet.withUnsafeBufferPointer { ab in
                    guard let a = ab.baseAddress else { return }
                    let v = UInt32(src[i]) << 16 | (rest == 2 ? UInt32(src[i + 1]) << 8 : 0)
                    dst[o] = a[Int(v >> 18)]
                    dst[o + 1] = a[Int((v >> 12) & 63)]
                    dst[o + 2] = rest == 2 ? a[Int((v >> 6) & 63)] : UInt8(ascii: "=")
                    dst[o + 3] = UInt8(ascii: "=")
                }
            }
        }
    }

    public static func encode(_ input: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(encodedCount(input.count))
        input.withUnsafeBytes { encode($0, into: &out) }
        return out
    }

    /// The bytes `input` would decode to, or nil when its length or padding is not base64's.
    public static func decodedCount(_ input: UnsafeRawBufferPointer) -> Int? {
        let n = input.count
        if n == 0 { return 0 }
        guard n % 4 == 0, let src = input.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
        var pad = 0
        if src[n - 1] == UInt8(ascii: "=") { pad += 1 }
        if src[n - 2] == UInt8(ascii: "=") { pad += 1 }
        return n / 4 * 3 - pad
    }

    /// Decodes `input` into `dst` (room for `decodedCount(input)` bytes); false when it is not
    /// valid padded base64 (what was written to `dst` is then meaningless).
    public static func decode(_ input: UnsafeRawBufferPointer, to dst: UnsafeMutablePointer<UInt8>) -> Bool {
        let n = input.count
        if n == 0 { return true }
        guard n % 4 == 0, let src = input.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return false }
        var pad = 0
        if src[n - 1] == UInt8(ascii: "=") { pad += 1 }
        if src[n - 2] == UInt8(ascii: "=") { pad += 1 }
        return quadTables.withUnsafeBufferPointer { tb -> Bool in
            guard let t = tb.baseAddress else { return false }
            var i = 0, o = 0
            let full = n - (pad > 0 ? 4 : 0)
            var bad: UInt32 = 0
            while i < full {
                let v = t[Int(src[i])] | t[256 + Int(src[i + 1])] | t[512 + Int(src[i + 2])] | t[768 + Int(src[i + 3])]
                bad |= v
                dst[o] = UInt8(truncatingIfNeeded: v >> 16)
                dst[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
                dst[o + 2] = UInt8(truncatingIfNeeded: v)
                i += 4; o += 3
            }
            if bad >> 24 != 0 { return false }
            if pad > 0 {
                // "xy==" or "xyz=": the characters before the padding must be of the alphabet.
                let c = pad == 1 ? t[512 + Int(src[i + 2])] : 0
                let v = t[Int(src[i])] | t[256 + Int(src[i + 1])] | c
                if v >> 24 != 0 { return false }
                dst[o] = UInt8(truncatingIfNeeded: v >> 16)
                if pad == 1 { dst[o + 1] = UInt8(truncatingIfNeeded: v >> 8) }
            }
            return true
        }
    }

    /// The bytes `input` encodes, or nil when it is not valid padded base64.
    public static func decode(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        guard let count = decodedCount(input) else { return nil }
        if count == 0 { return [] } // only the empty input decodes to nothing
        var ok = false
        let out = [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
            guard let dst = buf.baseAddress else { return }
            ok = decode(input, to: dst)
            initialized = count
        }
        return ok ? out : nil
    }

    public static func decode(_ s: String) -> [UInt8]? {
        var s = s
        return s.withUTF8 { decode(UnsafeRawBufferPointer($0)) }
    }
}
