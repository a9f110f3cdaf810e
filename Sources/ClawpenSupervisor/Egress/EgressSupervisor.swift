import CClawpenShim
import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenSpawn
import ClawpenStore
import ClawpenSystem
import ClawpenWire
import Glibc
import Logging
import NIOCore
import NIOPosix

/// The supervisor's side of egress (docs/egress.md): it starts the proxy (clawpen-egress) as its
/// own confined, unprivileged process, makes a listener on 127.0.0.1:3128 inside each `egress`
/// tenant's worker network namespace and hands it to the proxy tagged with the tenant, pushes
/// each tenant's allowlist, secrets and CA to it, and keeps the counts it reports. The proxy never
/// reads the store, the policies or the master key: what it knows comes from here.

/// What the proxy reported for one tenant since the daemon started.
struct EgressCounters {
    var requestsAllowed: Int64 = 0
    var requestsDenied: Int64 = 0
    var bytesUp: Int64 = 0
    var bytesDown: Int64 = 0
    var secretsUsed: Int64 = 0
}

/// The running proxy.
final class EgressProxyProcess: @unchecked Sendable {
    let pid: Int32
    let controlFD: Int32
    var reports: Channel?
    /// It said "ready" (control frames written before are read in order anyway).
    var ready = false
    /// Monotonic seconds when it was started.
    let startedAt: Double
    /// Writes the control frames without blocking the event loop (nil: the fd could not be duplicated).
    let writer: EgressControlWriter?
    init(pid: Int32, controlFD: Int32, startedAt: Double) {
        self.pid = pid; self.controlFD = controlFD; self.startedAt = startedAt
        writer = EgressControlWriter(controlFD: controlFD)
    }
}

struct EgressState {
    static let proxyPort: UInt16 = 3128
    static let proxyURL = "http://127.0.0.1:3128"
    var proxy: EgressProxyProcess?
    /// Why there is no proxy (status and the log say it), nil while it runs.
    var unavailable: String? = "not started"
    var counters: [TenantName: EgressCounters] = [:]
    /// Each tenant's CA, made at the first need and kept for the daemon's life (in memory only).
    var cas: [TenantName: TenantCA] = [:]
    /// The listener of each worker that has one, by worker id.
    var listeners: [UInt64: UInt64] = [:]
    var nextListener: UInt64 = 1
    /// A listener that cannot be made is tried again every 100 ms this many times (3 s).
    static let listenAttempts = 30
    /// Tenants whose running worker has no listener, and why (status' `egress.unavailable`):
    /// its jobs' requests are refused at connect until its next worker.
    var listenerFailures: [TenantName: String] = [:]
    /// Tenants whose configuration the proxy has.
    var configured: Set<TenantName> = []
    /// Report frames the proxy dropped because the daemon read them too slowly.
    var reportsDropped: Int64 = 0
    /// `policy explain --url` name lookups in flight (ExplainResolver).
    var explainLookups = 0
    /// Times the proxy was started again after it died, since the daemon started.
    var restarts = 0
    /// Deaths in a row of a proxy that did not stay up for `stableSeconds`: the back-off's exponent.
    var quickDeaths = 0
    /// A restart is scheduled (the proxy died); nil otherwise.
    var restartAt: Double?
    /// How the last proxy ended, for status.
    var lastExit: String?
    /// The daemon is stopping: a proxy that dies now is not restarted.
    var stopping = false

    /// The first restart comes at once (after `firstRestartDelay`), the next ones of a proxy that
    /// keeps dying at twice the delay each time, up to `maxRestartDelay`; a proxy that stayed up
    /// for `stableSeconds` starts the count again.
    static let firstRestartDelay = 0.1
    static let maxRestartDelay = 30.0
    static let stableSeconds = 60.0

    static func restartDelay(quickDeaths: Int) -> Double {
        min(maxRestartDelay, firstRestartDelay * Double(1 << min(max(0, quickDeaths - 1), 16)))
    }
}

extension Supervisor {
    // MARK: Start

    /// Starts clawpen-egress, confined (docs/egress.md, "Why a separate process"). Without it, egress
    /// tenants' jobs have no proxy, and status says why.
    func startEgressProxy() throws(ServeError) {
        guard sandboxEnabled else {
            egress.unavailable = "the daemon is not root, so workers have no network namespace to put a proxy listener in"
            return
        }
        let path = config.egressPath ?? siblingExecutable("clawpen-egress")
        guard access(path, X_OK) == 0 else {
            // Without the proxy, egress tenants' jobs have no proxy variables and no way out.
            egress.unavailable = "\(path) is not an executable (build it with swift build, or give --egress-path)"
            logger.warning("no egress proxy: egress tenants get no network beyond lo", metadata: ["reason": "\(egress.unavailable ?? "")"])
            return
        }
        let uid = config.egressUID ?? (config.uidRange.lowerBound - 1)
        guard uid > 0, !config.uidRange.contains(uid) else {
            throw .egress("--egress-uid \(uid) must be above 0 and outside the tenants' uid range")
        }
        // Its own uid: sharing one with a host user would let that user signal or trace it.
        if let pw = getpwuid(uid_t(uid)) {
            egress.unavailable = "uid \(uid) belongs to the host user \(String(cString: pw.pointee.pw_name)); give the proxy a uid of its own with --egress-uid"
            logger.error("no egress proxy: egress tenants get no network beyond lo", metadata: ["reason": "\(egress.unavailable ?? "")"])
            return
        }
        var control: [Int32] = [-1, -1], reports: [Int32] = [-1, -1]
        guard cp_socketpair(&control) == 0 else { throw .egress("socketpair: \(errnoString(errno))") }
        guard cp_socketpair(&reports) == 0 else { throw .egress("socketpair: \(errnoString(errno))") }
        // The proxy's filter: the default profile (an ordinary network client), installed by the
        // proxy itself once it has confined its mounts and dropped its identity.
        let program = seccompPrograms["default"] ?? []
        let memfd = cp_memfd("clawpen-egress-seccomp")
        guard memfd >= 0 else { throw .egress("memfd: \(errnoString(errno))") }
        defer { close(memfd) }
        let written = program.withUnsafeBytes { write(memfd, $0.baseAddress, $0.count) }
        guard written == program.count, lseek(memfd, 0, SEEK_SET) == 0 else { throw .egress("writing the seccomp program: \(errnoString(errno))") }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { if devNull >= 0 { close(devNull) } }
        var arguments = [
            path, "--control-fd", "3", "--report-fd", "4", "--seccomp-fd", "5", "--uid", String(uid), "--gid", String(uid),
        ]
        for p in Self.egressRootPaths(executable: path) { arguments += ["--bind", p] }
        let command = SpawnCommand(path: path, arguments: arguments, environment: ["PATH=/usr/bin:/bin", "LANG=C.UTF-8", "SWIFT_BACKTRACE=enable=no"])
        var options = SpawnOptions(fds: [devNull, 2, 2, control[1], reports[1], memfd])
        options.newSession = true
        options.parentDeathSignal = SIGKILL
        options.umask = 0o077
        options.cloneFlags = cp_sandbox_clone_flags_without_net()
        let pid: pid_t
        do { pid = try command.spawn(options) } catch {
            close(control[0]); close(control[1]); close(reports[0]); close(reports[1])
            // The daemon serves on without egress: egress tenants' jobs get no proxy, status says why.
            egress.unavailable = "cannot start \(path): \(error)"
            logger.error("no egress proxy: egress tenants get no network beyond lo", metadata: ["error": "\(error)"])
            return
        }
        close(control[1])
        close(reports[1])
        let reportFD = reports[0]
        let proxy = EgressProxyProcess(pid: pid, controlFD: control[0], startedAt: Clock.monotonic())
        egress.proxy = proxy
        egress.unavailable = nil
        logger.notice("egress proxy started", metadata: ["pid": "\(pid)", "uid": "\(uid)"])
        sendTrust()
        ClientBootstrap(group: loop)
            .channelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandlers(
                        ByteToMessageHandler(FrameDecoder(maxFrameBytes: EgressControl.maxFrameBytes)), EgressReportHandler(supervisor: self))
                }
            }
            .withConnectedSocket(reportFD)
            .whenComplete { [self] result in
                switch result {
                case .success(let ch): proxy.reports = ch
                case .failure(let error):
                    logger.error("cannot read the egress proxy's reports", metadata: ["error": "\(error)"])
                    close(reportFD)
                }
            }
    }

    /// What the proxy's root holds: the libraries it links, its executable's directory, and the
    /// resolver's files. Nothing of the state dir, the workspaces, /home, /root, /proc or /run.
    static func egressRootPaths(executable: String) -> [String] {
        var paths = ["/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf", "/etc/gai.conf", "/etc/host.conf"]
        let dir = String(executable[..<(executable.lastIndex(of: "/") ?? executable.startIndex)])
        if !dir.isEmpty { paths.append(dir) }
        // The Swift runtime, where the toolchain keeps it (the executable's rpath points there).
        if let maps = Files.readSmallFile("/proc/self/maps", limit: 1 << 22) {
            for line in maps.split(separator: "\n") where line.contains("libswiftCore.so") {
                if let slash = line.firstIndex(of: "/") {
                    let lib = String(line[slash...])
                    let libDir = String(lib[..<(lib.lastIndex(of: "/") ?? lib.startIndex)])
                    if !paths.contains(where: { libDir.hasPrefix($0 + "/") }) { paths.append(libDir) }
                }
                break
            }
        }
        return paths
    }

    func siblingExecutable(_ name: String) -> String {
        let dir = String(workerPath[..<(workerPath.lastIndex(of: "/") ?? workerPath.startIndex)])
        return dir + "/" + name
    }

    // MARK: Control

    /// Queues one control frame (and an fd, which the caller keeps) for the proxy; the event
    /// loop never waits for it (EgressControlWriter). A proxy that has stopped reading is stuck:
    /// it is killed, and its reports closing does the rest (egressProxyGone).
    @discardableResult
    func sendToProxy(_ message: JSONValue, fd: Int32 = -1) -> Bool {
        guard let proxy = egress.proxy, let writer = proxy.writer else { return false }
        switch writer.enqueue(EgressControl.frame(message), passFD: fd) {
        case .queued: return true
        case .closed:
            logger.error("cannot write to the egress proxy: its control socket failed", metadata: ["pid": "\(proxy.pid)"])
            return false
        case .stuck(let why):
            logger.error("the egress proxy is stuck; killing it", metadata: ["pid": "\(proxy.pid)", "reason": "\(why)"])
            writer.finish()
            kill(proxy.pid, SIGKILL)
            return false
        }
    }

    /// The CA certificates the proxy checks upstream servers against.
    private func sendTrust() {
        let file = config.egressCAFile ?? "/etc/ssl/certs/ca-certificates.crt"
        guard let bytes = Files.readRegularFile(file, limit: EgressControl.maxFrameBytes / 2) else {
            logger.warning("no CA certificates for the egress proxy: HTTPS upstreams cannot be verified", metadata: ["file": "\(file)"])
            return
        }
        let pem = String(decoding: bytes, as: UTF8.self)
        sendToProxy(.object([("type", .string("trust")), ("pem", .string(pem))]))
    }

    /// Sends the tenant's allowlist, its substituted secrets (values opened for the proxy only)
    /// and its CA.
    func pushEgressConfig(_ name: TenantName) {
        guard egress.proxy != nil, let t = core.tenants[name] else { return }
        let limits = t.limits
        let ca: TenantCA
        do { ca = try tenantCA(name) } catch {
            logger.error("cannot make the tenant's egress CA", metadata: ["tenant": "\(name)", "error": "\(error)"])
            return
        }
        var secrets: [JSONValue] = []
        let stored = Dictionary(((try? store.secrets(name)) ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for b in limits.secrets {
            guard case .placeholder = b.exposure, let record = stored[b.name], let vault, !vault.revoked.contains(name) else { continue }
            do {
                let value = try vault.open(record)
                secrets.append(
                    .object([
                        ("name", .string(b.name)), ("placeholder", .string(record.placeholder)),
                        ("value_b64", .string(String(decoding: Base64.encode(value), as: UTF8.self))),
                        ("hosts", .array(b.hosts.map { EgressControl.rule(text: $0.text, file: $0.file, line: $0.line) })),
                        ("headers", .array(b.headers.map(JSONValue.string))), ("allow_plain_http", .bool(b.allowPlainHTTP)),
                    ]))
            } catch {
                logger.error("cannot open a secret for the egress proxy", metadata: ["tenant": "\(name)", "secret": "\(b.name)", "error": "\(error)"])
            }
        }
        let message = JSONValue.object([
            ("type", .string("tenant")), ("tenant", .string(name.value)),
            ("allow", .array(limits.egressAllow.map { EgressControl.rule(text: $0.text, file: $0.file, line: $0.line) })),
            ("secrets", .array(secrets)), ("max_connections", .int(Int64(limits.egressMaxConnections))), ("ca_cert_pem", .string(ca.certificatePEM)),
            ("ca_key_pem", .string(ca.privateKeyPEM)),
        ])
        if sendToProxy(message) { egress.configured.insert(name) }
    }

    /// A secret was stored or removed: the proxy gets the tenant's new set at once.
    func secretsChanged(_ name: TenantName) {
        if egress.configured.contains(name) { pushEgressConfig(name) }
    }

    /// The policies were reloaded: every tenant the proxy knows gets its new allowlist and
    /// secrets; a tenant that is no longer `egress` is forgotten (its listeners refuse from now on).
    func egressPoliciesReloaded() {
        // Running workers follow at once: a tenant that became `egress` gets a listener in its
        // worker's namespace (its sandbox's CA bundle comes with its next worker), one that no
        // longer is loses it.
        for (id, w) in workers where !w.exited {
            let isEgress = core.tenants[w.tenant]?.limits.network == "egress"
            if isEgress && egress.listeners[id] == nil {
                attachEgress(w.tenant, workerPID: w.pid, workerID: id)
            } else if !isEgress && egress.listeners[id] != nil {
                detachEgress(workerID: id)
            }
        }
        for name in egress.configured {
            if core.tenants[name]?.limits.network == "egress" {
                pushEgressConfig(name)
            } else {
                sendToProxy(.object([("type", .string("forget")), ("tenant", .string(name.value))]))
                egress.configured.remove(name)
            }
        }
    }

    // MARK: Listeners

    /// A new worker of an `egress` tenant: a listener in its network namespace, for the proxy.
    func attachEgress(_ name: TenantName, workerPID: Int32, workerID: UInt64, attempt: Int = 0) {
        guard sandboxEnabled, egress.proxy != nil, core.tenants[name]?.limits.network == "egress" else { return }
        if !egress.configured.contains(name) { pushEgressConfig(name) }
        let ns = open("/proc/\(workerPID)/ns/net", O_RDONLY | O_CLOEXEC)
        guard ns >= 0 else {
            let why = errnoString(errno)
            egress.listenerFailures[name] = "cannot open the worker's network namespace (\(why)); its next worker tries again"
            logger.error("cannot open the worker's network namespace for its egress listener", metadata: ["tenant": "\(name)", "errno": "\(why)"])
            return
        }
        defer { close(ns) }
        let fd = cp_netns_listen_tcp(ns, EgressState.proxyPort)
        guard fd >= 0 else {
            let why = errnoString(errno)
            // EADDRINUSE: the previous proxy (an upgrade's, or one that just died) still holds the
            // old listener for a moment. Tried again for a few seconds while the worker runs.
            let retry = attempt < EgressState.listenAttempts
            egress.listenerFailures[name] =
                "cannot listen on 127.0.0.1:3128 in the worker's network namespace (\(why)); "
                + (retry ? "trying again" : "its next worker tries again")
            logger.error(
                "cannot listen on 127.0.0.1:3128 in the worker's namespace",
                metadata: ["tenant": "\(name)", "errno": "\(why)", "attempt": "\(attempt + 1)"])
            if retry {
                loop.scheduleTask(in: .milliseconds(100)) { [self] in
                    guard let w = workers[workerID], !w.exited, w.pid == workerPID, egress.listeners[workerID] == nil else { return }
                    attachEgress(name, workerPID: workerPID, workerID: workerID, attempt: attempt + 1)
                }
            }
            return
        }
        defer { close(fd) }
        let id = egress.nextListener
        egress.nextListener += 1
        if sendToProxy(.object([("type", .string("listener")), ("tenant", .string(name.value)), ("listener", .int(Int64(id)))]), fd: fd) {
            egress.listeners[workerID] = id
            egress.listenerFailures[name] = nil
        }
    }

    /// A worker ended (or was handed to the next supervisor): its listener goes, and so does
    /// the record of one it could not get.
    func egressWorkerGone(_ w: WorkerHandle) {
        detachEgress(workerID: w.ref.id)
        egress.listenerFailures[w.tenant] = nil
    }

    func detachEgress(workerID: UInt64) {
        guard let id = egress.listeners.removeValue(forKey: workerID) else { return }
        sendToProxy(.object([("type", .string("close")), ("listener", .int(Int64(id)))]))
    }

    // MARK: Jobs

    /// What an egress tenant's job finds in its environment: the proxy variables, the CA bundle
    /// the sandbox trusts, and each secret's placeholder (or, for `expose = "env"` and a listed
    /// command, its value). Added at dispatch, never stored with the job.
    func egressEnvironment(_ name: TenantName, argv: [String]) -> [String] {
        guard let t = core.tenants[name] else { return [] }
        var env: [String] = []
        if t.limits.network == "egress" && egress.proxy != nil && sandboxEnabled {
            for v in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
                env.append("\(v)=\(EgressState.proxyURL)")
                env.append("\(v.lowercased())=\(EgressState.proxyURL)")
            }
            // The job's own loopback services (a server it started) are not the proxy's business.
            env.append("NO_PROXY=localhost,127.0.0.1,::1")
            env.append("no_proxy=localhost,127.0.0.1,::1")
            for (k, v) in EgressTrust.environment { env.append("\(k)=\(v)") }
        }
        guard !t.limits.secrets.isEmpty else { return env }
        let stored = Dictionary(((try? store.secrets(name)) ?? []).map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        for b in t.limits.secrets {
            guard let record = stored[b.name] else { continue }
            switch b.exposure {
            case .placeholder:
                env.append("\(b.envVar)=\(record.placeholder)")
            case .env(let commands):
                guard Self.commandMatches(argv.first ?? "", commands), let vault, let value = try? vault.open(record),
                    let text = String(validating: value, as: UTF8.self), !text.utf8.contains(0)
                else { continue }
                env.append("\(b.envVar)=\(text)")
            }
        }
        return env
    }

    /// argv[0] as one of `commands`: the same absolute path, or a bare name that the job's fixed
    /// PATH (/usr/local/bin:/usr/bin:/bin, read-only in the sandbox) finds as that command.
    static func commandMatches(_ argv0: String, _ commands: [String]) -> Bool {
        if argv0.hasPrefix("/") { return commands.contains(argv0) }
        guard !argv0.contains("/") else { return false }
        for dir in ["/usr/local/bin", "/usr/bin", "/bin"] {
            let candidate = dir + "/" + argv0
            if access(candidate, X_OK) == 0 { return commands.contains(candidate) }
        }
        return false
    }

    // MARK: Reports

    func egressReport(_ v: JSONValue) {
        guard let type = v["type"]?.stringValue else { return }
        if let lost = v["dropped"]?.intValue, lost > 0 {
            // The proxy could not hand these over fast enough (Reporter): counted, not audited.
            egress.reportsDropped += lost
            logger.warning("the egress proxy dropped reports the daemon did not read in time", metadata: ["dropped": "\(lost)"])
        }
        let tenant = v["tenant"]?.stringValue.flatMap { try? TenantName(validating: $0) }
        switch type {
        case "ready":
            egress.proxy?.ready = true
            logger.info("egress proxy ready")
        case "denied":
            guard let tenant else { return }
            egress.counters[tenant, default: EgressCounters()].requestsDenied += 1
            let host = String((v["host"]?.stringValue ?? "?").prefix(255))
            let port = v["port"]?.intValue ?? 0
            egressAudit(tenant, action: "egress.denied", rule: String((v["rule"]?.stringValue ?? "?").prefix(255)), host: host, port: port)
        case "secret_used":
            guard let tenant else { return }
            egress.counters[tenant, default: EgressCounters()].secretsUsed += 1
            let host = String((v["host"]?.stringValue ?? "?").prefix(255))
            egressAudit(tenant, action: "secret.used", rule: String((v["name"]?.stringValue ?? "?").prefix(64)), host: host, port: v["port"]?.intValue ?? 0)
        case "done":
            guard let tenant else { return }
            var c = egress.counters[tenant, default: EgressCounters()]
            if v["allowed"]?.boolValue == true { c.requestsAllowed += 1 }
            c.bytesUp += v["up"]?.intValue ?? 0
            c.bytesDown += v["down"]?.intValue ?? 0
            egress.counters[tenant] = c
        case "log":
            let message = String((v["message"]?.stringValue ?? "").prefix(500))
            logger.log(level: v["level"]?.stringValue == "error" ? .error : .info, "egress proxy: \(message)")
        default: break
        }
    }

    /// The proxy's reports closed: it died. Jobs' requests fail to connect until it is back:
    /// it is started again after a back-off (EgressState.restartDelay), and every running worker
    /// of an egress tenant gets a new listener for it. Status says which state it is in.
    func egressProxyGone() {
        guard let proxy = egress.proxy else { return }
        // Its reports closed: whatever it still does, it serves no one with stale allowlists
        // (a zombie's status is kept; the reap below collects it).
        kill(proxy.pid, SIGKILL)
        close(proxy.controlFD)
        egress.proxy = nil
        proxy.writer?.finish()
        egress.configured.removeAll()
        egress.listeners.removeAll()
        egress.unavailable = "the egress proxy (pid \(proxy.pid)) closed its report socket"
        reapProxy(proxy, attempt: 0)
    }

    /// Waits for the proxy's exit (its socket closes a moment before it is a zombie; one that
    /// lingers 2 s is killed), then schedules its restart.
    private func reapProxy(_ proxy: EgressProxyProcess, attempt: Int) {
        var status: Int32 = 0
        var usage = rusage()
        if cp_wait4(proxy.pid, &status, WNOHANG, &usage) == 0 {
            if attempt == 200 { kill(proxy.pid, SIGKILL) }
            loop.scheduleTask(in: .milliseconds(10)) { [self] in reapProxy(proxy, attempt: attempt + 1) }
            return
        }
        let how = Self.describe(waitStatus: status)
        egress.lastExit = "pid \(proxy.pid) \(how)"
        guard !egress.stopping else {
            egress.unavailable = "the egress proxy (pid \(proxy.pid)) \(how); the daemon is stopping"
            return
        }
        let now = Clock.monotonic()
        egress.quickDeaths = now - proxy.startedAt >= EgressState.stableSeconds ? 1 : egress.quickDeaths + 1
        let delay = EgressState.restartDelay(quickDeaths: egress.quickDeaths)
        egress.restartAt = now + delay
        egress.unavailable = "the egress proxy (pid \(proxy.pid)) \(how); restarting it in \(Self.seconds(delay))"
        logger.error("egress proxy exited; restarting it", metadata: ["pid": "\(proxy.pid)", "exit": "\(how)", "delay_s": "\(delay)"])
        loop.scheduleTask(in: .milliseconds(Int64(delay * 1000))) { [self] in restartEgressProxy() }
    }

    private static func seconds(_ d: Double) -> String { d < 1 ? "\(Int(d * 1000)) ms" : "\(Int(d)) s" }

    /// Starts the proxy again and hands it a listener in every running egress worker's namespace
    /// (with its tenant's configuration, pushed on the way): jobs keep the same proxy address.
    private func restartEgressProxy() {
        egress.restartAt = nil
        guard !egress.stopping, egress.proxy == nil else { return }
        do { try startEgressProxy() } catch {
            egress.unavailable = "cannot restart the egress proxy: \(error)"
            logger.error("cannot restart the egress proxy", metadata: ["error": "\(error)"])
        }
        guard egress.proxy != nil else {
            // startEgressProxy said why; a spawn that failed is tried again later.
            egress.quickDeaths += 1
            let delay = EgressState.restartDelay(quickDeaths: egress.quickDeaths)
            egress.restartAt = Clock.monotonic() + delay
            loop.scheduleTask(in: .milliseconds(Int64(delay * 1000))) { [self] in restartEgressProxy() }
            return
        }
        egress.restarts += 1
        for (id, w) in workers where !w.exited && core.tenants[w.tenant]?.limits.network == "egress" {
            attachEgress(w.tenant, workerPID: w.pid, workerID: id)
        }
    }

    /// `status`' `supervisor.egress`: the proxy process and its restarts.
    func egressProxyStatus() -> JSONValue {
        var o = JSONObjectBuilder()
        let state: String
        if egress.proxy != nil { state = "running" } else if egress.restartAt != nil { state = "restarting" } else { state = "unavailable" }
        o.set("state", .string(state))
        o.set("pid", egress.proxy.map { Int($0.pid) })
        o.set("uptime_s", egress.proxy.map { ((Clock.monotonic() - $0.startedAt) * 1000).rounded() / 1000 })
        o.set("restarts", egress.restarts)
        o.set("last_exit", egress.lastExit)
        o.set("unavailable", egress.unavailable)
        return o.value
    }

    /// `status`' `egress` of a tenant.
    func egressStatus(_ t: TenantState) -> JSONValue {
        guard t.limits.network == "egress" else { return .null }
        let c = egress.counters[t.name] ?? EgressCounters()
        var o = JSONObjectBuilder()
        o.set("proxy", egress.proxy != nil ? JSONValue.string(EgressState.proxyURL) : JSONValue.null)
        o.set("unavailable", egress.unavailable ?? egress.listenerFailures[t.name])
        o.set("allow", .array(t.limits.egressAllow.map { .string($0.text) }))
        o.set("requests_allowed", c.requestsAllowed)
        o.set("requests_denied", c.requestsDenied)
        o.set("bytes_up", c.bytesUp)
        o.set("bytes_down", c.bytesDown)
        o.set("secrets_used", c.secretsUsed)
        return o.value
    }

    func stopEgressProxy() {
        egress.stopping = true
        guard let proxy = egress.proxy else { return }
        kill(proxy.pid, SIGTERM)
        proxy.reports?.close(promise: nil)
    }
}

/// The proxy's report frames, to the supervisor.
final class EgressReportHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let supervisor: Supervisor
    init(supervisor: Supervisor) { self.supervisor = supervisor }

    /// A framing error leaves the decoder dead: the channel closes, so the proxy is treated as
    /// gone (and killed) rather than its reports stopping in silence.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        supervisor.logger.error("the egress proxy's reports are unreadable; closing them", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = Self.unwrapInboundIn(data)
        guard let bytes = buffer.readBytes(length: buffer.readableBytes), let v = try? JSONValue.parse(bytes) else { return }
        supervisor.egressReport(v)
    }

    func channelInactive(context: ChannelHandlerContext) {
        supervisor.egressProxyGone()
    }
}
