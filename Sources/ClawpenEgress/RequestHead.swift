import ClawpenPolicy

/// A request line and its headers, parsed strictly: anything that is not
/// `METHOD SP TARGET SP HTTP/1.x CRLF (NAME: VALUE CRLF)* CRLF` is a 400, so that what the proxy
/// checked is what the upstream reads (no request smuggling through odd framing).
public struct RequestHead: Sendable, Equatable {
    public var method: String
    public var target: String
    public var version: String
    public var headers: [(name: String, value: [UInt8])]

    public static func == (a: RequestHead, b: RequestHead) -> Bool {
        a.method == b.method && a.target == b.target && a.version == b.version && a.headers.map(\.name) == b.headers.map(\.name)
            && a.headers.map(\.value) == b.headers.map(\.value)
    }

    public struct Failure: Error, Equatable {
        public let status: Int
        public let reason: String
        public let message: String
    }

    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name }.map { String(decoding: $0.value, as: UTF8.self) }
    }

    /// `bytes` ends with the blank line.
    public static func parse(_ bytes: [UInt8], maxHeaders: Int) -> Result<RequestHead, Failure> {
        func bad(_ m: String) -> Result<RequestHead, Failure> { .failure(Failure(status: 400, reason: "Bad Request", message: m)) }
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        var i = 0
        while i + 1 < bytes.count {
            if bytes[i] == 0x0D && bytes[i + 1] == 0x0A {
                lines.append(bytes[start..<i])
                start = i + 2
                i += 2
                continue
            }
            if bytes[i] == 0x0A || bytes[i] == 0 { return bad("a bare LF or a NUL in the request head") }
            i += 1
        }
        guard lines.count >= 2, lines.last?.isEmpty == true else { return bad("the request head does not end with an empty line") }
        lines.removeLast()
        let requestLine = lines.removeFirst()
        let parts = requestLine.split(separator: 0x20, omittingEmptySubsequences: false)
        guard parts.count == 3 else { return bad("malformed request line (expected METHOD TARGET HTTP/1.1)") }
        let method = String(decoding: parts[0], as: UTF8.self), target = String(decoding: parts[1], as: UTF8.self)
        let version = String(decoding: parts[2], as: UTF8.self)
        guard !method.isEmpty, method.utf8.allSatisfy({ ($0 >= 0x41 && $0 <= 0x5A) || $0 == 0x2D }) else { return bad("malformed method") }
        guard !target.isEmpty, target.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return bad("malformed request target") }
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else { return bad("unsupported version (HTTP/1.0 and HTTP/1.1 only)") }
        guard lines.count <= maxHeaders else {
            return .failure(Failure(status: 431, reason: "Request Header Fields Too Large", message: "more than \(maxHeaders) headers"))
        }
        var headers: [(String, [UInt8])] = []
        for line in lines {
            guard let colon = line.firstIndex(of: 0x3A), colon > line.startIndex else { return bad("a header line without a name and ':'") }
            let name = line[line.startIndex..<colon]
            // A token: no spaces (RFC 9112 refuses "Name : value"), no obs-fold.
            guard name.allSatisfy({ $0 > 0x20 && $0 < 0x7F && $0 != 0x3A }) else { return bad("malformed header name") }
            var value = line[(colon + 1)...]
            while let f = value.first, f == 0x20 || f == 0x09 { value = value.dropFirst() }
            while let l = value.last, l == 0x20 || l == 0x09 { value = value.dropLast() }
            headers.append((String(decoding: name, as: UTF8.self), Array(value)))
        }
        let names = headers.map { $0.0.lowercased() }
        if names.contains("transfer-encoding") && names.contains("content-length") {
            return bad("both Transfer-Encoding and Content-Length")
        }
        if names.filter({ $0 == "content-length" }).count > 1 { return bad("more than one Content-Length") }
        return .success(RequestHead(method: method, target: target, version: version, headers: headers))
    }

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
