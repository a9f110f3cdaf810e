import ClawpenWire
import Glibc

/// The frames that carry a file's bytes (`file.chunk` from a client, `file.data` to one), read
/// without building a JSONValue: a 1 MiB chunk is 1.4 MB of base64 in one JSON string, and the
/// general parser would validate it as UTF-8, copy it into a String and hand it over to be
/// decoded from there. This reads the frame in place and points at the base64 text, which the
/// caller decodes straight into the buffer it sends on.
///
/// It is a fast path, not a second grammar: it accepts only a subset of what the general parser
/// accepts (one flat object; the keys `type`, `id`, `offset`, `eof`, `data_b64`, each at most
/// once; strings of printable ASCII without escapes; integers without sign, fraction or exponent
/// except a negative `id`) and answers nil for anything else, which then takes the general path
/// and gets the answer it always got. So the contract stays "the payload of a frame is one UTF-8
/// JSON object" (docs/protocol.md), whatever a client sends.
public struct ChunkFrame: Sendable, Equatable {
    public var id: JSONValue
    public var offset: UInt64
    public var eof: Bool
    /// Where the base64 text of `data_b64` lies in the payload (empty when the key is absent).
    public var dataStart: Int
    public var dataCount: Int

    /// The base64 text of `data_b64` within the payload the frame was scanned from.
    public func data(in payload: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: payload[dataStart..<(dataStart + dataCount)])
    }

    /// Reads `payload` as a frame of `type`, or nil when it is not one in the fast shape.
    public static func scan(_ payload: UnsafeRawBufferPointer, type expected: StaticString) -> ChunkFrame? {
        guard let base = payload.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return nil }
        var s = Scanner(p: base, n: payload.count)
        var frame = ChunkFrame(id: .null, offset: 0, eof: false, dataStart: 0, dataCount: 0)
        var seen: UInt8 = 0
        s.skipSpace()
        guard s.take(UInt8(ascii: "{")) else { return nil }
        s.skipSpace()
        if s.take(UInt8(ascii: "}")) { return nil } // no type
        while true {
            s.skipSpace()
            guard let (ks, kn) = s.plainString() else { return nil }
            s.skipSpace()
            guard s.take(UInt8(ascii: ":")) else { return nil }
            s.skipSpace()
            let key = Key(s.p + ks, kn)
            guard key != .unknown, seen & key.rawValue == 0 else { return nil }
            seen |= key.rawValue
            switch key {
            case .type:
                guard let (vs, vn) = s.plainString(), expected.utf8CodeUnitCount == vn else { return nil }
                let same = expected.withUTF8Buffer { e in (0..<vn).allSatisfy { s.p[vs + $0] == e[$0] } }
                guard same else { return nil }
            case .id:
                if s.peek == UInt8(ascii: "\"") {
                    guard let (vs, vn) = s.plainString() else { return nil }
                    frame.id = .string(String(decoding: UnsafeBufferPointer(start: s.p + vs, count: vn), as: UTF8.self))
                } else if s.takeWord("null") {
                    frame.id = .null
                } else {
                    let negative = s.take(UInt8(ascii: "-"))
                    guard let v = s.integer() else { return nil }
                    frame.id = .int(negative ? -Int64(v) : Int64(v))
                }
            case .offset:
                guard let v = s.integer() else { return nil }
                frame.offset = v
            case .eof:
                if s.takeWord("true") { frame.eof = true } else if s.takeWord("false") { frame.eof = false } else { return nil }
            case .data:
                guard s.take(UInt8(ascii: "\"")) else { return nil }
                let start = s.i
                // Base64 never holds a quote; anything else in it (an escape, a control byte,
                // non-ASCII) fails the decode, and the frame then goes the general way.
                guard let quote = memchr(s.p + s.i, Int32(UInt8(ascii: "\"")), s.n - s.i) else { return nil }
                s.i = UnsafeRawPointer(s.p).distance(to: UnsafeRawPointer(quote))
                frame.dataStart = start
                frame.dataCount = s.i - start
                s.i += 1
            case .unknown: return nil
            }
            s.skipSpace()
            if s.take(UInt8(ascii: ",")) { continue }
            guard s.take(UInt8(ascii: "}")) else { return nil }
            break
        }
        s.skipSpace()
        guard s.i == s.n, seen & Key.type.rawValue != 0 else { return nil }
        return frame
    }

    private enum Key: UInt8 {
        case type = 1, id = 2, offset = 4, eof = 8, data = 16, unknown = 0

        init(_ p: UnsafePointer<UInt8>, _ n: Int) {
            func eq(_ w: StaticString) -> Bool {
                w.utf8CodeUnitCount == n && w.withUTF8Buffer { b in (0..<n).allSatisfy { p[$0] == b[$0] } }
            }
            if eq("type") {
                self = .type
            } else if eq("id") {
                self = .id
            } else if eq("offset") {
                self = .offset
            } else if eq("eof") {
                self = .eof
            } else if eq("data_b64") {
                self = .data
            } else {
                self = .unknown
            }
        }
    }

    private struct Scanner {
        let p: UnsafePointer<UInt8>
        let n: Int
        var i = 0

        var peek: UInt8? { i < n ? p[i] : nil }

        mutating func skipSpace() {
            while i < n, p[i] == 0x20 || p[i] == 0x0A || p[i] == 0x0D || p[i] == 0x09 { i += 1 }
        }

        mutating func take(_ b: UInt8) -> Bool {
            guard i < n, p[i] == b else { return false }
            i += 1
            return true
        }

        mutating func takeWord(_ w: StaticString) -> Bool {
            let k = w.utf8CodeUnitCount
            guard n - i >= k, w.withUTF8Buffer({ b in (0..<k).allSatisfy { p[i + $0] == b[$0] } }) else { return false }
            i += k
            return true
        }

        /// A string of printable ASCII without escapes: its start and length.
        mutating func plainString() -> (Int, Int)? {
            guard take(UInt8(ascii: "\"")) else { return nil }
            let start = i
            while i < n {
                let b = p[i]
                if b == UInt8(ascii: "\"") {
                    i += 1
                    return (start, i - 1 - start)
                }
                guard b >= 0x20, b < 0x7F, b != UInt8(ascii: "\\") else { return nil }
                i += 1
            }
            return nil
        }

        /// A JSON integer without sign, fraction or exponent, of at most 18 digits.
        mutating func integer() -> UInt64? {
            let start = i
            var v: UInt64 = 0
            while i < n, p[i] >= UInt8(ascii: "0"), p[i] <= UInt8(ascii: "9") {
                guard i - start < 18 else { return nil }
                v = v * 10 + UInt64(p[i] - UInt8(ascii: "0"))
                i += 1
            }
            let digits = i - start
            guard digits > 0, digits == 1 || p[start] != UInt8(ascii: "0") else { return nil }
            if i < n, p[i] == UInt8(ascii: ".") || p[i] == UInt8(ascii: "e") || p[i] == UInt8(ascii: "E") { return nil }
            return v
        }
    }
}
