import CClawpenShim
import ClawpenCore
import ClawpenPolicy
import ClawpenSecrets
import ClawpenStore
import ClawpenSystemd
import Dispatch
import Glibc
import Logging
import Metrics
import Prometheus
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// `clawpen serve`: prepares directories, policies and the store, takes the socket systemd passed
/// (clawpen.socket) or binds its own, serves until SIGTERM/SIGINT, then shuts down in order (stop
/// accepting, drain, stop workers, remove the socket it bound). Under systemd (Type=notify) it
/// says READY=1 once the store is open and the socket serves, keeps STATUS= current, beats the
/// watchdog from its event loop, and says STOPPING=1 and RELOADING=1 (SIGHUP: policies re-read).
public enum Server {
    public static func run(_ configIn: ServeConfig, logger: Logger) throws(ServeError) {
        _ = cp_raise_nofile_limit()
        signal(SIGPIPE, SIG_IGN)
        let notifier = Notifier()
        var settings = configIn
        // Socket activation first, before anything could start a child that inherits the fd.
        // With systemd's file descriptor store, the previous run's workers come back with the
        // listener (an upgrade, Supervisor+Handoff.swift): each is asked what it runs, now,
        // before anything else could write to its socket.
        let activated: (fd: Int32, path: String)?
        let handedBack: [(Handoff.Stored, Handoff.Answer)]
        do {
            let passed = try FDStore.takePassed()
            let sorted = Handoff.classify(passed)
            for stray in sorted.strays {
                close(stray.fd)
                FDStore.remove(name: stray.name)
            }
            activated = try sorted.listener.map { fd throws(ListenFDs.Failure) in try ListenFDs.unixListener(fd, passed: passed.count) }
            handedBack = WorkerAdoption.ask(sorted.workers)
        } catch { throw .bind(path: settings.socketPath, message: error.description) }
        if let activated { settings.socketPath = activated.path }
        let config = settings

        let policies = try loadPolicies(config, logger: logger)
        let largestReply = ClientBudget.largestReply(outputMaxBytes: policies.largestOutputMaxBytes)
        if largestReply > config.clientBudget.perClient {
            logger.warning(
                "a job's view may be larger than --client-buffer-bytes: a client fetching it may be disconnected",
                metadata: ["largest_reply_bytes": "\(largestReply)", "client_buffer_bytes": "\(config.clientBudget.perClient)"])
        }
        let seccomp = try PolicyRuntime.compileSeccomp(policies)
        let readiness = Readiness()
        readiness.policiesLoaded()
        let running = NIOLockedValueBox<Supervisor?>(nil)
        try ServeError.makeDirectories(config.stateDir, mode: 0o700)
        try ServeError.makeDirectories(config.workspaceRoot, mode: 0o700)
        // Sandboxed, the workspace root is root's and closed to every other host user.
        if geteuid() == 0 {
            do {
                if let before = try Workspace.secureRoot(config.workspaceRoot) {
                    logger.notice(
                        "workspace root made root's and closed to other users (0700)", metadata: ["path": "\(config.workspaceRoot)", "was": "\(before)"])
                }
            } catch { throw .directory(path: error.detail, errno: error.errno) }
        }
        let socketDir = String(config.socketPath[..<(config.socketPath.lastIndex(of: "/") ?? config.socketPath.startIndex)])
        if activated == nil, !socketDir.isEmpty { try ServeError.makeDirectories(socketDir, mode: 0o755) }
        let workerPath = try resolveWorkerPath(config)
        if activated == nil { try checkSocketPath(config.socketPath) }
        // Before the store, the uid range, any worker or the proxy: one daemon per state dir.
        let stateLock = try StateDirLock.acquire(stateDir: config.stateDir)
        defer { withExtendedLifetime(stateLock) {} }

        // With --metrics-listen, /readyz answers from here on: a store that cannot be opened
        // for a reason that may pass is retried every second (not ready, and why) instead of
        // ending the daemon.
        var metricsServer: MetricsServer?
        if let listen = config.metricsListen {
            metricsServer = try MetricsServer.start(listen: listen, readiness: readiness, supervisor: running)
            logger.notice("metrics, health and readiness over HTTP", metadata: ["listen": "\(metricsServer?.localAddress ?? listen)"])
        }
        let store = try openStore(config, readiness: readiness, retry: metricsServer != nil, notifier: notifier, logger: logger)
        // After the store: which master key is right is decided against the keys it wraps.
        let keys = try MasterKeySetup.load(config, store: store, logger: logger)
        readiness.storeOpened()
        let cgroup = CgroupInfo.probe()
        var keep = CgroupTree.Keep()
        for case (let stored, .answered) in handedBack {
            keep.tenants.insert(stored.tenant.value)
            keep.pids.insert(stored.pid)
        }
        let (cgroups, noCgroups) = CgroupTree.setUp(cgroup, workerBase: config.workerCgroup, keeping: keep)
        // A cgroup the operator named and cannot be used is a configuration error, not a fallback.
        if let noCgroups, config.workerCgroup != nil { throw .config(noCgroups) }
        if let noCgroups { logger.warning("no tenant cgroups: \(noCgroups); limits fall back to rlimits") }
        try StartupChecks.run(config, cgroup: cgroup, cgroups: cgroups, logger: logger)

        // One event loop for everything: clients, workers, the store. The supervisor's state is
        // confined to it, and two cores gain nothing from a second loop hopping state across.
        let ticks = LoopTicks()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1, metricsDelegate: ticks)
        let loop = group.next()
        let jobGuard: [UInt8]
        do { jobGuard = try SeccompCompiler.jobGuard() } catch { throw .seccomp(error.description) }
        let supervisor = Supervisor(
            loop: loop, config: config, store: store, policies: policies, jobSeccompGuard: jobGuard,
            logger: logger, workerPath: workerPath, cgroup: cgroup, seccompPrograms: seccomp,
            cgroups: cgroups)
        supervisor.clientTurns = ClientTurns(ticks: ticks, loop: loop, pacing: config.clientPacing)
        supervisor.installKeys(keys)
        // Large request frames are parsed here, off the loop (ClientHandler): one thread per
        // core, so that parsing several at once still leaves the loop its own core. Made before
        // the supervisor starts: the agent sockets of the workers it starts share it.
        let parser = NIOThreadPool(numberOfThreads: max(1, System.coreCount - 1))
        parser.start()
        supervisor.agent.config = AgentListenerConfig(
            parser: parser, maxFrameBytes: config.maxFrameBytes,
            partialTimeout: TimeAmount.milliseconds(Int64(config.partialFrameTimeoutSeconds * 1000)))
        do {
            try loop.submit { try supervisor.start(adopting: handedBack) }.wait()
            running.withLockedValue { $0 = supervisor }
            // Whatever reports through swift-metrics lands in the same registry as our own series.
            MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: supervisor.metrics.registry))
        } catch let e as StoreError {
            try? group.syncShutdownGracefully()
            cgroups?.removeAll()
            throw .store(e)
        } catch {
            try? group.syncShutdownGracefully()
            throw .bind(path: config.socketPath, message: "\(error)")
        }

        do {
            try loop.submit {
                try supervisor.startEgressProxy()
                supervisor.attachEgressToAdopted()
            }.wait()
        } catch let e as ServeError {
            try? group.syncShutdownGracefully()
            cgroups?.removeAll()
            throw e
        } catch {
            try? group.syncShutdownGracefully()
            throw .egress("\(error)")
        }

        // Signals: SIGTERM/SIGINT start the shutdown on the loop, SIGHUP (systemctl reload)
        // the same reload as `clawpen policy reload` (a broken set is refused with the error
        // logged, and the running policies stay). The handler is installed here, before the
        // socket is bound, and synchronously (cp_signal_pipe): a dispatch signal source is armed
        // asynchronously, and on a loaded machine a SIGTERM sent as soon as the socket answered
        // (a test's stop, systemd's) came before it was and was lost for good (seen: a daemon
        // that served on after its stop). One that comes before the socket serves is kept and
        // acted on once it does.
        let finished = loop.makePromise(of: Void.self)
        let stopping = StopRequest()
        let signalFD = [SIGTERM, SIGINT, SIGHUP].withUnsafeBufferPointer { cp_signal_pipe($0.baseAddress, Int32($0.count)) }
        guard signalFD >= 0 else { throw .config("cannot install the signal handlers: \(errnoString(errno))") }
        SignalReader.start(fd: signalFD) { sig in
            loop.execute {
                if sig == SIGHUP {
                    logger.notice("SIGHUP: reloading policies")
                    try? supervisor.reloadPolicies(caller: nil)
                    return
                }
                logger.notice("signal received, shutting down", metadata: ["signal": "\(sig)"])
                stopping.request { server in
                    notifier.stopping()
                    readiness.draining()
                    server.close(promise: nil) // stop accepting first
                    // With a file descriptor store the workers go on under the next run;
                    // without one they stop, as they always did.
                    if FDStore.capacity > 0 {
                        supervisor.beginHandoff { finished.succeed(()) }
                    } else {
                        supervisor.beginShutdown { finished.succeed(()) }
                    }
                }
            }
        }

        let server: Channel
        let oldMask = umask(0o117) // the socket is created 0660
        do {
            let maxFrame = config.maxFrameBytes
            let partialTimeout = TimeAmount.milliseconds(Int64(config.partialFrameTimeoutSeconds * 1000))
            let bootstrap = ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 4096)
                // A chunk of a file is a frame of 1.4 MB or more: read it in up to 256 KiB at a
                // time (NIO's default ceiling is 64 KiB: four times the reads and the copies).
                .childChannelOption(ChannelOptions.recvAllocator, value: Supervisor.bulkReads)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        // --max-clients-per-uid and --max-clients (ControlConnectionLimit.swift).
                        let (refusal, uid) = supervisor.controlConnectionOpened(channel)
                        if let refusal {
                            try channel.pipeline.syncOperations.addHandler(CloseWithError(frame: refusal))
                            return
                        }
                        channel.closeFuture.whenComplete { _ in supervisor.controlConnectionClosed(uid: uid) }
                        try supervisor.addClientHandlers(channel, parser: parser, maxFrameBytes: maxFrame, partialTimeout: partialTimeout)
                    }
                }
            if let activated {
                // systemd bound it (mode, group and path from clawpen.socket) and listens already.
                server = try bootstrap.withBoundSocket(activated.fd).wait()
            } else {
                server = try bootstrap.bind(unixDomainSocketPath: config.socketPath, cleanupExistingSocketFile: false).wait()
            }
        } catch {
            umask(oldMask)
            try? parser.syncShutdownGracefully()
            try? group.syncShutdownGracefully()
            throw .bind(path: config.socketPath, message: "\(error)")
        }
        // The umask made the socket 0660 at bind: no chmod after it, which would race with
        // whatever an operator (or a test) set once the socket answered.
        umask(oldMask)
        loop.execute { supervisor.controlListenerBound(server) }
        readiness.serving()
        logger.notice(
            "clawpen serving",
            metadata: [
                "socket": "\(config.socketPath)", "socket_activated": "\(activated != nil)", "pid": "\(getpid())",
                "state_dir": "\(config.stateDir)", "workspace_root": "\(config.workspaceRoot)",
                "cgroup": "\(cgroup.mode.rawValue)", "cgroup_base": "\(cgroups?.base ?? "none")",
                "cgroup_controllers": "\(cgroups?.controllers.sorted().joined(separator: ",") ?? "")",
                "policies": "\(policies.source == .embedded ? "embedded defaults" : config.policiesDir)",
            ])
        // The store is open, the socket serves: ready. Then STATUS= (and the watchdog's beat,
        // when WatchdogSec= asks for one) from the event loop itself, so that a stuck loop
        // stops the beat.
        let beat: RepeatedTask?
        if notifier.enabled {
            notifier.ready(status: (try? loop.submit { supervisor.statusLine() }.wait()) ?? "serving")
            let everyMicros = min(notifier.watchdogIntervalMicros ?? 5_000_000, 5_000_000)
            let withWatchdog = notifier.watchdogIntervalMicros != nil
            beat = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .microseconds(everyMicros)) { _ in
                let line = supervisor.watchdogTick()
                if withWatchdog { notifier.watchdog(status: line) } else { notifier.status(line) }
            }
        } else {
            beat = nil
        }
        // RELOADING=1 ... READY=1 around every policy reload (SIGHUP or `clawpen policy reload`);
        // the hook runs on the loop, inside the reload.
        if notifier.enabled {
            supervisor.onReload = { starting in
                if starting { notifier.reloading() } else { notifier.reloaded(status: supervisor.statusLine()) }
            }
        }

        // A SIGTERM that came while starting is acted on now.
        loop.execute { stopping.serving(server) }
        try? finished.futureResult.wait()
        beat?.cancel()
        try? loop.submit { supervisor.stopEgressProxy() }.wait()
        try? loop.submit { supervisor.closeAgentListeners() }.wait()
        supervisor.stopSpawnThread()
        // An activated socket belongs to systemd (clawpen.socket keeps listening): never unlinked.
        if activated == nil { unlink(config.socketPath) }
        let handedOff = (try? loop.submit { Set(supervisor.handoff.handedOff.map(\.value)) }.wait()) ?? []
        cgroups?.removeAll(keeping: handedOff)
        // What the last ticks wrote is committed before the WAL is merged (a handoff does not
        // pass through finishShutdown).
        try? loop.submit {
            supervisor.drainWrites()
            store.checkpoint()
        }.wait()
        try? parser.syncShutdownGracefully()
        try? group.syncShutdownGracefully()
        metricsServer?.stop()
        logger.notice("clawpen stopped")
    }

    /// Opens the store; with `retry`, keeps trying every second while /readyz says why not.
    static func openStore(_ config: ServeConfig, readiness: Readiness, retry: Bool, notifier: Notifier, logger: Logger) throws(ServeError)
        -> Store
    {
        var lastError = ""
        while true {
            do { return try Store(path: config.stateDir + "/clawpen.db", fsyncAccepts: config.fsyncAccepts) } catch {
                // A newer schema, a corrupt file or another process's lock does not get better
                // by waiting: exit 78 with what to do. The rest (a directory not writable yet,
                // a full disk, an I/O error) may pass, and is retried when /readyz can say why.
                if error.needsOperator { throw .store(error) }
                guard retry else { throw .store(error) }
                let why = "\(error)"
                readiness.storeFailed(why)
                if why != lastError {
                    logger.error("cannot open the store; not ready, trying again every second", metadata: ["error": "\(why)"])
                    if notifier.enabled { notifier.status("not ready: the store cannot be opened: \(why)") }
                    lastError = why
                }
                sleep(1)
            }
        }
    }

    static func loadPolicies(_ config: ServeConfig, logger: Logger) throws(ServeError) -> PolicySet {
        let set = try PolicyRuntime.load(config)
        if case .embedded = set.source {
            logger.notice("no policies directory, using the embedded defaults", metadata: ["looked_in": "\(config.policiesDir)"])
        }
        return set
    }

    static func resolveWorkerPath(_ config: ServeConfig) throws(ServeError) -> String {
        var path = config.workerPath
        if path == nil {
            var buf = [CChar](repeating: 0, count: 4096)
            let n = readlink("/proc/self/exe", &buf, buf.count - 1)
            if n > 0 {
                let exe = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                path = String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)]) + "/clawpen-worker"
            }
        }
        guard let path, access(path, X_OK) == 0 else { throw .workerMissing(path: path ?? "clawpen-worker") }
        return path
    }

    /// A socket file left by a dead daemon is replaced; a live daemon's is not; anything that is
    /// not a socket is never removed.
    static func checkSocketPath(_ path: String) throws(ServeError) {
        switch cp_is_socket(path) {
        case -1: return // absent
        case 0: throw .socketPathOccupied(path: path)
        default:
            let fd = cp_unix_connect(path)
            if fd >= 0 { close(fd); throw .socketInUse(path: path) }
            unlink(path) // ECONNREFUSED: nobody listens, it is stale
        }
    }
}

/// A stop asked for by a signal, on the loop: carried out at once once the socket serves, or as
/// soon as it does when the signal came while starting.
final class StopRequest: @unchecked Sendable {
    private var server: Channel?
    private var pending: ((Channel) -> Void)?
    private var done = false

    func request(_ stop: @escaping (Channel) -> Void) {
        guard !done else { return }
        if let server {
            done = true
            stop(server)
        } else {
            pending = stop
        }
    }

    func serving(_ channel: Channel) {
        server = channel
        if let stop = pending, !done {
            done = true
            pending = nil
            stop(channel)
        }
    }
}

/// Reads the signal pipe (cp_signal_pipe) for as long as the daemon runs, on a queue of its
/// own (its blocking read holds that one thread), and hands each signal to `handle`. The
/// signals wait in the pipe until it reads, so when the queue starts does not matter.
enum SignalReader {
    static func start(fd: Int32, _ handle: @escaping @Sendable (Int32) -> Void) {
        DispatchQueue(label: "clawpen.signals").async {
            while true {
                let sig = cp_read_signal_pipe(fd)
                if sig == 0 { return }
                handle(Int32(sig))
            }
        }
    }
}
