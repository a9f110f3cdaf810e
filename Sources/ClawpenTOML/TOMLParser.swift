// A byte-level recursive-descent parser for the TOML subset described in TOML.swift.

private enum Byte {
    static let tab: UInt8 = 0x09
    static let newline: UInt8 = 0x0A
    static let carriageReturn: UInt8 = 0x0D
    static let space: UInt8 = 0x20
    static let quote: UInt8 = 0x22 // "
    static let hash: UInt8 = 0x23 // #
    static let apostrophe: UInt8 = 0x27 // '
    static let plus: UInt8 = 0x2B
    static let comma: UInt8 = 0x2C
    static let minus: UInt8 = 0x2D
    static let dot: UInt8 = 0x2E
    static let zero: UInt8 = 0x30
    static let nine: UInt8 = 0x39
    static let colon: UInt8 = 0x3A
    static let equals: UInt8 = 0x3D
    static let openBracket: UInt8 = 0x5B
    static let backslash: UInt8 = 0x5C
    static let closeBracket: UInt8 = 0x5D
    static let underscore: UInt8 = 0x5F
    static let openBrace: UInt8 = 0x7B
    static let closeBrace: UInt8 = 0x7D
    static let delete: UInt8 = 0x7F
}

private func isDigit(_ b: UInt8) -> Bool { b >= Byte.zero && b <= Byte.nine }

private func isBareKeyByte(_ b: UInt8) -> Bool {
    (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || isDigit(b) || b == Byte.underscore || b == Byte.minus
}

/// Bytes that end an unquoted value (a number, a boolean, or something invalid).
private func endsBareValue(_ b: UInt8) -> Bool {
    switch b {
    case Byte.space, Byte.tab, Byte.newline, Byte.carriageReturn, Byte.comma, Byte.hash,
        Byte.openBracket, Byte.closeBracket, Byte.openBrace, Byte.closeBrace, Byte.equals:
        true
    default:
        false
    }
}

struct TOMLParser {
    private let bytes: [UInt8]
    private let file: String
    private var pos = 0
    private var line = 1
    /// The tables while the document is read, flat: `tables[0]` is the root, and an entry that
    /// holds a table holds its index here. A `key = value` line appends to `tables[current]`
    /// without walking the header's path again; the nested `TOMLTable`s are built at the end.
    private var tables: [PendingTable] = [PendingTable(line: 0)]
    /// The table that `key = value` lines currently go into.
    private var current = 0
    /// Tables created by a header (as opposed to implied by a longer header), with the header's line.
    private var explicitTables: [Int: Int] = [:]
    /// Nesting depth of the array being parsed, and the line of each element of the outermost one.
    private var arrayDepth = 0
    private var outerElementLines: [Int] = []

    private struct PendingTable {
        enum Value { case value(TOMLValue), table(Int) }
        struct Entry {
            let key: String
            let value: Value
            let line: Int
            let elementLines: [Int]
        }
        let line: Int
        var entries: [Entry] = []
        var positions: [String: Int] = [:]

        init(line: Int) { self.line = line }

        func entry(_ key: String) -> Entry? { positions[key].map { entries[$0] } }

        mutating func append(_ entry: Entry) {
            positions[entry.key] = entries.count
            entries.append(entry)
        }
    }

    init(text: String, file: String) {
        var bytes = Array(text.utf8)
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) } // byte order mark
        self.bytes = bytes
        self.file = file
    }

    // MARK: - Document

    mutating func parseDocument() throws(TOMLError) -> TOMLTable {
        while true {
            skipBlanks()
            guard let b = peek() else { break }
            switch b {
            case Byte.hash, Byte.newline, Byte.carriageReturn:
                try expectEndOfLine(after: nil)
            case Byte.openBracket:
                try parseHeader()
                try expectEndOfLine(after: "table header")
            default:
                try parseKeyValue()
                try expectEndOfLine(after: "value")
            }
        }
        return build(0)
    }

    /// The nested tables, built once, each entry visited once.
    private func build(_ index: Int) -> TOMLTable {
        let t = tables[index]
        return TOMLTable(
            line: t.line,
            entries: t.entries.map { e in
                switch e.value {
                case .value(let v): TOMLTable.Entry(key: e.key, value: v, line: e.line, elementLines: e.elementLines)
                case .table(let sub): TOMLTable.Entry(key: e.key, value: .table(build(sub)), line: e.line)
                }
            })
    }

    // MARK: - Low-level scanning

    private func peek(_ offset: Int = 0) -> UInt8? {
        let i = pos + offset
        return i < bytes.count ? bytes[i] : nil
    }

    private func error(_ message: String, line: Int? = nil) -> TOMLError {
        TOMLError(file: file, line: line ?? self.line, message: message)
    }

    /// Spaces and tabs.
    private mutating func skipBlanks() {
        while let b = peek(), b == Byte.space || b == Byte.tab { pos += 1 }
    }

    /// A comment from `#` to the end of the line (the newline itself is not consumed).
    private mutating func skipComment() throws(TOMLError) {
        guard peek() == Byte.hash else { return }
        while let b = peek(), b != Byte.newline {
            if b == Byte.carriageReturn && peek(1) == Byte.newline { break }
            if (b < 0x20 && b != Byte.tab) || b == Byte.delete {
                throw error("control character \(describeByte(b)) in comment")
            }
            pos += 1
        }
    }

    /// Consumes one newline (LF or CRLF) if there is one. Returns false at anything else.
    private mutating func consumeNewline() throws(TOMLError) -> Bool {
        if peek() == Byte.newline {
            pos += 1
            line += 1
            return true
        }
        if peek() == Byte.carriageReturn {
            guard peek(1) == Byte.newline else { throw error("carriage return not followed by a newline") }
            pos += 2
            line += 1
            return true
        }
        return false
    }

    /// Blanks, an optional comment, then a newline or the end of the file.
    private mutating func expectEndOfLine(after what: String?) throws(TOMLError) {
        skipBlanks()
        try skipComment()
        if peek() == nil { return }
        if try consumeNewline() { return }
        let found = describeHere()
        if let what {
            throw error("unexpected \(found) after the \(what); expected the end of the line (or a # comment)")
        }
        throw error("unexpected \(found)")
    }

    /// Blanks, comments and newlines (inside arrays).
    private mutating func skipBlanksCommentsAndNewlines() throws(TOMLError) {
        while true {
            skipBlanks()
            try skipComment()
            if try !consumeNewline() { return }
        }
    }

    private func describeByte(_ b: UInt8) -> String {
        switch b {
        case Byte.newline: return "end of line"
        case Byte.tab: return "tab"
        case 0x21...0x7E: return "'\(Character(Unicode.Scalar(b)))'"
        default:
            let digits = String(b, radix: 16, uppercase: true)
            return "byte 0x\(digits.count < 2 ? "0" + digits : digits)"
        }
    }

    /// What is at the current position, for messages: `'x'`, `end of line`, `end of file`, or a word.
    private func describeHere() -> String {
        guard let b = peek() else { return "end of file" }
        if b == Byte.newline || b == Byte.carriageReturn { return "end of line" }
        var end = pos
        while end < bytes.count, !endsBareValue(bytes[end]), end - pos < 40 { end += 1 }
        if end - pos > 1 { return "'\(String(decoding: bytes[pos..<end], as: UTF8.self))'" }
        if b >= 0x80 {
            var end = pos + 1
            while end < bytes.count, bytes[end] & 0xC0 == 0x80 { end += 1 }
            return "'\(String(decoding: bytes[pos..<end], as: UTF8.self))'"
        }
        return describeByte(b)
    }

    // MARK: - Keys

    private mutating func parseKey() throws(TOMLError) -> String {
        guard let b = peek() else { throw error("expected a key, found end of file") }
        switch b {
        case Byte.quote:
            if peek(1) == Byte.quote && peek(2) == Byte.quote {
                throw error("multi-line strings (\"\"\") are not supported")
            }
            return try parseBasicString()
        case Byte.apostrophe:
            if peek(1) == Byte.apostrophe && peek(2) == Byte.apostrophe {
                throw error("multi-line literal strings (''') are not supported")
            }
            return try parseLiteralString()
        case _ where isBareKeyByte(b):
            let start = pos
            while let c = peek(), isBareKeyByte(c) { pos += 1 }
            return String(decoding: bytes[start..<pos], as: UTF8.self)
        case Byte.equals:
            throw error("missing key before '='")
        default:
            throw error("expected a key, found \(describeHere()) (bare keys may contain only A-Z, a-z, 0-9, '_' and '-'; quote other keys)")
        }
    }

    // MARK: - Table headers

    private mutating func parseHeader() throws(TOMLError) {
        let headerLine = line
        pos += 1 // [
        if peek() == Byte.openBracket {
            throw error("arrays of tables ('[[...]]') are not supported; use a [table] per item")
        }
        var path: [String] = []
        while true {
            skipBlanks()
            if path.isEmpty && peek() == Byte.closeBracket { throw error("empty table name '[]'") }
            guard path.count < TOMLDocument.maxDepth else {
                throw error("table header nested deeper than \(TOMLDocument.maxDepth) parts")
            }
            path.append(try parseKey())
            skipBlanks()
            guard let b = peek() else { throw error("unterminated table header: expected ']'") }
            if b == Byte.dot {
                pos += 1
                continue
            }
            if b == Byte.closeBracket {
                pos += 1
                break
            }
            throw error("expected '.' or ']' in table header, found \(describeHere())")
        }
        let name = path.map(renderKey).joined(separator: ".")
        // Walk the path from the root, creating missing tables; fail where a key on the way is
        // not a table.
        var table = 0
        for key in path {
            if let existing = tables[table].entry(key) {
                guard case .table(let sub) = existing.value else {
                    let type: String
                    if case .value(let v) = existing.value { type = v.typeName } else { type = "table" }
                    throw error(
                        "cannot define table [\(name)]: key '\(key)' was already set to \(withArticle(type)) on line \(existing.line)",
                        line: headerLine)
                }
                table = sub
            } else {
                tables.append(PendingTable(line: headerLine))
                let sub = tables.count - 1
                tables[table].append(.init(key: key, value: .table(sub), line: headerLine, elementLines: []))
                table = sub
            }
        }
        if let first = explicitTables[table] {
            throw error("table [\(name)] is defined twice (first on line \(first))", line: headerLine)
        }
        explicitTables[table] = headerLine
        current = table
    }

    // MARK: - Key/value pairs

    private mutating func parseKeyValue() throws(TOMLError) {
        let keyLine = line
        let key = try parseKey()
        skipBlanks()
        if peek() == Byte.dot {
            throw error("dotted keys ('\(renderKey(key)).… = …') are not supported; use a [\(renderKey(key))] table header")
        }
        guard peek() == Byte.equals else {
            throw error("expected '=' after key '\(key)', found \(describeHere())")
        }
        pos += 1
        skipBlanks()
        if peek() == nil || peek() == Byte.newline || peek() == Byte.carriageReturn || peek() == Byte.hash {
            throw error("missing value for key '\(key)'")
        }
        outerElementLines = []
        let value = try parseValue()
        if let existing = tables[current].entry(key) {
            throw error("duplicate key '\(key)' (first defined on line \(existing.line))", line: keyLine)
        }
        tables[current].append(.init(key: key, value: .value(value), line: keyLine, elementLines: outerElementLines))
    }

    // MARK: - Values

    private mutating func parseValue() throws(TOMLError) -> TOMLValue {
        guard let b = peek() else { throw error("expected a value, found end of file") }
        switch b {
        case Byte.quote:
            if peek(1) == Byte.quote && peek(2) == Byte.quote {
                throw error("multi-line strings (\"\"\") are not supported; use a single-line string with \\n escapes")
            }
            return .string(try parseBasicString())
        case Byte.apostrophe:
            if peek(1) == Byte.apostrophe && peek(2) == Byte.apostrophe {
                throw error("multi-line literal strings (''') are not supported")
            }
            return .string(try parseLiteralString())
        case Byte.openBracket:
            return try parseArray()
        case Byte.openBrace:
            throw error("inline tables ('{ ... }') are not supported; use a [table] header")
        default:
            return try parseBareValue()
        }
    }

    private mutating func parseArray() throws(TOMLError) -> TOMLValue {
        let openLine = line
        guard arrayDepth < TOMLDocument.maxDepth else {
            throw error("arrays nested deeper than \(TOMLDocument.maxDepth)")
        }
        pos += 1 // [
        arrayDepth += 1
        defer { arrayDepth -= 1 }
        var elements: [TOMLValue] = []
        while true {
            try skipBlanksCommentsAndNewlines()
            guard let b = peek() else { throw error("unterminated array (opened on line \(openLine)): expected ']'") }
            if b == Byte.closeBracket {
                pos += 1
                return .array(elements)
            }
            if b == Byte.comma { throw error("expected a value in array, found ','") }
            if arrayDepth == 1 { outerElementLines.append(line) }
            elements.append(try parseValue())
            try skipBlanksCommentsAndNewlines()
            guard let c = peek() else { throw error("unterminated array (opened on line \(openLine)): expected ']'") }
            if c == Byte.comma {
                pos += 1
            } else if c == Byte.closeBracket {
                pos += 1
                return .array(elements)
            } else {
                throw error("expected ',' or ']' in array, found \(describeHere())")
            }
        }
    }

    /// `"..."`; the opening quote is at `pos`.
    private mutating func parseBasicString() throws(TOMLError) -> String {
        pos += 1
        var out: [UInt8] = []
        while true {
            guard let b = peek() else { throw error("unterminated string: expected '\"'") }
            switch b {
            case Byte.quote:
                pos += 1
                return String(decoding: out, as: UTF8.self)
            case Byte.newline, Byte.carriageReturn:
                throw error("unterminated string: expected '\"' before the end of the line (multi-line strings are not supported)")
            case Byte.backslash:
                pos += 1
                try parseEscape(into: &out)
            default:
                if (b < 0x20 && b != Byte.tab) || b == Byte.delete {
                    throw error("control character \(describeByte(b)) in string; use an escape such as \\u0000")
                }
                out.append(b)
                pos += 1
            }
        }
    }

    /// The escape after a backslash (already consumed).
    private mutating func parseEscape(into out: inout [UInt8]) throws(TOMLError) {
        guard let e = peek() else { throw error("unterminated string: expected '\"'") }
        pos += 1
        switch e {
        case Byte.quote: out.append(Byte.quote)
        case Byte.backslash: out.append(Byte.backslash)
        case UInt8(ascii: "n"): out.append(Byte.newline)
        case UInt8(ascii: "t"): out.append(Byte.tab)
        case UInt8(ascii: "r"): out.append(Byte.carriageReturn)
        case UInt8(ascii: "b"): out.append(0x08)
        case UInt8(ascii: "f"): out.append(0x0C)
        case UInt8(ascii: "u"), UInt8(ascii: "U"):
            let count = e == UInt8(ascii: "u") ? 4 : 8
            var value: UInt32 = 0
            for _ in 0..<count {
                guard let h = peek(), let digit = hexValue(h) else {
                    throw error("invalid escape: \\\(Character(Unicode.Scalar(e))) needs \(count) hexadecimal digits")
                }
                value = value << 4 | digit
                pos += 1
            }
            guard let scalar = Unicode.Scalar(value) else {
                throw error("invalid escape: U+\(String(value, radix: 16, uppercase: true)) is not a Unicode scalar value")
            }
            UTF8.encode(scalar) { out.append($0) }
        case Byte.newline, Byte.carriageReturn:
            throw error("a backslash at the end of the line (line continuation) is only valid in multi-line strings, which are not supported")
        default:
            let shown = e >= 0x21 && e <= 0x7E ? "'\\\(Character(Unicode.Scalar(e)))'" : describeByte(e)
            throw error("invalid escape \(shown) in string (valid: \\\" \\\\ \\n \\t \\r \\b \\f \\uXXXX \\UXXXXXXXX)")
        }
    }

    private func hexValue(_ b: UInt8) -> UInt32? {
        switch b {
        case Byte.zero...Byte.nine: UInt32(b - Byte.zero)
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt32(b - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt32(b - UInt8(ascii: "A") + 10)
        default: nil
        }
    }

    /// `'...'`; no escapes.
    private mutating func parseLiteralString() throws(TOMLError) -> String {
        pos += 1
        let start = pos
        while true {
            guard let b = peek() else { throw error("unterminated literal string: expected \"'\"") }
            if b == Byte.apostrophe {
                let s = String(decoding: bytes[start..<pos], as: UTF8.self)
                pos += 1
                return s
            }
            if b == Byte.newline || b == Byte.carriageReturn {
                throw error("unterminated literal string: expected \"'\" before the end of the line (multi-line strings are not supported)")
            }
            if (b < 0x20 && b != Byte.tab) || b == Byte.delete {
                throw error("control character \(describeByte(b)) in literal string")
            }
            pos += 1
        }
    }

    /// Booleans, integers, floats, and clear errors for dates and anything unquoted.
    private mutating func parseBareValue() throws(TOMLError) -> TOMLValue {
        let start = pos
        while let b = peek(), !endsBareValue(b) { pos += 1 }
        let token = Array(bytes[start..<pos])
        let text = String(decoding: token, as: UTF8.self)
        guard !token.isEmpty else {
            throw error("expected a value, found \(describeHere())")
        }
        switch text {
        case "true": return .bool(true)
        case "false": return .bool(false)
        case "inf", "+inf": return .float(.infinity)
        case "-inf": return .float(-.infinity)
        case "nan", "+nan", "-nan": return .float(.nan)
        default: break
        }
        if Self.looksLikeDateOrTime(token) {
            throw error("dates and times are not supported (found \(text)); use a string")
        }
        let unsigned = token.first == Byte.plus || token.first == Byte.minus ? token.dropFirst() : token[...]
        if unsigned.count > 1, unsigned.first == Byte.zero,
            let radix = unsigned.dropFirst().first,
            radix == UInt8(ascii: "x") || radix == UInt8(ascii: "o") || radix == UInt8(ascii: "b")
        {
            throw error("hexadecimal, octal and binary integers are not supported (found \(text)); use a decimal integer")
        }
        if let first = unsigned.first, isDigit(first) {
            return try parseNumber(token, text: text)
        }
        if text.hasPrefix("True") || text.hasPrefix("False") || text.hasPrefix("TRUE") || text.hasPrefix("FALSE") {
            throw error("invalid value \(text): booleans are lowercase true or false")
        }
        throw error("invalid value \(text) (strings must be quoted: \(quoted(text)))")
    }

    /// `1979-05-27…` or `07:32…`.
    private static func looksLikeDateOrTime(_ t: [UInt8]) -> Bool {
        if t.count >= 5, t[0..<4].allSatisfy(isDigit), t[4] == Byte.minus { return true }
        if t.count >= 3, t[0..<2].allSatisfy(isDigit), t[2] == Byte.colon { return true }
        return false
    }

    private func parseNumber(_ token: [UInt8], text: String) throws(TOMLError) -> TOMLValue {
        var i = 0
        let n = token.count
        if token[0] == Byte.plus || token[0] == Byte.minus { i = 1 }
        var digits: [UInt8] = Array(token[0..<i])
        var isFloat = false

        // A run of digits with single underscores between digits.
        func digitRun(_ what: String) throws(TOMLError) {
            guard i < n, isDigit(token[i]) else {
                throw error("invalid number \(text): expected a digit \(what)")
            }
            while i < n {
                if isDigit(token[i]) {
                    digits.append(token[i])
                } else if token[i] == Byte.underscore {
                    guard i + 1 < n, isDigit(token[i + 1]) else {
                        throw error("invalid number \(text): '_' must be between two digits")
                    }
                } else {
                    break
                }
                i += 1
            }
        }

        let intStart = i
        try digitRun("")
        let intDigits = i - intStart
        if intDigits > 1 && token[intStart] == Byte.zero {
            throw error("invalid number \(text): leading zeros are not allowed")
        }
        if i < n && token[i] == Byte.dot {
            isFloat = true
            digits.append(Byte.dot)
            i += 1
            try digitRun("after '.'")
        }
        if i < n && (token[i] == UInt8(ascii: "e") || token[i] == UInt8(ascii: "E")) {
            isFloat = true
            digits.append(UInt8(ascii: "e"))
            i += 1
            if i < n && (token[i] == Byte.plus || token[i] == Byte.minus) {
                digits.append(token[i])
                i += 1
            }
            try digitRun("in the exponent")
        }
        guard i == n else {
            throw error("invalid number \(text)")
        }
        let clean = String(decoding: digits, as: UTF8.self)
        if isFloat {
            guard let d = Double(clean), d.isFinite else {
                throw error("float \(text) is out of range")
            }
            return .float(d)
        }
        guard let v = Int64(clean) else {
            throw error("integer \(text) is out of range (64-bit signed)")
        }
        return .integer(v)
    }
}

/// "an integer", "a string".
func withArticle(_ word: String) -> String {
    guard let first = word.first else { return word }
    return ("aeiou".contains(first) ? "an " : "a ") + word
}

/// A key as it would be written in TOML: bare if possible, else quoted.
public func renderKey(_ key: String) -> String {
    if !key.isEmpty, key.utf8.allSatisfy(isBareKeyByte) { return key }
    return quoted(key)
}
