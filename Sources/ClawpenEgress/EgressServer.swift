import CClawpenShim
import ClawpenProtocol
import ClawpenWire
import Glibc
import NIOCore
import NIOPosix
import Synchronization

/// The proxy's serving part, once the process has confined itself: the control thread reads the
/// supervisor's frames (listeners arrive as fds) and the event loop serves every listener.
public final class EgressServer: Sendable {
    let state = ProxyState()
    let reporter: Reporter
    let controlFD: Int32
    let group: MultiThreadedEventLoopGroup
    /// getaddrinfo blocks: names are resolved here, never on the loop, fairly between tenants.
    let resolver = FairResolver(threads: 2)
    /// Plain relays in the kernel; nil if its thread cannot start (then on the loop, as TLS ones).
    let splice: SpliceRelays?
    private let listeners = Mutex<[UInt64: Channel]>([:])

    public init(controlFD: Int32, reportFD: Int32) {
        self.controlFD = controlFD
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.group = group
        reporter = Reporter(fd: reportFD, loop: group.next())
        splice = SpliceRelays(loop: group.next(), state: state, reporter: reporter)
        if splice == nil {
            reporter.log("warning", "no kernel relay (its thread did not start): every connection is relayed by the event loop, with a copy of every byte")
        }
    }

    /// Serves until the supervisor closes the control socket, then exits.
    public func run() -> Never {
        resolver.start()
        reporter.send(.object([("type", .string("ready"))]))
        var pending: [UInt8] = []
        var fds: [Int32] = []
        var chunk = [UInt8](repeating: 0, count: 256 * 1024)
        while true {
            var fd: Int32 = -1
            let n = chunk.withUnsafeMutableBytes { cp_recv_with_fd(controlFD, $0.baseAddress, $0.count, &fd) }
            if fd >= 0 { fds.append(fd) }
            if n <= 0 { break }
            pending += chunk[0..<n]
            while pending.count >= 4 {
                let len = Int(pending[0]) << 24 | Int(pending[1]) << 16 | Int(pending[2]) << 8 | Int(pending[3])
                guard len <= EgressControl.maxFrameBytes else {
                    reporter.log("error", "control frame of \(len) bytes refused")
                    exit(1)
                }
                guard pending.count >= 4 + len else { break }
                let payload = Array(pending[4..<(4 + len)])
                pending.removeFirst(4 + len)
                guard let v = try? JSONValue.parse(payload) else { continue }
                handle(v, fds: &fds)
            }
        }
        // The supervisor is gone: so are its tenants' namespaces' reasons to be served.
        reporter.flush()
        exit(0)
    }

    private func handle(_ v: JSONValue, fds: inout [Int32]) {
        switch v["type"]?.stringValue {
        case "listener":
            guard !fds.isEmpty else { return }
            let fd = fds.removeFirst()
            guard let tenant = v["tenant"]?.stringValue, let id = v["listener"]?.intValue else { close(fd); return }
            serve(fd: fd, tenant: tenant, id: UInt64(id))
        case "close":
            guard let id = v["listener"]?.intValue else { return }
            listeners.withLock { $0.removeValue(forKey: UInt64(id)) }?.close(promise: nil)
        default:
            do { try state.apply(v) } catch { reporter.log("error", "control frame \(v["type"]?.stringValue ?? "?"): \(error)") }
        }
    }

    private func serve(fd: Int32, tenant: String, id: UInt64) {
        let state = self.state, reporter = self.reporter, resolver = self.resolver, splice = self.splice
        let bootstrap = ServerBootstrap(group: group)
            .childChannelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
            // Small writes (a 200 to CONNECT, a TLS flight) must not wait for a delayed ACK.
            .childChannelOption(ChannelOptions.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.recvAllocator, value: ProxyHandler.bulkReads)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // The tenant is this listener's: fixed before the job sends a byte.
                    try channel.pipeline.syncOperations.addHandler(
                        ProxyHandler(tenant: tenant, state: state, reporter: reporter, resolver: resolver, splice: splice))
                }
            }
        do {
            let channel = try bootstrap.withBoundSocket(fd).wait()
            listeners.withLock { $0[id] = channel }
        } catch {
            reporter.log("error", "cannot serve the listener of tenant \(tenant): \(error)")
            close(fd)
        }
    }
}
