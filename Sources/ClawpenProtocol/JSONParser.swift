/// A strict JSON parser (RFC 8259) over bytes. It replaces FoundationEssentials' JSONDecoder for
/// frames: decoding into a dynamic value through Decodable costs a chain of failed attempts per
/// value, and every request and every reply goes through here (the supervisor's hot path, and the
/// client's). Hostile input is expected: strings must be valid UTF-8, control characters must be
/// escaped, and anything after the value is an error.
///
/// Every input costs a small constant per byte, whatever its shape (docs/protocol.md, "Limits"):
/// each byte is looked at once, a duplicate key is found through a hash set (not by scanning the
/// keys before it), escapes are decoded in place, integers are read without a detour through a
/// String, and the two things that are not bounded by the input's size are bounded by `Limits`:
/// nesting depth (the recursion) and the number of values (the memory a small value costs: `[0,0,...]`
/// spends 2 bytes of input on a 16-byte value).
struct JSONParser {
    struct Failure: Error, CustomStringConvertible {
        let offset: Int
        let reason: String
        var description: String { "invalid JSON at byte \(offset): \(reason)" }
    }

    /// What a document may hold beyond its size.
    struct Limits: Sendable {
        /// Objects and arrays nested inside each other.
        var maxDepth: Int
        /// Values of any kind, containers included.
        var maxValues: Int

        /// Replies and anything read from a trusted peer: deep enough and large enough for any
        /// reply the daemon writes (an audit page of 100,000 events is about a million values).
        static let `default` = Limits(maxDepth: 256, maxValues: 1 << 24)
    }

    private let bytes: [UInt8]
    private let limits: Limits
    private var i = 0
    private var values = 0

    private init(_ bytes: [UInt8], limits: Limits) {
        self.bytes = bytes
        self.limits = limits
    }

    static func parse(_ bytes: [UInt8], limits: Limits = .default) throws(Failure) -> JSONValue {
        var p = JSONParser(bytes, limits: limits)
        p.skipWhitespace()
        let v = try p.value(depth: 0)
        p.skipWhitespace()
        guard p.i == bytes.count else { throw p.fail("unexpected data after the value") }
        return v
    }

    private func fail(_ reason: String) -> Failure { Failure(offset: i, reason: reason) }

    private mutating func skipWhitespace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    private mutating func value(depth: Int) throws(Failure) -> JSONValue {
        guard i < bytes.count else { throw fail("unexpected end") }
        values += 1
        guard values <= limits.maxValues else {
            throw fail("more than \(limits.maxValues) values in one document (the limit)")
        }
        switch bytes[i] {
        case UInt8(ascii: "{"): return try object(depth: depth + 1)
        case UInt8(ascii: "["): return try array(depth: depth + 1)
        case UInt8(ascii: "\""): return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try number()
        default: throw fail("unexpected character")
        }
    }

    private mutating func literal(_ word: StaticString) throws(Failure) {
        let n = word.utf8CodeUnitCount
        guard bytes.count - i >= n else { throw fail("unexpected end") }
        let ok = word.withUTF8Buffer { w in (0..<n).allSatisfy { bytes[i + $0] == w[$0] } }
        guard ok else { throw fail("invalid literal") }
        i += n
    }

    /// Objects up to this many keys find duplicates by comparing with the keys before; larger
    /// ones switch to a hash set, so that n keys cost n lookups, not n²/2 comparisons.
    private static let linearKeyScan = 8

    private mutating func object(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= limits.maxDepth else { throw fail("nested deeper than \(limits.maxDepth) (the limit)") }
        i += 1
        var pairs: [(String, JSONValue)] = []
        var seen: Set<String>? = nil
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(pairs) }
        while true {
            skipWhitespace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
            let keyOffset = i
            let key = try string()
            skipWhitespace()
            guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw fail("expected ':'") }
            i += 1
            skipWhitespace()
            let v = try value(depth: depth)
            let duplicate: Bool
            if var set = seen.take() {
                // Taken out, so that the insert does not copy the set.
                duplicate = !set.insert(key).inserted
                seen = set
            } else if pairs.count < Self.linearKeyScan {
                duplicate = pairs.contains(where: { $0.0 == key })
            } else {
                var set = Set<String>(minimumCapacity: 2 * Self.linearKeyScan)
                for (k, _) in pairs { set.insert(k) }
                duplicate = !set.insert(key).inserted
                seen = set
            }
            if duplicate { throw Failure(offset: keyOffset, reason: "duplicate key \"\(key.prefix(40))\"") }
            pairs.append((key, v))
            skipWhitespace()
            guard i < bytes.count else { throw fail("unexpected end") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(pairs) }
            throw fail("expected ',' or '}'")
        }
    }

    private mutating func array(depth: Int) throws(Failure) -> JSONValue {
        guard depth <= limits.maxDepth else { throw fail("nested deeper than \(limits.maxDepth) (the limit)") }
        i += 1
        var items: [JSONValue] = []
        skipWhitespace()
        if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
        while true {
            skipWhitespace()
            items.append(try value(depth: depth))
            skipWhitespace()
            guard i < bytes.count else { throw fail("unexpected end") }
            if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
            if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
            throw fail("expected ',' or ']'")
        }
    }

    private mutating func string() throws(Failure) -> String {
        i += 1 // opening quote
        let start = i
        // Fast path: no escapes. The scan for the closing quote runs over the raw buffer: a
        // file chunk's data_b64 is megabytes of plain characters.
        i = bytes.withUnsafeBufferPointer { buf -> Int in
            var j = start
            // Eight bytes at a time while none of them is a quote, a backslash or a control
            // character (the classic "has zero byte" and "has byte less than" word tests).
            if let base = buf.baseAddress {
                let raw = UnsafeRawPointer(base)
                let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
                while j + 8 <= buf.count {
                    let w = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: j, as: UInt64.self))
                    let quote = w ^ (ones &* 0x22), backslash = w ^ (ones &* 0x5C)
                    let special =
                        ((quote &- ones) & ~quote) | ((backslash &- ones) & ~backslash) | ((w &- ones &* 0x20) & ~w)
                    if special & highs != 0 { break }
                    j += 8
                }
            }
            while j < buf.count {
                let b = buf[j]
                if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") || b < 0x20 { break }
                j += 1
            }
            return j
        }
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                guard let s = String(validating: bytes[start..<i], as: UTF8.self) else { throw fail("string is not valid UTF-8") }
                i += 1
                return s
            }
            if b == UInt8(ascii: "\\") { break }
            if b < 0x20 { throw fail("unescaped control character in a string") }
            i += 1
        }
        // Escapes: decoded into one byte array, UTF-8 validated once at the end.
        var out: [UInt8] = []
        out.reserveCapacity(i - start + 16)
        out.append(contentsOf: bytes[start..<i])
        while i < bytes.count {
            let b = bytes[i]
            if b == UInt8(ascii: "\"") {
                i += 1
                guard let s = String(validating: out, as: UTF8.self) else { throw fail("string is not valid UTF-8") }
                return s
            }
            if b < 0x20 { throw fail("unescaped control character in a string") }
            if b != UInt8(ascii: "\\") { out.append(b); i += 1; continue }
            i += 1
            guard i < bytes.count else { break }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                var scalar = try hex4()
                if (0xD800...0xDBFF).contains(scalar) {
                    guard bytes.count - i >= 6, bytes[i] == UInt8(ascii: "\\"), bytes[i + 1] == UInt8(ascii: "u") else {
                        throw fail("unpaired surrogate")
                    }
                    i += 2
                    let low = try hex4()
                    guard (0xDC00...0xDFFF).contains(low) else { throw fail("unpaired surrogate") }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    throw fail("unpaired surrogate")
                }
                guard let u = Unicode.Scalar(scalar) else { throw fail("invalid \\u escape") }
                UTF8.encode(u) { out.append($0) }
            default: throw fail("invalid escape")
            }
        }
        throw fail("unterminated string")
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard bytes.count - i >= 4 else { throw fail("short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let b = bytes[i]
            let d: UInt32
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): d = UInt32(b - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): d = UInt32(b - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): d = UInt32(b - UInt8(ascii: "A") + 10)
            default: throw fail("invalid \\u escape")
            }
            v = v << 4 | d
            i += 1
        }
        return v
    }

    private static func isDigit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }

    private mutating func number() throws(Failure) -> JSONValue {
        let start = i
        let negative = bytes[i] == UInt8(ascii: "-")
        if negative { i += 1 }
        guard i < bytes.count, Self.isDigit(bytes[i]) else { throw fail("invalid number") }
        // The integer part is accumulated as it is scanned (negative, so that Int64.min fits);
        // `exact` turns false when it overflows, and the token then goes to Double below.
        var magnitude: Int64 = 0
        var exact = true
        if bytes[i] == UInt8(ascii: "0") {
            i += 1
        } else {
            while i < bytes.count, Self.isDigit(bytes[i]) {
                if exact {
                    let (m, o1) = magnitude.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.subtractingReportingOverflow(Int64(bytes[i] - UInt8(ascii: "0")))
                    if o1 || o2 { exact = false } else { magnitude = s }
                }
                i += 1
            }
        }
        var isInteger = true
        if i < bytes.count, bytes[i] == UInt8(ascii: ".") {
            isInteger = false
            i += 1
            let digits = i
            while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 }
            guard i > digits else { throw fail("invalid number") }
        }
        if i < bytes.count, bytes[i] == UInt8(ascii: "e") || bytes[i] == UInt8(ascii: "E") {
            isInteger = false
            i += 1
            if i < bytes.count, bytes[i] == UInt8(ascii: "+") || bytes[i] == UInt8(ascii: "-") { i += 1 }
            let digits = i
            while i < bytes.count, Self.isDigit(bytes[i]) { i += 1 }
            guard i > digits else { throw fail("invalid number") }
        }
        if isInteger && exact {
            if negative { return .int(magnitude) }
            if magnitude != Int64.min { return .int(-magnitude) }
        }
        // strtod underneath: linear in the token's length.
        let text = String(decoding: bytes[start..<i], as: UTF8.self)
        guard let d = Double(text), d.isFinite else { throw fail("number out of range") }
        return .double(d)
    }
}
