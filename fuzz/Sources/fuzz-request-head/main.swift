import FuzzSupport

// The egress proxy's request parser (RequestHead.parse, linked here from
// Sources/ClawpenEgress/RequestHead.swift), fed what a sandboxed job sends its proxy. What it
// accepts it must have read unambiguously: no CR, LF or NUL in anything it returns (a header
// line that could end early would smuggle a second request past the allowlist), at most
// `maxHeaders` headers, one Content-Length, not both it and Transfer-Encoding; and the head
// written back out parses to the same head.

/// The proxy's limit (ProxyHandler.Limits.maxHeaders).
let maxHeaders = 64

func serialized(_ h: RequestHead) -> [UInt8] {
    var out = Array("\(h.method) \(h.target) \(h.version)\r\n".utf8)
    for (name, value) in h.headers { out += Array(name.utf8) + [0x3A, 0x20] + value + [0x0D, 0x0A] }
    return out + [0x0D, 0x0A]
}

let harness = Harness(
    name: "request-head",
    seeds: {
        [
            "GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nProxy-Connection: Keep-Alive\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\nHost: api.example.com\r\nAuthorization: Bearer CLAWPEN_SECRET_API_KEY\r\nContent-Type: application/json\r\nContent-Length: 42\r\n\r\n",
            "PUT /upload HTTP/1.0\r\nTransfer-Encoding: chunked\r\nX-Empty:\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: example.com:8443\r\n\r\n",
        ].map { Array($0.utf8) }
    },
    decode: { bytes in blackHole(RequestHead.parse(bytes, maxHeaders: maxHeaders)) },
    check: { bytes in
        guard case .success(let h) = RequestHead.parse(bytes, maxHeaders: maxHeaders) else { return }
        let forbidden: Set<UInt8> = [0x0D, 0x0A, 0]
        func clean<S: Sequence>(_ s: S) -> Bool where S.Element == UInt8 { !s.contains(where: forbidden.contains) }
        require(clean(h.method.utf8) && clean(h.target.utf8) && clean(h.version.utf8), "CR, LF or NUL in the request line")
        for (name, value) in h.headers {
            require(!name.isEmpty && clean(name.utf8) && clean(value), "CR, LF or NUL in a header: \(shown(Array(name.utf8)))")
            require(!name.utf8.contains(0x20) && !name.utf8.contains(0x3A), "a header name with a space or a colon")
        }
        require(h.headers.count <= maxHeaders, "\(h.headers.count) headers accepted, the limit is \(maxHeaders)")
        let names = h.headers.map { $0.name.lowercased() }
        require(names.filter { $0 == "content-length" }.count <= 1, "two Content-Length headers accepted")
        require(!(names.contains("content-length") && names.contains("transfer-encoding")), "Content-Length and Transfer-Encoding accepted")
        let again = serialized(h)
        require(RequestHead.parse(again, maxHeaders: maxHeaders) == .success(h), "written back out, the head parses differently: \(shown(again))")
    })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
