import ClawpenPolicy

/// What the proxy sends upstream for a parsed head (RequestHead.swift holds the parser alone, so
/// that its fuzz harness builds without TLS: fuzz/README.md).
extension RequestHead {
    /// A refusal of the proxy's own: the status, and the rule the `X-Clawpen-Rule` header,
    /// the audit row and the counters name.
    public struct Refusal: Error, Equatable {
        public let status: Int
        public let reason: String
        public let rule: String
        public let message: String
        public init(_ status: Int, _ reason: String, rule: String, _ message: String) {
            self.status = status; self.reason = reason; self.rule = rule; self.message = message
        }
    }

    /// What goes upstream, and which secrets went in it.
    public struct Upstream: Equatable {
        public let bytes: [UInt8]
        public let used: [String]
    }

    /// The head as it goes upstream to host:port, or why it may not: `intercepted` is a request
    /// read inside the TLS the proxy terminated for host:port (it must be origin-form: an
    /// absolute URI there would name another authority, which the server would use), otherwise
    /// a plain-HTTP proxy request whose absolute URI named host:port. At most one Host, which
    /// must parse; inside TLS it must be host:port too. The Host that goes up is the checked
    /// host:port, whatever the job wrote. No proxy headers, `Connection: close` (one request per
    /// upstream connection: a second one on it would skip the check). Each secret that
    /// `substitutions` holds for host:port is replaced in the headers its binding names, and a
    /// request that carries its placeholder anywhere else (another header, the target) is
    /// refused: an endpoint that echoes a header would hand the value back to the sandbox.
    public func upstream(host: String, port: Int, intercepted: Bool, substitutions: [ProxyState.Substitution]) -> Result<Upstream, Refusal> {
        let hosts = headers.filter { $0.name.lowercased() == "host" }
        guard hosts.count <= 1 else { return .failure(Refusal(400, "Bad Request", rule: "host header", "more than one Host header")) }
        if let h = hosts.first {
            let text = String(decoding: h.value, as: UTF8.self)
            guard let (hh, hp) = EgressTarget.splitHostPort(text, defaultPort: intercepted ? port : 80),
                IPAddress(hh) != nil || EgressRule.isHostName(EgressRule.normalize(hh))
            else {
                return .failure(Refusal(400, "Bad Request", rule: "host header", "the Host header \(Self.shown(text)) is not host[:port]"))
            }
            if intercepted, EgressRule.normalize(hh) != host || hp != port {
                return .failure(Refusal(421, "Misdirected Request", rule: "host header", "this connection is for \(host):\(port), not \(Self.shown(text))"))
            }
        }
        let path: String
        if intercepted {
            guard target.hasPrefix("/") || (target == "*" && method == "OPTIONS") else {
                return .failure(
                    Refusal(
                        400, "Bad Request", rule: "origin form", "inside the TLS for \(host):\(port) a request names a path (/...), not \(Self.shown(target))"))
            }
            path = target
        } else {
            guard let p = Self.originForm(ofAbsolute: target) else {
                return .failure(Refusal(400, "Bad Request", rule: "malformed request", "a proxy request names an absolute http:// URL"))
            }
            path = p
        }
        var applied: [ProxyState.Substitution] = []
        for s in substitutions where !s.placeholder.isEmpty {
            switch s.use(host: host, port: port, tls: intercepted) {
            case .none: continue
            case .refusedPlainHTTP:
                // Without its placeholder the request needs no secret: it goes as it is.
                guard Self.contains(Array(target.utf8), s.placeholder) || headers.contains(where: { Self.contains($0.value, s.placeholder) }) else {
                    continue
                }
                return .failure(
                    Refusal(
                        403, "Forbidden", rule: "secret plain http",
                        "secret \(s.name) goes to \(host):\(port) over HTTPS only (plain HTTP would send it in clear text; the secret's allow_plain_http = true allows it)"
                    ))
            case .substituted: applied.append(s)
            }
        }
        for s in applied where Self.contains(Array(target.utf8), s.placeholder) {
            return .failure(
                Refusal(
                    403, "Forbidden", rule: "secret header",
                    "secret \(s.name)'s placeholder is in the request target; it goes in \(s.headers.joined(separator: ", ")) only"))
        }
        var out = Array("\(method) \(path) \(version)\r\n".utf8)
        var used: [String] = []
        let defaultPort = intercepted ? 443 : 80
        let authority = "\(host.contains(":") ? "[\(host)]" : host)\(port == defaultPort ? "" : ":\(port)")"
        out += Array("Host: \(authority)\r\n".utf8)
        for (name, value) in headers {
            let lower = name.lowercased()
            if lower == "host" || lower == "proxy-connection" || lower == "proxy-authorization" || lower == "connection" || lower == "keep-alive" { continue }
            var v = value
            for s in applied where Self.contains(v, s.placeholder) {
                guard s.headers.contains(lower) else {
                    return .failure(
                        Refusal(
                            403, "Forbidden", rule: "secret header",
                            "secret \(s.name)'s placeholder is in \(name); it goes in \(s.headers.joined(separator: ", ")) only"))
                }
                v = Self.replace(v, s.placeholder, with: s.value)
                if !used.contains(s.name) { used.append(s.name) }
            }
            out += Array(name.utf8) + [0x3A, 0x20] + v + [0x0D, 0x0A]
        }
        out += Array("Connection: close\r\n\r\n".utf8)
        return .success(Upstream(bytes: out, used: used))
    }

    /// `http://authority[/path][?query][#fragment]` as origin-form: everything after the
    /// authority (which ends at the first /, ? or #), the fragment dropped, `/` before a query
    /// and for an empty path.
    static func originForm(ofAbsolute target: String) -> String? {
        guard target.lowercased().hasPrefix("http://") else { return nil }
        let rest = target.dropFirst(7)
        guard let cut = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) else { return "/" }
        var tail = String(rest[cut...])
        if let hash = tail.firstIndex(of: "#") { tail = String(tail[..<hash]) }
        if tail.isEmpty { return "/" }
        return tail.hasPrefix("/") ? tail : "/" + tail
    }

    static func shown(_ s: String) -> String {
        "\"" + String(s.prefix(80).filter { $0 != "\r" && $0 != "\n" }) + "\""
    }

    static func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, haystack.count >= needle.count else { return false }
        var i = 0
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0] && haystack[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }

    static func replace(_ haystack: [UInt8], _ needle: [UInt8], with value: [UInt8]) -> [UInt8] {
        guard haystack.count >= needle.count else { return haystack }
        var out: [UInt8] = []
        var i = 0
        while i < haystack.count {
            if i + needle.count <= haystack.count && haystack[i] == needle[0] && haystack[i..<(i + needle.count)].elementsEqual(needle) {
                out += value
                i += needle.count
            } else {
                out.append(haystack[i])
                i += 1
            }
        }
        return out
    }
}
