/// The machine-readable error codes of the protocol (docs/protocol.md), with the exit status `clawpen`
/// uses for each.
public enum ErrorCode: String, Sendable, CaseIterable {
    case invalidRequest = "invalid_request"
    case invalidTenant = "invalid_tenant"
    case unknownTenant = "unknown_tenant"
    case unknownJob = "unknown_job"
    case frameTooLarge = "frame_too_large"
    case quotaExceeded = "quota_exceeded"
    case policyDenied = "policy_denied"
    case permissionDenied = "permission_denied"
    /// A file request's path does not exist.
    case notFound = "not_found"
    /// A file over the tier's file_max_bytes.
    case fileTooLarge = "file_too_large"
    case timedOut = "timed_out"
    case oomKilled = "oom_killed"
    case workerCrashed = "worker_crashed"
    case unavailable = "unavailable"
    case `internal` = "internal"

    public var exitCode: Int32 {
        switch self {
        case .invalidRequest, .invalidTenant, .unknownTenant, .unknownJob, .frameTooLarge: return 64
        case .quotaExceeded, .fileTooLarge: return 75
        case .notFound: return 66
        case .policyDenied, .permissionDenied: return 77
        case .timedOut: return 124
        case .oomKilled: return 137
        case .unavailable: return 69
        case .workerCrashed, .internal: return 70
        }
    }
}

/// A refusal or failure as it travels on the wire: `{"code": ..., "message": ...}` plus details
/// (the rule, limit, current value, retry_after_ms of a quota).
public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    /// Extra fields of the error object (a quota's `quota`, `limit`, `current`, `retry_after_ms`;
    /// the `rule` that refused).
    public var details: [String: JSONValue]

    public init(_ code: ErrorCode, _ message: String, details: [String: JSONValue] = [:]) {
        self.code = code; self.message = message; self.details = details
    }

    public var description: String { "\(code.rawValue): \(message)" }

    public var json: JSONValue {
        var o = JSONObjectBuilder()
        o.set("code", .string(code.rawValue))
        o.set("message", .string(message))
        for (k, v) in details.sorted(by: { $0.key < $1.key }) { o.set(k, v) }
        return o.value
    }

    public init?(json: JSONValue) {
        guard let c = json["code"]?.stringValue else { return nil }
        let code = ErrorCode(rawValue: c) ?? .internal
        var details: [String: JSONValue] = [:]
        if case .object(let pairs) = json {
            for (k, v) in pairs where k != "code" && k != "message" { details[k] = v }
        }
        self.init(code, json["message"]?.stringValue ?? c, details: details)
    }
}
