import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import NIOCore
import NIOPosix

/// `policy explain --tenant T --url URL`: what the tenant's egress proxy would do with a request
/// there, by the same decision the proxy makes (EgressPolicy.decide), and how each of the
/// tenant's secrets would reach it.
extension Supervisor {
    func explainEgress(_ name: TenantName, _ url: String, _ r: Responder) throws {
        try authorize(r, .submit(tenant: name), request: "policy.explain")
        let t = try tenant(name)
        guard let target = EgressTarget(url: url) else {
            throw ProtocolError(.invalidRequest, "policy.explain: \(url.prefix(80)) is not an http:// or https:// URL, nor host:port")
        }
        let limits = t.limits
        let tier = policies.effectiveTier(name, assigned: t.tier).rawValue
        let stored = Set(((try? store.secrets(name)) ?? []).map(\.name))
        let finish: ([IPAddress]) -> Void = { [self] addresses in
            var e = JSONObjectBuilder()
            e.set("network", .string(limits.network))
            e.set("host", .string(target.host))
            e.set("port", .int(Int64(target.port)))
            if limits.network != "egress" {
                e.set("allowed", false)
                e.set("rule", .string("network = \"\(limits.network)\""))
                e.set(
                    "message",
                    .string(
                        "tenant '\(name)' has network = \"\(limits.network)\": its jobs have no proxy and no route out (network = \"egress\" and an [egress] allow rule would let this through)"
                    ))
            } else {
                let d = EgressPolicy.decide(host: target.host, port: target.port, addresses: addresses, allow: limits.egressAllow)
                e.set("allowed", d.allowed)
                e.set("rule", .string(d.rule))
                e.set("addresses", .array(addresses.map { .string($0.description) }))
                e.set("address", d.address.map { .string($0.description) } ?? .null)
                e.set("refused_address", d.refusedAddress.map { .string($0.description) } ?? .null)
                let substituted = limits.secrets.filter { $0.substitutes(host: target.host, port: target.port) }
                e.set(
                    "tls",
                    .string(
                        !target.tls
                            ? "plain HTTP: the proxy reads the request; secrets are substituted in its headers"
                            : substituted.isEmpty
                                ? "tunneled (CONNECT): the proxy does not read the request; the job verifies the server itself"
                                : "intercepted with the tenant's CA (the sandbox trusts it); the upstream is verified against the host's trust store\(config.egressCAFile != nil ? " (--egress-ca-file)" : ""); secrets are substituted"
                    ))
                e.set("message", .string(d.message))
            }
            e.set("secrets", .array(limits.secrets.map { secretExplain($0, target: target, stored: stored.contains($0.name), network: limits.network) }))
            var o = JSONObjectBuilder()
            o.set("tenant", .string(name.value))
            o.set("tier", .string(tier))
            o.set("url", .string(url))
            o.set("egress", e.value)
            o.set("policies", policySourceDescription)
            r.reply("explain", [("explain", o.value)])
        }
        guard limits.network == "egress", IPAddress(target.host) == nil,
            limits.egressAllow.contains(where: { $0.matches(host: target.host, port: target.port) })
        else {
            finish(IPAddress(target.host).map { [$0] } ?? [])
            return
        }
        // getaddrinfo blocks: on the spawn thread, never on the loop.
        let host = target.host
        let bound = NIOLoopBound(finish, eventLoop: loop)
        spawnThread.runIfActive(eventLoop: loop) { HostResolver.resolve(host) }.whenComplete { result in
            bound.value((try? result.get()) ?? [])
        }
    }

    private func secretExplain(_ b: SecretBinding, target: EgressTarget, stored: Bool, network: String) -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("name", .string(b.name))
        o.set("env", .string(b.envVar))
        o.set("stored", stored)
        o.set("source", .string("\(b.file):\(b.line)"))
        switch b.exposure {
        case .placeholder:
            o.set("expose", "placeholder")
            o.set("hosts", .array(b.hosts.map { .string($0.text) }))
            o.set("substituted", network == "egress" && b.substitutes(host: target.host, port: target.port))
            o.set("strength", "placeholder: the value never enters the sandbox; the proxy puts it in requests to the listed hosts only")
        case .env(let commands):
            o.set("expose", "env")
            o.set("commands", .array(commands.map(JSONValue.string)))
            o.set("substituted", false)
            o.set(
                "strength",
                .string(
                    "weaker: the real value is in the environment of \(commands.joined(separator: ", ")) (readable by that job and whatever it runs, through /proc/<pid>/environ, and sendable anywhere the allowlist lets it go)"
                ))
        }
        return o.value
    }
}
