// The TOML data model for the subset of TOML that policy files use.
//
// Supported: comments, `[table]` and `[a.b]` headers, `key = value` with bare and quoted keys,
// basic strings with escapes, literal strings, integers (with `_` separators and a sign),
// floats (including inf and nan), booleans and arrays (multi-line, nested, trailing comma).
// Rejected with an error naming the line: inline tables, dates and times, multi-line strings,
// arrays of tables, dotted keys in `key = value`, hexadecimal/octal/binary integers.
// No Foundation: this module is loaded by the supervisor and stays small.
//
// Parsing costs a small constant per byte whatever the input: tables are found by index, not
// by walking the header's path again for every key, duplicate keys through a hash map, and the
// two shapes whose cost is not bounded by the size (the recursion of nested arrays, a header
// with thousands of dotted parts) are capped at `TOMLDocument.maxDepth`, with an error naming
// the line.

/// A parse error: the file, the 1-based line and what is wrong there.
public struct TOMLError: Error, CustomStringConvertible, Equatable, Sendable {
    public let file: String
    public let line: Int
    public let message: String

    public init(file: String, line: Int, message: String) {
        self.file = file
        self.line = line
        self.message = message
    }

    /// `policies/tiers/free.toml:7: expected '=' after key 'pids_max'`
    public var description: String { "\(file):\(line): \(message)" }
}

/// A TOML value. Entries of a table carry the line they were defined on.
public enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int64)
    case float(Double)
    case bool(Bool)
    case array([TOMLValue])
    case table(TOMLTable)

    /// The TOML type name, for error messages: "string", "integer", "float", "boolean", "array", "table".
    public var typeName: String {
        switch self {
        case .string: "string"
        case .integer: "integer"
        case .float: "float"
        case .bool: "boolean"
        case .array: "array"
        case .table: "table"
        }
    }

    /// A short description for error messages, e.g. `string "64"`, `integer 64`, `table`.
    public var shortDescription: String {
        switch self {
        case .string(let s): "string \(quoted(s))"
        case .integer(let i): "integer \(i)"
        case .float(let d): "float \(d)"
        case .bool(let b): "boolean \(b)"
        case .array(let a): "array of \(a.count) element\(a.count == 1 ? "" : "s")"
        case .table: "table"
        }
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var integerValue: Int64? {
        if case .integer(let i) = self { return i }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    /// A float, or an integer converted to a float.
    public var numberValue: Double? {
        switch self {
        case .float(let d): d
        case .integer(let i): Double(i)
        default: nil
        }
    }

    public var arrayValue: [TOMLValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var tableValue: TOMLTable? {
        if case .table(let t) = self { return t }
        return nil
    }
}

/// A table: its entries in the order they were defined.
public struct TOMLTable: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        public let key: String
        public let value: TOMLValue
        /// The 1-based line of the key (for a table: of the header that created it).
        public let line: Int
        /// For an array value: the 1-based line of each element (of the outer array only), so
        /// that a list written one entry per line can name the line of the entry that matched.
        public let elementLines: [Int]

        public init(key: String, value: TOMLValue, line: Int, elementLines: [Int] = []) {
            self.key = key
            self.value = value
            self.line = line
            self.elementLines = elementLines
        }
    }

    public let entries: [Entry]
    /// The line of the header that defined (or first implied) this table; 0 for the root table.
    public let line: Int
    /// Where each key is in `entries`, so that a lookup costs the same in a table of 100,000
    /// keys as in one of ten (readers look keys up one by one).
    private let positions: [String: Int]

    public init(line: Int = 0, entries: [Entry] = []) {
        self.line = line
        self.entries = entries
        var positions: [String: Int] = [:]
        positions.reserveCapacity(entries.count)
        for (i, e) in entries.enumerated() where positions[e.key] == nil { positions[e.key] = i }
        self.positions = positions
    }

    public var keys: [String] { entries.map(\.key) }
    public var isEmpty: Bool { entries.isEmpty }

    public func entry(_ key: String) -> Entry? {
        positions[key].map { entries[$0] }
    }

    public subscript(key: String) -> TOMLValue? {
        entry(key)?.value
    }

    public static func == (a: TOMLTable, b: TOMLTable) -> Bool { a.line == b.line && a.entries == b.entries }
}

/// A parsed TOML document.
public struct TOMLDocument: Sendable, Equatable {
    public let root: TOMLTable

    /// Deepest nesting of arrays, and most parts of a table header (`[a.b.c]` has three). Policy
    /// files use two.
    public static let maxDepth = 32

    public static func parse(_ text: String, file: String) throws(TOMLError) -> TOMLDocument {
        var parser = TOMLParser(text: text, file: file)
        return TOMLDocument(root: try parser.parseDocument())
    }
}

/// `"text"` with quotes, backslashes and control characters escaped, for messages.
public func quoted(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        case "\r": out += "\\r"
        default:
            if scalar.value < 0x20 || scalar.value == 0x7F {
                out += "\\u" + hex4(scalar.value)
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

private func hex4(_ v: UInt32) -> String {
    let digits = String(v, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
}
