/// Base64 (RFC 4648, with padding) for file chunks (`data_b64`): a table lookup per byte over
/// raw buffers, no Foundation and no String in between. A chunk is up to a few MiB and every
/// byte of a transfer passes through here twice (encoded by one side, decoded by the other), so
/// this is the hot loop of `file.put` and `file.get`.
public enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    /// 0...63 for the alphabet, 0xFF for anything else.
    private static let values: [UInt8] = {
        var t = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
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
    public static func encode(_ input: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        let n = input.count
        let start = out.count
        let total = encodedCount(n)
        out.append(contentsOf: repeatElement(0, count: total))
        out.withUnsafeMutableBufferPointer { buf in
            guard let dst = buf.baseAddress?.advanced(by: start) else { return }
            encode(input, to: dst)
        }
    }

    /// Writes `encodedCount(input.count)` bytes at `dst`.
    public static func encode(_ input: UnsafeRawBufferPointer, to dst: UnsafeMutablePointer<UInt8>) {
        let n = input.count
        guard n > 0, let src = input.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
        alphabet.withUnsafeBufferPointer { a in
            guard let t = a.baseAddress else { return }
            var i = 0, o = 0
            while i + 3 <= n {
                let v = UInt32(src[i]) << 16 | UInt32(src[i + 1]) << 8 | UInt32(src[i + 2])
                dst[o] = t[Int(v >> 18)]
                dst[o + 1] = t[Int((v >> 12) & 63)]
                dst[o + 2] = t[Int((v >> 6) & 63)]
                dst[o + 3] = t[Int(v & 63)]
                i += 3; o += 4
            }
            let rest = n - i
            if rest > 0 {
                let v = UInt32(src[i]) << 16 | (rest == 2 ? UInt32(src[i + 1]) << 8 : 0)
                dst[o] = t[Int(v >> 18)]
                dst[o + 1] = t[Int((v >> 12) & 63)]
                dst[o + 2] = rest == 2 ? t[Int((v >> 6) & 63)] : UInt8(ascii: "=")
                dst[o + 3] = UInt8(ascii: "=")
            }
        }
    }

    public static func encode(_ input: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(encodedCount(input.count))
        input.withUnsafeBytes { encode($0, into: &out) }
        return out
    }

    /// The bytes `input` encodes, or nil when it is not valid padded base64.
    public static func decode(_ input: UnsafeRawBufferPointer) -> [UInt8]? {
        let n = input.count
        if n == 0 { return [] }
        guard n % 4 == 0, let src = input.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
        var pad = 0
        if src[n - 1] == UInt8(ascii: "=") { pad += 1 }
        if src[n - 2] == UInt8(ascii: "=") { pad += 1 }
        let outCount = n / 4 * 3 - pad
        var out = [UInt8](repeating: 0, count: outCount)
        let ok = values.withUnsafeBufferPointer { tb -> Bool in
            guard let t = tb.baseAddress else { return false }
            return out.withUnsafeMutableBufferPointer { ob -> Bool in
                guard let dst = ob.baseAddress else { return outCount == 0 }
                var i = 0, o = 0
                let full = n - (pad > 0 ? 4 : 0)
                var bad: UInt8 = 0
                while i < full {
                    let a = t[Int(src[i])], b = t[Int(src[i + 1])], c = t[Int(src[i + 2])], d = t[Int(src[i + 3])]
                    bad |= a | b | c | d
                    let v = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                    dst[o] = UInt8(truncatingIfNeeded: v >> 16)
                    dst[o + 1] = UInt8(truncatingIfNeeded: v >> 8)
                    dst[o + 2] = UInt8(truncatingIfNeeded: v)
                    i += 4; o += 3
                }
                // 0xFF marks a byte outside the alphabet: any such byte sets bits 6 and 7.
                if bad & 0xC0 != 0 { return false }
                if pad > 0 {
                    let a = t[Int(src[i])], b = t[Int(src[i + 1])]
                    let c = pad == 1 ? t[Int(src[i + 2])] : 0
                    if (a | b | c) & 0xC0 != 0 { return false }
                    let v = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6
                    dst[o] = UInt8(truncatingIfNeeded: v >> 16)
                    if pad == 1 { dst[o + 1] = UInt8(truncatingIfNeeded: v >> 8) }
                }
                return true
            }
        }
        return ok ? out : nil
    }

    public static func decode(_ s: String) -> [UInt8]? {
        var s = s
        return s.withUTF8 { decode(UnsafeRawBufferPointer($0)) }
    }
}
