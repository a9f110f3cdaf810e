import ClawpenEgress
@testable import ClawpenPolicy
import ClawpenTOML
import XCTest

/// What the proxy sends upstream for a request it read (RequestHead.upstream): the Host it
/// checks and rewrites, the target it forwards, and where a secret may go.
final class EgressRequestTests: XCTestCase {
    func head(_ s: String) throws -> RequestHead {
        switch RequestHead.parse(Array(s.utf8), maxHeaders: 16) {
        case .success(let h): return h
        case .failure(let f): throw f
        }
    }
    func rule(_ t: String) throws -> EgressRule { try EgressRule(parsing: t, file: "tenants/a.toml", line: 1) }
    func sub(_ hosts: [String], headers: [String] = SecretBinding.defaultHeaders, plain: Bool = false) throws -> ProxyState.Substitution {
        ProxyState.Substitution(
            name: "K", placeholder: Array("clawpen-ph-K".utf8), value: Array("REAL".utf8), hosts: try hosts.map(rule), headers: headers,
            allowPlainHTTP: plain)
    }
    func up(_ h: RequestHead, _ host: String, _ port: Int, tls: Bool, _ subs: [ProxyState.Substitution]) -> Result<String, RequestHead.Refusal> {
        h.upstream(host: host, port: port, intercepted: tls, substitutions: subs).map { String(decoding: $0.bytes, as: UTF8.self) }
    }
    func refusal(_ r: Result<String, RequestHead.Refusal>) -> RequestHead.Refusal? {
        if case .failure(let f) = r { return f }
        return nil
    }

    // Finding: a secret went out over plain HTTP to a name.
    func testASecretIsNotSubstitutedOverPlainHTTPToANameWithoutTheOptIn() throws {
        let h = try head("GET http://api.openai.com:443/ HTTP/1.1\r\nAuthorization: Bearer clawpen-ph-K\r\n\r\n")
        let r = refusal(up(h, "api.openai.com", 443, tls: false, [try sub(["api.openai.com:443"])]))
        XCTAssertEqual(r?.status, 403)
        XCTAssertEqual(r?.rule, "secret plain http")
        XCTAssertTrue(r?.message.contains("allow_plain_http") == true, "\(String(describing: r))")
        // Opted in, or a secret bound to an address: substituted.
        let plain = try XCTUnwrap(try? up(h, "api.openai.com", 443, tls: false, [try sub(["api.openai.com:443"], plain: true)]).get())
        XCTAssertTrue(plain.contains("Authorization: Bearer REAL\r\n"), plain)
        let ip = try head("GET http://10.1.2.3:8080/ HTTP/1.1\r\nAuthorization: Bearer clawpen-ph-K\r\n\r\n")
        let byAddress = try XCTUnwrap(try? up(ip, "10.1.2.3", 8080, tls: false, [try sub(["10.1.2.3:8080"])]).get())
        XCTAssertTrue(byAddress.contains("Authorization: Bearer REAL\r\n"), byAddress)
        // Inside the verified TLS: substituted; an address rule never intercepts.
        let inner = try head("GET /v1 HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer clawpen-ph-K\r\n\r\n")
        XCTAssertTrue((try? up(inner, "api.openai.com", 443, tls: true, [try sub(["api.openai.com:443"])]).get())?.contains("Bearer REAL") == true)
        XCTAssertEqual(SecretUse.decide(hosts: [try rule("10.1.2.3:443")], allowPlainHTTP: false, host: "10.1.2.3", port: 443, tls: true), .none)
    }

    // Finding: the job's Host went upstream unchanged on plain HTTP.
    func testThePlainHTTPHostIsRewrittenToTheCheckedAuthority() throws {
        let h = try head("GET http://a.example.com:8080/x HTTP/1.1\r\nHost: other-vhost.example.net\r\nAccept: */*\r\n\r\n")
        let out = try XCTUnwrap(try? up(h, "a.example.com", 8080, tls: false, []).get())
        XCTAssertTrue(out.hasPrefix("GET /x HTTP/1.1\r\nHost: a.example.com:8080\r\n"), out)
        XCTAssertFalse(out.contains("other-vhost"), out)
        XCTAssertTrue(out.contains("Accept: */*\r\n") && out.hasSuffix("Connection: close\r\n\r\n"), out)
        let v6 = try head("GET http://[2001:db8::1]/ HTTP/1.1\r\n\r\n")
        XCTAssertTrue((try? up(v6, "2001:db8::1", 80, tls: false, []).get())?.contains("Host: [2001:db8::1]\r\n") == true)
    }

    // Finding: an absolute URI inside the intercepted TLS named another authority.
    func testInsideTheInterceptedTLSOnlyOriginFormIsAccepted() throws {
        let s = [try sub(["api.openai.com:443"])]
        let absolute = try head("GET http://attacker.example/ HTTP/1.1\r\nHost: api.openai.com\r\nAuthorization: Bearer clawpen-ph-K\r\n\r\n")
        let r = refusal(up(absolute, "api.openai.com", 443, tls: true, s))
        XCTAssertEqual(r?.status, 400)
        XCTAssertEqual(r?.rule, "origin form")
        let https = try head("GET https://attacker.example/ HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        XCTAssertEqual(refusal(up(https, "api.openai.com", 443, tls: true, s))?.rule, "origin form")
        let star = try head("OPTIONS * HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        XCTAssertNotNil(try? up(star, "api.openai.com", 443, tls: true, s).get())
        let other = try head("GET / HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
        XCTAssertEqual(refusal(up(other, "api.openai.com", 443, tls: true, s))?.status, 421)
        // No Host inside: the checked one is added.
        let bare = try head("GET /v1 HTTP/1.1\r\n\r\n")
        XCTAssertTrue((try? up(bare, "api.openai.com", 443, tls: true, s).get())?.contains("Host: api.openai.com\r\n") == true)
    }

    // Finding: only the first Host was checked, and an unparseable one skipped the check.
    func testASecondOrAnUnparseableHostIsRefused() throws {
        let s = [try sub(["api.openai.com:443"])]
        for (text, why) in [
            ("GET / HTTP/1.1\r\nHost: api.openai.com\r\nHost: attacker.example\r\n\r\n", "two Hosts"),
            ("GET / HTTP/1.1\r\nHost: api.openai.com:notaport\r\n\r\n", "a bad port"),
            ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "not a name"),
            ("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "an open bracket"),
            ("GET / HTTP/1.1\r\nHost:\r\n\r\n", "empty"),
        ] {
            let r = refusal(up(try head(text), "api.openai.com", 443, tls: true, s))
            XCTAssertEqual(r?.status, 400, why)
            XCTAssertEqual(r?.rule, "host header", why)
            XCTAssertEqual(
                refusal(up(try head(text.replacingOccurrences(of: "GET /", with: "GET http://a.com/")), "a.com", 80, tls: false, []))?.status, 400, why)
        }
    }

    // Finding: the placeholder was replaced in every header (and an echoing endpoint returned it).
    func testAPlaceholderGoesOnlyInItsSecretsHeaders() throws {
        let s = [try sub(["api.openai.com:443"])]
        let echo = try head("GET /v1 HTTP/1.1\r\nHost: api.openai.com\r\nOpenAI-Organization: clawpen-ph-K\r\n\r\n")
        let r = refusal(up(echo, "api.openai.com", 443, tls: true, s))
        XCTAssertEqual(r?.status, 403)
        XCTAssertEqual(r?.rule, "secret header")
        XCTAssertTrue(r?.message.contains("OpenAI-Organization") == true)
        let inQuery = try head("GET /v1?key=clawpen-ph-K HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
        XCTAssertEqual(refusal(up(inQuery, "api.openai.com", 443, tls: true, s))?.rule, "secret header")
        // The default headers, case-insensitively, and a binding's own list.
        let ok = try head("GET /v1 HTTP/1.1\r\nHost: api.openai.com\r\nauthorization: Bearer clawpen-ph-K\r\nX-API-KEY: clawpen-ph-K\r\n\r\n")
        let out = try XCTUnwrap(try? up(ok, "api.openai.com", 443, tls: true, s).get())
        XCTAssertTrue(out.contains("authorization: Bearer REAL\r\n") && out.contains("X-API-KEY: REAL\r\n"), out)
        let custom = [try sub(["api.openai.com:443"], headers: ["X-Goog-Api-Key"])]
        XCTAssertEqual(refusal(up(ok, "api.openai.com", 443, tls: true, custom))?.rule, "secret header", "Authorization is not in its list")
        let goog = try head("GET /v1 HTTP/1.1\r\nHost: api.openai.com\r\nx-goog-api-key: clawpen-ph-K\r\n\r\n")
        XCTAssertTrue((try? up(goog, "api.openai.com", 443, tls: true, custom).get())?.contains("x-goog-api-key: REAL") == true)
        // Another host: the placeholder goes through as it is, wherever it is.
        let elsewhere = try head("GET /x?k=clawpen-ph-K HTTP/1.1\r\nHost: other.com\r\nX-Echo: clawpen-ph-K\r\n\r\n")
        let passed = try XCTUnwrap(try? up(elsewhere, "other.com", 443, tls: true, s).get())
        XCTAssertTrue(passed.contains("X-Echo: clawpen-ph-K\r\n") && !passed.contains("REAL"), passed)
        XCTAssertFalse(passed.contains("Proxy-Authorization"))
    }

    // Finding: the query was lost (or became the path) on the plain-HTTP forward.
    func testThePlainHTTPTargetKeepsItsQuery() throws {
        for (url, path) in [
            ("http://h?q=1", "/?q=1"), ("http://h?next=/x", "/?next=/x"), ("http://h:8080/a/b?c=d", "/a/b?c=d"), ("http://h", "/"),
            ("http://h/p#frag", "/p"), ("http://h#f", "/"), ("HTTP://h/UP", "/UP"),
        ] {
            let out = try XCTUnwrap(try? up(try head("GET \(url) HTTP/1.1\r\n\r\n"), "h", url.contains(":8080") ? 8080 : 80, tls: false, []).get())
            XCTAssertTrue(out.hasPrefix("GET \(path) HTTP/1.1\r\n"), "\(url): \(out)")
        }
    }

    func testTheSecretsHeadersAndPlainHTTPKeysParse() throws {
        let text = """
            [secrets.G]
            env = "GKEY"
            hosts = ["api.example.com:443", "10.0.0.5:8080"]
            headers = ["X-Goog-Api-Key"]
            allow_plain_http = true
            """
        var errors: [PolicyError] = []
        let d = PolicyLoader.decode(try TOMLDocument.parse(text, file: "t.toml").root, file: "t.toml", origin: "t.toml", isTenantFile: true, errors: &errors)
        XCTAssertEqual(errors, [])
        let g = try XCTUnwrap(d.values.secrets?.first)
        XCTAssertEqual(g.headers, ["x-goog-api-key"])
        XCTAssertTrue(g.allowPlainHTTP)
        XCTAssertEqual(g.use(host: "api.example.com", port: 443, tls: false), .substituted)
        // Older files: the default headers, no plain HTTP to names.
        let old = try XCTUnwrap(
            PolicyLoader.decode(
                try TOMLDocument.parse("[secrets.O]\nenv = \"O\"\nhosts = [\"api.example.com:443\"]\n", file: "t.toml").root, file: "t.toml",
                origin: "t.toml", isTenantFile: true, errors: &errors
            ).values.secrets?.first)
        XCTAssertEqual(old.headers, ["authorization", "x-api-key", "api-key"])
        XCTAssertEqual(old.use(host: "api.example.com", port: 443, tls: false), .refusedPlainHTTP)
        for broken in [
            "headers = []", "headers = [\"Proxy-Authorization\"]", "headers = [\"Host\"]", "headers = [\"a b\"]", "allow_plain_http = \"yes\"",
        ] {
            var errs: [PolicyError] = []
            let t = "[secrets.X]\nenv = \"X\"\nhosts = [\"a.com:443\"]\n\(broken)\n"
            _ = PolicyLoader.decode(try TOMLDocument.parse(t, file: "t.toml").root, file: "t.toml", origin: "t.toml", isTenantFile: true, errors: &errs)
            XCTAssertFalse(errs.isEmpty, broken)
        }
    }

    func testEgressMaxConnectionsIsATierKeyOlderFilesMayLeaveOut() throws {
        var errors: [PolicyError] = []
        let d = PolicyLoader.decode(
            try TOMLDocument.parse("egress_max_connections = 12\n", file: "t.toml").root, file: "t.toml", origin: "t.toml", isTenantFile: true,
            errors: &errors)
        XCTAssertEqual(errors, [])
        XCTAssertEqual(d.values.egressMaxConnections, 12)
        XCTAssertEqual(d.values.applied(to: TierLimits.defaults(for: .pro)).egressMaxConnections, 12)
        XCTAssertEqual(TierLimits.defaults(for: .pro).egressMaxConnections, 256)
        XCTAssertTrue(LimitKey.egressMaxConnections.isOptionalInTierFile)
        var errs: [PolicyError] = []
        _ = PolicyLoader.decode(
            try TOMLDocument.parse("egress_max_connections = 0\n", file: "t.toml").root, file: "t.toml", origin: "t.toml", isTenantFile: true, errors: &errs)
        XCTAssertFalse(errs.isEmpty)
    }
}
