import ClawpenEgress
@testable import ClawpenPolicy
import ClawpenTOML
import XCTest

/// The allowlist, the restricted ranges and the strict request parser, without a proxy.
final class EgressPolicyTests: XCTestCase {
    func rules(_ texts: [String]) throws -> [EgressRule] {
        try texts.enumerated().map { try EgressRule(parsing: $1, file: "tenants/a.toml", line: $0 + 1) }
    }
    func ip(_ s: String) -> IPAddress { IPAddress(s) ?? IPAddress(bytes: [0, 0, 0, 0])! }

    func testNamesNeedARuleAndSuffixesMatchSubdomainsOnly() throws {
        let allow = try rules(["api.example.com:443", "*.pypi.org:443"])
        let pub = [ip("93.184.215.14")]
        XCTAssertTrue(EgressPolicy.decide(host: "API.Example.com.", port: 443, addresses: pub, allow: allow).allowed, "case and a trailing dot")
        XCTAssertEqual(
            EgressPolicy.decide(host: "api.example.com", port: 443, addresses: pub, allow: allow).rule, "allow \"api.example.com:443\" (tenants/a.toml:1)")
        XCTAssertEqual(
            EgressPolicy.decide(host: "api.example.com", port: 80, addresses: pub, allow: allow).rule, "default deny", "the port is part of the rule")
        XCTAssertTrue(EgressPolicy.decide(host: "files.pypi.org", port: 443, addresses: pub, allow: allow).allowed)
        XCTAssertTrue(EgressPolicy.decide(host: "a.b.pypi.org", port: 443, addresses: pub, allow: allow).allowed)
        XCTAssertFalse(EgressPolicy.decide(host: "pypi.org", port: 443, addresses: pub, allow: allow).allowed, "*.pypi.org is not pypi.org")
        XCTAssertFalse(EgressPolicy.decide(host: "evilpypi.org", port: 443, addresses: pub, allow: allow).allowed)
        XCTAssertFalse(EgressPolicy.decide(host: "pypi.org.evil.com", port: 443, addresses: pub, allow: allow).allowed)
    }

    func testANameThatResolvesIntoARestrictedRangeIsRefusedUnlessTheAddressIsNamed() throws {
        let allow = try rules(["internal.example.com:443", "metadata.example.com:80", "lo.example.com:8080"])
        for (address, range) in [
            ("127.0.0.1", "127.0.0.0/8"), ("10.1.2.3", "10.0.0.0/8"), ("172.20.0.1", "172.16.0.0/12"), ("192.168.1.1", "192.168.0.0/16"),
            ("169.254.169.254", "169.254.0.0/16"), ("100.64.0.1", "100.64.0.0/10"), ("0.0.0.0", "0.0.0.0/8"), ("224.0.0.1", "224.0.0.0/4"),
            ("::1", "::1/128"), ("fd00::1", "fc00::/7"), ("fe80::1", "fe80::/10"), ("::ffff:127.0.0.1", "127.0.0.0/8"), ("::", "::/128"),
            ("64:ff9b:1::a00:1", "64:ff9b:1::/48"), ("2002:7f00:1::1", "2002::/16"), ("::7f00:1", "::/96"),
        ] {
            let d = EgressPolicy.decide(host: "internal.example.com", port: 443, addresses: [ip(address)], allow: allow)
            XCTAssertFalse(d.allowed, address)
            XCTAssertEqual(d.rule, "ssrf \(range)", address)
            XCTAssertTrue(d.message.contains(address) || address.hasPrefix("::ffff") || address == "::7f00:1", d.message)
            // The rule the message suggests is one the policy loader takes.
            if let suggested = d.message.split(separator: "\"").dropFirst().first {
                XCTAssertNoThrow(try rules([String(suggested)]), "\(suggested)")
            }
        }
        // A public address among private ones is the one used.
        let mixed = EgressPolicy.decide(host: "internal.example.com", port: 443, addresses: [ip("10.0.0.1"), ip("93.184.215.14")], allow: allow)
        XCTAssertEqual(mixed.address, ip("93.184.215.14"))
        // Naming the address (or its range) for that port lets the name through.
        let named = try rules(["lo.example.com:8080", "127.0.0.1:8080", "internal.example.com:443", "10.0.0.0/8:443"])
        XCTAssertTrue(EgressPolicy.decide(host: "lo.example.com", port: 8080, addresses: [ip("127.0.0.1")], allow: named).allowed)
        XCTAssertTrue(EgressPolicy.decide(host: "internal.example.com", port: 443, addresses: [ip("10.9.8.7")], allow: named).allowed)
        XCTAssertFalse(EgressPolicy.decide(host: "internal.example.com", port: 443, addresses: [ip("192.168.0.1")], allow: named).allowed)
    }

    func testAddressLiteralsNeedAnAddressRule() throws {
        let allow = try rules(["127.0.0.1:8080", "[::1]:9000", "10.0.0.0/8:443"])
        // Without brackets the port of an IPv6 address is a guess: refused, with the form to use.
        for text in ["::1:9000", "fd00::/8:443"] {
            XCTAssertThrowsError(try rules([text]), text) { XCTAssertTrue("\($0)".contains("takes brackets"), "\($0)") }
        }
        XCTAssertTrue(EgressPolicy.decide(host: "127.0.0.1", port: 8080, addresses: [ip("127.0.0.1")], allow: allow).allowed)
        XCTAssertFalse(EgressPolicy.decide(host: "127.0.0.1", port: 8081, addresses: [ip("127.0.0.1")], allow: allow).allowed)
        XCTAssertTrue(EgressPolicy.decide(host: "[::1]", port: 9000, addresses: [ip("::1")], allow: allow).allowed)
        XCTAssertTrue(EgressPolicy.decide(host: "10.200.0.1", port: 443, addresses: [ip("10.200.0.1")], allow: allow).allowed)
        let meta = EgressPolicy.decide(host: "169.254.169.254", port: 80, addresses: [ip("169.254.169.254")], allow: allow)
        XCTAssertEqual(meta.rule, "ssrf 169.254.0.0/16")
        XCTAssertEqual(EgressPolicy.decide(host: "93.184.215.14", port: 443, addresses: [], allow: allow).rule, "default deny")
    }

    func testMalformedRulesAreRefusedNamingTheEntry() {
        for bad in ["api.example.com", "api.example.com:0", "api.example.com:70000", "*.com:443", "exa mple.com:443", "10.0.0.0/33:443", ":443"] {
            XCTAssertThrowsError(try EgressRule(parsing: bad, file: "f.toml", line: 3), bad) { e in
                XCTAssertTrue("\(e)".contains("f.toml:3"), "\(e)")
            }
        }
    }

    func testTheEgressAndSecretsTablesParseFromATenantFile() throws {
        let text = """
            network = "egress"

            [egress]
            allow = ["api.openai.com:443", "*.pypi.org:443"]

            [secrets.OPENAI]
            env = "OPENAI_API_KEY"
            hosts = ["api.openai.com:443"]

            [secrets.DB]
            env = "DB_PASSWORD"
            expose = "env"
            commands = ["/usr/bin/psql"]
            """
        let root = try TOMLDocument.parse(text, file: "tenants/a.toml").root
        var errors: [PolicyError] = []
        let decoded = PolicyLoader.decode(root, file: "tenants/a.toml", origin: "tenants/a.toml", isTenantFile: true, errors: &errors)
        XCTAssertEqual(errors, [])
        XCTAssertEqual(decoded.values.network, "egress")
        XCTAssertEqual(decoded.values.egressAllow?.map(\.text), ["api.openai.com:443", "*.pypi.org:443"])
        let secrets = try XCTUnwrap(decoded.values.secrets)
        XCTAssertEqual(secrets.map(\.name), ["OPENAI", "DB"])
        XCTAssertTrue(secrets[0].substitutes(host: "api.openai.com", port: 443, tls: true))
        XCTAssertFalse(secrets[0].substitutes(host: "evil.com", port: 443, tls: true))
        XCTAssertEqual(secrets[1].exposure, .env(commands: ["/usr/bin/psql"]))
        XCTAssertFalse(secrets[1].substitutes(host: "api.openai.com", port: 443, tls: true), "expose = env is never substituted")
        for broken in [
            "[secrets.X]\nhosts = [\"a.com:443\"]\n", "[secrets.X]\nenv = \"X\"\n", "[secrets.X]\nenv = \"X\"\nexpose = \"env\"\n",
            "[secrets.X]\nenv = \"X\"\nhosts = [\"10.0.0.0/8:443\"]\n", "[egress]\nallowed = []\n",
        ] {
            var errs: [PolicyError] = []
            _ = PolicyLoader.decode(try TOMLDocument.parse(broken, file: "t.toml").root, file: "t.toml", origin: "t.toml", isTenantFile: true, errors: &errs)
            XCTAssertFalse(errs.isEmpty, broken)
        }
    }

    func testRequestTargets() {
        XCTAssertEqual(EgressTarget(url: "https://API.example.com/v1"), EgressTarget(host: "api.example.com", port: 443, tls: true))
        XCTAssertEqual(EgressTarget(url: "http://h:8080/x?y"), EgressTarget(host: "h", port: 8080, tls: false))
        XCTAssertEqual(EgressTarget(url: "http://user:pw@h/"), EgressTarget(host: "h", port: 80, tls: false))
        XCTAssertEqual(EgressTarget(url: "http://[::1]:9000/"), EgressTarget(host: "::1", port: 9000, tls: false))
        XCTAssertNil(EgressTarget(url: "http://h:99999/"))
    }

    // MARK: The request head

    func head(_ s: String) -> Result<RequestHead, RequestHead.Failure> { RequestHead.parse(Array(s.utf8), maxHeaders: 8) }

    func testStrictRequestHeads() {
        guard case .success(let h) = head("GET http://a.com/x HTTP/1.1\r\nHost: a.com\r\nX-K:  v \r\n\r\n") else { return XCTFail() }
        XCTAssertEqual(h.method, "GET")
        XCTAssertEqual(h.header("x-k"), "v")
        for bad in [
            "GARBAGE\r\n\r\n", "GET  http://a/ HTTP/1.1\r\n\r\n", "GET http://a/ HTTP/2\r\n\r\n", "get http://a/ HTTP/1.1\r\n\r\n",
            "GET http://a/ HTTP/1.1\nHost: a\r\n\r\n", "GET http://a/ HTTP/1.1\r\nBad Name: x\r\n\r\n", "GET http://a/ HTTP/1.1\r\n: x\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST http://a/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ] {
            guard case .failure(let f) = head(bad) else { XCTFail(bad); continue }
            XCTAssertEqual(f.status, 400, bad)
        }
        let flood = "GET http://a/ HTTP/1.1\r\n" + (0..<9).map { "H\($0): x\r\n" }.joined() + "\r\n"
        guard case .failure(let f) = head(flood) else { return XCTFail() }
        XCTAssertEqual(f.status, 431)
    }
}
