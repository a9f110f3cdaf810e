import XCTest

@testable import ClawpenTOML

final class TOMLTests: XCTestCase {
    private func parse(_ text: String, file: String = "test.toml") throws -> TOMLTable {
        try TOMLDocument.parse(text, file: file).root
    }

    /// Asserts that parsing fails on `line` with a message containing `fragment`.
    private func assertError(
        _ text: String, line: Int, _ fragment: String, file: StaticString = #filePath, testLine: UInt = #line
    ) {
        do {
            let doc = try TOMLDocument.parse(text, file: "t.toml")
            XCTFail("parsed without error: \(doc.root)", file: file, line: testLine)
        } catch {
            XCTAssertEqual(error.file, "t.toml", file: file, line: testLine)
            XCTAssertEqual(error.line, line, "message: \(error.message)", file: file, line: testLine)
            XCTAssertTrue(
                error.message.contains(fragment), "'\(error.message)' does not contain '\(fragment)'",
                file: file, line: testLine)
            XCTAssertEqual(error.description, "t.toml:\(line): \(error.message)", file: file, line: testLine)
        }
    }

    // MARK: - Constructs

    func testEmptyAndCommentOnlyDocuments() throws {
        XCTAssertTrue(try parse("").isEmpty)
        XCTAssertTrue(try parse("\n\n   \n\t\n").isEmpty)
        XCTAssertTrue(try parse("# only a comment\n  # another\n").isEmpty)
        XCTAssertTrue(try parse("# no trailing newline").isEmpty)
    }

    func testScalarsAndLines() throws {
        let t = try parse(
            """
            # header comment
            name = "acme"   # trailing comment
            count = 42
            big = 1_000_000
            negative = -17
            positive = +5
            zero = 0
            ratio = 0.5
            exp = 1e3
            exp2 = -2.5E-2
            under = 1_0.2_5
            yes = true
            no = false
            """)
        XCTAssertEqual(t.keys, ["name", "count", "big", "negative", "positive", "zero", "ratio", "exp", "exp2", "under", "yes", "no"])
        XCTAssertEqual(t["name"], .string("acme"))
        XCTAssertEqual(t["count"], .integer(42))
        XCTAssertEqual(t["big"], .integer(1_000_000))
        XCTAssertEqual(t["negative"], .integer(-17))
        XCTAssertEqual(t["positive"], .integer(5))
        XCTAssertEqual(t["zero"], .integer(0))
        XCTAssertEqual(t["ratio"], .float(0.5))
        XCTAssertEqual(t["exp"], .float(1000))
        XCTAssertEqual(t["exp2"], .float(-0.025))
        XCTAssertEqual(t["under"], .float(10.25))
        XCTAssertEqual(t["yes"], .bool(true))
        XCTAssertEqual(t["no"], .bool(false))
        XCTAssertEqual(t.entry("name")?.line, 2)
        XCTAssertEqual(t.entry("count")?.line, 3)
        XCTAssertEqual(t.entry("no")?.line, 13)
    }

    func testIntegerLimits() throws {
        let t = try parse("max = 9223372036854775807\nmin = -9223372036854775808\n")
        XCTAssertEqual(t["max"], .integer(.max))
        XCTAssertEqual(t["min"], .integer(.min))
    }

    func testSpecialFloats() throws {
        let t = try parse("a = inf\nb = -inf\nc = +inf\nd = nan\n")
        XCTAssertEqual(t["a"], .float(.infinity))
        XCTAssertEqual(t["b"], .float(-.infinity))
        XCTAssertEqual(t["c"], .float(.infinity))
        XCTAssertTrue(t["d"]?.numberValue?.isNaN ?? false)
    }

    func testBasicStringEscapes() throws {
        let t = try parse(#"s = "q\" b\\ n\n t\t r\r u\u00e9 U\U0001F600 b\b f\f # not a comment""# + "\n")
        XCTAssertEqual(t["s"], .string("q\" b\\ n\n t\t r\r u\u{e9} U\u{1F600} b\u{08} f\u{0C} # not a comment"))
    }

    func testLiteralStringsAndUnicode() throws {
        let t = try parse(#"path = 'C:\Users\no "escapes"'"# + "\n" + "name = \"caf\u{e9} \u{1F600}\"\n")
        XCTAssertEqual(t["path"], .string(#"C:\Users\no "escapes""#))
        XCTAssertEqual(t["name"], .string("caf\u{e9} \u{1F600}"))
    }

    func testEmptyStrings() throws {
        let t = try parse("a = \"\"\nb = ''\n")
        XCTAssertEqual(t["a"], .string(""))
        XCTAssertEqual(t["b"], .string(""))
    }

    func testQuotedKeys() throws {
        let t = try parse(#""with space" = 1"# + "\n" + #"'lit.key' = 2"# + "\n" + "bare-key_9 = 3\n" + #""" = 4"# + "\n")
        XCTAssertEqual(t.keys, ["with space", "lit.key", "bare-key_9", ""])
        XCTAssertEqual(t["lit.key"], .integer(2))
    }

    func testArrays() throws {
        let t = try parse(
            """
            empty = []
            ints = [1, 2, 3]
            trailing = ["a", "b",]
            mixed = [1, "two", 3.0, true]
            nested = [[1, 2], ["x"], []]
            multi = [
              "root",   # the operator
              # a comment line inside the array
              'admin',

            ]
            after = 1
            """)
        XCTAssertEqual(t["empty"], .array([]))
        XCTAssertEqual(t["ints"], .array([.integer(1), .integer(2), .integer(3)]))
        XCTAssertEqual(t["trailing"], .array([.string("a"), .string("b")]))
        XCTAssertEqual(t["mixed"], .array([.integer(1), .string("two"), .float(3), .bool(true)]))
        XCTAssertEqual(t["nested"], .array([.array([.integer(1), .integer(2)]), .array([.string("x")]), .array([])]))
        XCTAssertEqual(t["multi"], .array([.string("root"), .string("admin")]))
        XCTAssertEqual(t.entry("multi")?.line, 6)
        XCTAssertEqual(t.entry("after")?.line, 12)
    }

    func testTables() throws {
        let t = try parse(
            """
            top = 1

            [operators]
            users = ["root"]
            groups = []

            [tenants.acme]
            users = ["svc"]

            [ tenants . "beta team" ]
            users = []

            [tenants]
            note = "super-table defined after its children"
            """)
        XCTAssertEqual(t.keys, ["top", "operators", "tenants"])
        let operators = try XCTUnwrap(t["operators"]?.tableValue)
        XCTAssertEqual(operators.line, 3)
        XCTAssertEqual(t.entry("operators")?.line, 3)
        XCTAssertEqual(operators["users"], .array([.string("root")]))
        XCTAssertEqual(operators.entry("groups")?.line, 5)
        let tenants = try XCTUnwrap(t["tenants"]?.tableValue)
        XCTAssertEqual(tenants.keys, ["acme", "beta team", "note"])
        XCTAssertEqual(tenants.line, 7) // first implied by [tenants.acme]
        XCTAssertEqual(tenants["acme"]?.tableValue?["users"], .array([.string("svc")]))
        XCTAssertEqual(tenants["beta team"]?.tableValue?.line, 10)
        XCTAssertEqual(tenants.entry("note")?.line, 14)
    }

    func testCRLFAndByteOrderMark() throws {
        let t = try parse("\u{FEFF}a = 1\r\n# c\r\nb = [\r\n 2,\r\n]\r\nc = 'x'\r\n")
        XCTAssertEqual(t["a"], .integer(1))
        XCTAssertEqual(t["b"], .array([.integer(2)]))
        XCTAssertEqual(t.entry("c")?.line, 6)
    }

    func testValueAccessors() throws {
        let t = try parse("s = 'x'\ni = 3\nf = 1.5\nb = true\na = [1]\n[t]\n")
        XCTAssertEqual(t["s"]?.stringValue, "x")
        XCTAssertEqual(t["i"]?.integerValue, 3)
        XCTAssertEqual(t["i"]?.numberValue, 3)
        XCTAssertEqual(t["f"]?.numberValue, 1.5)
        XCTAssertNil(t["s"]?.numberValue)
        XCTAssertEqual(t["b"]?.boolValue, true)
        XCTAssertEqual(t["a"]?.arrayValue, [.integer(1)])
        XCTAssertNotNil(t["t"]?.tableValue)
        XCTAssertEqual(
            ["s", "i", "f", "b", "a", "t"].compactMap { t[$0]?.typeName },
            ["string", "integer", "float", "boolean", "array", "table"])
        XCTAssertEqual(t["s"]?.shortDescription, #"string "x""#)
    }

    // MARK: - Errors, each with its line

    func testErrorDescriptionFormat() {
        do {
            _ = try TOMLDocument.parse("a = 1\n\n# x\n\n\n\npids_max 64\n", file: "policies/tiers/free.toml")
            XCTFail("expected an error")
        } catch {
            XCTAssertEqual(error.description, "policies/tiers/free.toml:7: expected '=' after key 'pids_max', found '64'")
        }
    }

    func testSyntaxErrors() {
        assertError("a = 1\nb 2\n", line: 2, "expected '=' after key 'b'")
        assertError("a = 1\nb\n", line: 2, "expected '=' after key 'b', found end of line")
        assertError("a =\n", line: 1, "missing value for key 'a'")
        assertError("a = # nothing\n", line: 1, "missing value for key 'a'")
        assertError("= 1\n", line: 1, "missing key before '='")
        assertError("\n\nké = 1\n", line: 3, "expected '=' after key 'k'")
        assertError("a = 1 2\n", line: 1, "after the value")
        assertError("a = \"x\" y\n", line: 1, "after the value")
        assertError("[t] x\n", line: 1, "after the table header")
        assertError("a = hello\n", line: 1, #"strings must be quoted: "hello""#)
        assertError("a = True\n", line: 1, "booleans are lowercase")
        assertError("[]\n", line: 1, "empty table name")
        assertError("[a\n", line: 1, "expected '.' or ']'")
        assertError("[a.]\n", line: 1, "expected a key")
        assertError("a = 1\rb = 2\n", line: 1, "carriage return")
    }

    func testDuplicates() {
        assertError("a = 1\n\na = 2\n", line: 3, "duplicate key 'a' (first defined on line 1)")
        assertError("[t]\nx = 1\n[u]\n[t]\n", line: 4, "table [t] is defined twice (first on line 1)")
        assertError("t = 1\n[t]\n", line: 2, "key 't' was already set to an integer on line 1")
        assertError("[t.x]\n[t]\nx = 1\n", line: 3, "duplicate key 'x' (first defined on line 1)")
        assertError("[a]\nb = 1\n[a.b]\n", line: 3, "cannot define table [a.b]")
    }

    func testUnsupportedConstructs() {
        assertError("a = 1\nt = { x = 1 }\n", line: 2, "inline tables")
        assertError("\nd = 1979-05-27\n", line: 2, "dates and times are not supported")
        assertError("d = 1979-05-27T07:32:00Z\n", line: 1, "dates and times are not supported")
        assertError("t = 07:32:00\n", line: 1, "dates and times are not supported")
        assertError("s = \"\"\"\nmulti\n\"\"\"\n", line: 1, "multi-line strings")
        assertError("s = '''\nmulti\n'''\n", line: 1, "multi-line literal strings")
        assertError("a = 1\n[[items]]\n", line: 2, "arrays of tables")
        assertError("a.b = 1\n", line: 1, "dotted keys")
        assertError("h = 0xFF\n", line: 1, "hexadecimal, octal and binary")
        assertError("o = 0o17\n", line: 1, "hexadecimal, octal and binary")
        assertError("b = 0b101\n", line: 1, "hexadecimal, octal and binary")
    }

    func testInvalidNumbers() {
        assertError("n = 012\n", line: 1, "leading zeros")
        assertError("n = 1__0\n", line: 1, "'_' must be between two digits")
        assertError("n = 10_\n", line: 1, "'_' must be between two digits")
        assertError("n = 1.\n", line: 1, "expected a digit after '.'")
        assertError("n = 1e\n", line: 1, "expected a digit in the exponent")
        assertError("n = 12abc\n", line: 1, "invalid number 12abc")
        assertError("n = 9223372036854775808\n", line: 1, "out of range")
        assertError("n = 1e999\n", line: 1, "out of range")
    }

    func testInvalidStrings() {
        assertError("a = 1\ns = \"open\n", line: 2, "unterminated string")
        assertError("s = \"open", line: 1, "unterminated string")
        assertError("s = 'open\n", line: 1, "unterminated literal string")
        assertError(#"s = "bad \q escape""#, line: 1, #"invalid escape '\q'"#)
        assertError(#"s = "\u12""#, line: 1, "needs 4 hexadecimal digits")
        assertError(#"s = "\uD800""#, line: 1, "not a Unicode scalar value")
        assertError("s = \"tab\tok\u{01}\"\n", line: 1, "control character")
    }

    func testInvalidArrays() {
        assertError("a = [1, 2\n\nb = 3\n", line: 3, "expected ',' or ']' in array")
        assertError("a = [\n1,\n", line: 3, "unterminated array (opened on line 1)")
        assertError("a = [,]\n", line: 1, "expected a value in array")
        assertError("a = [1,,2]\n", line: 1, "expected a value in array")
        assertError("a = [\n  {x = 1},\n]\n", line: 2, "inline tables")
    }
}
