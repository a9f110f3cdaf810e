import ClawpenPolicy
import ClawpenProtocol
import Glibc

/// Loading the policy set the daemon runs with, at start and on reload (SIGHUP, policy.reload).
enum PolicyRuntime {
    /// `<state-dir>/quota`: where `tenant set-quota` keeps its overrides.
    static func quotaDirectory(_ config: ServeConfig) -> String { config.stateDir + "/quota" }

    /// The policies directory (the embedded defaults when the default directory does not
    /// exist), with the state dir's set-quota overrides on top.
    static func load(_ config: ServeConfig) throws(ServeError) -> PolicySet {
        var st = stat()
        let exists = stat(config.policiesDir, &st) == 0
        if !exists && config.policiesDirExplicit { throw .policiesDirectoryMissing(config.policiesDir) }
        do {
            return try PolicyLoader.load(directory: exists ? config.policiesDir : nil, quotaDirectory: quotaDirectory(config))
        } catch {
            throw .policy(error)
        }
    }

    /// Compiles every seccomp profile a tier or an override names: a missing profile or an
    /// unknown syscall is an error now, not a worker that cannot start later.
    static func compileSeccomp(_ policies: PolicySet) throws(ServeError) -> [String: [UInt8]] {
        var named = Set(Tier.allCases.map { policies.limits(for: $0).seccompProfile })
        for name in Set(policies.tenantOverrides.keys).union(policies.quotaOverrides.keys) {
            if let p = policies.override(tenant: name)?.seccompProfile { named.insert(p) }
        }
        var programs: [String: [UInt8]] = [:]
        for name in named.sorted() {
            guard let profile = policies.seccompProfiles[name] else {
                throw .seccomp(
                    "the policy names seccomp profile '\(name)', but there is no seccomp/\(name).toml (profiles: \(policies.seccompProfiles.keys.sorted().joined(separator: ", ")))"
                )
            }
            do { programs[name] = try SeccompCompiler.compile(profile, allowClone3: true) } catch { throw .seccomp(error.description) }
        }
        return programs
    }

    /// "Is there an executable at this sandbox path", for PATH search of a bare command name.
    /// Only the host paths the sandbox bind-mounts read-only are looked at (PATH is
    /// /usr/local/bin:/usr/bin:/bin); nothing a tenant can write is ever touched here.
    static func isExecutableInSandbox(_ path: String) -> Bool {
        let bound = ["/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/"]
        guard bound.contains(where: { path.hasPrefix($0) }), !path.contains("/../"), !path.hasSuffix("/..") else { return false }
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG && access(path, X_OK) == 0
    }
}

/// Who a caller is, for access rules: names from the user and group databases, cached per uid
/// (the lookups may go through NSS) until the next policy reload.
final class CallerDirectory: @unchecked Sendable {
    private var cache: [UInt32: Caller] = [:]

    func caller(_ cred: PeerCredentials) -> Caller {
        if let c = cache[cred.uid], c.gid == cred.gid { return c }
        var name: String?
        var groups: [gid_t] = []
        var pw = passwd()
        var result: UnsafeMutablePointer<passwd>?
        var buf = [CChar](repeating: 0, count: 16384)
        if getpwuid_r(cred.uid, &pw, &buf, buf.count, &result) == 0, result != nil, let n = pw.pw_name {
            name = String(cString: n)
            var count: Int32 = 64
            groups = [gid_t](repeating: 0, count: Int(count))
            if getgrouplist(n, cred.gid, &groups, &count) < 0 {
                groups = [gid_t](repeating: 0, count: Int(count))
                _ = getgrouplist(n, cred.gid, &groups, &count)
            }
            groups = Array(groups.prefix(Int(max(0, count))))
        }
        var ids = Set(groups)
        ids.insert(cred.gid)
        var names: Set<String> = []
        for g in ids {
            var gr = group()
            var gresult: UnsafeMutablePointer<group>?
            var gbuf = [CChar](repeating: 0, count: 16384)
            if getgrgid_r(g, &gr, &gbuf, gbuf.count, &gresult) == 0, gresult != nil, let n = gr.gr_name { names.insert(String(cString: n)) }
        }
        let c = Caller(uid: cred.uid, gid: cred.gid, userName: name, groupNames: names, groupIDs: ids)
        if cache.count > 10_000 { cache.removeAll() }
        cache[cred.uid] = c
        return c
    }

    func forget() { cache.removeAll() }
}

extension ToolDecision {
    var json: JSONValue {
        var o = JSONObjectBuilder()
        o.set("allowed", allowed)
        o.set("resolved_path", resolvedPath)
        o.set("not_found", notFound)
        o.set("refusing_rule", refusingRule)
        o.set("message", message)
        o.set(
            "steps",
            .array(
                steps.map { s in
                    var r = JSONObjectBuilder()
                    r.set("rule", .string(s.rule))
                    r.set("key", .string(s.key))
                    r.set("pattern", .string(s.pattern))
                    r.set("file", s.file)
                    r.set("line", s.line)
                    r.set("subject", .string(s.subject))
                    r.set("outcome", .string(s.outcome.rawValue))
                    return r.value
                }))
        return o.value
    }
}
