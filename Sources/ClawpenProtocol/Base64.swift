/// Base64 (RFC 4648, with padding) written straight into a byte buffer: an `output` frame is
/// mostly base64, and building it through `Data.base64EncodedString()` and a JSON string value
/// cost the supervisor about 7 ns per byte of a job's output (two copies and a per-character
/// serializer); this is one pass over the bytes.
public enum Base64 {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encodedCount(_ n: Int) -> Int { (n + 2) / 3 * 4 }

    public static func encode<C: Collection>(_ bytes: C, appendingTo out: inout [UInt8]) where C.Element == UInt8 {
        let n = bytes.count
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: encodedCount(n)))
        let done: Void? = bytes.withContiguousStorageIfAvailable { src in
            out.withUnsafeMutableBufferPointer { dst in encode(src, into: dst, at: start) }
        }
        if done == nil {
            let copy = Array(bytes)
            copy.withUnsafeBufferPointer { src in out.withUnsafeMutableBufferPointer { dst in encode(src, into: dst, at: start) } }
        }
    }

    private static func encode(_ src: UnsafeBufferPointer<UInt8>, into dst: UnsafeMutableBufferPointer<UInt8>, at start: Int) {
        alphabet.withUnsafeBufferPointer { a in
            var i = 0, o = start
            let n = src.count
            while i + 3 <= n {
                let v = UInt32(src[i]) << 16 | UInt32(src[i + 1]) << 8 | UInt32(src[i + 2])
                dst[o] = a[Int(v >> 18)]
                dst[o + 1] = a[Int(v >> 12 & 63)]
                dst[o + 2] = a[Int(v >> 6 & 63)]
                dst[o + 3] = a[Int(v & 63)]
                i += 3
                o += 4
            }
            let rest = n - i
            if rest > 0 {
                let v = UInt32(src[i]) << 16 | (rest == 2 ? UInt32(src[i + 1]) << 8 : 0)
                dst[o] = a[Int(v >> 18)]
                dst[o + 1] = a[Int(v >> 12 & 63)]
                dst[o + 2] = rest == 2 ? a[Int(v >> 6 & 63)] : UInt8(ascii: "=")
                dst[o + 3] = UInt8(ascii: "=")
            }
        }
    }
}
