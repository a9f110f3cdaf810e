import ClawpenTOML
import FuzzSupport

// The TOML parser that policies and `serve --config` are read with. As the loader does
// (FileSystem.read), text that is not UTF-8 is refused before the parser sees it. Checked: every
// line a value or an error names is a line of the input; and a document that parses, written
// back out as TOML (headers, quoted keys, escaped strings; not when it holds a float, whose
// text forms are many), parses to the same tables and values.

func text(_ bytes: [UInt8]) -> String? {
    let s = String(decoding: bytes, as: UTF8.self)
    return s.utf8.elementsEqual(bytes) ? s : nil
}

func parse(_ bytes: [UInt8]) -> Result<TOMLDocument, TOMLError>? {
    guard let s = text(bytes) else { return nil }
    do { return .success(try TOMLDocument.parse(s, file: "fuzz.toml")) } catch { return .failure(error) }
}

/// Same keys, same values, same nesting; lines aside.
func same(_ a: TOMLTable, _ b: TOMLTable) -> Bool {
    a.entries.count == b.entries.count && a.entries.allSatisfy { e in b.entry(e.key).map { same(e.value, $0.value) } ?? false }
}

func same(_ a: TOMLValue, _ b: TOMLValue) -> Bool {
    switch (a, b) {
    case let (.table(x), .table(y)): return same(x, y)
    case let (.array(x), .array(y)): return x.count == y.count && zip(x, y).allSatisfy { same($0, $1) }
    default: return a == b
    }
}

func hasFloat(_ v: TOMLValue) -> Bool {
    switch v {
    case .float: return true
    case .array(let a): return a.contains(where: hasFloat)
    case .table(let t): return t.entries.contains { hasFloat($0.value) }
    default: return false
    }
}

func key(_ k: String) -> String {
    let bare =
        !k.isEmpty && k.utf8.allSatisfy { ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F || $0 == 0x2D }
    return bare ? k : string(k)
}

func string(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
        switch u {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        default:
            if u.value < 0x20 || u.value == 0x7F {
                let h = String(u.value, radix: 16, uppercase: true)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            } else {
                out.unicodeScalars.append(u)
            }
        }
    }
    return out + "\""
}

func value(_ v: TOMLValue) -> String {
    switch v {
    case .string(let s): return string(s)
    case .integer(let i): return String(i)
    case .bool(let b): return b ? "true" : "false"
    case .float(let d): return "\(d)"
    case .array(let a): return "[" + a.map(value).joined(separator: ", ") + "]"
    case .table: return "" // never: tables are written as headers
    }
}

func write(_ t: TOMLTable, path: [String], into out: inout String) {
    for e in t.entries {
        if case .table = e.value { continue }
        out += key(e.key) + " = " + value(e.value) + "\n"
    }
    for e in t.entries {
        guard case .table(let sub) = e.value else { continue }
        let p = path + [key(e.key)]
        out += "[" + p.joined(separator: ".") + "]\n"
        write(sub, path: p, into: &out)
    }
}

func checkLines(_ t: TOMLTable, lines: Int) {
    for e in t.entries {
        require(e.line >= 1 && e.line <= lines, "an entry on line \(e.line) of \(lines)")
        require(e.elementLines.allSatisfy { $0 >= e.line && $0 <= lines }, "an element line outside the input")
        if case .table(let sub) = e.value { checkLines(sub, lines: lines) }
    }
}

let harness = Harness(
    name: "toml",
    // The corpus starts from the shipped policies/ (scripts/fuzz --seed copies them).
    seeds: { [] },
    decode: { bytes in blackHole(parse(bytes)) },
    check: { bytes in
        guard let result = parse(bytes) else { return }
        let lines = bytes.reduce(1) { $0 + ($1 == 0x0A ? 1 : 0) }
        switch result {
        case .failure(let e):
            require(e.line >= 0 && e.line <= lines, "an error on line \(e.line) of \(lines): \(e)")
            require(!e.message.isEmpty, "an error without a message")
        case .success(let doc):
            checkLines(doc.root, lines: lines)
            guard !doc.root.entries.contains(where: { hasFloat($0.value) }) else { return }
            var again = ""
            write(doc.root, path: [], into: &again)
            do {
                let reparsed = try TOMLDocument.parse(again, file: "again.toml")
                require(same(reparsed.root, doc.root), "written out and parsed again, the document changed:\n\(again)")
            } catch {
                require(false, "the parser refuses a document written from what it parsed (\(error)):\n\(again)")
            }
        }
    })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
