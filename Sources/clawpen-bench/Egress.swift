import CClawpenShim
import ClawpenClient
import ClawpenProtocol
import Foundation
import Glibc

/// `--scenario egress`: what the egress proxy adds to a request. One client script (Python,
/// raw sockets, one new connection per request) runs twice in the same run: on the host straight
/// to the upstream, and as a job of an egress tenant through the proxy. The upstreams are Python
/// servers on 127.0.0.1 (HTTP and HTTPS with a CA of the bench's own, given to
/// `serve --egress-ca-file`); the secret's placeholder is substituted in every proxied request.
struct EgressFigures {
    var requests = 0
    var httpDirect: Summary?
    var httpProxied: Summary?
    var httpsDirect: Summary?
    var httpsProxied: Summary?
    var downloadBytes = 0
    var downloadDirectMBps: Double?
    var downloadProxiedMBps: Double?
    /// The same download through a bare relay on the host: the proxy's kernel relay with nothing
    /// around it (no parsing, no policy, no event loop, no namespaces), a peer measured in the
    /// same run.
    var downloadRelayMBps: Double?

    var httpAddedMs: Double? { httpProxied.flatMap { p in httpDirect.map { p.p50 - $0.p50 } } }
    var httpsAddedMs: Double? { httpsProxied.flatMap { p in httpsDirect.map { p.p50 - $0.p50 } } }
    var downloadRatio: Double? { downloadProxiedMBps.flatMap { p in downloadDirectMBps.map { $0 > 0 ? p / $0 : 0 } } }
    var relayRatio: Double? { downloadRelayMBps.flatMap { p in downloadDirectMBps.map { $0 > 0 ? p / $0 : 0 } } }
}

extension Scenarios {
    static let egressClient = """
        import json, os, socket, ssl, sys, time
        mode, ph, ps, big, n, cafile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
        relay = int(sys.argv[7]) if len(sys.argv) > 7 else 0
        key = os.environ.get("API_KEY", "none")
        ctx = ssl.create_default_context(cafile=os.environ.get("SSL_CERT_FILE") if mode == "proxy" else cafile)
        def conn(port):
            # As HTTP clients do (http.client, curl): no Nagle delay between a TLS Finished and the request.
            s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); return s
        def read_all(s):
            # Every response must be a 200: a refusal timed as a request would be a false figure.
            total = 0; first = b""
            while True:
                b = s.recv(1 << 20)
                if not b: break
                if len(first) < 16: first += b[:16]
                total += len(b)
            if not first.startswith(b"HTTP/1.1 200"): raise SystemExit("a response was not 200: %r" % first)
            return total
        def http(path):
            if mode == "proxy":
                s = conn(3128); target = "http://localhost:%d%s" % (ph, path)
            elif mode == "relay":
                s = conn(relay); target = path
            else:
                s = conn(ph); target = path
            s.sendall(("GET %s HTTP/1.1\\r\\nHost: localhost:%d\\r\\nAuthorization: Bearer %s\\r\\nConnection: close\\r\\n\\r\\n" % (target, ph, key)).encode())
            n = read_all(s); s.close(); return n
        def https(path):
            if mode == "proxy":
                s = conn(3128)
                s.sendall(("CONNECT localhost:%d HTTP/1.1\\r\\nHost: localhost:%d\\r\\n\\r\\n" % (ps, ps)).encode())
                head = b""
                while b"\\r\\n\\r\\n" not in head: head += s.recv(1)
                assert b" 200 " in head.split(b"\\r\\n")[0], head
            else:
                s = conn(ps)
            t = ctx.wrap_socket(s, server_hostname="localhost")
            t.sendall(("GET %s HTTP/1.1\\r\\nHost: localhost:%d\\r\\nAuthorization: Bearer %s\\r\\nConnection: close\\r\\n\\r\\n" % (path, ps, key)).encode())
            n = read_all(t); t.close(); return n
        out = {"http": [], "https": []}
        if mode == "relay": n = 0
        for _ in range(5 if n else 0): http("/"); https("/")
        for _ in range(n):
            t0 = time.perf_counter(); http("/"); out["http"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter(); https("/"); out["https"].append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter(); got = http("/big/%d" % big); dt = time.perf_counter() - t0
        out["mbps"] = got / dt / 1e6; out["got"] = got
        print(json.dumps(out))
        """

    func egress(into report: inout Report) throws {
        guard geteuid() == 0 else { throw BenchFailure("the egress scenario needs root (a sandboxed worker with its own network namespace)") }
        let dir = NSTemporaryDirectory() + "clawpen-bench-egress-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { if !setup.keepTemp { try? FileManager.default.removeItem(atPath: dir) } }
        let server = try EgressBenchServer(dir: dir)
        defer { server.stop() }
        let (ph, ps) = (server.httpPort, server.httpsPort)
        // The shipped policies plus a tenant that may reach the upstreams and has a secret for them.
        let pol = dir + "/policies"
        try FileManager.default.copyItem(atPath: setup.policies, toPath: pol)
        try? FileManager.default.createDirectory(atPath: pol + "/tenants", withIntermediateDirectories: true)
        try """
        network = "egress"

        [egress]
        allow = ["localhost:\(ph)", "127.0.0.1:\(ph)", "localhost:\(ps)", "127.0.0.1:\(ps)"]

        [secrets.KEY]
        env = "API_KEY"
        hosts = ["localhost:\(ph)", "localhost:\(ps)"]
        # The HTTP figure is a request with substitution: over plain HTTP that takes this opt-in.
        allow_plain_http = true
        """.write(toFile: pol + "/tenants/egress.toml", atomically: true, encoding: .utf8)
        var local = setup
        local = Setup(clawpen: setup.clawpen, policies: pol, keepTemp: setup.keepTemp)
        local.serveArgs = setup.serveArgs + ["--egress-ca-file", server.caFile]
        let n = options.egressRequests, big = options.egressDownloadBytes
        var figures = EgressFigures()
        figures.requests = n
        figures.downloadBytes = big
        try Daemon.with(local, label: "egress") { d in
            let conn = try d.connect()
            let tenant = try benchTenant("egress")
            _ = try call("create tenant egress") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tenant, tier: "pro")) }
            _ = try call("put the secret") { () throws(ClientError) in
                try conn.call(.secretPut(tenant: tenant, name: "KEY", value: Array("sk-bench-secret-value".utf8)))
            }
            var direct: [[String: Any]] = [], proxied: [[String: Any]] = [], relayed: [[String: Any]] = []
            let args = { (mode: String) in [mode, "\(ph)", "\(ps)", "\(big)", "\(n / 2)", server.caFile, "\(server.relayPort)"] }
            // Alternated: direct, proxied, direct, proxied; each half of the requests.
            for round in 0..<2 {
                Progress.say("[egress] round \(round + 1)/2: \(n / 2) HTTP and \(n / 2) HTTPS requests direct, then through the proxy")
                direct.append(try Self.runPython(Self.egressClient, args("direct")))
                let job = try call("proxied client") { () throws(ClientError) in
                    try conn.submit(
                        SubmitRequest(tenant: tenant, argv: ["python3", "-c", Self.egressClient] + args("proxy"), timeoutSeconds: 300, wait: true))
                }.job
                try Self.check(job, "proxied client")
                guard let o = try JSONSerialization.jsonObject(with: Data(job.stdout.utf8)) as? [String: Any] else {
                    throw BenchFailure("proxied client printed \(job.stdout.prefix(200))")
                }
                proxied.append(o)
                relayed.append(try Self.runPython(Self.egressClient, args("relay")))
            }
            func samples(_ runs: [[String: Any]], _ key: String) -> [Double] { runs.flatMap { ($0[key] as? [Double]) ?? [] } }
            func rate(_ runs: [[String: Any]]) -> Double? {
                let r = runs.compactMap { $0["mbps"] as? Double }.sorted()
                return r.isEmpty ? nil : r[r.count / 2]
            }
            figures.httpDirect = Summary(samples(direct, "http"))
            figures.httpProxied = Summary(samples(proxied, "http"))
            figures.httpsDirect = Summary(samples(direct, "https"))
            figures.httpsProxied = Summary(samples(proxied, "https"))
            figures.downloadDirectMBps = rate(direct)
            figures.downloadProxiedMBps = rate(proxied)
            figures.downloadRelayMBps = rate(relayed)
            if let got = proxied.first?["got"] as? Int, got < big { throw BenchFailure("the proxied download got \(got) of \(big) bytes") }
        }
        report.egress = figures
    }

    static func runPython(_ script: String, _ args: [String]) throws -> [String: Any] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", script] + args
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let o = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw BenchFailure("the direct client failed (\(p.terminationStatus)): \(String(decoding: data.prefix(200), as: UTF8.self))")
        }
        return o
    }
}

/// The bench's upstreams: Python HTTP and HTTPS servers on 127.0.0.1 with a CA of its own.
final class EgressBenchServer {
    let caFile: String
    private(set) var httpPort = 0
    private(set) var httpsPort = 0
    private(set) var relayPort = 0
    private let process = Process()

    static let script = """
        import http.server, os, ssl, sys, threading
        port_file, cert, key = sys.argv[1], sys.argv[2], sys.argv[3]
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def do_GET(self):
                n = int(self.path[5:]) if self.path.startswith("/big/") else 3
                self.send_response(200); self.send_header("Content-Length", str(n)); self.end_headers()
                chunk = b"x" * (1 << 20)
                while n > 0:
                    k = min(n, len(chunk)); self.wfile.write(chunk[:k]); n -= k
            def log_message(self, *a): pass
        ports = []
        for tls in (False, True):
            s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
            if tls:
                c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain(cert, key); s.socket = c.wrap_socket(s.socket, server_side=True)
            ports.append(s.server_address[1]); threading.Thread(target=s.serve_forever, daemon=True).start()
        open(port_file + ".tmp", "w").write("%d %d" % tuple(ports)); os.rename(port_file + ".tmp", port_file)
        threading.Event().wait()
        """

    init(dir: String) throws {
        caFile = dir + "/ca.pem"
        let sh = """
            set -e; cd '\(dir)'
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" \
              -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
            openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout srv.key -out srv.csr -subj "/CN=localhost" 2>/dev/null
            printf "subjectAltName=DNS:localhost,IP:127.0.0.1\\nextendedKeyUsage=serverAuth\\n" > ext.cnf
            openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf 2>/dev/null
            """
        let gen = Process()
        gen.executableURL = URL(fileURLWithPath: "/bin/sh")
        gen.arguments = ["-c", sh]
        try gen.run()
        gen.waitUntilExit()
        guard gen.terminationStatus == 0 else { throw BenchFailure("openssl could not make the bench's CA and certificate") }
        try Self.script.write(toFile: dir + "/server.py", atomically: true, encoding: .utf8)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [dir + "/server.py", dir + "/ports", dir + "/srv.pem", dir + "/srv.key"]
        try process.run()
        for _ in 0..<250 {
            if let t = try? String(contentsOfFile: dir + "/ports", encoding: .utf8) {
                let p = t.split(separator: " ").compactMap { Int($0) }
                if p.count == 2 {
                    (httpPort, httpsPort) = (p[0], p[1])
                    try startRelay(dir: dir)
                    return
                }
            }
            usleep(20_000)
        }
        throw BenchFailure("the bench's upstream servers did not start")
    }

    /// A bare relay to the HTTP upstream in this process: accept, then the proxy's own kernel
    /// relay (cp_splice.h) connects and splices, with no parsing, policy or event loop around
    /// it: what the relay alone achieves here, beside the proxy.
    private func startRelay(dir: String) throws {
        guard let engine = cp_relay_engine_start() else { throw BenchFailure("the bare relay's thread did not start") }
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listener, $0, len) == 0 && listen(listener, 64) == 0 && getsockname(listener, $0, &len) == 0
            }
        }
        guard ok else { throw BenchFailure("the bare relay cannot listen: \(String(cString: strerror(errno)))") }
        relayPort = Int(UInt16(bigEndian: addr.sin_port))
        let upstreamPort = UInt16(httpPort)
        let relayEngine = RelayEngine(engine)
        let thread = Thread {
            var id: UInt64 = 0
            while true {
                let c = accept(listener, nil, nil)
                if c < 0 { if errno == EINTR { continue } else { return } }
                _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK)
                var one: Int32 = 1
                setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                id += 1
                let address: [UInt8] = [127, 0, 0, 1]
                _ = address.withUnsafeBufferPointer { a in
                    var spec = cp_relay_spec(
                        id: id, client_fd: c, upstream_fd: -1, address: a.baseAddress, address_len: 4, port: upstreamPort, to_upstream: nil,
                        to_upstream_len: 0, to_client: nil, to_client_len: 0, fail_status_lines: nil, fail_message: nil, connect_ms: 10000,
                        idle_ms: 60000)
                    return cp_relay_start(relayEngine.pointer, &spec)
                }
                // The ends are not read: the bench's process is gone before they matter.
            }
        }
        thread.start()
    }

    func stop() {
        if process.isRunning { process.terminate(); process.waitUntilExit() }
    }
}

/// The bare relay's engine, handed to its accept thread.
private final class RelayEngine: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
}
