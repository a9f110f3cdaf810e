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

    /// The head as it goes upstream: origin-form target, no proxy headers, `Connection: close`
    /// (one request per upstream connection: a second request on it would skip the check), and
    /// each substitution's placeholder replaced by its value in every header value. `used` gets
    /// the names of the secrets that were actually put in.
    public func forwarded(host: String, port: Int, tls: Bool, substitutions: [ProxyState.Substitution], used: inout [String]) -> [UInt8] {
        var path = target
        if !tls, target.lowercased().hasPrefix("http://") {
            let rest = target.dropFirst(7)
            path = rest.firstIndex(of: "/").map { String(rest[$0...]) } ?? "/"
        }
        var out = Array("\(method) \(path) \(version)\r\n".utf8)
        var sawHost = false
        for (name, value) in headers {
            let lower = name.lowercased()
            if lower == "proxy-connection" || lower == "proxy-authorization" || lower == "connection" || lower == "keep-alive" { continue }
            if lower == "host" { sawHost = true }
            var v = value
            for s in substitutions where !s.placeholder.isEmpty {
                let replaced = Self.replace(v, s.placeholder, with: s.value)
                if replaced != v {
                    v = replaced
                    if !used.contains(s.name) { used.append(s.name) }
                }
            }
            out += Array(name.utf8) + [0x3A, 0x20] + v + [0x0D, 0x0A]
        }
        if !sawHost {
            let defaultPort = tls ? 443 : 80
            out += Array("Host: \(host.contains(":") ? "[\(host)]" : host)\(port == defaultPort ? "" : ":\(port)")\r\n".utf8)
        }
        out += Array("Connection: close\r\n\r\n".utf8)
        return out
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
