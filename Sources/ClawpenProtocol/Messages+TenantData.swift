import ClawpenWire

/// The tenant-data requests (docs/protocol.md, "Tenant data"): offboarding, restore, export, the
/// master key's rotation, and a tenant created with its own key.
public enum TenantDataRequest: Sendable, Equatable {
    /// `tenant.create` with `key_file`: the tenant's own key (a file on the daemon's side) wraps
    /// its data key.
    case createWithKey(name: TenantName, tier: String, keyFile: String)
    /// `graceDays` nil: the default grace period; `now`: no grace period at all.
    case offboard(name: TenantName, dryRun: Bool, graceDays: Double?, now: Bool, deleteAudit: Bool)
    case restore(name: TenantName)
    /// Writes a tar of the tenant's workspace and job history to `path` (on the daemon's side).
    case export(name: TenantName, path: String)
    /// `newKeyFile` nil: the daemon makes the new key (only when its key is the state dir's file).
    case keyRotate(newKeyFile: String?)

    static let types = ["tenant.offboard", "tenant.restore", "tenant.export", "key.rotate"]

    public var typeName: String {
        switch self {
        case .createWithKey: return "tenant.create"
        case .offboard: return "tenant.offboard"
        case .restore: return "tenant.restore"
        case .export: return "tenant.export"
        case .keyRotate: return "key.rotate"
        }
    }

    /// Longest grace period (ten years): a number beyond it is a mistake, not a policy.
    public static let maxGraceDays = 3650.0

    static func absolutePath(_ f: RequestCodec.Fields, _ key: String) throws -> String {
        let p = try f.string(key)
        guard p.hasPrefix("/"), !p.utf8.contains(0), p.utf8.count <= 4096 else {
            throw ProtocolError(.invalidRequest, "\(f.type): \"\(key)\" must be an absolute path (the daemon resolves no relative one)")
        }
        return p
    }

    static func parse(_ f: RequestCodec.Fields) throws -> TenantDataRequest {
        func flag(_ key: String) throws -> Bool {
            guard let v = f.object[key], !v.isNull else { return false }
            guard let b = v.boolValue else { throw ProtocolError(.invalidRequest, "\(f.type): \"\(key)\" must be true or false") }
            return b
        }
        switch f.type {
        case "tenant.create":
            return .createWithKey(name: try f.tenant("name"), tier: try f.optionalString("tier") ?? "free", keyFile: try absolutePath(f, "key_file"))
        case "tenant.offboard":
            var days: Double?
            if let v = f.object["grace_period_days"], !v.isNull {
                guard let d = v.doubleValue, d.isFinite, d >= 0, d <= maxGraceDays else {
                    throw ProtocolError(.invalidRequest, "tenant.offboard: \"grace_period_days\" must be a number from 0 to \(Int(maxGraceDays))")
                }
                days = d
            }
            let now = try flag("now")
            if now, let days, days > 0 {
                throw ProtocolError(.invalidRequest, "tenant.offboard: \"now\" and a grace period of \(days) days contradict each other")
            }
            return .offboard(name: try f.tenant("name"), dryRun: try flag("dry_run"), graceDays: days, now: now, deleteAudit: try flag("delete_audit"))
        case "tenant.restore": return .restore(name: try f.tenant("name"))
        case "tenant.export": return .export(name: try f.tenant("name"), path: try absolutePath(f, "to"))
        default:
            guard f.object["new_key_file"].map({ !$0.isNull }) ?? false else { return .keyRotate(newKeyFile: nil) }
            return .keyRotate(newKeyFile: try absolutePath(f, "new_key_file"))
        }
    }

    func encode(into o: inout JSONObjectBuilder) {
        switch self {
        case .createWithKey(let name, let tier, let keyFile):
            o.set("name", .string(name.value))
            o.set("tier", .string(tier))
            o.set("key_file", .string(keyFile))
        case .offboard(let name, let dryRun, let graceDays, let now, let deleteAudit):
            o.set("name", .string(name.value))
            o.set("dry_run", dryRun)
            if let graceDays { o.set("grace_period_days", .double(graceDays)) }
            o.set("now", now)
            o.set("delete_audit", deleteAudit)
        case .restore(let name): o.set("name", .string(name.value))
        case .export(let name, let path):
            o.set("name", .string(name.value))
            o.set("to", .string(path))
        case .keyRotate(let file): if let file { o.set("new_key_file", .string(file)) }
        }
    }
}
