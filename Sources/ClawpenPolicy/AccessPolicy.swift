import ClawpenWire
// Caller permissions: who may talk to the supervisor, from `access.toml`. The daemon identifies
// a caller by SO_PEERCRED (uid, gid of the connecting process) and fills in the names with
// getpwuid/getgrouplist; this file only decides. Pure: tested without sockets or users.
//
//     [operators]            users = ["root", "ops"]   groups = ["clawpen-admin"]
//     [tenants.acme]         users = ["acme-svc"]      groups = ["acme"]
//     [tenants."*"]          users = ["platform"]      (every tenant)
//
// A list entry is a name (string) or a numeric uid/gid (integer). root (uid 0) is always an
// operator; operators may submit for every tenant.

/// Who is calling, as SO_PEERCRED and the user database tell.
public struct Caller: Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32
    /// getpwuid(uid)'s name; nil when the uid has no entry.
    public var userName: String?
    /// The names of every group of the caller (getgrouplist, including the primary group).
    public var groupNames: Set<String>
    /// The numeric ids of those groups (may be empty when only names are known).
    public var groupIDs: Set<UInt32>

    public init(uid: UInt32, gid: UInt32, userName: String? = nil, groupNames: Set<String> = [], groupIDs: Set<UInt32> = []) {
        self.uid = uid
        self.gid = gid
        self.userName = userName
        self.groupNames = groupNames
        self.groupIDs = groupIDs
    }

    /// "uid 1001 (alice)"
    public var described: String {
        "uid \(uid)" + (userName.map { " (\($0))" } ?? "")
    }
}

/// What the caller wants to do.
public enum AccessAction: Sendable, Equatable {
    /// Submit a job for `tenant`; also job get / wait / cancel of that tenant's jobs.
    case submit(tenant: TenantName)
    /// An admin command (`status`, `tenant create`, `tenant set-quota`, `policy reload`, ...).
    case `operator`(command: String)
}

public struct AccessDecision: Sendable, Equatable {
    public var allowed: Bool
    /// The rule that decided: `operators.users "root" (access.toml:9)`, `uid 0 is always an
    /// operator`, or, when refused, `no rule in access.toml grants uid 1001 (alice) tenant 'acme'`.
    public var rule: String
    /// For the caller and the audit log.
    public var message: String

    public init(allowed: Bool, rule: String, message: String) {
        self.allowed = allowed
        self.rule = rule
        self.message = message
    }
}

public struct AccessPolicy: Sendable, Equatable {
    /// One entry of a `users` or `groups` list.
    public struct Grant: Sendable, Equatable {
        public enum Kind: String, Sendable, Equatable {
            case user = "users", group = "groups"
        }
        public enum Principal: Sendable, Equatable {
            case name(String)
            case id(UInt32)
        }
        public var kind: Kind
        public var principal: Principal
        public var file: String
        public var line: Int

        public init(kind: Kind, principal: Principal, file: String, line: Int) {
            self.kind = kind
            self.principal = principal
            self.file = file
            self.line = line
        }

        func matches(_ c: Caller) -> Bool {
            switch (kind, principal) {
            case (.user, .name(let n)): c.userName == n
            case (.user, .id(let id)): c.uid == id
            case (.group, .name(let n)): c.groupNames.contains(n)
            case (.group, .id(let id)): c.gid == id || c.groupIDs.contains(id)
            }
        }

        var shown: String {
            switch principal {
            case .name(let n): quoted(n)
            case .id(let id): "\(id)"
            }
        }
    }

    /// `[operators]`.
    public var operators: [Grant]
    /// `[tenants.<name>]` by tenant name; "*" is `[tenants."*"]` (every tenant).
    public var tenants: [String: [Grant]]
    /// The file the rules come from, as messages name it ("access.toml"), or a note when none.
    public var file: String

    public init(operators: [Grant] = [], tenants: [String: [Grant]] = [:], file: String = "access.toml") {
        self.operators = operators
        self.tenants = tenants
        self.file = file
    }

    /// No access.toml: only root (uid 0) may do anything.
    public static let rootOnly = AccessPolicy(file: "access.toml (absent: only root)")

    /// The number of list entries (for `policy check`'s summary).
    public var ruleCount: Int { operators.count + tenants.values.reduce(0) { $0 + $1.count } }

    public func decide(_ caller: Caller, _ action: AccessAction) -> AccessDecision {
        if caller.uid == 0 {
            let what: String
            switch action {
            case .submit(let tenant): what = "may submit for tenant '\(tenant)'"
            case .operator(let command): what = "may run '\(command)'"
            }
            return AccessDecision(allowed: true, rule: "uid 0 is always an operator", message: "root \(what)")
        }
        switch action {
        case .submit(let name):
            let tenant = name.value
            do {
                for (section, grants) in [(tenant, tenants[tenant] ?? []), ("*", tenants["*"] ?? [])] {
                    if let g = grants.first(where: { $0.matches(caller) }) {
                        let table = section == "*" ? "tenants.\"*\"" : "tenants.\(section)"
                        return AccessDecision(
                            allowed: true, rule: "\(table).\(g.kind.rawValue) \(g.shown) (\(g.file):\(g.line))",
                            message: "\(caller.described) may submit for tenant '\(tenant)'")
                    }
                }
            }
            if let allowed = operatorDecision(caller, "is an operator and may submit for every tenant") { return allowed }
            let rule = "no rule in \(file) grants \(caller.described) tenant '\(tenant)'"
            return AccessDecision(
                allowed: false, rule: rule,
                message: "\(rule): add the user or one of its groups to [tenants.\(tenant)] in access.toml")
        case .operator(let command):
            if let allowed = operatorDecision(caller, "is an operator") { return allowed }
            let rule = "no rule in \(file) makes \(caller.described) an operator"
            return AccessDecision(
                allowed: false, rule: rule,
                message: "'\(command)' needs the operator role; \(rule) (add the user or one of its groups to [operators] in access.toml)")
        }
    }

    // MARK: - Parsing

    /// Parses `access.toml`. `file` names the file in errors; `origin` in rules ("access.toml").
    /// Allowed by the first [operators] grant that matches `caller`, nil when none does.
    private func operatorDecision(_ caller: Caller, _ what: String) -> AccessDecision? {
        guard let g = operators.first(where: { $0.matches(caller) }) else { return nil }
        return AccessDecision(
            allowed: true, rule: "operators.\(g.kind.rawValue) \(g.shown) (\(g.file):\(g.line))",
            message: "\(caller.described) \(what)")
    }

    public static func parse(_ root: TOMLTable, file: String, origin: String = "access.toml") throws(PolicyError) -> AccessPolicy {
        var policy = AccessPolicy(file: origin)
        for top in root.entries {
            switch top.key {
            case "operators":
                guard case .table(let t) = top.value else {
                    throw .wrongType(file: file, line: top.line, key: "operators", expected: "a [operators] table", found: top.value.shortDescription)
                }
                policy.operators = try grants(t, section: "operators", file: file, origin: origin)
            case "tenants":
                guard case .table(let t) = top.value else {
                    throw .wrongType(file: file, line: top.line, key: "tenants", expected: "[tenants.<name>] tables", found: top.value.shortDescription)
                }
                for e in t.entries {
                    guard e.key == "*" || PolicyLoader.isValidTenantName(e.key) else {
                        throw .invalidValue(
                            file: file, line: e.line, key: "tenants.\(e.key)",
                            reason: "\(quoted(e.key)) is not a tenant name (^[a-z0-9][a-z0-9_-]{0,62}$) or \"*\" (every tenant)")
                    }
                    guard case .table(let sub) = e.value else {
                        throw .wrongType(
                            file: file, line: e.line, key: "tenants.\(e.key)", expected: "a [tenants.\(e.key)] table with users and groups",
                            found: e.value.shortDescription)
                    }
                    policy.tenants[e.key] = try grants(sub, section: "tenants.\(e.key)", file: file, origin: origin)
                }
            default:
                throw .unknownKey(file: file, line: top.line, key: top.key)
            }
        }
        return policy
    }

    private static func grants(_ table: TOMLTable, section: String, file: String, origin: String) throws(PolicyError) -> [Grant] {
        var out: [Grant] = []
        for e in table.entries {
            guard let kind = Grant.Kind(rawValue: e.key) else {
                throw .invalidValue(
                    file: file, line: e.line, key: "\(section).\(e.key)",
                    reason: "unknown key '\(e.key)' in [\(section)] (the keys are users and groups)")
            }
            let key = "\(section).\(e.key)"
            guard case .array(let items) = e.value else {
                throw .wrongType(
                    file: file, line: e.line, key: key, expected: "an array of names or numeric ids, e.g. [\"alice\", 1001]",
                    found: e.value.shortDescription)
            }
            for (i, item) in items.enumerated() {
                let line = i < e.elementLines.count ? e.elementLines[i] : e.line
                switch item {
                case .string(let s):
                    guard isValidPrincipalName(s) else {
                        throw .invalidValue(
                            file: file, line: line, key: key,
                            reason: "\(quoted(s)) is not a user or group name (letters, digits, '.', '_', '-', not starting with '-'; at most 32)")
                    }
                    out.append(Grant(kind: kind, principal: .name(s), file: origin, line: line))
                case .integer(let n):
                    guard let id = UInt32(exactly: n), id != UInt32.max else {
                        throw .invalidValue(file: file, line: line, key: key, reason: "\(n) is not a \(kind == .user ? "uid" : "gid")")
                    }
                    out.append(Grant(kind: kind, principal: .id(id), file: origin, line: line))
                default:
                    throw .wrongType(
                        file: file, line: line, key: key, expected: "a name (string) or a numeric id (integer)",
                        found: item.shortDescription)
                }
            }
        }
        return out
    }

    private static func isValidPrincipalName(_ s: String) -> Bool {
        guard let first = s.utf8.first, first != UInt8(ascii: "-"), s.utf8.count <= 32 else { return false }
        return s.utf8.allSatisfy {
            isEnvNameByte($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "$")
        }
    }
}
