/// A JSON document as plain data. Objects keep their key order so that replies read in the order
/// the contract lists their fields, and `null` is written out (the contract has `"signal": null`,
/// which synthesized Codable would omit).
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([(String, JSONValue)])

    public static func == (a: JSONValue, b: JSONValue) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.int(x), .double(y)), let (.double(y), .int(x)): return Double(x) == y
        case let (.string(x), .string(y)): return x == y
        case let (.array(x), .array(y)): return x == y
        case let (.object(x), .object(y)):
            // Key order carries no meaning in JSON (and the decoder does not keep it).
            guard x.count == y.count else { return false }
            return x.allSatisfy { pair in y.contains { $0.0 == pair.0 && $0.1 == pair.1 } }
        default: return false
        }
    }

    public subscript(key: String) -> JSONValue? {
        guard case .object(let pairs) = self else { return nil }
        return pairs.first(where: { $0.0 == key })?.1
    }

    public var stringValue: String? { if case .string(let s) = self { return s }; return nil }
    public var boolValue: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var isNull: Bool { if case .null = self { return true }; return false }
    public var doubleValue: Double? {
        switch self {
        case .int(let i): return Double(i);
        case .double(let d): return d;
        default: return nil
        }
    }
    public var intValue: Int64? {
        switch self {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 9e15: return Int64(d)
        default: return nil
        }
    }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a }; return nil }

    // MARK: Parsing

    /// Parses one JSON document (strict; see JSONParser).
    public static func parse(_ bytes: [UInt8]) throws -> JSONValue {
        try JSONParser.parse(bytes)
    }

    // MARK: Serializing

    public func serialized() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(256)
        write(to: &out)
        return out
    }

    public var text: String { String(decoding: serialized(), as: UTF8.self) }

    public func write(to out: inout [UInt8]) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let i): out.append(contentsOf: String(i).utf8)
        case .double(let d):
            if d.isFinite {
                if d.rounded() == d && abs(d) < 1e15 { out.append(contentsOf: String(Int64(d)).utf8) } else { out.append(contentsOf: "\(d)".utf8) }
            } else {
                out.append(contentsOf: "null".utf8)
            }
        case .string(let s): Self.writeString(s, to: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                item.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let pairs):
            out.append(UInt8(ascii: "{"))
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                Self.writeString(k, to: &out)
                out.append(UInt8(ascii: ":"))
                v.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // Runs of bytes that need no escape go in with one memcpy each: a job's output of a
        // megabyte is one run, and byte by byte it cost milliseconds of the event loop.
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { bytes in
            var run = 0
            for i in 0..<bytes.count where Self.needsEscape(bytes[i]) {
                if i > run { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<i])) }
                writeEscaped(bytes[i], to: &out)
                run = i + 1
            }
            if bytes.count > run { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<bytes.count])) }
        }
        if done == nil {
            for b in s.utf8 { if needsEscape(b) { writeEscaped(b, to: &out) } else { out.append(b) } }
        }
        out.append(UInt8(ascii: "\""))
    }

    @inline(__always) private static func needsEscape(_ b: UInt8) -> Bool {
        b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") || b == 0x7F
    }

    private static func writeEscaped(_ b: UInt8, to out: inout [UInt8]) {
        switch b {
        case UInt8(ascii: "\""): out.append(UInt8(ascii: "\\")); out.append(b)
        case UInt8(ascii: "\\"): out.append(UInt8(ascii: "\\")); out.append(b)
        case 0x0A: out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "n"))
        case 0x0D: out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "r"))
        case 0x09: out.append(UInt8(ascii: "\\")); out.append(UInt8(ascii: "t"))
        case 0..<0x20, 0x7F:
            out.append(contentsOf: "\\u00".utf8)
            out.append(hex[Int(b >> 4)]); out.append(hex[Int(b & 0xF)])
        default: out.append(b)
        }
    }
}

/// Builds objects in contract order with optional values written as `null`.
public struct JSONObjectBuilder {
    public private(set) var pairs: [(String, JSONValue)] = []
    public init() {}
    public mutating func set(_ key: String, _ value: JSONValue) { pairs.append((key, value)) }
    public mutating func set(_ key: String, _ value: String?) { pairs.append((key, value.map(JSONValue.string) ?? .null)) }
    public mutating func set(_ key: String, _ value: Int64?) { pairs.append((key, value.map(JSONValue.int) ?? .null)) }
    public mutating func set(_ key: String, _ value: Int?) { pairs.append((key, value.map { .int(Int64($0)) } ?? .null)) }
    public mutating func set(_ key: String, _ value: Double?) { pairs.append((key, value.map(JSONValue.double) ?? .null)) }
    public mutating func set(_ key: String, _ value: Bool) { pairs.append((key, .bool(value))) }
    public var value: JSONValue { .object(pairs) }
}
