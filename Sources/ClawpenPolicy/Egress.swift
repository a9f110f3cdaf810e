import ClawpenTOML
import ClawpenWire
import Glibc

/// The egress allowlist and the secrets a tenant's jobs may use, and the one decision the
/// proxy and `policy explain` both make from them (docs/egress.md). Pure: resolving names is
/// the caller's; the decision takes the addresses a name resolved to.

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// A literal: dotted IPv4 or IPv6 (brackets allowed).
    public init?(_ text: String) {
        var t = Substring(text)
        if t.hasPrefix("[") && t.hasSuffix("]") { t = t.dropFirst().dropLast() }
        var v4 = in_addr()
        if inet_pton(AF_INET, String(t), &v4) == 1 {
            bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if t.contains(":"), inet_pton(AF_INET6, String(t), &v6) == 1 {
            bytes = withUnsafeBytes(of: &v6) { Array($0) }
            return
        }
        return nil
    }

    public var isV4: Bool { bytes.count == 4 }

    /// The IPv4 address inside an IPv4-mapped IPv6 one (::ffff:a.b.c.d), which reaches the same host.
    public var unmapped: IPAddress {
        guard bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF else { return self }
        return IPAddress(bytes: Array(bytes[12..<16])) ?? self
    }

    public var description: String {
        var buf = [CChar](repeating: 0, count: 64)
        var copy = bytes
        let ok = copy.withUnsafeMutableBytes { p in
            inet_ntop(isV4 ? AF_INET : AF_INET6, p.baseAddress, &buf, socklen_t(buf.count)) != nil
        }
        guard ok else { return "?" }
        return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An address range: `prefix` leading bits of `base`.
public struct IPRange: Sendable, Hashable, CustomStringConvertible {
    public let base: IPAddress
    public let prefix: Int

    public init?(_ base: IPAddress, prefix: Int) {
        guard (0...(base.bytes.count * 8)).contains(prefix) else { return nil }
        self.base = base
        self.prefix = prefix
    }

    /// "10.0.0.0/8", "fe80::/10".
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let addr = IPAddress(String(parts[0])), let p = Int(parts[1]) else { return nil }
        self.init(addr, prefix: p)
    }

    public func contains(_ a: IPAddress) -> Bool {
        let a = a.unmapped
        guard a.bytes.count == base.bytes.count else { return false }
        var bits = prefix
        for i in 0..<a.bytes.count where bits > 0 {
            let mask: UInt8 = bits >= 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            if a.bytes[i] & mask != base.bytes[i] & mask { return false }
            bits -= 8
        }
        return true
    }

    public var description: String { "\(base)/\(prefix)" }
}

/// The ranges a name may not resolve into, nor an IP literal be in, unless an allow rule names
/// that address or range itself: the host's own services (loopback), the networks behind it
/// (RFC 1918, ULA, CGNAT), the cloud metadata service (169.254.169.254 in link-local), and
/// addresses that are not one host (unspecified, multicast, broadcast, reserved).
public enum RestrictedRanges {
    public static let all: [(range: IPRange, name: String)] = [
        ("0.0.0.0/8", "unspecified (this network)"), ("127.0.0.0/8", "loopback"), ("10.0.0.0/8", "private (RFC 1918)"),
        ("172.16.0.0/12", "private (RFC 1918)"), ("192.168.0.0/16", "private (RFC 1918)"),
        ("169.254.0.0/16", "link-local (incl. the metadata service 169.254.169.254)"), ("100.64.0.0/10", "shared (CGNAT)"),
        ("192.0.0.0/24", "IETF protocol assignments"), ("198.18.0.0/15", "benchmarking"), ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved and broadcast"), ("::/128", "unspecified"), ("::1/128", "loopback"), ("fc00::/7", "unique local (ULA)"),
        ("fe80::/10", "link-local"), ("fec0::/10", "site-local"), ("ff00::/8", "multicast"), ("64:ff9b::/96", "NAT64 (reaches IPv4 ranges)"),
        // IPv6 forms that carry an IPv4 address a translator or tunnel on the host may reach.
        ("64:ff9b:1::/48", "local-use NAT64 (reaches IPv4 ranges)"), ("2002::/16", "6to4 (carries an IPv4 address)"),
        ("::/96", "IPv4-compatible (deprecated; carries an IPv4 address)"),
    ].compactMap { text, name in IPRange(text).map { ($0, name) } }

    /// The first restricted range holding `a`, if any.
    public static func matching(_ a: IPAddress) -> (range: IPRange, name: String)? {
        all.first { $0.range.contains(a) }
    }
}

/// One entry of `[egress] allow`: `api.example.com:443`, `*.pypi.org:443`, `127.0.0.1:8080`,
/// `10.0.0.0/8:443`, `[::1]:8080`.
public struct EgressRule: Sendable, Equatable, CustomStringConvertible {
    public enum Target: Sendable, Equatable {
        /// An exact host name (lower case, no trailing dot).
        case host(String)
        /// `*.suffix`: any name ending in `.suffix` (not `suffix` itself).
        case suffix(String)
        /// An address or a range: allows IP literals, and lifts the restricted ranges for names.
        case range(IPRange)
    }
    public let target: Target
    public let port: Int
    public let text: String
    public let file: String
    public let line: Int

    /// `allow "api.example.com:443" (tenants/acme.toml:4)`: how a decision names the rule.
    public var description: String { "allow \(quoted(text)) (\(file):\(line))" }

    public init(parsing text: String, file: String, line: Int) throws(PolicyError) {
        func bad(_ why: String) -> PolicyError {
            .invalidValue(file: file, line: line, key: "egress.allow", reason: "\(quoted(text)): \(why)")
        }
        guard let colon = text.lastIndex(of: ":") else { throw bad("needs a port (host:port, e.g. \"api.example.com:443\")") }
        var hostPart = String(text[..<colon])
        guard let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            throw bad("the port must be a number from 1 to 65535")
        }
        if hostPart.hasPrefix("[") && hostPart.hasSuffix("]") {
            hostPart = String(hostPart.dropFirst().dropLast())
        } else if hostPart.contains(":") {
            // "fd00::1:443" could be fd00::1 port 443 or fd00::1:443 with the port forgotten.
            throw bad("an IPv6 address or range takes brackets before its port, as in \"[fd00::1]:443\" or \"[fd00::/8]:443\"")
        }
        if let addr = IPAddress(hostPart) {
            guard let single = IPRange(addr, prefix: addr.bytes.count * 8) else { throw bad("not an address") }
            target = .range(single)
        } else if hostPart.contains("/") {
            guard let r = IPRange(hostPart) else { throw bad("not an address range (10.0.0.0/8:443, [fd00::/8]:443)") }
            target = .range(r)
        } else {
            let h = EgressRule.normalize(hostPart)
            if h.hasPrefix("*.") {
                let suffix = String(h.dropFirst(2))
                guard EgressRule.isHostName(suffix), suffix.contains(".") else {
                    throw bad("*. must be followed by a domain of at least two labels (\"*.pypi.org:443\")")
                }
                target = .suffix(suffix)
            } else {
                guard EgressRule.isHostName(h) else { throw bad("not a host name, *.domain, address or range") }
                target = .host(h)
            }
        }
        self.port = port
        self.text = text
        self.file = file
        self.line = line
    }

    /// Lower case, without a trailing dot (`API.Example.com.` and `api.example.com` are one host).
    public static func normalize(_ host: String) -> String {
        var h = host.lowercased()
        if h.hasSuffix(".") { h.removeLast() }
        return h
    }

    public static func isHostName(_ h: String) -> Bool {
        let u = Array(h.utf8)
        guard (1...253).contains(u.count) else { return false }
        for label in h.split(separator: ".", omittingEmptySubsequences: false) {
            let l = Array(label.utf8)
            guard (1...63).contains(l.count), l.first != UInt8(ascii: "-"), l.last != UInt8(ascii: "-") else { return false }
            guard l.allSatisfy({ isLowerAlnum($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }) else { return false }
        }
        return true
    }

    /// Whether this rule names `host` (normalized) at `port`.
    public func matches(host: String, port: Int) -> Bool {
        guard port == self.port else { return false }
        switch target {
        case .host(let h): return h == host
        case .suffix(let s): return host.hasSuffix("." + s)
        case .range(let r): return IPAddress(host).map { r.contains($0) } ?? false
        }
    }

    public func matches(address: IPAddress, port: Int) -> Bool {
        guard port == self.port, case .range(let r) = target else { return false }
        return r.contains(address)
    }
}

private func isLowerAlnum(_ b: UInt8) -> Bool {
    (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9"))
}

/// `[secrets.NAME]`: how the secret NAME reaches the tenant's jobs.
public struct SecretBinding: Sendable, Equatable {
    public enum Exposure: Sendable, Equatable {
        /// The job's environment holds a placeholder; the proxy puts the value in requests to `hosts`.
        case placeholder
        /// `expose = "env"`: the real value in the environment of jobs whose command is one of
        /// `commands` (absolute paths). Weaker: the value is inside the sandbox.
        case env(commands: [String])
    }
    /// The headers a secret goes in when its binding names none: where API keys travel.
    /// Proxy-Authorization is not one (the proxy drops it).
    public static let defaultHeaders = ["authorization", "x-api-key", "api-key"]

    public let name: String
    /// `env = "OPENAI_API_KEY"`: the variable that holds the placeholder (or the value).
    public let envVar: String
    /// `hosts = ["api.openai.com:443"]`: where the proxy substitutes the value.
    public let hosts: [EgressRule]
    public let exposure: Exposure
    /// `headers = ["Authorization"]` (lower case): the only headers the placeholder may be in;
    /// anywhere else in a request to `hosts` (another header, the target) is refused, so that an
    /// endpoint that echoes a header cannot hand the value back to the sandbox.
    public let headers: [String]
    /// `allow_plain_http = true`: substitute in plain-HTTP requests to a host name too (the value
    /// then crosses the network in clear text to whatever the name resolved to). Off by default:
    /// names get the value only inside TLS the proxy verified.
    public let allowPlainHTTP: Bool
    public let file: String
    public let line: Int

    public init(
        name: String, envVar: String, hosts: [EgressRule], exposure: Exposure, headers: [String] = SecretBinding.defaultHeaders,
        allowPlainHTTP: Bool = false, file: String, line: Int
    ) {
        self.name = name; self.envVar = envVar; self.hosts = hosts; self.exposure = exposure
        self.headers = headers.map { $0.lowercased() }; self.allowPlainHTTP = allowPlainHTTP; self.file = file; self.line = line
    }

    /// Whether the proxy substitutes this secret in a request to host:port (`tls`: inside TLS
    /// the proxy terminated and verified upstream; otherwise plain HTTP).
    public func use(host: String, port: Int, tls: Bool) -> SecretUse {
        guard case .placeholder = exposure else { return .none }
        return SecretUse.decide(hosts: hosts, allowPlainHTTP: allowPlainHTTP, host: host, port: port, tls: tls)
    }

    public func substitutes(host: String, port: Int, tls: Bool) -> Bool { use(host: host, port: port, tls: tls) == .substituted }
}

/// What a secret does in one request: the one rule the proxy and `policy explain` share.
public enum SecretUse: Sendable, Equatable {
    /// Not one of the secret's hosts: its placeholder goes through as it is.
    case none
    /// The placeholder is replaced by the value (in the secret's headers only).
    case substituted
    /// One of its hosts, but over plain HTTP to a name without `allow_plain_http`: the request is
    /// refused (rule `secret plain http`), never sent with the value in clear text.
    case refusedPlainHTTP

    /// A name rule substitutes inside TLS (the proxy verified the upstream's certificate for the
    /// name), and over plain HTTP only with `allowPlainHTTP`; an address rule (an IP literal,
    /// no DNS to spoof) substitutes over plain HTTP only (there is no name to make a
    /// certificate for, so a CONNECT to it is tunneled).
    public static func decide(hosts: [EgressRule], allowPlainHTTP: Bool, host rawHost: String, port: Int, tls: Bool) -> SecretUse {
        let host = EgressRule.normalize(rawHost)
        guard let rule = hosts.first(where: { $0.matches(host: host, port: port) }) else { return .none }
        if case .range = rule.target { return tls ? .none : .substituted }
        if tls || allowPlainHTTP { return .substituted }
        return .refusedPlainHTTP
    }
}

/// What the proxy does with a request to host:port, and why.
public struct EgressDecision: Sendable, Equatable {
    public var allowed: Bool
    /// The rule that decided: an allow rule, `default deny`, `ssrf <range>`, or the network mode.
    public var rule: String
    /// The address to connect to (one of those given; the proxy connects to exactly it, so a
    /// second lookup cannot change what was checked).
    public var address: IPAddress?
    /// The first address a restricted range refused, and the range.
    public var refusedAddress: IPAddress?
    public var message: String
}

public enum EgressPolicy {
    /// The tenant's allowlist applied to a request for `host`:`port` whose name resolved to
    /// `addresses` (for an IP literal, pass it alone). A name must match a host or `*.` rule;
    /// then the first address outside every restricted range is used, or the first one that an
    /// address or range rule for this port names. An IP literal needs an address or range rule.
    public static func decide(host rawHost: String, port: Int, addresses: [IPAddress], allow: [EgressRule]) -> EgressDecision {
        let host = EgressRule.normalize(rawHost)
        if let literal = IPAddress(host) {
            if let rule = allow.first(where: { $0.matches(address: literal.unmapped, port: port) || $0.matches(address: literal, port: port) }) {
                return EgressDecision(allowed: true, rule: rule.description, address: literal, message: "\(host):\(port) is named by \(rule)")
            }
            if let r = RestrictedRanges.matching(literal) {
                return EgressDecision(
                    allowed: false, rule: "ssrf \(r.range)", refusedAddress: literal,
                    message: "\(literal) is in \(r.range) (\(r.name)); only an allow rule naming this address or range lets it through")
            }
            return EgressDecision(
                allowed: false, rule: "default deny",
                message: "no allow rule names \(host):\(port) (an address needs an address or range rule, e.g. \"\(host):\(port)\")")
        }
        guard let rule = allow.first(where: { $0.matches(host: host, port: port) }) else {
            return EgressDecision(
                allowed: false, rule: "default deny", message: "no allow rule names \(host):\(port) (add \"\(host):\(port)\" to [egress] allow)")
        }
        guard !addresses.isEmpty else {
            return EgressDecision(allowed: false, rule: "resolve", message: "\(host) does not resolve")
        }
        var firstRefused: (IPAddress, IPRange, String)?
        for a in addresses {
            if let r = RestrictedRanges.matching(a) {
                if let explicit = allow.first(where: { $0.matches(address: a.unmapped, port: port) }) {
                    return EgressDecision(
                        allowed: true, rule: "\(rule); \(explicit)", address: a,
                        message: "\(host):\(port) is named by \(rule), and its address \(a) (\(r.name)) by \(explicit)")
                }
                if firstRefused == nil { firstRefused = (a, r.range, r.name) }
                continue
            }
            return EgressDecision(allowed: true, rule: rule.description, address: a, message: "\(host):\(port) is named by \(rule); address \(a)")
        }
        guard let (a, range, name) = firstRefused else {
            return EgressDecision(allowed: false, rule: "resolve", message: "\(host) resolves to no usable address")
        }
        return EgressDecision(
            allowed: false, rule: "ssrf \(range)", refusedAddress: a,
            message:
                "\(host) resolves to \(a), which is in \(range) (\(name)); a name may not lead there unless an allow rule names the address itself (e.g. \"\(a.isV4 ? "\(a)" : "[\(a)]"):\(port)\")"
        )
    }
}

/// `[egress]` and `[secrets.NAME]` in a tier or tenant file.
enum EgressDecoding {
    static func decodeEgress(_ value: TOMLValue, file: String, line: Int, origin: String) throws(PolicyError) -> [EgressRule] {
        guard let table = value.tableValue else {
            throw .wrongType(file: file, line: line, key: "egress", expected: "a table ([egress] with allow = [...])", found: value.shortDescription)
        }
        var rules: [EgressRule] = []
        for e in table.entries {
            guard e.key == "allow" else { throw PolicyError.unknownKey(file: file, line: e.line, key: "egress.\(e.key)") }
            rules = try hostList(e, key: "egress.allow", file: file, origin: origin)
        }
        return rules
    }

    static func hostList(_ e: TOMLTable.Entry, key: String, file: String, origin: String) throws(PolicyError) -> [EgressRule] {
        guard let items = e.value.arrayValue else {
            throw .wrongType(file: file, line: e.line, key: key, expected: "an array of \"host:port\" strings", found: e.value.shortDescription)
        }
        var out: [EgressRule] = []
        for (i, item) in items.enumerated() {
            guard let s = item.stringValue else {
                throw .wrongType(file: file, line: e.line, key: key, expected: "an array of \"host:port\" strings", found: item.shortDescription)
            }
            let line = i < e.elementLines.count ? e.elementLines[i] : e.line
            let rule = try EgressRule(parsing: s, file: origin, line: line)
            if case .range(let r) = rule.target, key.hasSuffix(".hosts"), r.prefix != r.base.bytes.count * 8 {
                // A secret goes to names (checked by their TLS certificate) or to one address
                // (plain HTTP, no DNS in between); a range is neither.
                throw .invalidValue(
                    file: file, line: line, key: key, reason: "\(quoted(s)): a secret's hosts are names (host:port or *.domain:port) or one address")
            }
            out.append(rule)
        }
        return out
    }

    static func decodeSecrets(_ value: TOMLValue, file: String, line: Int, origin: String) throws(PolicyError) -> [SecretBinding] {
        guard let table = value.tableValue else {
            throw .wrongType(file: file, line: line, key: "secrets", expected: "tables [secrets.NAME]", found: value.shortDescription)
        }
        var out: [SecretBinding] = []
        for s in table.entries {
            guard let body = s.value.tableValue else {
                throw .wrongType(file: file, line: s.line, key: "secrets.\(s.key)", expected: "a table [secrets.\(s.key)]", found: s.value.shortDescription)
            }
            guard isSecretName(s.key) else {
                throw .invalidValue(
                    file: file, line: s.line, key: "secrets", reason: "\(quoted(s.key)) is not a secret name (^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$)")
            }
            var envVar: String?
            var hosts: [EgressRule] = []
            var expose = "placeholder"
            var commands: [String] = []
            var headers = SecretBinding.defaultHeaders
            var allowPlainHTTP = false
            for e in body.entries {
                let key = "secrets.\(s.key).\(e.key)"
                switch e.key {
                case "env":
                    guard let v = e.value.stringValue, isEnvName(v) else {
                        throw .invalidValue(file: file, line: e.line, key: key, reason: "must be an environment variable name (A-Z, 0-9, _)")
                    }
                    envVar = v
                case "hosts": hosts = try hostList(e, key: key, file: file, origin: origin)
                case "expose":
                    guard let v = e.value.stringValue, v == "placeholder" || v == "env" else {
                        throw .invalidValue(
                            file: file, line: e.line, key: key,
                            reason:
                                "must be \"placeholder\" (the default: the proxy substitutes it) or \"env\" (the real value in the listed commands' environment)"
                        )
                    }
                    expose = v
                case "commands":
                    guard let items = e.value.arrayValue else {
                        throw .wrongType(file: file, line: e.line, key: key, expected: "an array of absolute paths", found: e.value.shortDescription)
                    }
                    for item in items {
                        guard let p = item.stringValue, p.hasPrefix("/"), !p.contains("*") else {
                            throw .invalidValue(file: file, line: e.line, key: key, reason: "every command is an absolute path without globs")
                        }
                        commands.append(p)
                    }
                case "headers":
                    guard let items = e.value.arrayValue, !items.isEmpty else {
                        throw .wrongType(file: file, line: e.line, key: key, expected: "a non-empty array of header names", found: e.value.shortDescription)
                    }
                    headers = []
                    for item in items {
                        guard let h = item.stringValue, isHeaderName(h) else {
                            throw .invalidValue(file: file, line: e.line, key: key, reason: "every entry is a header name (letters, digits, '-')")
                        }
                        guard !["proxy-authorization", "host", "content-length", "transfer-encoding", "connection"].contains(h.lowercased()) else {
                            throw .invalidValue(
                                file: file, line: e.line, key: key, reason: "\(quoted(h)): the proxy drops or sets that header itself; a secret cannot go in it"
                            )
                        }
                        headers.append(h.lowercased())
                    }
                case "allow_plain_http":
                    guard let v = e.value.boolValue else {
                        throw .wrongType(file: file, line: e.line, key: key, expected: "true or false", found: e.value.shortDescription)
                    }
                    allowPlainHTTP = v
                default: throw PolicyError.unknownKey(file: file, line: e.line, key: key)
                }
            }
            guard let envVar else {
                throw .invalidValue(file: file, line: s.line, key: "secrets.\(s.key)", reason: "needs env = \"VARIABLE\" (where the job finds it)")
            }
            if expose == "env" {
                guard !commands.isEmpty else {
                    throw .invalidValue(file: file, line: s.line, key: "secrets.\(s.key)", reason: "expose = \"env\" needs commands = [\"/path\", ...]")
                }
                out.append(SecretBinding(name: s.key, envVar: envVar, hosts: hosts, exposure: .env(commands: commands), file: origin, line: s.line))
            } else {
                guard !hosts.isEmpty else {
                    throw .invalidValue(
                        file: file, line: s.line, key: "secrets.\(s.key)", reason: "needs hosts = [\"host:port\", ...] (where the proxy puts the value)")
                }
                guard commands.isEmpty else {
                    throw .invalidValue(file: file, line: s.line, key: "secrets.\(s.key)", reason: "commands goes with expose = \"env\" only")
                }
                out.append(
                    SecretBinding(
                        name: s.key, envVar: envVar, hosts: hosts, exposure: .placeholder, headers: headers, allowPlainHTTP: allowPlainHTTP, file: origin,
                        line: s.line))
            }
        }
        return out
    }

    static func isSecretName(_ n: String) -> Bool { SecretName.isValid(n) }

    static func isHeaderName(_ n: String) -> Bool {
        let u = Array(n.utf8)
        return (1...64).contains(u.count) && u.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "-") }
    }

    static func isEnvName(_ n: String) -> Bool {
        let u = Array(n.utf8)
        guard (1...128).contains(u.count), let f = u.first, !(f >= UInt8(ascii: "0") && f <= UInt8(ascii: "9")) else { return false }
        return u.allSatisfy { isAlnum($0) || $0 == UInt8(ascii: "_") }
    }

    private static func isAlnum(_ b: UInt8) -> Bool {
        isLowerAlnum(b) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
    }
}
