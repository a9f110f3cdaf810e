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
            // A bare CR too: some servers end a line there, and a header that ends early for the
            // upstream and not for the proxy smuggles a second header (or request) past the checks.
            if bytes[i] == 0x0D || bytes[i] == 0x0A || bytes[i] == 0 { return bad("a bare CR, a bare LF or a NUL in the request head") }
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
}
