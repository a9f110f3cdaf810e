import ClawpenWire
import FoundationEssentials

/// Every request a client can send (docs/protocol.md), parsed and checked for shape. A tenant's
/// name is a `TenantName` from here on: `RequestCodec` refuses an invalid one with
/// `invalid_tenant` before anything else sees it. Quotas and permissions are the supervisor's.
public enum Request: Sendable, Equatable {
    case ping
    case submit(SubmitRequest)
    case jobGet(jobID: String)
    case jobWait(jobID: String)
    case jobCancel(jobID: String)
    /// The tree a job belongs to: its root and every sub-job (docs/subjobs.md).
    case jobTree(jobID: String)
    case tenantCreate(name: TenantName, tier: String)
    case tenantList
    case tenantShow(name: TenantName)
    case status(tenant: TenantName?)
    /// The audit log (operators): of one tenant or all, from `since` (seconds since the epoch), newest `limit`.
    case audit(tenant: TenantName?, since: Double?, limit: Int)
    /// What the policy decides for a command, without running it.
    case policyExplain(tenant: TenantName, argv: [String], env: [SubmitRequest.EnvVar], cwd: String?)
    /// Re-read the policies directory (operators); a bad one keeps the old policy.
    case policyReload
    /// Change one tenant's limits (operators): an override kept in the state directory.
    case tenantSetQuota(name: TenantName, changes: [QuotaChange])
    /// Freeze a tenant (operators): submits refused, queued jobs wait, running jobs stopped.
    case tenantSuspend(name: TenantName)
    /// Undo a suspension and lift a crash-loop quarantine (operators).
    case tenantResume(name: TenantName)
    /// What the tenant's running worker actually has, beside what its policy asks (operators).
    case tenantInspect(name: TenantName)
    /// The Prometheus text of `GET /metrics` (operators).
    case metrics
    /// The agent runtime: input, window size, signals, attach, logs, list (Messages+Runtime.swift).
    case runtime(RuntimeRequest)
    /// The tenant's files (FileRequests.swift).
    case file(FileCommand)
    /// Secrets (operators; Messages+Secrets.swift): store or replace, list (never values), remove.
    case secretPut(tenant: TenantName, name: String, value: [UInt8])
    case secretList(tenant: TenantName)
    case secretRemove(tenant: TenantName, name: String)
    /// What the tenant's egress proxy would do with a request to `url`.
    case egressExplain(tenant: TenantName, url: String)
    /// Offboarding, restore, export, key rotation, own keys (Messages+TenantData.swift).
    case tenantData(TenantDataRequest)

    public var typeName: String {
        switch self {
        case .ping: return "ping"
        case .submit: return "submit"
        case .jobGet: return "job.get"
        case .jobWait: return "job.wait"
        case .jobCancel: return "job.cancel"
        case .jobTree: return "job.tree"
        case .tenantCreate: return "tenant.create"
        case .tenantList: return "tenant.list"
        case .tenantShow: return "tenant.show"
        case .status: return "status"
        case .audit: return "audit"
        case .policyExplain: return "policy.explain"
        case .policyReload: return "policy.reload"
        case .tenantSetQuota: return "tenant.set_quota"
        case .tenantSuspend: return "tenant.suspend"
        case .tenantResume: return "tenant.resume"
        case .tenantInspect: return "tenant.inspect"
        case .metrics: return "metrics"
        case .runtime(let r): return r.typeName
        case .file(let c): return c.typeName
        case .secretPut: return "secret.put"
        case .secretList: return "secret.list"
        case .secretRemove: return "secret.rm"
        case .egressExplain: return "policy.explain"
        case .tenantData(let d): return d.typeName
        }
    }
}

/// One limit `tenant set-quota` changes: a policy key (`max_concurrent_runs`, `memory_max`, ...)
/// and its value as the policy file would hold it (integer, number or size string).
public struct QuotaChange: Sendable, Equatable {
    public var key: String
    public var value: JSONValue
    public init(key: String, value: JSONValue) { self.key = key; self.value = value }
}

public struct SubmitRequest: Sendable, Equatable {
    public var tenant: TenantName
    public var argv: [String]
    public var env: [EnvVar]
    public var cwd: String?
    public var stdin: [UInt8]
    public var timeoutSeconds: Double?
    public var idempotencyKey: String?
    public var wait: Bool
    /// `stream`, `stdin_open`, `tty`, `rows`, `cols` (docs/protocol.md, "Streaming").
    public var options: RunOptions
    /// The caller's W3C `traceparent`; the supervisor makes one when it is nil.
    public var trace: TraceContext?

    public struct EnvVar: Sendable, Equatable {
        public var name: String
        public var value: String
        public init(name: String, value: String) { self.name = name; self.value = value }
    }

    public init(
        tenant: TenantName, argv: [String], env: [EnvVar] = [], cwd: String? = nil, stdin: [UInt8] = [],
        timeoutSeconds: Double? = nil, idempotencyKey: String? = nil, wait: Bool = false, options: RunOptions = RunOptions(),
        trace: TraceContext? = nil
    ) {
        self.tenant = tenant; self.argv = argv; self.env = env; self.cwd = cwd; self.stdin = stdin
        self.timeoutSeconds = timeoutSeconds; self.idempotencyKey = idempotencyKey; self.wait = wait
        self.options = options; self.trace = trace
    }

    public static let maxArguments = 4096
    public static let maxEnvironment = 1024
    public static let maxIdempotencyKeyBytes = 256
}

/// Encoding (clients) and decoding (supervisor) of request frames.
public enum RequestCodec {
    /// Parses one request payload. The id is returned even when the request is refused, so the
    /// refusal can echo it.
    /// `defaultTenant`: the tenant a request that names none is for (the agent socket's: a job
    /// inside a sandbox need not know its tenant's name; docs/subjobs.md).
    public static func decode(_ payload: [UInt8], defaultTenant: TenantName? = nil) -> (id: JSONValue, request: Result<Request, ProtocolError>) {
        let value: JSONValue
        do { value = try JSONParser.parse(payload, limits: requestLimits) } catch {
            return (
                .null,
                .failure(
                    ProtocolError(.invalidRequest, "the frame is not valid JSON (\(payload.count) bytes, \(error)); each frame must hold one UTF-8 JSON object")
                )
            )
        }
        guard case .object = value else {
            return (.null, .failure(ProtocolError(.invalidRequest, "the frame must hold a JSON object with a \"type\"")))
        }
        var id = value["id"] ?? .null
        switch id {
        case .string, .int, .double, .null: break;
        default: id = .null
        }
        do { return (id, .success(try request(from: value, defaultTenant: defaultTenant))) } catch let e as ProtocolError {
            return (id, .failure(e))
        } catch {
            return (id, .failure(ProtocolError(.invalidRequest, "\(error)")))
        }
    }

    /// What a request may hold beyond its size: the largest valid one (a submit with 4,096
    /// arguments and 1,024 variables) is about 5,000 values three levels deep, so these bounds
    /// refuse nothing real and keep a 16 MiB frame of tiny values from costing 8x its size in
    /// memory (docs/protocol.md, "Limits").
    static let requestLimits = JSONParser.Limits(maxDepth: 32, maxValues: 65_536)

    /// Most keys `tenant.set_quota` takes at once (there are about twenty limit keys).
    public static let maxQuotaChanges = 64

    static func request(from v: JSONValue, defaultTenant: TenantName? = nil) throws -> Request {
        guard let type = v["type"]?.stringValue else {
            throw ProtocolError(.invalidRequest, "missing string field \"type\"")
        }
        var f = Fields(v, type: type)
        f.defaultTenant = defaultTenant
        switch type {
        case "ping": return .ping
        case "submit": return .submit(try submit(f))
        case "job.get": return .jobGet(jobID: try f.string("job_id"))
        case "job.wait": return .jobWait(jobID: try f.string("job_id"))
        case "job.cancel": return .jobCancel(jobID: try f.string("job_id"))
        case "job.tree": return .jobTree(jobID: try f.string("job_id"))
        case "tenant.create" where f.object["key_file"].map({ !$0.isNull }) ?? false: return .tenantData(try TenantDataRequest.parse(f))
        case "tenant.create": return .tenantCreate(name: try f.tenant("name"), tier: try f.optionalString("tier") ?? "free")
        case "tenant.list": return .tenantList
        case "tenant.show": return .tenantShow(name: try f.tenant("name"))
        case "tenant.inspect": return .tenantInspect(name: try f.tenant("name"))
        case "status": return .status(tenant: try f.optionalTenant("tenant"))
        case "audit":
            var since: Double?
            if let v = f.object["since"], !v.isNull {
                guard let d = v.doubleValue, d.isFinite else { throw ProtocolError(.invalidRequest, "audit: \"since\" must be seconds since the epoch") }
                since = d
            }
            var limit = 100
            if let v = f.object["limit"], !v.isNull {
                guard let i = v.intValue, (1...100_000).contains(i) else {
                    throw ProtocolError(.invalidRequest, "audit: \"limit\" must be an integer from 1 to 100000")
                }
                limit = Int(i)
            }
            return .audit(tenant: try f.optionalTenant("tenant"), since: since, limit: limit)
        case "secret.put", "secret.list", "secret.rm": return try secretRequest(f)
        case "policy.explain" where f.object["url"] != nil && f.object["argv"] == nil:
            return .egressExplain(tenant: try f.tenant("tenant"), url: try f.string("url"))
        case "policy.explain":
            let s = try submit(f)
            return .policyExplain(tenant: s.tenant, argv: s.argv, env: s.env, cwd: s.cwd)
        case "policy.reload": return .policyReload
        case "tenant.set_quota":
            let name = try f.tenant("name")
            guard case .object(let pairs)? = f.object["set"], !pairs.isEmpty else {
                throw ProtocolError(.invalidRequest, "tenant.set_quota: \"set\" must be a non-empty object of policy keys and values")
            }
            guard pairs.count <= maxQuotaChanges else {
                throw ProtocolError(.invalidRequest, "tenant.set_quota: \"set\" has \(pairs.count) keys, the limit is \(maxQuotaChanges)")
            }
            var changes: [QuotaChange] = []
            for (k, v) in pairs {
                switch v {
                case .int, .double, .string: changes.append(QuotaChange(key: k, value: v))
                default: throw ProtocolError(.invalidRequest, "tenant.set_quota: the value of \(shown(k)) must be a number or a string")
                }
            }
            return .tenantSetQuota(name: name, changes: changes)
        case "tenant.suspend": return .tenantSuspend(name: try f.tenant("name"))
        case "tenant.resume": return .tenantResume(name: try f.tenant("name"))
        case "metrics": return .metrics
        case let t where RuntimeRequest.types.contains(t): return .runtime(try RuntimeRequest.parse(f))
        case let t where TenantDataRequest.types.contains(t): return .tenantData(try TenantDataRequest.parse(f))
        case _ where type.hasPrefix("file."): return .file(try file(type, f))
        default:
            throw ProtocolError(
                .invalidRequest,
                "unknown request type \(shown(type)) (known: ping, submit, job.get, job.wait, job.cancel, job.tree, \(RuntimeRequest.types.joined(separator: ", ")), tenant.create, tenant.list, tenant.show, tenant.inspect, tenant.set_quota, tenant.suspend, tenant.resume, tenant.offboard, tenant.restore, tenant.export, key.rotate, status, audit, policy.explain, policy.reload, metrics, file.put, file.chunk, file.get, file.stat, file.list, file.remove, file.mkdir, secret.put, secret.list, secret.rm)"
            )
        }
    }

    static func submit(_ f: Fields) throws -> SubmitRequest {
        let tenant = try f.tenant("tenant")
        guard let rawArgv = f.object["argv"]?.arrayValue, !rawArgv.isEmpty else {
            throw ProtocolError(.invalidRequest, "submit: \"argv\" must be a non-empty array of strings")
        }
        guard rawArgv.count <= SubmitRequest.maxArguments else {
            throw ProtocolError(.invalidRequest, "submit: \"argv\" has \(rawArgv.count) elements, the limit is \(SubmitRequest.maxArguments)")
        }
        var argv: [String] = []
        for a in rawArgv {
            guard let s = a.stringValue, !s.utf8.contains(0) else {
                throw ProtocolError(.invalidRequest, "submit: every element of \"argv\" must be a string without NUL bytes")
            }
            argv.append(s)
        }
        guard !argv[0].isEmpty else { throw ProtocolError(.invalidRequest, "submit: argv[0] is empty") }
        var env: [SubmitRequest.EnvVar] = []
        if let e = f.object["env"], !e.isNull {
            guard case .object(let pairs) = e else {
                throw ProtocolError(.invalidRequest, "submit: \"env\" must be an object of string values")
            }
            guard pairs.count <= SubmitRequest.maxEnvironment else {
                throw ProtocolError(.invalidRequest, "submit: \"env\" has \(pairs.count) entries, the limit is \(SubmitRequest.maxEnvironment)")
            }
            for (k, v) in pairs.sorted(by: { $0.0 < $1.0 }) {
                guard !k.isEmpty, !k.contains("="), !k.utf8.contains(0) else {
                    throw ProtocolError(.invalidRequest, "submit: environment variable name \(shown(k)) is empty or contains '=' or NUL")
                }
                guard let s = v.stringValue, !s.utf8.contains(0) else {
                    throw ProtocolError(.invalidRequest, "submit: the value of environment variable \(shown(k)) must be a string without NUL bytes")
                }
                env.append(.init(name: k, value: s))
            }
        }
        let cwd = try f.optionalString("cwd")
        if let cwd, !cwd.hasPrefix("/") || cwd.utf8.contains(0) {
            throw ProtocolError(.invalidRequest, "submit: \"cwd\" must be an absolute path as the job sees it (for example /home/work), got \(shown(cwd))")
        }
        var stdin: [UInt8] = []
        let text = try f.optionalString("stdin"), b64 = try f.optionalString("stdin_b64")
        if text != nil && b64 != nil {
            throw ProtocolError(.invalidRequest, "submit: give \"stdin\" or \"stdin_b64\", not both")
        }
        if let text { stdin = Array(text.utf8) }
        if let b64 {
            guard let data = Data(base64Encoded: b64) else {
                throw ProtocolError(.invalidRequest, "submit: \"stdin_b64\" is not valid base64")
            }
            stdin = Array(data)
        }
        var timeout: Double?
        if let t = f.object["timeout_s"], !t.isNull {
            guard let d = t.doubleValue, d.isFinite, d > 0 else {
                throw ProtocolError(.invalidRequest, "submit: \"timeout_s\" must be a positive number of seconds")
            }
            timeout = d
        }
        let key = try f.optionalString("idempotency_key")
        if let key, key.isEmpty || key.utf8.count > SubmitRequest.maxIdempotencyKeyBytes {
            throw ProtocolError(.invalidRequest, "submit: \"idempotency_key\" must be 1 to \(SubmitRequest.maxIdempotencyKeyBytes) bytes")
        }
        var wait = false
        if let w = f.object["wait"], !w.isNull {
            guard let b = w.boolValue else { throw ProtocolError(.invalidRequest, "submit: \"wait\" must be true or false") }
            wait = b
        }
        var trace: TraceContext?
        if let raw = try f.optionalString("traceparent") {
            guard let t = TraceContext(parsing: raw) else {
                throw ProtocolError(
                    .invalidRequest,
                    "submit: \"traceparent\" \(shown(raw)) is not a W3C traceparent (00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, lower case, ids not all zeros)"
                )
            }
            trace = t
        }
        return SubmitRequest(
            tenant: tenant, argv: argv, env: env, cwd: cwd, stdin: stdin,
            timeoutSeconds: timeout, idempotencyKey: key, wait: wait, options: try RuntimeRequest.submitOptions(f), trace: trace)
    }

    /// A request's fields by name. A request may carry fields this version does not know
    /// (forward compatibility), so a large object is indexed once: a dozen lookups in a list
    /// of 60,000 keys would cost 60,000 comparisons each.
    struct Fields {
        let object: Index
        let type: String
        /// Given for a `tenant` field the request leaves out (the agent socket's tenant).
        var defaultTenant: TenantName? = nil

        init(_ value: JSONValue, type: String) {
            self.object = Index(value)
            self.type = type
        }

        struct Index {
            private let pairs: [(String, JSONValue)]
            private let byKey: [String: JSONValue]?

            init(_ value: JSONValue) {
                guard case .object(let pairs) = value else { self.pairs = []; byKey = nil; return }
                self.pairs = pairs
                // The parser refused duplicate keys, so every key is unique here.
                byKey = pairs.count > 16 ? Dictionary(pairs, uniquingKeysWith: { first, _ in first }) : nil
            }

            subscript(key: String) -> JSONValue? {
                if let byKey { return byKey[key] }
                return pairs.first(where: { $0.0 == key })?.1
            }
        }

        func string(_ key: String) throws -> String {
            guard let s = object[key]?.stringValue else {
                throw ProtocolError(.invalidRequest, "\(type): missing string field \"\(key)\"")
            }
            return s
        }
        /// A tenant name, checked here, at the edge: `invalid_tenant` names the rule it breaks.
        func tenant(_ key: String) throws -> TenantName {
            if key == "tenant", let defaultTenant, object[key] == nil || object[key]?.isNull == true { return defaultTenant }
            do { return try TenantName(validating: try string(key)) } catch let e as TenantName.Invalid {
                throw ProtocolError(.invalidTenant, e.description)
            }
        }
        func optionalTenant(_ key: String) throws -> TenantName? {
            guard let raw = try optionalString(key) else { return key == "tenant" ? defaultTenant : nil }
            do { return try TenantName(validating: raw) } catch { throw ProtocolError(.invalidTenant, error.description) }
        }
        func optionalString(_ key: String) throws -> String? {
            guard let v = object[key], !v.isNull else { return nil }
            guard let s = v.stringValue else { throw ProtocolError(.invalidRequest, "\(type): field \"\(key)\" must be a string") }
            return s
        }
    }

    /// The frame payload a client sends.
    public static func encode(_ request: Request, id: JSONValue) -> [UInt8] {
        var o = JSONObjectBuilder()
        o.set("type", .string(request.typeName))
        o.set("id", id)
        switch request {
        case .ping, .tenantList: break
        case .submit(let s):
            o.set("tenant", .string(s.tenant.value))
            o.set("argv", .array(s.argv.map(JSONValue.string)))
            if !s.env.isEmpty { o.set("env", .object(s.env.map { ($0.name, .string($0.value)) })) }
            if let cwd = s.cwd { o.set("cwd", .string(cwd)) }
            if !s.stdin.isEmpty {
                if let text = String(validating: s.stdin, as: UTF8.self) {
                    o.set("stdin", .string(text))
                } else {
                    o.set("stdin_b64", .string(Data(s.stdin).base64EncodedString()))
                }
            }
            if let t = s.timeoutSeconds { o.set("timeout_s", .double(t)) }
            if let k = s.idempotencyKey { o.set("idempotency_key", .string(k)) }
            o.set("wait", s.wait)
            if let t = s.trace { o.set("traceparent", .string(t.traceparent)) }
            RuntimeRequest.encodeOptions(s.options, into: &o)
        case .jobGet(let id), .jobWait(let id), .jobCancel(let id), .jobTree(let id): o.set("job_id", .string(id))
        case .tenantCreate(let name, let tier): o.set("name", .string(name.value)); o.set("tier", .string(tier))
        case .tenantShow(let name), .tenantSuspend(let name), .tenantResume(let name), .tenantInspect(let name): o.set("name", .string(name.value))
        case .status(let tenant): if let tenant { o.set("tenant", .string(tenant.value)) }
        case .audit(let tenant, let since, let limit):
            if let tenant { o.set("tenant", .string(tenant.value)) }
            if let since { o.set("since", .double(since)) }
            o.set("limit", limit)
        case .policyExplain(let tenant, let argv, let env, let cwd):
            o.set("tenant", .string(tenant.value))
            o.set("argv", .array(argv.map(JSONValue.string)))
            if !env.isEmpty { o.set("env", .object(env.map { ($0.name, .string($0.value)) })) }
            if let cwd { o.set("cwd", .string(cwd)) }
        case .policyReload, .metrics: break
        case .tenantSetQuota(let name, let changes):
            o.set("name", .string(name.value))
            o.set("set", .object(changes.map { ($0.key, $0.value) }))
        case .runtime(let r): r.encode(into: &o)
        case .file(let c): encodeFile(c, into: &o)
        case .secretPut, .secretList, .secretRemove: encodeSecret(request, into: &o)
        case .egressExplain(let tenant, let url):
            o.set("tenant", .string(tenant.value))
            o.set("url", .string(url))
        case .tenantData(let d): d.encode(into: &o)
        }
        return o.value.serialized()
    }
}

/// A client's string as a refusal quotes it: at most 64 characters of it, so that an answer
/// stays small whatever the request held.
func shown(_ s: String) -> String {
    var out: [UInt8] = []
    let head = s.prefix(64)
    JSONValue.writeString(head.endIndex == s.endIndex ? s : head + "…", to: &out)
    return String(decoding: out, as: UTF8.self)
}

/// A reply frame: `{"type": ..., "id": ..., ...}`.
public enum Reply {
    public static func make(_ type: String, id: JSONValue, _ fields: [(String, JSONValue)]) -> [UInt8] {
        JSONValue.object([("type", .string(type)), ("id", id)] + fields).serialized()
    }

    public static func error(_ e: ProtocolError, id: JSONValue) -> [UInt8] {
        make("error", id: id, [("error", e.json)])
    }
}
