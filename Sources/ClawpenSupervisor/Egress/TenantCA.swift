import ClawpenSystem
import ClawpenWire
import Crypto
import FoundationEssentials
import Glibc
import X509

/// A tenant's egress CA: the proxy mints a leaf certificate per host with it when it terminates
/// TLS to substitute a secret, and the tenant's sandbox trusts it (and only its own tenant's).
/// Made in memory at the first need and kept for the daemon's life: a restart makes a new one,
/// which new workers trust. Its key goes to the proxy over the control socket, never to disk.
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
    func tenantCA(_ name: TenantName) throws -> TenantCA {
        if let ca = egress.cas[name] { return ca }
        let ca = try TenantCA.make(tenant: name)
        egress.cas[name] = ca
        return ca
    }

    /// For an egress tenant's new worker: the tenant's CA and the combined bundle, written to
    /// `<state-dir>/egress/` (root's, 0700) and copied into the sandbox's /etc by the worker.
    func addEgressTrust(_ plan: inout SandboxPlan, _ name: TenantName) {
        guard plan.enabled, egress.proxy != nil, core.tenants[name]?.limits.network == "egress" else { return }
        do {
            let ca = try tenantCA(name)
            let dir = config.stateDir + "/egress"
            try Files.makeDirectories(dir, mode: 0o700)
            let host = Files.readRegularFile("/etc/ssl/certs/ca-certificates.crt", limit: 1 << 20) ?? []
            let caPath = "\(dir)/\(name.value)-ca.pem", bundlePath = "\(dir)/\(name.value)-bundle.pem"
            try writeAtomically(caPath, Array(ca.certificatePEM.utf8))
            try writeAtomically(bundlePath, host + [0x0A] + Array(ca.certificatePEM.utf8))
            plan.etcBinds.append(SandboxPlan.Bind(source: caPath, target: EgressTrust.caInSandbox))
            plan.etcBinds.append(SandboxPlan.Bind(source: bundlePath, target: EgressTrust.bundleInSandbox))
        } catch {
            logger.error("cannot give the sandbox the tenant's egress CA", metadata: ["tenant": "\(name)", "error": "\(error)"])
        }
    }

    private func writeAtomically(_ path: String, _ bytes: [UInt8]) throws(StepFailure) {
        let tmp = path + ".tmp"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw StepFailure(step: "write \(tmp)", errno: errno) }
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let e = errno
        close(fd)
        guard n == bytes.count else { throw StepFailure(step: "write \(tmp)", errno: e) }
        guard rename(tmp, path) == 0 else { throw StepFailure(step: "rename \(tmp)", errno: errno) }
    }
}
