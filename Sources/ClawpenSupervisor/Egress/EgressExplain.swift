import ClawpenPolicy
import ClawpenProtocol
import ClawpenStore
import ClawpenWire
import NIOCore
import NIOPosix

/// `policy explain --tenant T --url URL`: what the tenant's egress proxy would do with a request
/// there, by the same decision the proxy makes (EgressPolicy.decide), and how each of the
/// tenant's secrets would reach it (SecretUse.decide, as the proxy). Names are looked up on a
/// resolver of explain's own, at most `maxLookups` at a time: a caller that explains many slow
/// names delays no worker start and no other tenant's proxy; past the bound the answer says what
/// the rules decide and that the address is checked when the proxy connects.
enum ExplainResolver {
    static let maxLookups = 4
    static let pool: NIOThreadPool = {
        let p = NIOThreadPool(numberOfThreads: 1)
        p.start()
        return p
    }()
}

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
        // http:// is a plain proxy request; https:// and host:port are a CONNECT (the port
        // does not make http://h:443 TLS: the proxy reads it as plain HTTP).
        let tls = !url.lowercased().hasPrefix("http://")
        let finish: ([IPAddress]?) -> Void = { [self] looked in
            let addresses = looked ?? []
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
                var d = EgressPolicy.decide(host: target.host, port: target.port, addresses: addresses, allow: limits.egressAllow)
                if looked == nil, let rule = limits.egressAllow.first(where: { $0.matches(host: target.host, port: target.port) }) {
                    // Not looked up (the explain resolver is busy): what the rules say.
                    d.allowed = true
                    d.rule = rule.description
                    d.message =
                        "\(target.host):\(target.port) is named by \(rule); its address was not looked up now (too many explains at once): the proxy refuses it when it connects if the name resolves into a restricted range"
                }
                let uses = limits.secrets.map { ($0, $0.use(host: target.host, port: target.port, tls: tls)) }
                let plainRefused = uses.filter { $0.1 == .refusedPlainHTTP }.map(\.0.name)
                if d.allowed, !plainRefused.isEmpty {
                    d.message =
                        "\(d.message); but a request that carries secret \(plainRefused.joined(separator: ", "))'s placeholder there is refused: it goes to this host over HTTPS only (allow_plain_http = true lets it go in clear text)"
                }
                e.set("allowed", d.allowed)
                e.set("rule", .string(d.rule))
                e.set("addresses", .array(addresses.map { .string($0.description) }))
                e.set("address", d.address.map { .string($0.description) } ?? .null)
                e.set("refused_address", d.refusedAddress.map { .string($0.description) } ?? .null)
                let substituted = uses.filter { $0.1 == .substituted }.map(\.0)
                e.set(
                    "tls",
                    .string(
                        !tls
                            ? "plain HTTP: the proxy reads the request, sets its Host to \(target.host):\(target.port)\(substituted.isEmpty ? "" : "; secrets are substituted in their headers (clear text on the network: allow_plain_http or an address rule)")"
                            : substituted.isEmpty
                                ? "tunneled (CONNECT): the proxy does not read the request; the job verifies the server itself"
                                : "intercepted with the tenant's CA (the sandbox trusts it); the upstream is verified against the host's trust store\(config.egressCAFile != nil ? " (--egress-ca-file)" : ""); secrets are substituted in their headers"
                    ))
                e.set("message", .string(d.message))
            }
            e.set(
                "secrets",
                .array(limits.secrets.map { secretExplain($0, target: target, tls: tls, stored: stored.contains($0.name), network: limits.network) }))
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
        guard egress.explainLookups < ExplainResolver.maxLookups else {
            finish(nil)
            return
        }
        // getaddrinfo blocks: on explain's own thread, never on the loop nor the spawn thread.
        egress.explainLookups += 1
        let host = target.host
        let bound = NIOLoopBound(finish, eventLoop: loop)
        ExplainResolver.pool.runIfActive(eventLoop: loop) { HostResolver.resolve(host) }.whenComplete { [self] result in
            egress.explainLookups -= 1
            bound.value((try? result.get()) ?? [])
        }
    }

    private func secretExplain(_ b: SecretBinding, target: EgressTarget, tls: Bool, stored: Bool, network: String) -> JSONValue {
        var o = JSONObjectBuilder()
        o.set("name", .string(b.name))
        o.set("env", .string(b.envVar))
        o.set("stored", stored)
        o.set("source", .string("\(b.file):\(b.line)"))
        switch b.exposure {
        case .placeholder:
            o.set("expose", "placeholder")
            o.set("hosts", .array(b.hosts.map { .string($0.text) }))
            o.set("headers", .array(b.headers.map(JSONValue.string)))
            o.set("allow_plain_http", b.allowPlainHTTP)
            let use = b.use(host: target.host, port: target.port, tls: tls)
            o.set("substituted", network == "egress" && use == .substituted)
            o.set(
                "strength",
                .string(
                    "placeholder: the value never enters the sandbox; the proxy puts it in the \(b.headers.joined(separator: ", ")) header of requests to the listed hosts only (the placeholder anywhere else in such a request is refused, rule `secret header`), "
                        + (b.allowPlainHTTP
                            ? "over plain HTTP too (allow_plain_http = true: in clear text, to whatever the name resolves to)"
                            : "inside TLS the proxy verified (to an address rule also over plain HTTP; plain HTTP to a name is refused, rule `secret plain http`)")
                ))
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
