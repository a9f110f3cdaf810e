import Glibc

/// Name resolution for egress decisions (the proxy's and `policy explain`'s): every address
/// getaddrinfo gives for a name, in its order. It blocks: callers run it off their event loop.
public enum HostResolver {
    public static func resolve(_ host: String) -> [IPAddress] {
        if let literal = IPAddress(host) { return [literal] }
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var res: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &res) == 0, let first = res else { return [] }
        defer { freeaddrinfo(first) }
        var out: [IPAddress] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            if let sa = ai.pointee.ai_addr {
                if ai.pointee.ai_family == AF_INET {
                    let a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { s in withUnsafeBytes(of: s.pointee.sin_addr) { Array($0) } }
                    if let ip = IPAddress(bytes: a), !out.contains(ip) { out.append(ip) }
                } else if ai.pointee.ai_family == AF_INET6 {
                    let a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { s in withUnsafeBytes(of: s.pointee.sin6_addr) { Array($0) } }
                    if let ip = IPAddress(bytes: a), !out.contains(ip) { out.append(ip) }
                }
            }
            p = ai.pointee.ai_next
        }
        return out
    }
}

/// The target of a proxied request: `http://host[:port]/...`, `https://...` or `host:port`.
public struct EgressTarget: Sendable, Equatable {
    public var host: String
    public var port: Int
    public var tls: Bool

    public init(host: String, port: Int, tls: Bool) { self.host = host; self.port = port; self.tls = tls }

    public init?(url: String) {
        var rest = Substring(url)
        var tls = false
        var defaultPort: Int?
        if rest.lowercased().hasPrefix("https://") {
            tls = true; defaultPort = 443; rest = rest.dropFirst(8)
        } else if rest.lowercased().hasPrefix("http://") {
            defaultPort = 80; rest = rest.dropFirst(7)
        }
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        let hostPort = authority.split(separator: "@").last.map(String.init) ?? String(authority)
        guard let (host, port) = EgressTarget.splitHostPort(hostPort, defaultPort: defaultPort) else { return nil }
        self.init(host: EgressRule.normalize(host), port: port, tls: tls || port == 443)
    }

    /// "host:port", "[v6]:port", or "host" with a default port.
    public static func splitHostPort(_ s: String, defaultPort: Int?) -> (String, Int)? {
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { return nil }
            let host = String(s[s.index(after: s.startIndex)..<close])
            let after = s[s.index(after: close)...]
            if after.isEmpty { return defaultPort.map { (host, $0) } }
            guard after.hasPrefix(":"), let p = Int(after.dropFirst()), (1...65535).contains(p) else { return nil }
            return host.isEmpty ? nil : (host, p)
        }
        let parts = s.split(separator: ":", omittingEmptySubsequences: false)
        if parts.count == 1 { return s.isEmpty ? nil : defaultPort.map { (s, $0) } }
        guard parts.count == 2, !parts[0].isEmpty, let p = Int(parts[1]), (1...65535).contains(p) else { return nil }
        return (String(parts[0]), p)
    }
}
