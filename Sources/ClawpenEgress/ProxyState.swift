import ClawpenPolicy
import ClawpenProtocol
import ClawpenSystem
import Crypto
import FoundationEssentials
import Glibc
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import X509

/// What the proxy knows, all of it from the supervisor's control frames: each tenant's
/// allowlist, substituted secrets and CA, the trust roots for upstream servers, and which
/// listener serves which tenant. Shared by the control thread (writes) and the event loop
/// (reads), behind a Mutex.
public final class ProxyState: Sendable {
    public struct Substitution: Sendable {
        public let name: String
        public let placeholder: [UInt8]
        public let value: [UInt8]
        public let hosts: [EgressRule]
        /// Lower-case header names the placeholder may be in (SecretBinding.headers).
        public let headers: [String]
        public let allowPlainHTTP: Bool
        public init(
            name: String, placeholder: [UInt8], value: [UInt8], hosts: [EgressRule], headers: [String] = SecretBinding.defaultHeaders,
            allowPlainHTTP: Bool = false
        ) {
            self.name = name; self.placeholder = placeholder; self.value = value; self.hosts = hosts
            self.headers = headers.map { $0.lowercased() }; self.allowPlainHTTP = allowPlainHTTP
        }

        /// The rule the proxy and `policy explain` share (SecretUse.decide).
        public func use(host: String, port: Int, tls: Bool) -> SecretUse {
            SecretUse.decide(hosts: hosts, allowPlainHTTP: allowPlainHTTP, host: host, port: port, tls: tls)
        }
    }

    public final class Tenant: Sendable {
        public let name: String
        public let allow: [EgressRule]
        public let secrets: [Substitution]
        /// `egress_max_connections`: client connections of this tenant open at once.
        public let maxConnections: Int
        let caKey: P256.Signing.PrivateKey?
        let caCertificate: Certificate?
        /// Server contexts with a leaf certificate per host, minted at the first need; the least
        /// recently used go beyond `maxLeaves` (a wildcard secret host cannot make the proxy keep
        /// a key per subdomain a job invents).
        let leaves = Mutex(LeafCache<NIOSSLContext>())
        static let maxLeaves = 64

        init(
            name: String, allow: [EgressRule], secrets: [Substitution], maxConnections: Int = TierLimits.defaultEgressMaxConnections,
            caKey: P256.Signing.PrivateKey?, caCertificate: Certificate?
        ) {
            self.name = name; self.allow = allow; self.secrets = secrets; self.maxConnections = maxConnections
            self.caKey = caKey; self.caCertificate = caCertificate
        }

        /// Whether a CONNECT to host:port is intercepted: some secret is substituted inside TLS there.
        func intercepts(host: String, port: Int) -> Bool {
            secrets.contains { $0.use(host: host, port: port, tls: true) == .substituted }
        }

        var leafCount: Int { leaves.withLock { $0.count } }

        /// A TLS server context presenting a certificate for `host`, signed by the tenant's CA.
        func serverContext(host: String) throws -> NIOSSLContext {
            if let c = leaves.withLock({ $0.get(host) }) { return c }
            guard let caKey, let caCertificate else { throw ProxyError("tenant \(name) has no CA") }
            let key = P256.Signing.PrivateKey()
            let now = Date()
            let subject = try DistinguishedName { CommonName(host) }
            let leaf = try Certificate(
                version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
                notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(7 * 86400),
                issuer: caCertificate.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                extensions: try Certificate.Extensions {
                    Critical(BasicConstraints.notCertificateAuthority)
                    Critical(KeyUsage(digitalSignature: true))
                    try ExtendedKeyUsage([.serverAuth])
                    SubjectAlternativeNames([.dnsName(host)])
                }, issuerPrivateKey: .init(caKey))
            let chain = try NIOSSLCertificate(bytes: Array(try leaf.serializeAsPEM().pemString.utf8), format: .pem)
            let privateKey = try NIOSSLPrivateKey(bytes: Array(key.pemRepresentation.utf8), format: .pem)
            let ctx = try NIOSSLContext(configuration: .makeServerConfiguration(certificateChain: [.certificate(chain)], privateKey: .privateKey(privateKey)))
            leaves.withLock { $0.put(host, ctx, limit: Self.maxLeaves) }
            return ctx
        }
    }

    /// A small LRU: `order` is oldest first.
    struct LeafCache<Value> {
        private var contexts: [String: Value] = [:]
        private var order: [String] = []
        var count: Int { contexts.count }
        mutating func get(_ host: String) -> Value? {
            guard let c = contexts[host] else { return nil }
            if let i = order.firstIndex(of: host) { order.remove(at: i) }
            order.append(host)
            return c
        }
        mutating func put(_ host: String, _ c: Value, limit: Int) {
            if contexts.updateValue(c, forKey: host) == nil { order.append(host) }
            while contexts.count > limit, !order.isEmpty { contexts[order.removeFirst()] = nil }
        }
    }

    private let tenants = Mutex<[String: Tenant]>([:])
    /// Open client connections per tenant (egress_max_connections).
    private let open = Mutex<[String: Int]>([:])

    /// Counts a new client connection of `tenant`; false (and nothing counted) over its cap.
    func admit(_ tenant: String, limit: Int) -> Bool {
        open.withLock { o in
            let n = o[tenant, default: 0]
            guard n < limit else { return false }
            o[tenant] = n + 1
            return true
        }
    }

    func release(_ tenant: String) {
        open.withLock { o in
            let n = o[tenant, default: 0] - 1
            o[tenant] = n > 0 ? n : nil
        }
    }

    /// Names resolved a moment ago, per tenant.
    let resolved = ResolverCache()
    private let trust = Mutex<[NIOSSLCertificate]>([])
    private let clientContext = Mutex<NIOSSLContext?>(nil)

    public init() {}

    public func tenant(_ name: String) -> Tenant? { tenants.withLock { $0[name] } }

    /// The context upstream TLS connections are verified with (the trust roots the supervisor sent).
    func upstreamContext() throws -> NIOSSLContext {
        if let c = clientContext.withLock({ $0 }) { return c }
        var config = TLSConfiguration.makeClientConfiguration()
        config.certificateVerification = .fullVerification
        config.trustRoots = .certificates(trust.withLock { $0 })
        let ctx = try NIOSSLContext(configuration: config)
        clientContext.withLock { $0 = ctx }
        return ctx
    }

    // MARK: Control frames

    public func apply(_ v: JSONValue) throws {
        switch v["type"]?.stringValue {
        case "trust":
            let pem = v["pem"]?.stringValue ?? ""
            let certs = (try? NIOSSLCertificate.fromPEMBytes(Array(pem.utf8))) ?? []
            trust.withLock { $0 = certs }
            clientContext.withLock { $0 = nil }
        case "tenant":
            guard let name = v["tenant"]?.stringValue else { return }
            let allow = try rules(v["allow"])
            var secrets: [Substitution] = []
            for s in v["secrets"]?.arrayValue ?? [] {
                guard let n = s["name"]?.stringValue, let ph = s["placeholder"]?.stringValue, let b64 = s["value_b64"]?.stringValue,
                    let value = Data(base64Encoded: b64),
                    // A value that could end a header line would let a job's request smuggle headers.
                    !value.contains(0x0D), !value.contains(0x0A), !value.contains(0)
                else { continue }
                let headers = s["headers"]?.arrayValue?.compactMap(\.stringValue) ?? SecretBinding.defaultHeaders
                secrets.append(
                    Substitution(
                        name: n, placeholder: Array(ph.utf8), value: Array(value), hosts: try rules(s["hosts"]), headers: headers,
                        allowPlainHTTP: s["allow_plain_http"]?.boolValue ?? false))
            }
            var key: P256.Signing.PrivateKey?
            var cert: Certificate?
            if let k = v["ca_key_pem"]?.stringValue, let c = v["ca_cert_pem"]?.stringValue {
                key = try P256.Signing.PrivateKey(pemRepresentation: k)
                cert = try Certificate(pemEncoded: c)
            }
            let cap = v["max_connections"]?.intValue.map { Int(clamping: $0) } ?? TierLimits.defaultEgressMaxConnections
            let t = Tenant(name: name, allow: allow, secrets: secrets, maxConnections: max(1, cap), caKey: key, caCertificate: cert)
            tenants.withLock { $0[name] = t }
        case "forget":
            if let name = v["tenant"]?.stringValue {
                _ = tenants.withLock { $0.removeValue(forKey: name) }
                resolved.forget(tenant: name)
            }
        default: break
        }
    }

    private func rules(_ v: JSONValue?) throws -> [EgressRule] {
        try (v?.arrayValue ?? []).map { r in
            try EgressRule(parsing: r["text"]?.stringValue ?? "", file: r["file"]?.stringValue ?? "?", line: Int(r["line"]?.intValue ?? 0))
        }
    }
}

public struct ProxyError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}

/// Reports to the supervisor. Never blocks its caller (the proxy's one event loop, or the
/// control thread): the events of requests (a denial, a secret's use, a connection's counts) are
/// gathered for `batchDelay` and handed over together, one write and one wake-up of the
/// supervisor (and one audit transaction there) per batch instead of two per request; `ready`
/// and log lines go at once. What is handed over goes to a thread of its own that writes it whole
/// to the (blocking) report socket; over `maxPendingBytes` queued a write is dropped and counted,
/// and the count goes to the supervisor with the next one (`dropped`), so a supervisor that
/// reads slowly loses detail, never the proxy's service. A proxy that dies loses at most the
/// last batch.
public final class Reporter: Sendable {
    let fd: Int32
    private let loop: EventLoop?
    private let batch = Mutex<(frames: [UInt8], scheduled: Bool)>(([], false))
    static let batchDelay = TimeAmount.milliseconds(10)
    static let batchBytes = 64 * 1024
    private let writer = NIOThreadPool(numberOfThreads: 1)
    private let pending = Atomic<Int>(0)
    private let dropped = Atomic<Int>(0)
    public static let maxPendingBytes = 1 << 20

    /// `loop`: where the batches are timed (nil: every report is handed over at once).
    public init(fd: Int32, loop: EventLoop? = nil) {
        self.fd = fd
        self.loop = loop
        writer.start()
    }

    /// Reports dropped since the last count that went out.
    public var droppedCount: Int { dropped.load(ordering: .relaxed) }

    public func send(_ v: JSONValue) { write(EgressControl.frame(v)) }

    /// A request's event: in the next batch.
    func report(_ v: JSONValue) {
        guard let loop else { send(v); return }
        let frame = EgressControl.frame(v)
        let (schedule, full) = batch.withLock { p -> (Bool, Bool) in
            p.frames += frame
            let first = !p.scheduled
            p.scheduled = true
            return (first, p.frames.count >= Self.batchBytes)
        }
        if full { flush() } else if schedule { loop.scheduleTask(in: Self.batchDelay) { [self] in flush() } }
    }

    /// Hands over what is gathered (the timer, a full batch, or the end).
    public func flush() {
        let frames = batch.withLock { p -> [UInt8] in
            defer { p = ([], false) }
            return p.frames
        }
        if !frames.isEmpty { write(frames) }
    }

    private func write(_ frames: [UInt8]) {
        var bytes = frames
        let lost = dropped.exchange(0, ordering: .relaxed)
        if lost > 0 {
            bytes = EgressControl.frame(.object([("type", .string("dropped")), ("dropped", .int(Int64(lost)))])) + bytes
        }
        let queued = pending.add(bytes.count, ordering: .relaxed).newValue
        guard queued <= Self.maxPendingBytes else {
            pending.subtract(bytes.count, ordering: .relaxed)
            dropped.add(1 + lost, ordering: .relaxed)
            return
        }
        let out = bytes
        writer.submit { [self] state in
            defer { pending.subtract(out.count, ordering: .relaxed) }
            guard case .active = state else { return }
            _ = Sockets.sendAll(fd, out)
        }
    }

    func denied(_ tenant: String, _ host: String, _ port: Int, _ rule: String) {
        report(
            .object([("type", .string("denied")), ("tenant", .string(tenant)), ("host", .string(host)), ("port", .int(Int64(port))), ("rule", .string(rule))]))
    }

    func used(_ tenant: String, _ name: String, _ host: String, _ port: Int) {
        report(
            .object([
                ("type", .string("secret_used")), ("tenant", .string(tenant)), ("name", .string(name)), ("host", .string(host)), ("port", .int(Int64(port))),
            ]))
    }

    func done(_ tenant: String, allowed: Bool, up: Int, down: Int) {
        report(
            .object([("type", .string("done")), ("tenant", .string(tenant)), ("allowed", .bool(allowed)), ("up", .int(Int64(up))), ("down", .int(Int64(down)))])
        )
    }

    public func log(_ level: String, _ message: String) {
        send(.object([("type", .string("log")), ("level", .string(level)), ("message", .string(message))]))
    }
}
