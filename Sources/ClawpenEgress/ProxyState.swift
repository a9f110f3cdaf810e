import ClawpenPolicy
import ClawpenProtocol
import Crypto
import FoundationEssentials
import Glibc
import NIOCore
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
        public init(name: String, placeholder: [UInt8], value: [UInt8], hosts: [EgressRule]) {
            self.name = name; self.placeholder = placeholder; self.value = value; self.hosts = hosts
        }
    }

    public final class Tenant: Sendable {
        public let name: String
        public let allow: [EgressRule]
        public let secrets: [Substitution]
        let caKey: P256.Signing.PrivateKey?
        let caCertificate: Certificate?
        /// Server contexts with a leaf certificate per host:port, minted at the first need.
        let leaves = Mutex<[String: NIOSSLContext]>([:])

        init(name: String, allow: [EgressRule], secrets: [Substitution], caKey: P256.Signing.PrivateKey?, caCertificate: Certificate?) {
            self.name = name; self.allow = allow; self.secrets = secrets; self.caKey = caKey; self.caCertificate = caCertificate
        }

        /// The secrets whose hosts name host:port.
        func substitutions(host: String, port: Int) -> [Substitution] {
            secrets.filter { s in s.hosts.contains { $0.matches(host: host, port: port) } }
        }

        /// A TLS server context presenting a certificate for `host`, signed by the tenant's CA.
        func serverContext(host: String) throws -> NIOSSLContext {
            if let c = leaves.withLock({ $0[host] }) { return c }
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
            leaves.withLock { $0[host] = ctx }
            return ctx
        }
    }

    private let tenants = Mutex<[String: Tenant]>([:])
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
                secrets.append(Substitution(name: n, placeholder: Array(ph.utf8), value: Array(value), hosts: try rules(s["hosts"])))
            }
            var key: P256.Signing.PrivateKey?
            var cert: Certificate?
            if let k = v["ca_key_pem"]?.stringValue, let c = v["ca_cert_pem"]?.stringValue {
                key = try P256.Signing.PrivateKey(pemRepresentation: k)
                cert = try Certificate(pemEncoded: c)
            }
            let t = Tenant(name: name, allow: allow, secrets: secrets, caKey: key, caCertificate: cert)
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

/// Reports to the supervisor: frames written whole under a lock (the report socket is blocking;
/// the supervisor reads it on its event loop). The events of requests (a denial, a secret's use,
/// a connection's counts) are gathered for `batchDelay` and written together: one write and one
/// wake-up of the supervisor (and one audit transaction there) per batch instead of two per
/// request, which on a machine of two cores is CPU taken from the requests themselves. A proxy
/// that dies loses at most that much of them; `ready` and log lines go at once.
public final class Reporter: Sendable {
    let fd: Int32
    private let lock = Mutex<Void>(())
    private let loop: EventLoop?
    private let pending = Mutex<(frames: [UInt8], scheduled: Bool)>(([], false))
    static let batchDelay = TimeAmount.milliseconds(10)
    static let batchBytes = 64 * 1024

    /// `loop`: where the batches are timed (nil: every report is written at once).
    public init(fd: Int32, loop: EventLoop? = nil) {
        self.fd = fd
        self.loop = loop
    }

    public func send(_ v: JSONValue) { write(EgressControl.frame(v)) }

    /// A request's event: in the next batch.
    func report(_ v: JSONValue) {
        guard let loop else { send(v); return }
        let frame = EgressControl.frame(v)
        let (schedule, full) = pending.withLock { p -> (Bool, Bool) in
            p.frames += frame
            let first = !p.scheduled
            p.scheduled = true
            return (first, p.frames.count >= Self.batchBytes)
        }
        if full { flush() } else if schedule { loop.scheduleTask(in: Self.batchDelay) { [self] in flush() } }
    }

    /// Writes what is gathered (the timer, a full batch, or the end).
    public func flush() {
        let frames = pending.withLock { p -> [UInt8] in
            defer { p = ([], false) }
            return p.frames
        }
        if !frames.isEmpty { write(frames) }
    }

    private func write(_ bytes: [UInt8]) {
        lock.withLock { _ in
            var off = 0
            while off < bytes.count {
                let n = bytes[off...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { return }
                off += n
            }
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
