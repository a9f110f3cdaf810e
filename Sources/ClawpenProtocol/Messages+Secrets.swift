import ClawpenWire
import FoundationEssentials

/// The secret requests (docs/protocol.md, "secret.put"): names and values checked at the edge.
extension RequestCodec {
    /// `^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$` (SecretName, shared with the policy loader).
    public static func isValidSecretName(_ name: String) -> Bool { SecretName.isValid(name) }

    /// The largest secret value (an API key, a token, a small certificate).
    public static let maxSecretBytes = 64 * 1024

    static func secretName(_ f: Fields) throws -> String {
        let name = try f.string("name")
        guard isValidSecretName(name) else {
            throw ProtocolError(.invalidRequest, "\(f.type): secret name \(shown(name)) must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
        }
        return name
    }

    static func secretRequest(_ f: Fields) throws -> Request {
        let tenant = try f.tenant("tenant")
        switch f.type {
        case "secret.list": return .secretList(tenant: tenant)
        case "secret.rm": return .secretRemove(tenant: tenant, name: try secretName(f))
        default:
            let name = try secretName(f)
            guard let data = Data(base64Encoded: try f.string("value_b64")) else {
                throw ProtocolError(.invalidRequest, "secret.put: \"value_b64\" is not valid base64")
            }
            guard (1...maxSecretBytes).contains(data.count) else {
                throw ProtocolError(.invalidRequest, "secret.put: a secret's value is 1 to \(maxSecretBytes) bytes, this one is \(data.count)")
            }
            return .secretPut(tenant: tenant, name: name, value: Array(data))
        }
    }

    static func encodeSecret(_ request: Request, into o: inout JSONObjectBuilder) {
        switch request {
        case .secretPut(let tenant, let name, let value):
            o.set("tenant", .string(tenant.value))
            o.set("name", .string(name))
            o.set("value_b64", .string(Data(value).base64EncodedString()))
        case .secretList(let tenant): o.set("tenant", .string(tenant.value))
        case .secretRemove(let tenant, let name):
            o.set("tenant", .string(tenant.value))
            o.set("name", .string(name))
        default: break
        }
    }
}
