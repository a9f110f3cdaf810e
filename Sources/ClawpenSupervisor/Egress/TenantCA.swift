import ClawpenSecrets
import ClawpenSystem
import ClawpenWire
import Crypto
import FoundationEssentials
import Glibc
import X509

/// A tenant's egress CA: the proxy mints a leaf certificate per host with it when it terminates
/// TLS to substitute a secret, and the tenant's sandbox trusts it (and only its own tenant's).
/// Made at the tenant's first need and kept in the state dir (docs/egress.md, "The tenant's
/// CA"): its certificate as `egress/<tenant>-ca.pem`, its private key sealed with the tenant's
/// data key (AES-256-GCM, the key hierarchy of the secrets) as `egress/<tenant>-ca.key`, 0600 in
/// a 0700 directory of root's. So a restart of the daemon keeps the CA, and whatever a tenant
/// told its tools to trust stays valid; a tenant whose data key is destroyed (offboarding) can
/// no longer open it, and gets a new one. The key reaches the proxy over the control socket.
struct TenantCA {
    let certificatePEM: String
    let privateKeyPEM: String

    static func make(tenant: TenantName) throws -> TenantCA {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("clawpen")
            CommonName("clawpen egress CA for tenant \(tenant.value)")
        }
        let now = Date()
        let cert = try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: .init(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600), notValidAfter: now.addingTimeInterval(2 * 365 * 86400),
            issuer: name, subject: name, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            }, issuerPrivateKey: .init(key))
        return TenantCA(certificatePEM: try cert.serializeAsPEM().pemString, privateKeyPEM: key.pemRepresentation)
    }

    /// A stored CA, if it is whole and still good for a while: the certificate parses, its key is
    /// the private half of the certificate's, and it is valid for at least `minimumValidity` more.
    static func validated(certificatePEM: String, privateKeyPEM: String, now: Date = Date()) -> TenantCA? {
        guard let cert = try? Certificate(pemEncoded: certificatePEM), let key = try? P256.Signing.PrivateKey(pemRepresentation: privateKeyPEM),
            cert.publicKey == Certificate.PublicKey(key.publicKey), cert.notValidAfter > now.addingTimeInterval(minimumValidity),
            cert.notValidBefore <= now
        else { return nil }
        return TenantCA(certificatePEM: certificatePEM, privateKeyPEM: privateKeyPEM)
    }

    /// A CA this close to its end is replaced at the next start (it is made for two years).
    static let minimumValidity: TimeInterval = 30 * 86400

    /// The sealed key's file: a first line naming the data key version that sealed it, then
    /// the sealed bytes (nonce, ciphertext, tag).
    static let sealedMagic = "clawpen-egress-ca-key v1 key_version="
    static let sealPurpose = "egress-ca"
}

/// Why a stored CA could not be opened or kept.
struct EgressCAError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Where the sandbox finds the CAs it trusts for HTTPS through the proxy: the host's bundle plus
/// the tenant's CA (a generated file of the sandbox's /etc), named by the variables tools read.
enum EgressTrust {
    static let bundleInSandbox = "/etc/clawpen-ca-bundle.pem"
    static let caInSandbox = "/etc/clawpen-egress-ca.pem"
    static let environment: [(String, String)] = [
        ("SSL_CERT_FILE", bundleInSandbox), ("REQUESTS_CA_BUNDLE", bundleInSandbox), ("CURL_CA_BUNDLE", bundleInSandbox),
        ("PIP_CERT", bundleInSandbox), ("GIT_SSL_CAINFO", bundleInSandbox), ("NODE_EXTRA_CA_CERTS", caInSandbox),
    ]
}

extension Supervisor {
    /// The tenant's CA: the one in memory, else the one in the state dir, else a new one (stored).
    func tenantCA(_ name: TenantName) throws -> TenantCA {
        if let ca = egress.cas[name] { return ca }
        if let ca = loadTenantCA(name) {
            egress.cas[name] = ca
            return ca
        }
        let ca = try TenantCA.make(tenant: name)
        do { try storeTenantCA(name, ca) } catch {
            // It still serves this daemon's life; the next start makes another.
            logger.error("cannot keep the tenant's egress CA in the state dir", metadata: ["tenant": "\(name)", "error": "\(error)"])
        }
        egress.cas[name] = ca
        return ca
    }

    /// The tenant is gone (offboarded): its CA leaves memory and the state dir, its counters
    /// go, and the proxy forgets the tenant. Before, a tenant created later under the same name in the same run
    /// got the offboarded one's CA from memory, and the files stayed until a start replaced them.
    func egressTenantRemoved(_ name: TenantName) {
        egress.cas[name] = nil
        // Its counters too: status would show them for a new tenant of the name.
        egress.counters[name] = nil
        egress.listenerFailures[name] = nil
        if egress.configured.remove(name) != nil { sendToProxy(.object([("type", .string("forget")), ("tenant", .string(name.value))])) }
        for path in [caCertPath(name), caKeyPath(name)] where unlink(path) != 0 && errno != ENOENT {
            logger.warning("cannot remove the tenant's egress CA", metadata: ["tenant": "\(name)", "path": "\(path)", "error": "\(errnoString(errno))"])
        }
    }

    private var egressDir: String { config.stateDir + "/egress" }
    private func caCertPath(_ name: TenantName) -> String { "\(egressDir)/\(name.value)-ca.pem" }
    private func caKeyPath(_ name: TenantName) -> String { "\(egressDir)/\(name.value)-ca.key" }

    /// The stored CA, or nil (none, unreadable, sealed by a key that is gone, or near its end:
    /// the log says which, and a new one replaces it).
    private func loadTenantCA(_ name: TenantName) -> TenantCA? {
        guard let sealedFile = Files.readRegularFile(caKeyPath(name), limit: 64 * 1024) else { return nil }
        guard let certBytes = Files.readRegularFile(caCertPath(name), limit: 64 * 1024) else { return nil }
        guard let newline = sealedFile.firstIndex(of: 0x0A),
            let header = String(validating: sealedFile[..<newline], as: UTF8.self), header.hasPrefix(TenantCA.sealedMagic),
            let version = Int(header.dropFirst(TenantCA.sealedMagic.count))
        else {
            logger.warning("the tenant's stored egress CA key is not in the expected form; making a new CA", metadata: ["tenant": "\(name)"])
            return nil
        }
        do {
            let key = try egressDataKey(name, version: version)
            let pem = try key.open(Array(sealedFile[(newline + 1)...]), purpose: TenantCA.sealPurpose, name: "ca-key", itemVersion: 1)
            guard let ca = TenantCA.validated(certificatePEM: String(decoding: certBytes, as: UTF8.self), privateKeyPEM: String(decoding: pem, as: UTF8.self))
            else {
                logger.notice("the tenant's stored egress CA is invalid or near its end; making a new one", metadata: ["tenant": "\(name)"])
                return nil
            }
            return ca
        } catch {
            logger.warning("cannot open the tenant's stored egress CA; making a new one", metadata: ["tenant": "\(name)", "error": "\(error)"])
            return nil
        }
    }

    /// The tenant's data key at `version`, unwrapped by the master key (as the vault does for
    /// secrets).
    private func egressDataKey(_ name: TenantName, version: Int) throws -> DataKey {
        guard let vault else { throw EgressCAError("open the egress CA: no master key") }
        guard let row = try store.tenantKey(name, version: version), let wrapped = row.wrapped, row.state != "destroyed" else {
            throw EgressCAError("open the egress CA: the tenant's data key version \(version) is gone")
        }
        guard row.masterKeyID == vault.master.id else {
            throw EgressCAError("open the egress CA: data key version \(version) is wrapped by another master key")
        }
        return try vault.master.unwrap(wrapped, tenant: name.value, version: version)
    }

    private func storeTenantCA(_ name: TenantName, _ ca: TenantCA) throws {
        guard let vault else { throw EgressCAError("keep the egress CA: no master key") }
        let key = try vault.activeKey(name, now: Clock.now())
        let sealed = try key.seal(Array(ca.privateKeyPEM.utf8), purpose: TenantCA.sealPurpose, name: "ca-key", itemVersion: 1)
        try Files.makeDirectories(egressDir, mode: 0o700)
        // The key first: a certificate without its key is never taken for a CA (load needs both).
        try writeAtomically(caKeyPath(name), Array("\(TenantCA.sealedMagic)\(key.version)\n".utf8) + sealed, mode: 0o600)
        try writeAtomically(caCertPath(name), Array(ca.certificatePEM.utf8))
    }

    /// For an egress tenant's new worker: the tenant's CA and the combined bundle, written to
    /// `<state-dir>/egress/` (root's, 0700) and copied into the sandbox's /etc by the worker.
    func addEgressTrust(_ plan: inout SandboxPlan, _ name: TenantName) {
        guard plan.enabled, egress.proxy != nil, core.tenants[name]?.limits.network == "egress" else { return }
        do {
            let ca = try tenantCA(name)
            let dir = egressDir
            try Files.makeDirectories(dir, mode: 0o700)
            let host = Files.readRegularFile("/etc/ssl/certs/ca-certificates.crt", limit: 1 << 20) ?? []
            let caPath = caCertPath(name), bundlePath = "\(dir)/\(name.value)-bundle.pem"
            try writeAtomically(caPath, Array(ca.certificatePEM.utf8))
            try writeAtomically(bundlePath, host + [0x0A] + Array(ca.certificatePEM.utf8))
            plan.etcBinds.append(SandboxPlan.Bind(source: caPath, target: EgressTrust.caInSandbox))
            plan.etcBinds.append(SandboxPlan.Bind(source: bundlePath, target: EgressTrust.bundleInSandbox))
        } catch {
            logger.error("cannot give the sandbox the tenant's egress CA", metadata: ["tenant": "\(name)", "error": "\(error)"])
        }
    }

    private func writeAtomically(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws(StepFailure) {
        let tmp = path + ".tmp"
        _ = unlink(tmp) // a leftover keeps its old mode under O_CREAT
        let fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw StepFailure(step: "write \(tmp)", errno: errno) }
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let e = errno
        close(fd)
        guard n == bytes.count else { throw StepFailure(step: "write \(tmp)", errno: e) }
        guard rename(tmp, path) == 0 else { throw StepFailure(step: "rename \(tmp)", errno: errno) }
    }
}
