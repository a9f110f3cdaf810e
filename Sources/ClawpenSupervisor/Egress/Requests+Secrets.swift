import ClawpenProtocol
import ClawpenSecrets
import ClawpenStore
import ClawpenWire

/// `secret.put`, `secret.list`, `secret.rm` (operators). Audited with names and versions only.
extension Supervisor {
    func handleSecret(_ request: Request, _ r: Responder) throws {
        guard let vault else {
            throw ProtocolError(.unavailable, "secrets are not available: the daemon has no master key (see its log)")
        }
        switch request {
        case .secretPut(let tenant, let name, let value):
            try authorize(r, .operator(command: "secret put"), request: "secret.put", tenant: tenant)
            _ = try self.tenant(tenant)
            let record: SecretRecord
            do { record = try vault.put(tenant, name: name, value: value, now: Clock.now()) } catch let e as KeyError {
                throw ProtocolError(.internal, e.description)
            }
            audit(tenant: tenant, caller: r, action: "secret.put", rule: "operator", detail: "name=\(name) version=\(record.version)")
            logger.info("secret stored", metadata: ["tenant": "\(tenant)", "secret": "\(name)", "version": "\(record.version)"])
            secretsChanged(tenant)
            r.reply("secret", [("secret", record.json)])
        case .secretList(let tenant):
            try authorize(r, .operator(command: "secret list"), request: "secret.list", tenant: tenant)
            _ = try self.tenant(tenant)
            r.reply("secrets", [("tenant", .string(tenant.value)), ("secrets", .array(try store.secrets(tenant).map(\.json)))])
        case .secretRemove(let tenant, let name):
            try authorize(r, .operator(command: "secret rm"), request: "secret.rm", tenant: tenant)
            _ = try self.tenant(tenant)
            guard let old = try store.secret(tenant, name: name), try store.removeSecret(tenant, name: name) else {
                throw ProtocolError(.notFound, "tenant '\(tenant)' has no secret named '\(name)' (see: clawpen secret list \(tenant))")
            }
            audit(tenant: tenant, caller: r, action: "secret.rm", rule: "operator", detail: "name=\(name)")
            logger.info("secret removed", metadata: ["tenant": "\(tenant)", "secret": "\(name)"])
            secretsChanged(tenant)
            r.reply("secret.removed", [("tenant", .string(tenant.value)), ("name", .string(name)), ("version", .int(Int64(old.version)))])
        default: break
        }
    }
}
