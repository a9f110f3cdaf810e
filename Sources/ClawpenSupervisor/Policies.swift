import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenWire
import ClawpenWire

/// `policy explain`, `policy reload` (and SIGHUP), `tenant set-quota`.
extension Supervisor {
    func explain(_ name: TenantName, _ argv: [String], _ env: [SubmitRequest.EnvVar], _ cwd: String?, _ r: Responder) throws {
        try authorize(r, .submit(tenant: name), request: "policy.explain")
        let t = try tenant(name)
        let decision = decideTool(
            argv: argv, env: env.map { ($0.name, $0.value) }, cwd: cwd ?? CommandPath.defaultCwd,
            limits: t.limits, isExecutable: PolicyRuntime.isExecutableInSandbox)
        var o = JSONObjectBuilder()
        o.set("tenant", .string(name.value))
        o.set("tier", .string(policies.effectiveTier(name, assigned: t.tier).rawValue))
        o.set("argv", .array(argv.map(JSONValue.string)))
        o.set("decision", decision.json)
        let prov = policies.provenance(name, tier: t.tier)
        o.set("sources", .object(["commands_allow", "commands_deny", "env_allow", "tier"].compactMap { k in prov[k].map { (k, .string($0)) } }))
        o.set("policies", policySourceDescription)
        r.reply("explain", [("explain", o.value)])
    }

    var policySourceDescription: JSONValue {
        switch policies.source {
        case .directory(let d): .string(d)
        case .embedded: .string("embedded defaults")
        }
    }

    func policySummary() -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("source", policySourceDescription)
        o.set("tenant_overrides", policies.tenantOverrides.count)
        o.set("quota_overrides", policies.quotaOverrides.count)
        o.set("seccomp_profiles", .array(policies.seccompProfiles.keys.sorted().map(JSONValue.string)))
        o.set("access_rules", policies.access.ruleCount)
        return o.value
    }

    /// Loads the policies again (SIGHUP, `clawpen policy reload`, after set-quota). A set that
    /// does not load or compile leaves the running one in place, and says why. New limits apply
    /// to the router at once and to tenant cgroups that exist; a worker's sandbox (seccomp,
    /// network, /tmp) changes when the worker next starts.
    func reloadPolicies(caller: Responder?) throws {
        onReload?(true)
        defer { onReload?(false) }
        let next: PolicySet
        let programs: [String: [UInt8]]
        do {
            next = try PolicyRuntime.load(config)
            programs = try PolicyRuntime.compileSeccomp(next)
        } catch {
            audit(tenant: nil, caller: caller, action: "policy.reload.failed", rule: nil, detail: "\(error)")
            logger.error("policy reload failed; keeping the old policy", metadata: ["error": "\(error)"])
            throw ProtocolError(.invalidRequest, "policy reload failed, the old policy stays in force: \(error)")
        }
        policies = next
        seccompPrograms = programs
        callers.forget()
        perform(core.limitsChanged { [self] t in limits(for: t.record) })
        egressPoliciesReloaded()
        refreshAgentListeners(nil)
        audit(tenant: nil, caller: caller, action: "policy.reload", rule: "operator", detail: "\(policySummary().text)")
        logger.notice("policies reloaded", metadata: ["policies": "\(policySourceDescription.stringValue ?? "")"])
    }

    func setQuota(_ t: TenantState, _ changes: [QuotaChange], _ r: Responder) throws {
        var values: [String: TOMLValue] = [:]
        for c in changes {
            switch c.value {
            case .int(let i): values[c.key] = .integer(i)
            case .double(let d): values[c.key] = .float(d)
            case .string(let s): values[c.key] = QuotaOverrides.value(forKey: c.key, argument: s)
            default: throw ProtocolError(.invalidRequest, "tenant.set_quota: the value of \(c.key) must be a number or a string")
            }
        }
        do {
            try QuotaOverrides.write(tenant: t.name.value, changes: values, directory: PolicyRuntime.quotaDirectory(config), policies: policies)
        } catch {
            throw ProtocolError(.invalidRequest, "set-quota refused: \(error)")
        }
        let detail = changes.map { "\($0.key)=\($0.value.text)" }.joined(separator: " ")
        audit(tenant: t.name, caller: r, action: "tenant.set_quota", rule: "operator", detail: detail)
        try reloadPolicies(caller: r)
        var lim = JSONObjectBuilder()
        let prov = policies.provenance(t.name, tier: t.tier)
        for key in changes.map(\.key) { lim.set(key, prov[key]) }
        r.reply(
            "tenant",
            [
                ("tenant", view(t).json), ("file", .string(QuotaOverrides.path(tenant: t.name.value, directory: PolicyRuntime.quotaDirectory(config)))),
                ("sources", lim.value),
            ])
    }
}
