import CClawpenShim
import ClawpenCore
import ClawpenPolicy
import ClawpenProtocol
import ClawpenSandbox
import ClawpenStore
import ClawpenSystem
import ClawpenWire
import Glibc
import NIOCore
import NIOPosix

/// The caller on a tenant's agent socket (docs/subjobs.md): the tenant is the listener's (one
/// socket per tenant, bound only into that tenant's sandbox); the job is the one whose cgroup
/// held the process that connected, as the kernel reported it (SO_PEERCRED, SO_PEERPIDFD,
/// /proc/PID/cgroup) and the tenant's worker confirmed. Nothing the caller sends changes either.
/// Confined to the supervisor's event loop.
final class AgentCaller: @unchecked Sendable {
    let tenant: TenantName
    /// The calling job; nil: the caller is in no running job of the tenant (every request is refused).
    private(set) var jobID: String?
    /// Why there is no job, for every refusal.
    private(set) var unidentified: String

    init(tenant: TenantName, unidentified: String) {
        self.tenant = tenant
        self.unidentified = unidentified
    }

    func identified(_ job: String) {
        jobID = job
        unidentified = ""
    }

    func identifiedNot(_ why: String) { if jobID == nil { unidentified = why } }
}

/// What the agent listeners are made with (the control socket's parser pool and frame limits).
struct AgentListenerConfig {
    let parser: NIOThreadPool
    let maxFrameBytes: Int
    let partialTimeout: TimeAmount
}

/// Which job runs in which cgroup slot of which worker, and the slot's CPU when the job started:
/// the agent socket's caller lookup and the tree CPU budget (the core's probe) read it.
/// Confined to the supervisor's event loop.
final class JobSlotIndex: @unchecked Sendable {
    private var bySlot: [UInt64: [UInt32: String]] = [:]
    private var slotOf: [String: (worker: UInt64, slot: UInt32, tenant: TenantName, baseline: Int64?)] = [:]
    let cgroups: CgroupTree?

    init(cgroups: CgroupTree?) { self.cgroups = cgroups }

    func started(_ job: String, slot: UInt32, worker: UInt64, tenant: TenantName) {
        guard slot > 0 else { return }
        bySlot[worker, default: [:]][slot] = job
        slotOf[job] = (worker, slot, tenant, usageMicros(tenant, slot: slot))
    }

    func ended(_ job: String) {
        guard let s = slotOf.removeValue(forKey: job) else { return }
        if bySlot[s.worker]?[s.slot] == job { bySlot[s.worker]?[s.slot] = nil }
    }

    func workerGone(_ worker: UInt64) {
        for job in (bySlot.removeValue(forKey: worker) ?? [:]).values { slotOf[job] = nil }
    }

    func job(worker: UInt64, slot: UInt32) -> String? { bySlot[worker]?[slot] }

    /// CPU the job's cgroup has used since it started (the slot is reused, so from its baseline).
    func cpuMicros(_ tenant: TenantName, jobID: String) -> Int64? {
        guard let s = slotOf[jobID], s.tenant == tenant, let base = s.baseline, let now = usageMicros(tenant, slot: s.slot) else { return nil }
        return max(0, now - base)
    }

    private func usageMicros(_ tenant: TenantName, slot: UInt32) -> Int64? {
        guard let cgroups, let stat = Files.readSmallFile(cgroups.tenantPath(tenant) + "/job-\(slot)/cpu.stat") else { return nil }
        for line in stat.split(separator: "\n") where line.hasPrefix("usage_usec ") {
            return Int64(line.dropFirst("usage_usec ".count))
        }
        return nil
    }
}

/// The agent sockets' state in the supervisor.
struct AgentState {
    var config: AgentListenerConfig?
    var listeners: [TenantName: Channel] = [:]
    var binding: Set<TenantName> = []
    /// A directory fd per tenant whose socket path is too long for sun_path (bound through /proc/self/fd).
    var directoryFDs: [TenantName: Int32] = [:]
    var pending: [UInt32: PendingLookup] = [:]
    var nextToken: UInt32 = 1
    /// Where the cgroup2 hierarchy is mounted (to read /proc/PID/cgroup against the tenant nodes).
    var cgroupMount: String?
    /// The client executable bound into sandboxes, when it is not under a path they see already.
    var clientToBind: String??
    /// Connections held per tenant and for all (AgentConnections), and the listeners paused at
    /// a limit.
    var connections = AgentConnections(allLimit: AgentConnections.allLimit(descriptors: Self.descriptorLimit()))
    var paused: Set<TenantName> = []
    var allWereHeld = false
    /// The pause warnings, per tenant and (nil) for the common limit: a job can go to its limit
    /// and back without end (close one, open one).
    var pauseWarnings = WarningThrottle<TenantName?>()

    static func descriptorLimit() -> Int {
        var rl = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl) == 0, rl.rlim_cur != rlim_t.max else { return 65_536 }
        return Int(clamping: rl.rlim_cur)
    }

    struct PendingLookup {
        let caller: AgentCaller
        let worker: UInt64
        let slot: UInt32
        let pidfd: Int32
        let done: (AgentCaller) -> Void
        var timeout: Scheduled<Void>?
    }
}

extension Supervisor {
    /// Inside every sandbox: the tenant's socket directory and the client executable.
    static let agentDirectoryInside = "/run/clawpen"
    static let agentSocketName = "clawpen.sock"
    static let clientInside = "/opt/clawpen/bin/clawpen"

    /// `<state-dir>/agent/<tenant>`: the host side of the tenant's `/run/clawpen` (root's; the
    /// `agent` directory above it is 0700, so no host user reaches a tenant's socket).
    func agentDirectory(_ name: TenantName) -> String { config.stateDir + "/agent/" + name.value }

    /// What a job's `CLAWPEN_SOCKET` says: the path inside the sandbox (or, unsandboxed, the host's).
    func agentSocketPathForJobs(_ name: TenantName) -> String {
        sandboxEnabled ? Self.agentDirectoryInside + "/" + Self.agentSocketName : agentDirectory(name) + "/" + Self.agentSocketName
    }

    // MARK: Listeners

    /// Before a worker of `name` starts: its socket directory exists and its socket is bound and
    /// listening (connections wait in the backlog until the event loop takes the listener on).
    func prepareAgentSocket(_ name: TenantName) {
        guard agent.listeners[name] == nil, !agent.binding.contains(name), let cfg = agent.config else { return }
        let top = config.stateDir + "/agent"
        if mkdir(top, 0o700) != 0 && errno != EEXIST {
            logger.error("cannot make the agent socket directory", metadata: ["path": "\(top)", "error": "\(errnoString(errno))"])
            return
        }
        chmod(top, 0o700)
        let dir = agentDirectory(name)
        if mkdir(dir, 0o755) != 0 && errno != EEXIST {
            logger.error("cannot make the agent socket directory", metadata: ["path": "\(dir)", "error": "\(errnoString(errno))"])
            return
        }
        var path = dir + "/" + Self.agentSocketName
        if path.utf8.count > 100 {
            // sun_path holds 108 bytes: a long state directory is reached through an fd of it.
            let fd = agent.directoryFDs[name] ?? open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { return }
            agent.directoryFDs[name] = fd
            path = "/proc/self/fd/\(fd)/" + Self.agentSocketName
        }
        // Bound here, synchronously: the tenant's first job may look for it a moment after its
        // worker starts. Only the tenant's jobs see it (its directory is bound into their sandbox
        // alone); they run as the tenant's uid, so it must let them connect (0666).
        let fd = cp_unix_listen(path, 256, 0o666)
        guard fd >= 0 else {
            logger.error("cannot bind the tenant's agent socket", metadata: ["tenant": "\(name)", "path": "\(path)", "error": "\(errnoString(errno))"])
            return
        }
        agent.binding.insert(name)
        ServerBootstrap(group: loop)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    guard agentConnectionOpened(name) else {
                        try channel.pipeline.syncOperations.addHandler(CloseWithError(frame: agentConnectionRefusal(name)))
                        return
                    }
                    channel.closeFuture.whenComplete { [self] _ in agentConnectionClosed(name) }
                    try addClientHandlers(
                        channel, parser: cfg.parser, maxFrameBytes: cfg.maxFrameBytes, partialTimeout: cfg.partialTimeout, agentTenant: name)
                }
            }
            .withBoundSocket(fd)
            .whenComplete { [self] result in
                agent.binding.remove(name)
                switch result {
                case .success(let channel):
                    agent.listeners[name] = channel
                case .failure(let error):
                    logger.error("cannot serve the tenant's agent socket", metadata: ["tenant": "\(name)", "error": "\(error)"])
                }
            }
    }

    /// The sandbox binds: the tenant's socket directory at /run/clawpen, and the client
    /// executable at /opt/clawpen/bin/clawpen when the sandbox would not see it otherwise.
    func addAgentMounts(_ plan: inout SandboxPlan, _ name: TenantName) {
        guard plan.enabled else { return }
        plan.readOnlyBinds.append(SandboxPlan.Bind(source: agentDirectory(name), target: Self.agentDirectoryInside))
        if let client = clientToBind() {
            plan.readOnlyBinds.append(SandboxPlan.Bind(source: client, target: Self.clientInside))
        }
    }

    /// The `clawpen` executable beside the worker's, unless it lives where every sandbox sees it
    /// already (an installed package puts it in /usr/bin).
    func clientToBind() -> String? {
        if let known = agent.clientToBind { return known }
        var found: String? = nil
        let dir = workerPath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        if let real = Plan.resolve(dir + "/clawpen"), !["/usr/", "/bin/", "/sbin/", "/lib/"].contains(where: { real.hasPrefix($0) }) {
            var st = stat()
            if stat(real, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG { found = real }
        }
        agent.clientToBind = .some(found)
        return found
    }

    /// The variables every job gets (after the request's own, so that they win).
    func agentEnvironment(_ name: TenantName, jobID: String) -> [String] {
        ["CLAWPEN_SOCKET=" + agentSocketPathForJobs(name), "CLAWPEN_JOB_ID=" + jobID]
    }

    // MARK: Connections per tenant

    func agentConnectionLimit(_ name: TenantName) -> Int {
        core.tenants[name]?.limits.agentMaxConnections ?? TierLimits.defaultAgentMaxConnections
    }

    /// Counts a connection accepted on `name`'s socket; false when it came past a limit (a
    /// listener takes a few in one read before it is paused).
    func agentConnectionOpened(_ name: TenantName) -> Bool {
        let accepted = agent.connections.opened(name.value, limit: agentConnectionLimit(name))
        refreshAgentListeners(name)
        return accepted
    }

    func agentConnectionClosed(_ name: TenantName) {
        agent.connections.closed(name.value)
        refreshAgentListeners(name)
    }

    /// Pauses or resumes listeners to match the counts: `name`'s, or every one when the common
    /// limit was reached or left (or `name` is nil: after a policy reload changed the limits).
    /// A paused listener does not accept: further connections wait in the kernel's backlog
    /// (256) and cost the supervisor no descriptor.
    func refreshAgentListeners(_ name: TenantName?) {
        let allHeld = agent.connections.allHeld
        let names = name == nil || allHeld != agent.allWereHeld ? Array(agent.listeners.keys) : [name!]
        if allHeld && !agent.allWereHeld && agent.pauseWarnings.allows(nil) {
            logger.warning(
                "agent sockets: all tenants' connections reached the common limit; no agent socket accepts until some close",
                metadata: ["all_limit": "\(agent.connections.allLimit)"])
        }
        agent.allWereHeld = allHeld
        for n in names {
            guard let listener = agent.listeners[n] else { continue }
            let limit = agentConnectionLimit(n)
            let accepts = agent.connections.accepts(n.value, limit: limit)
            guard accepts == agent.paused.contains(n) else { continue }
            if accepts {
                agent.paused.remove(n)
            } else {
                agent.paused.insert(n)
                if !allHeld && agent.pauseWarnings.allows(n) {
                    logger.warning(
                        "agent socket: the tenant's jobs hold agent_max_connections connections; it accepts no more until one closes",
                        metadata: ["tenant": "\(n)", "rule": "agent_max_connections", "limit": "\(limit)"])
                }
            }
            try? listener.syncOptions?.setOption(ChannelOptions.autoRead, value: accepts)
        }
    }

    func agentConnectionRefusal(_ name: TenantName) -> [UInt8] {
        let limit = agentConnectionLimit(name)
        let held = agent.connections.held(by: name.value)
        let e: ProtocolError
        if held >= limit {
            e = ProtocolError(
                .quotaExceeded,
                "tenant '\(name)' holds \(held) connections to its agent socket, its limit (quota agent_max_connections): close one first",
                details: ["quota": .string("agent_max_connections"), "limit": .string(String(limit)), "current": .string(String(held))])
        } else {
            let all = agent.connections.allLimit
            e = ProtocolError(
                .quotaExceeded,
                "the supervisor holds \(agent.connections.total) agent socket connections, its limit for all tenants (half its RLIMIT_NOFILE), and tenant '\(name)' holds \(held), its floor of \(agent.connections.floor) or more: try again when some close",
                details: ["quota": .string("all_agent_connections"), "limit": .string(String(all)), "current": .string(String(agent.connections.total))])
        }
        return Reply.error(e, id: .null)
    }

    /// The tenant is gone (offboarded): its listener closes, and its socket and directory go.
    /// Before, each offboarded tenant left its listener open (a descriptor) and its directory
    /// in the state dir until the daemon stopped: a platform that churns tenants ran out.
    func agentTenantRemoved(_ name: TenantName) {
        agent.listeners.removeValue(forKey: name)?.close(promise: nil)
        agent.paused.remove(name)
        agent.pauseWarnings.forget(name)
        if let fd = agent.directoryFDs.removeValue(forKey: name) { close(fd) }
        // Root's, in the state dir; the sandbox had it read-only, so nothing in it is the tenant's.
        let dir = agentDirectory(name)
        if unlink(dir + "/" + Self.agentSocketName) != 0 && errno != ENOENT {
            logger.warning("cannot remove the tenant's agent socket", metadata: ["tenant": "\(name)", "error": "\(errnoString(errno))"])
        }
        _ = rmdir(dir)
    }

    func closeAgentListeners() {
        for channel in agent.listeners.values { channel.close(promise: nil) }
        agent.listeners.removeAll()
        for fd in agent.directoryFDs.values { close(fd) }
        agent.directoryFDs.removeAll()
    }

    // MARK: Who is calling

    /// Identifies the process that connected to `tenant`'s socket: its cgroup must be a job slot
    /// of that tenant (`/proc/PID/cgroup`, read while its pidfd shows it alive, so the pid was
    /// not reused), its uid the tenant's; the tenant's worker then answers a `sync`, after which
    /// every start and end it reported before is known here, and the slot names the job. Any
    /// failure leaves the caller unidentified: it gets refusals only.
    func identifyAgent(tenant: TenantName, cred: PeerCredentials?, pidfd: Int32, _ done: @escaping (AgentCaller) -> Void) {
        let caller = AgentCaller(tenant: tenant, unidentified: "")
        func refuse(_ why: String) {
            if pidfd >= 0 { close(pidfd) }
            caller.identifiedNot(why)
            done(caller)
        }
        guard let cred else { return refuse("the caller's credentials (SO_PEERCRED) could not be read") }
        guard sandboxEnabled, let cgroups else {
            return refuse("this host runs jobs without job cgroups (no sandbox or no cgroup2), so the agent socket cannot tell which job calls")
        }
        guard let t = core.tenants[tenant] else { return refuse("tenant '\(tenant)' is unknown") }
        guard Int(cred.uid) == t.record.uid else {
            return refuse("the calling process runs as uid \(cred.uid), not as tenant '\(tenant)'s uid \(t.record.uid)")
        }
        // Without SO_PEERPIDFD (Linux < 6.5) a pidfd opened now pins the process as well, from
        // this moment on (documented: the pid could have been reused since it connected).
        let fd = pidfd >= 0 ? pidfd : cp_pidfd_open_pid(cred.pid)
        guard fd >= 0 else { return refuse("the calling process (pid \(cred.pid)) is gone") }
        if agent.cgroupMount == nil { agent.cgroupMount = CgroupInfo.cgroup2MountPoint() }
        let groups = Files.readSmallFile("/proc/\(cred.pid)/cgroup")
        guard cp_pidfd_alive(fd) == 1 else {
            close(fd)
            return refuse("the calling process (pid \(cred.pid)) exited before it could be identified")
        }
        let path = groups?.split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) } ?? ""
        let node = cgroups.tenantPath(tenant)
        let mount = agent.cgroupMount ?? ""
        let prefix = node.hasPrefix(mount) ? String(node.dropFirst(mount.count)) + "/job-" : "\u{0}"
        guard path.hasPrefix(prefix), let slot = UInt32(path.dropFirst(prefix.count)), slot > 0 else {
            close(fd)
            return refuse("the calling process (pid \(cred.pid)) is in no job of tenant '\(tenant)' (its cgroup is \(path.isEmpty ? "unknown" : path))")
        }
        guard let w = t.lifecycle.worker, let channel = workers[w.id]?.channel else {
            close(fd)
            return refuse("tenant '\(tenant)' has no running worker, so no running job")
        }
        let token = agent.nextToken
        agent.nextToken &+= 1
        if agent.nextToken == 0 { agent.nextToken = 1 }
        var lookup = AgentState.PendingLookup(caller: caller, worker: w.id, slot: slot, pidfd: fd, done: done)
        lookup.timeout = loop.scheduleTask(in: .seconds(2)) { [self] in
            agentLookupFailed(token, "the tenant's worker did not answer within 2 s")
        }
        agent.pending[token] = lookup
        channel.writeAndFlush(channel.allocator.frame(SupervisorToWorker.sync(token: token).encoded()), promise: nil)
    }

    /// The worker answered a `sync`: the slot's job, if it is still running and the caller still alive.
    func agentSynced(_ token: UInt32, _ w: WorkerHandle) {
        guard let lookup = agent.pending[token], lookup.worker == w.ref.id else { return }
        agent.pending[token] = nil
        lookup.timeout?.cancel()
        defer { close(lookup.pidfd) }
        let caller = lookup.caller
        guard cp_pidfd_alive(lookup.pidfd) == 1 else {
            caller.identifiedNot("the calling process exited before it could be identified")
            return lookup.done(caller)
        }
        guard let job = jobSlots.job(worker: w.ref.id, slot: lookup.slot), core.runningJob(job, tenant: caller.tenant) != nil else {
            caller.identifiedNot("the calling process is in a job cgroup of tenant '\(caller.tenant)' whose job has ended")
            return lookup.done(caller)
        }
        caller.identified(job)
        lookup.done(caller)
    }

    private func agentLookupFailed(_ token: UInt32, _ why: String) {
        guard let lookup = agent.pending.removeValue(forKey: token) else { return }
        lookup.timeout?.cancel()
        close(lookup.pidfd)
        lookup.caller.identifiedNot(why)
        lookup.done(lookup.caller)
    }

    // MARK: Worker events

    func agentJobStarted(_ id: String, slot: UInt32, _ w: WorkerHandle) {
        jobSlots.started(id, slot: slot, worker: w.ref.id, tenant: w.tenant)
    }

    func agentJobEnded(_ id: String, _ w: WorkerHandle) {
        jobSlots.ended(id)
    }

    /// The worker is gone: its slots with it, and lookups waiting for its answer are refused.
    func agentWorkerGone(_ w: WorkerHandle) {
        jobSlots.workerGone(w.ref.id)
        for (token, lookup) in agent.pending where lookup.worker == w.ref.id {
            agentLookupFailed(token, "the tenant's worker stopped")
        }
    }
}

/// On a connection that came past a limit: the refusal, then the close.
final class CloseWithError: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let frame: [UInt8]

    init(frame: [UInt8]) { self.frame = frame }

    func channelActive(context: ChannelHandlerContext) {
        let buffer = context.channel.allocator.frame(frame)
        let channel = context.channel
        context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
