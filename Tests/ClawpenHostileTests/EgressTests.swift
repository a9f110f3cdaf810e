import ClawpenTestSupport
import Foundation
import XCTest

/// The egress proxy and secret substitution, end to end, all on this machine's loopback: jobs
/// in sandboxed workers reach upstream servers on 127.0.0.1 (the test's own, with its own CA)
/// only through the proxy, which the supervisor's listener in their namespace leads to.
/// 127.0.0.1 is itself a restricted range, so the tenants allow it by address explicitly.
final class EgressTests: XCTestCase {
    var daemon: Daemon!
    var up: EgressUpstreams!
    let secret = "sk-test-0123456789-REAL-VALUE-abcdef"
    /// A port on 127.0.0.1 where nothing listens (bound once, then closed).
    var closedPort = 0

    override func tearDown() {
        daemon?.cleanup()
        up?.stop()
    }

    func start() throws {
        try XCTSkipUnless(geteuid() == 0, "the sandbox (and a network namespace per worker) needs root")
        let dir = try Daemon.tempDir()
        up = try EgressUpstreams(dir: dir)
        let (h, s, o) = (up.httpPort, up.httpsPort, up.otherPort)
        closedPort = try XCTUnwrap(Loopback.unusedPort())
        let z = closedPort
        let allowed = [h, s, o].flatMap { ["\"localhost:\($0)\"", "\"127.0.0.1:\($0)\""] }.joined(separator: ", ")
        let pol = try Daemon.policiesWithOverrides(
            in: dir,
            [
                "a": """
                network = "egress"

                [egress]
                allow = [\(allowed)]

                [secrets.KEY]
                env = "API_KEY"
                hosts = ["localhost:\(h)", "localhost:\(s)"]
                # The plain-HTTP upstream is on loopback: clear text is what this test wants.
                allow_plain_http = true

                [secrets.TLSKEY]
                env = "TLS_KEY"
                hosts = ["localhost:\(h)", "localhost:\(s)"]

                [secrets.DB]
                env = "DB_PASSWORD"
                expose = "env"
                commands = ["/usr/bin/printenv"]
                """,
                // Allowed to a port where nothing listens; two connections at most.
                "u": "network = \"egress\"\negress_max_connections = 2\n\n[egress]\nallow = [\"localhost:\(z)\", \"127.0.0.1:\(z)\"]\n",
                // A name leading to loopback, with no rule for the address.
                "r": "network = \"egress\"\n\n[egress]\nallow = [\"localhost:\(h)\"]\n",
                "l": "network = \"loopback\"\n",
                "c": "network = \"egress\"\negress_max_connections = 3\n\n[egress]\nallow = [\"localhost:\(h)\", \"127.0.0.1:\(h)\"]\n",
                // Few connections, and a secret for the HTTPS host: its requests are intercepted.
                "d": """
                network = "egress"
                egress_max_connections = 4

                [egress]
                allow = [\(allowed)]

                [secrets.KEY]
                env = "API_KEY"
                hosts = ["localhost:\(s)"]
                """,
            ])
        daemon = try Daemon(extraArgs: ["--egress-ca-file", up.caFile], dir: dir, policies: pol).start()
        try daemon.createTenant("a", tier: "pro")
        try daemon.createTenant("b", tier: "pro")
        try daemon.createTenant("r", tier: "pro")
        try daemon.createTenant("n")
        try daemon.createTenant("l")
        try daemon.createTenant("c", tier: "pro")
        try daemon.createTenant("d", tier: "pro")
        try daemon.createTenant("u", tier: "pro")
        try daemon.assertSandboxed("a")
        for (name, value) in [("KEY", secret), ("DB", "db-" + secret), ("TLSKEY", "tls-" + secret)] {
            let put = try runCLI(["secret", "put", "a", name, "--from-stdin"], socket: daemon.socket, stdin: value)
            XCTAssertEqual(put.status, 0, put.stderr)
        }
    }

    /// An allowed upstream that cannot be reached: the job hears a 502 that says why and by
    /// which rule, for a plain request and a CONNECT alike (no 200 first); each is audited as
    /// a refusal, and none keeps its connection slot (more attempts than the tenant's
    /// egress_max_connections all get the 502, none a 503).
    func testAnUpstreamThatCannotBeReachedIsA502ThatSaysWhy() throws {
        try start()
        let z = closedPort
        let job = try sh(
            "u",
            "for i in 1 2 3 4 5; do curl --noproxy '' -sS -i http://localhost:\(z)/x; echo; done; curl --noproxy '' -sS https://localhost:\(z)/ 2>&1; echo rc=$?"
        )
        XCTAssertEqual(job.stdout.components(separatedBy: "HTTP/1.1 502 Bad Gateway").count - 1, 5, job.stdout)
        XCTAssertEqual(job.stdout.components(separatedBy: "X-Clawpen-Rule: upstream").count - 1, 5, job.stdout)
        XCTAssertTrue(job.stdout.contains("clawpen egress: cannot reach localhost:\(z) (127.0.0.1): Connection refused"), job.stdout)
        XCTAssertFalse(job.stdout.contains("503"), "a failed connection kept its slot: \(job.stdout)")
        XCTAssertTrue(
            job.stdout.contains("CONNECT tunnel failed, response 502") && job.stdout.contains("rc=56"), "CONNECT answered 502, not 200: \(job.stdout)")
        // The proxy's reports come on their own channel, a moment after the job's end.
        // Denials are coalesced per window in the audit; the counter has each of them.
        XCTAssertTrue(try daemon.eventually { try daemon.tenantStatus("u")["egress"]?["requests_denied"]?.intValue == 6 })
        let audit = try audit("u")
        XCTAssertTrue(audit.contains("egress.denied") && audit.contains("upstream") && audit.contains("port=\(z)"), audit)
    }

    func sh(_ tenant: String, _ script: String) throws -> JobView { try daemon.run(tenant, ["sh", "-c", script], timeout: 60) }

    func audit(_ tenant: String) throws -> String { try runCLI(["audit", "--tenant", tenant, "--limit", "1000"], socket: daemon.socket).stdout }

    func testAnAllowedTenantReachesHTTPAndHTTPSWithTheRealSecretWhileTheSandboxHoldsOnlyThePlaceholder() throws {
        try start()
        let (h, s) = (up.httpPort, up.httpsPort)
        let job = try sh(
            "a",
            """
            echo "env:$API_KEY"
            cat /proc/self/environ | tr '\\0' '\\n' | grep '^API_KEY='
            curl --noproxy '' -sS -H "Authorization: Bearer $API_KEY" http://localhost:\(h)/curl-http
            curl --noproxy '' -sS -H "Authorization: Bearer $API_KEY" https://localhost:\(s)/curl-https
            unset no_proxy NO_PROXY
            python3 - <<'PY'
            import os, urllib.request
            for url in ("http://localhost:\(h)/py-http", "https://localhost:\(s)/py-https"):
                req = urllib.request.Request(url, headers={"Authorization": "Bearer " + os.environ["API_KEY"]})
                print(urllib.request.urlopen(req, timeout=20).read().decode().strip())
            PY
            """)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let placeholder = try XCTUnwrap(job.stdout.split(separator: "\n").first?.dropFirst(4)).description
        XCTAssertTrue(placeholder.hasPrefix("clawpen-ph-"), job.stdout)
        XCTAssertTrue(job.stdout.contains("API_KEY=\(placeholder)\n"), "/proc/self/environ holds the placeholder: \(job.stdout)")
        XCTAssertFalse(job.stdout.contains(secret) || job.stderr.contains(secret), "the value never enters the sandbox: \(job.stdout)")
        // The upstream got the value, for each client and scheme.
        for path in ["/curl-http", "/curl-https", "/py-http", "/py-https"] {
            XCTAssertTrue(up.received.contains("\(path) Bearer \(secret)\n"), "\(path): \(up.received)")
        }
        let a = try audit("a")
        XCTAssertTrue(a.contains("secret.used") && a.contains("KEY") && a.contains("host=localhost port=\(s)"), a)
        XCTAssertFalse(a.contains(secret))
        let eg = try daemon.tenantStatus("a")["egress"]
        XCTAssertEqual(eg?["proxy"]?.stringValue, "http://127.0.0.1:3128")
        XCTAssertGreaterThanOrEqual(eg?["requests_allowed"]?.intValue ?? 0, 4)
        XCTAssertGreaterThan(eg?["bytes_down"]?.intValue ?? 0, 0)
        XCTAssertGreaterThanOrEqual(eg?["secrets_used"]?.intValue ?? 0, 4)
        // The same counters as metrics (reports come in 10 ms batches: at least what status saw).
        let metrics = try PrometheusText(parsing: try runCLI(["metrics"], socket: daemon.socket).stdout)
        let seen = [
            metrics.value("clawpen_egress_requests_total", ["tenant": "a", "decision": "allowed"]),
            metrics.value("clawpen_egress_bytes_total", ["tenant": "a", "direction": "down"]),
            metrics.value("clawpen_egress_secret_uses_total", ["tenant": "a"]),
        ]
        for (value, key) in zip(seen, ["requests_allowed", "bytes_down", "secrets_used"]) {
            XCTAssertGreaterThanOrEqual(value ?? -1, Double(eg?[key]?.intValue ?? 0), key)
        }
        // A running job's environment, read from the host, holds the placeholder too.
        let waiting = try daemon.detach("a", ["sleep", "30"], timeout: 60)
        var environ = ""
        XCTAssertTrue(
            daemon.eventually(10) {
                for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int(pid) != nil {
                    guard let cmd = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8), cmd.hasPrefix("sleep\u{0}30"),
                        let env = FileManager.default.contents(atPath: "/proc/\(pid)/environ")
                    else { continue }
                    environ = String(decoding: env, as: UTF8.self)
                    if environ.contains("API_KEY=") { return true }
                }
                return false
            })
        XCTAssertTrue(environ.contains("API_KEY=\(placeholder)"), environ)
        XCTAssertFalse(environ.contains(secret))
        _ = try runCLI(["job", "cancel", waiting.id], socket: daemon.socket)
        // Nothing the daemon wrote holds the value: the store (and its WAL), the log, the state dir.
        XCTAssertEqual(filesContain(daemon.stateDir, secret), [], "state dir")
        XCTAssertFalse(daemon.log.contains(secret), "daemon log")
        let st = try runCLI(["status", "--json"], socket: daemon.socket)
        XCTAssertFalse(st.stdout.contains(secret))
    }

    func proxyStatus() throws -> JSONValue { try XCTUnwrap(try daemon.status()["supervisor"]?["egress"]) }

    /// The proxy is killed under a running worker: the supervisor starts it again after a short
    /// back-off, status says so, and the same worker's jobs get egress again (a new listener in
    /// its namespace, its tenant's allowlist and secrets pushed again).
    func testAProxyThatDiesIsRestartedAndEgressComesBack() throws {
        try start()
        let h = up.httpPort, s = up.httpsPort
        let fetch = { (path: String) in
            "curl --noproxy '' -sS -m 10 -H \"Authorization: Bearer $API_KEY\" http://localhost:\(h)/\(path); curl --noproxy '' -sS -m 10 -H \"Authorization: Bearer $API_KEY\" https://localhost:\(s)/\(path)-tls"
        }
        XCTAssertEqual(try sh("a", fetch("before")).state, .succeeded)
        let worker = try daemon.tenantStatus("a")["worker_pid"]?.intValue
        let first = try proxyStatus()
        XCTAssertEqual(first["state"]?.stringValue, "running", "\(first)")
        XCTAssertEqual(first["restarts"]?.intValue, 0)
        let pid = try XCTUnwrap(first["pid"]?.intValue)
        // Only ever the daemon's own proxy: its name and its uid (not root) are checked first.
        let comm = try String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)
        XCTAssertEqual(comm, "clawpen-egress\n")
        let statusLine = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8).split(separator: "\n").first { $0.hasPrefix("Uid:") }
        XCTAssertFalse(statusLine?.split(separator: "\t").dropFirst().contains("0") ?? true, "\(statusLine ?? "")")
        XCTAssertEqual(kill(pid_t(pid), SIGKILL), 0)
        var after: JSONValue = .null
        XCTAssertTrue(
            try daemon.eventually(20) {
                after = try proxyStatus()
                return after["state"]?.stringValue == "running" && after["restarts"]?.intValue == 1
            }, "the proxy came back: \(after)")
        XCTAssertNotEqual(after["pid"]?.intValue, pid)
        XCTAssertTrue(after["last_exit"]?.stringValue?.contains("signal 9") ?? false, "\(after)")
        let job = try sh("a", fetch("after"))
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("path=/after") && job.stdout.contains("path=/after-tls"), job.stdout + job.stderr)
        XCTAssertTrue(up.received.contains("/after Bearer \(secret)\n") && up.received.contains("/after-tls Bearer \(secret)\n"), up.received)
        XCTAssertEqual(try daemon.tenantStatus("a")["worker_pid"]?.intValue, worker, "the same worker: its listener was handed to the new proxy")
        XCTAssertTrue(daemon.log.contains("egress proxy exited; restarting it"), daemon.log)
    }

    /// While the proxy is down, a job may take 127.0.0.1:3128 in its own namespace (it only
    /// fools itself: the namespace is its tenant's). The restarted proxy's listener cannot be
    /// made then (EADDRINUSE); it is tried again every 100 ms, status says so meanwhile, and
    /// once the job lets go the tenant's requests go through the real proxy again, from the
    /// same worker.
    func testAProxyPortHeldByAJobIsTriedAgainUntilItIsFree() throws {
        try start()
        let h = up.httpPort
        XCTAssertEqual(try sh("c", "curl --noproxy '' -sS http://localhost:\(h)/before").state, .succeeded)
        let worker = try daemon.tenantStatus("c")["worker_pid"]?.intValue
        let squatter = try daemon.detach(
            "c",
            [
                "python3", "-c",
                """
                import socket, time
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                deadline = time.time() + 20
                while True:
                    try:
                        s.bind(("127.0.0.1", 3128)); s.listen(1); break
                    except OSError:
                        if time.time() > deadline: raise
                        time.sleep(0.002)
                print("held", flush=True)
                time.sleep(1.5)
                s.close()
                """,
            ])
        XCTAssertTrue(try daemon.eventually(10) { try daemon.connect().job(.jobGet(jobID: squatter.id)).job.state == .running })
        let pid = try XCTUnwrap(try proxyStatus()["pid"]?.intValue)
        XCTAssertEqual(try String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8), "clawpen-egress\n")
        XCTAssertEqual(kill(pid_t(pid), SIGKILL), 0)
        // The operator's view meanwhile: which tenant has no way out, and why.
        var text = ""
        XCTAssertTrue(
            daemon.eventually(5) {
                text = (try? runCLI(["status"], socket: daemon.socket).stdout) ?? ""
                return text.contains("c: NO EGRESS: cannot listen on 127.0.0.1:3128 in the worker's network namespace (Address already in use)")
            }, text)
        let held = try daemon.connect().job(.jobWait(jobID: squatter.id)).job
        XCTAssertEqual(held.state, .succeeded, held.stderr)
        XCTAssertEqual(held.stdout, "held\n", "the job took the port while the proxy was down")
        XCTAssertTrue(daemon.log.contains("Address already in use"), daemon.log.suffix(3000).description)
        var job: JobView?
        XCTAssertTrue(
            try daemon.eventually(10) {
                job = try sh("c", "curl --noproxy '' -sS http://localhost:\(h)/after")
                return job?.stdout.contains("path=/after") ?? false
            }, "\(job?.stdout ?? "") \(job?.stderr ?? "") \(daemon.log.suffix(3000))")
        XCTAssertNil(try daemon.tenantStatus("c")["egress"]?["unavailable"]?.stringValue)
        XCTAssertEqual(try daemon.tenantStatus("c")["worker_pid"]?.intValue, worker, "the same worker")
        text = try runCLI(["status"], socket: daemon.socket).stdout
        XCTAssertTrue(text.contains("egress: proxy running (pid ") && text.contains(", 1 restart(s)), 6 egress tenant(s)"), text)
        XCTAssertFalse(text.contains("NO EGRESS"), text)
    }

    /// The tenant's CA is kept in the state dir, its key sealed with the tenant's data key: a
    /// restart of the daemon gives the sandbox the same CA, and HTTPS with substitution works
    /// with it (the proxy signs with the stored key).
    func testTheTenantCAOutlivesARestartOfTheDaemon() throws {
        try start()
        let s = up.httpsPort
        let before = try sh("a", "cat /etc/clawpen-egress-ca.pem")
        XCTAssertTrue(before.stdout.hasPrefix("-----BEGIN CERTIFICATE-----"), before.stdout)
        let keyFile = daemon.stateDir + "/egress/a-ca.key"
        let attributes = try FileManager.default.attributesOfItem(atPath: keyFile)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        let sealed = try XCTUnwrap(FileManager.default.contents(atPath: keyFile))
        XCTAssertTrue(sealed.starts(with: Array("clawpen-egress-ca-key v1 key_version=".utf8)))
        XCTAssertNil(sealed.range(of: Data("PRIVATE KEY".utf8)), "the key is sealed, not a PEM")
        daemon.stop()
        try daemon.start()
        let after = try sh(
            "a", "cat /etc/clawpen-egress-ca.pem; curl --noproxy '' -sS -m 10 -H \"Authorization: Bearer $API_KEY\" https://localhost:\(s)/restarted")
        XCTAssertEqual(after.state, .succeeded, after.stderr)
        XCTAssertTrue(after.stdout.hasPrefix(before.stdout), "the same CA after the restart:\n\(before.stdout)\n\(after.stdout)")
        XCTAssertTrue(after.stdout.contains("path=/restarted"), after.stdout + after.stderr)
        XCTAssertTrue(up.received.contains("/restarted Bearer \(secret)\n"), up.received)
        // A key file that does not open (here: altered) is replaced by a new CA, and said so.
        daemon.stop()
        var altered = [UInt8](sealed)
        altered[altered.count - 1] ^= 0xFF
        try Data(altered).write(to: URL(fileURLWithPath: keyFile))
        try daemon.start()
        let third = try sh("a", "cat /etc/clawpen-egress-ca.pem")
        XCTAssertNotEqual(third.stdout, before.stdout, "a new CA")
        XCTAssertTrue(daemon.log.contains("cannot open the tenant's stored egress CA"), daemon.log)
    }

    func testThePlaceholderSentToAHostNotInTheSecretsListArrivesUnreplaced() throws {
        try start()
        let job = try sh("a", "curl --noproxy '' -sS -H \"Authorization: Bearer $API_KEY\" http://localhost:\(up.otherPort)/other")
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("path=/other"), job.stdout)
        XCTAssertTrue(up.received.contains("/other Bearer clawpen-ph-"), "the placeholder itself arrived: \(up.received)")
        XCTAssertFalse(up.received.contains(secret), up.received)
    }

    func testATenantWithoutTheRuleIsRefusedAndAudited() throws {
        try start()
        let job = try sh(
            "b", "curl --noproxy '' -sS -i http://localhost:\(up.httpPort)/x; curl --noproxy '' -sS https://localhost:\(up.httpsPort)/y; echo rc=$?")
        XCTAssertTrue(job.stdout.contains("403 Forbidden") && job.stdout.contains("X-Clawpen-Rule: default deny"), job.stdout)
        XCTAssertTrue(job.stdout.contains("rc=56"), "CONNECT refused: curl fails: \(job.stdout) \(job.stderr) \(daemon.log.suffix(3000))")
        XCTAssertEqual(up.received, "", "nothing reached the upstream")
        // The proxy's reports come on their own channel, a moment after the job's end (under
        // load, after this point: the test read them at once and failed now and then).
        XCTAssertTrue(try daemon.eventually { try daemon.tenantStatus("b")["egress"]?["requests_denied"]?.intValue == 2 })
        let b = try audit("b")
        XCTAssertTrue(b.contains("egress.denied") && b.contains("default deny") && b.contains("host=localhost port=\(up.httpPort)"), b)
        let metrics = try PrometheusText(parsing: try runCLI(["metrics"], socket: daemon.socket).stdout)
        XCTAssertEqual(metrics.value("clawpen_egress_requests_total", ["tenant": "b", "decision": "denied"]), 2)
        XCTAssertEqual(metrics.value("clawpen_egress_requests_total", ["tenant": "b", "decision": "allowed"]), 0)
        XCTAssertEqual(metrics.value("clawpen_egress_proxy_up", [:]), 1)
        let explain = try runCLI(["policy", "explain", "--tenant", "b", "--url", "http://localhost:\(up.httpPort)/", "--json"], socket: daemon.socket)
        XCTAssertEqual(explain.status, 77)
        XCTAssertTrue(explain.stdout.contains("\"rule\":\"default deny\""), explain.stdout)
        let ok = try runCLI(["policy", "explain", "--tenant", "a", "--url", "https://localhost:\(up.httpsPort)/v1"], socket: daemon.socket)
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("ALLOWED") && ok.stdout.contains("secret KEY") && ok.stdout.contains("substituted here"), ok.stdout)
        XCTAssertTrue(ok.stdout.contains("secret DB") && ok.stdout.contains("weaker"), "expose = env is called weaker: \(ok.stdout)")
    }

    func testANameLeadingToLoopbackAndTheHostsOwnAddressesAreRefusedUnlessAllowedByAddress() throws {
        try start()
        let job = try sh(
            "r",
            "curl --noproxy '' -sS -i http://localhost:\(up.httpPort)/name; curl --noproxy '' -sS -i http://127.0.0.1:\(up.httpPort)/ip; curl --noproxy '' -sS -i http://169.254.169.254/latest/meta-data/"
        )
        let rules = job.stdout.split(separator: "\r\n").filter { $0.hasPrefix("X-Clawpen-Rule: ") }
        XCTAssertEqual(
            rules, ["X-Clawpen-Rule: ssrf 127.0.0.0/8", "X-Clawpen-Rule: ssrf 127.0.0.0/8", "X-Clawpen-Rule: ssrf 169.254.0.0/16"],
            "the name, the address and the metadata service: \(job.stdout)")
        XCTAssertFalse(job.stdout.contains("path="), "nothing got through: \(job.stdout)")
        XCTAssertEqual(up.received, "")
        let r = try audit("r")
        XCTAssertTrue(r.contains("ssrf 127.0.0.0/8") && r.contains("host=localhost"), r)
        // Tenant a names 127.0.0.1 for the port: the same name gets through.
        XCTAssertTrue(try sh("a", "curl --noproxy '' -sS http://localhost:\(up.httpPort)/named").stdout.contains("path=/named"))
    }

    func testNoneAndLoopbackTenantsHaveNoProxy() throws {
        try start()
        for t in ["n", "l"] {
            let job = try sh(t, "env | grep -ci proxy; curl --noproxy '' -sS -m 5 -x http://127.0.0.1:3128 http://localhost:\(up.httpPort)/; echo rc=$?")
            XCTAssertTrue(job.stdout.hasPrefix("0\n"), "\(t): no proxy variables: \(job.stdout)")
            XCTAssertTrue(job.stdout.contains("rc=7") || job.stdout.contains("rc=28"), "\(t): nothing listens on 3128: \(job.stdout) \(job.stderr)")
            XCTAssertEqual(try daemon.tenantStatus(t)["egress"], .null)
        }
        XCTAssertEqual(up.received, "")
    }

    func testAReloadChangesAllowlistsAndListenersOfRunningWorkers() throws {
        try start()
        let url = "http://localhost:\(up.httpPort)/reloaded"
        let curl = "curl --noproxy '' -sS -i -m 10 -x http://127.0.0.1:3128 \(url); echo rc=$?"
        XCTAssertTrue(try sh("b", curl).stdout.contains("403"), "b's allowlist is empty")
        XCTAssertTrue(try sh("n", curl).stdout.contains("rc=7"), "n has no proxy")
        let workers = try ["b", "n"].map { try daemon.tenantStatus($0)["worker_pid"]?.intValue }
        let rule = "[egress]\nallow = [\"localhost:\(up.httpPort)\", \"127.0.0.1:\(up.httpPort)\"]\n"
        try ("network = \"egress\"\n\n" + rule).write(toFile: daemon.policies + "/tenants/b.toml", atomically: true, encoding: .utf8)
        try ("network = \"egress\"\n\n" + rule).write(toFile: daemon.policies + "/tenants/n.toml", atomically: true, encoding: .utf8)
        let reload = try runCLI(["policy", "reload"], socket: daemon.socket)
        XCTAssertEqual(reload.status, 0, reload.stderr)
        for t in ["b", "n"] {
            let job = try sh(t, "env | grep -c '^HTTP_PROXY='; " + curl)
            XCTAssertTrue(job.stdout.hasPrefix("1\n") && job.stdout.contains("path=/reloaded"), "\(t) after the reload: \(job.stdout) \(job.stderr)")
        }
        XCTAssertEqual(try ["b", "n"].map { try daemon.tenantStatus($0)["worker_pid"]?.intValue }, workers, "the same workers")
    }

    func testALargeDownloadArrivesWholeThroughEachPath() throws {
        try start()
        let n = 48 << 20
        let (h, s) = (up.httpPort, up.httpsPort)
        let script = [
            "curl --noproxy '' -sS http://localhost:\(h)/big/\(n) | wc -c",
            "curl --noproxy '' -sS https://localhost:\(s)/big/\(n) | wc -c",
            "curl --noproxy '' -sS -k https://127.0.0.1:\(s)/big/\(n) | wc -c",
        ]
        let job = try sh("a", script.joined(separator: "\n"))
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertEqual(job.stdout, "\(n)\n\(n)\n\(n)\n", "plain, intercepted and tunneled: every byte, the last ones too")
        // Counted when each connection ends, which the proxy reports a moment after the job saw it.
        XCTAssertTrue(daemon.eventually { ((try? daemon.tenantStatus("a"))?["egress"]?["bytes_down"]?.intValue ?? 0) >= Int64(3 * n) })
    }

    func testExposeEnvPutsTheValueInTheListedCommandsEnvironmentOnly() throws {
        try start()
        XCTAssertEqual(try daemon.run("a", ["/usr/bin/printenv", "DB_PASSWORD"]).stdout, "db-\(secret)\n")
        XCTAssertEqual(try daemon.run("a", ["printenv", "DB_PASSWORD"]).stdout, "db-\(secret)\n", "found by the fixed PATH")
        let other = try sh("a", "echo \"[$DB_PASSWORD]\"")
        XCTAssertEqual(other.stdout, "[]\n", "any other command gets nothing")
    }

    func testMalformedFloodedAndSlowClientsCostTheProxyNothingLasting() throws {
        try start()
        let script = """
            import socket, time
            def ask(data, wait=15):
                s = socket.create_connection(("127.0.0.1", 3128), timeout=wait)
                out = b""
                try:
                    s.sendall(data)
                    while True:
                        b = s.recv(65536)
                        if not b: break
                        out += b
                except socket.timeout:
                    out += b"<timeout>"
                except ConnectionResetError:
                    # Refused before it had read everything: the kernel resets what was unread.
                    out = out or b"<reset>"
                return out.split(b"\\r\\n")[0].decode()
            slow = socket.create_connection(("127.0.0.1", 3128), timeout=30)
            slow.sendall(b"GET http://localhost:\(up.httpPort)/ HTTP/1.1\\r\\n")
            t0 = time.time()
            print("malformed", ask(b"GARBAGE\\r\\n\\r\\n"))
            print("flood", ask(b"GET http://localhost:\(up.httpPort)/ HTTP/1.1\\r\\n" + b"".join(b"X-%d: y\\r\\n" % i for i in range(200)) + b"\\r\\n"))
            print("huge", ask(b"GET http://localhost:\(up.httpPort)/ HTTP/1.1\\r\\nX: " + b"a" * 40000 + b"\\r\\n\\r\\n"))
            print("served meanwhile", ask(b"GET http://localhost:\(up.httpPort)/ok HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"), round(time.time() - t0) < 8)
            first = b""
            while True:
                b = slow.recv(4096)
                if not b: break
                first += b
            print("slow", first.split(b"\\r\\n")[0].decode(), round(time.time() - t0))
            """
        let job = try daemon.run("a", ["python3", "-c", script], timeout: 60)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("malformed HTTP/1.1 400 Bad Request"), job.stdout)
        XCTAssertTrue(job.stdout.contains("flood HTTP/1.1 431"), job.stdout)
        XCTAssertTrue(job.stdout.contains("huge HTTP/1.1 431") || job.stdout.contains("huge <reset>"), job.stdout)
        XCTAssertTrue(job.stdout.contains("served meanwhile HTTP/1.1 200 OK True"), "a slow client blocks no one: \(job.stdout)")
        XCTAssertTrue(job.stdout.contains("slow HTTP/1.1 408 Request Timeout"), "the slow one is cut off: \(job.stdout)")
        // And the proxy still serves afterwards.
        XCTAssertTrue(try sh("a", "curl --noproxy '' -sS http://localhost:\(up.httpPort)/after").stdout.contains("path=/after"))
    }

    /// The pid of the daemon's clawpen-egress.
    func proxyPID() -> String? {
        let pids = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter { Int($0) != nil }
        return pids.first { pid in
            guard let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe") else { return false }
            guard exe.hasSuffix("/clawpen-egress"), let st = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
            return st.contains("PPid:\t\(daemon.pid)\n")
        }
    }

    func testTheProxyRunsConfinedAsItsOwnUser() throws {
        try start()
        let proxy = try XCTUnwrap(proxyPID(), "the daemon's clawpen-egress")
        let status = try String(contentsOfFile: "/proc/\(proxy)/status", encoding: .utf8)
        XCTAssertTrue(status.contains("Uid:\t199999\t199999\t199999\t199999"), status)
        XCTAssertTrue(status.contains("NoNewPrivs:\t1"), status)
        XCTAssertTrue(status.contains("Seccomp:\t2"), status)
        XCTAssertTrue(status.contains("CapEff:\t0000000000000000") && status.contains("CapBnd:\t0000000000000000"), status)
        for ns in ["mnt", "ipc", "pid"] {
            XCTAssertNotEqual(
                try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(proxy)/ns/\(ns)"),
                try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(ns)"), ns)
        }
        // Its root holds no state dir, no workspaces, no /proc.
        let root = "/proc/\(proxy)/root"
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + daemon.stateDir))
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + daemon.workspaceRoot))
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/proc/self"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/etc/hosts"))
    }

    // MARK: Hardening (each test fails on the proxy before its fix)

    /// Python in the job: `raw(bytes)` sends bytes to the proxy and returns its first line;
    /// `inside(host, port, bytes)` does CONNECT, TLS with the sandbox's trust store, then sends
    /// bytes inside and returns the first line of the answer.
    func pythonClient(_ body: String) -> String {
        """
        import os, socket, ssl
        def first(out): return out.split(b"\\r\\n")[0].decode(errors="replace") or "<nothing>"
        def drain(s):
            out = b""
            try:
                while True:
                    b = s.recv(65536)
                    if not b: break
                    out += b
            except (ssl.SSLError, ConnectionResetError, socket.timeout, OSError):
                pass
            return out
        def raw(data):
            s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
            s.sendall(data)
            return first(drain(s))
        def inside(host, port, data):
            s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
            s.sendall(b"CONNECT %s:%d HTTP/1.1\\r\\nHost: %s:%d\\r\\n\\r\\n" % (host.encode(), port, host.encode(), port))
            head = b""
            while b"\\r\\n\\r\\n" not in head: head += s.recv(1)
            t = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"]).wrap_socket(s, server_hostname=host)
            t.sendall(data)
            return first(drain(t))
        PH = os.environ.get("API_KEY", "").encode()
        \(body)
        """
    }

    func testASecretGoesOverPlainHTTPToANameOnlyWithAllowPlainHTTP() throws {
        try start()
        let (h, s) = (up.httpPort, up.httpsPort)
        let job = try sh(
            "a",
            """
            curl --noproxy '' -sS -i -H "Authorization: Bearer $TLS_KEY" http://localhost:\(h)/plain-tls-key
            curl --noproxy '' -sS -H "Authorization: Bearer $TLS_KEY" https://localhost:\(s)/tls-key
            curl --noproxy '' -sS http://localhost:\(h)/no-placeholder
            """)
        XCTAssertTrue(job.stdout.contains("403 Forbidden") && job.stdout.contains("X-Clawpen-Rule: secret plain http"), job.stdout)
        XCTAssertFalse(up.received.contains("/plain-tls-key"), "nothing went out in clear text: \(up.received)")
        XCTAssertTrue(up.received.contains("/tls-key Bearer tls-\(secret)\n"), "inside TLS it is substituted: \(up.received)")
        XCTAssertTrue(job.stdout.contains("path=/no-placeholder"), "a request without the placeholder needs no secret: \(job.stdout)")
        XCTAssertTrue(try audit("a").contains("secret plain http"))
        let explain = try runCLI(["policy", "explain", "--tenant", "a", "--url", "http://localhost:\(h)/"], socket: daemon.socket)
        XCTAssertTrue(explain.stdout.contains("allow_plain_http"), explain.stdout)
    }

    func testInsideTheInterceptOnlyOriginFormToItsOneHostGetsThrough() throws {
        try start()
        let (s, o) = (up.httpsPort, up.otherPort)
        let script = pythonClient(
            """
            print("absolute", inside("localhost", \(s), b"GET http://127.0.0.1:\(o)/abs HTTP/1.1\\r\\nHost: localhost:\(s)\\r\\nAuthorization: Bearer " + PH + b"\\r\\n\\r\\n"))
            print("two-hosts", inside("localhost", \(s), b"GET /dup HTTP/1.1\\r\\nHost: localhost:\(s)\\r\\nHost: 127.0.0.1:\(o)\\r\\nAuthorization: Bearer " + PH + b"\\r\\n\\r\\n"))
            print("bad-host", inside("localhost", \(s), b"GET /bad HTTP/1.1\\r\\nHost: localhost:x\\r\\nAuthorization: Bearer " + PH + b"\\r\\n\\r\\n"))
            print("ok", inside("localhost", \(s), b"GET /ok HTTP/1.1\\r\\nHost: localhost:\(s)\\r\\nAuthorization: Bearer " + PH + b"\\r\\n\\r\\n"))
            """)
        let job = try daemon.run("a", ["python3", "-c", script], timeout: 60)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("absolute HTTP/1.1 400"), job.stdout)
        XCTAssertTrue(job.stdout.contains("two-hosts HTTP/1.1 400"), job.stdout)
        XCTAssertTrue(job.stdout.contains("bad-host HTTP/1.1 400"), job.stdout)
        XCTAssertTrue(job.stdout.contains("ok HTTP/1.1 200"), job.stdout)
        XCTAssertFalse(up.received.contains("/abs") || up.received.contains("/dup") || up.received.contains("/bad"), up.received)
        XCTAssertTrue(up.received.contains("/ok Bearer \(secret)\n"), up.received)
        let a = try audit("a")
        XCTAssertTrue(a.contains("origin form") && a.contains("host header"), a)
    }

    func testThePlainHTTPHostIsTheCheckedOneAndTheQueryGoesThrough() throws {
        try start()
        let o = up.otherPort
        let script = pythonClient(
            """
            print("vhost", raw(b"GET http://localhost:\(o)/vh HTTP/1.1\\r\\nHost: other-vhost.example\\r\\n\\r\\n"))
            print("query", raw(b"GET http://localhost:\(o)?next=/x HTTP/1.1\\r\\n\\r\\n"))
            print("query2", raw(b"GET http://localhost:\(o)?q=1 HTTP/1.1\\r\\n\\r\\n"))
            print("two", raw(b"GET http://localhost:\(o)/two HTTP/1.1\\r\\nHost: localhost:\(o)\\r\\nHost: other-vhost.example\\r\\n\\r\\n"))
            """)
        let job = try daemon.run("a", ["python3", "-c", script], timeout: 60)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("vhost HTTP/1.1 200") && job.stdout.contains("query HTTP/1.1 200"), job.stdout)
        XCTAssertTrue(job.stdout.contains("two HTTP/1.1 400"), job.stdout)
        let heads = up.receivedHeads
        XCTAssertTrue(heads.contains("\(o) GET /vh HTTP/1.1\nHost: localhost:\(o)\n"), heads)
        XCTAssertFalse(heads.contains("other-vhost"), "the job's Host never goes upstream: \(heads)")
        XCTAssertTrue(heads.contains("\(o) GET /?next=/x HTTP/1.1\n"), "the query is kept, not taken for the path: \(heads)")
        XCTAssertTrue(heads.contains("\(o) GET /?q=1 HTTP/1.1\n"), heads)
        XCTAssertFalse(heads.contains("/two"), heads)
    }

    func testAPlaceholderOutsideItsSecretsHeadersIsRefused() throws {
        try start()
        let s = up.httpsPort
        let job = try sh(
            "a",
            """
            curl --noproxy '' -sS -i -H "OpenAI-Organization: $API_KEY" https://localhost:\(s)/echo
            curl --noproxy '' -sS -i "https://localhost:\(s)/q?key=$API_KEY"
            curl --noproxy '' -sS -H "X-Api-Key: $API_KEY" https://localhost:\(s)/api-key
            """)
        let rules = job.stdout.split(separator: "\r\n").filter { $0.hasPrefix("X-Clawpen-Rule: ") }
        XCTAssertEqual(rules, ["X-Clawpen-Rule: secret header", "X-Clawpen-Rule: secret header"], job.stdout)
        XCTAssertTrue(job.stdout.contains("path=/api-key"), "a default header gets it: \(job.stdout)")
        XCTAssertFalse(up.received.contains("/echo") || up.received.contains("/q?"), up.received)
        let heads = up.receivedHeads
        XCTAssertTrue(heads.contains("X-Api-Key: \(secret)"), heads)
        XCTAssertFalse(heads.contains("OpenAI-Organization"), heads)
        XCTAssertEqual(heads.components(separatedBy: secret).count, 2, "the value went in X-Api-Key only: \(heads)")
    }

    /// An offboarded tenant's CA goes with it: from the state dir and from memory, so that a
    /// tenant created later under the same name, in the same run of the daemon, gets a new one.
    func testOffboardingRemovesTheTenantsCAAndTheNextOfTheNameGetsANewOne() throws {
        try start()
        // A denied request, so that the tenant has counters to forget.
        _ = try sh("u", "curl --noproxy '' -sS http://localhost:1/ >/dev/null 2>&1; true")
        XCTAssertTrue(try daemon.eventually { (try daemon.tenantStatus("u")["egress"]?["requests_denied"]?.intValue ?? 0) >= 1 })
        let pem = daemon.stateDir + "/egress/u-ca.pem", key = daemon.stateDir + "/egress/u-ca.key"
        XCTAssertTrue(FileManager.default.fileExists(atPath: key))
        let before = try String(contentsOfFile: pem, encoding: .utf8)
        let r = try runCLI(["tenant", "offboard", "u", "--now"], socket: daemon.socket)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pem), "the CA certificate is removed")
        XCTAssertFalse(FileManager.default.fileExists(atPath: key), "the CA key is removed")
        try daemon.createTenant("u", tier: "pro")
        let job = try sh("u", "cat \"$SSL_CERT_FILE\"")
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let after = try String(contentsOfFile: pem, encoding: .utf8)
        XCTAssertNotEqual(before, after, "a new CA for the new tenant of the name")
        XCTAssertFalse(job.stdout.contains(before.trimmingCharacters(in: .whitespacesAndNewlines)), "its sandbox does not trust the old one")
        XCTAssertEqual(try daemon.tenantStatus("u")["egress"]?["requests_denied"]?.intValue ?? 0, 0, "the old tenant's counters are not the new one's")
    }

    func testOneTenantCannotHoldMoreThanItsEgressMaxConnections() throws {
        try start()
        let h = up.httpPort
        let script = """
            import socket, time
            held = []
            for i in range(3):
                s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
                s.sendall(b"GET http://localhost:\(h)/held HTTP/1.1\\r\\n")
                held.append(s)
            time.sleep(0.3)
            # Refused as it is accepted: it reads the answer without sending (unread bytes would
            # make the close a reset).
            s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
            out = b""
            try:
                while True:
                    b = s.recv(4096)
                    if not b: break
                    out += b
            except OSError:
                pass
            print("fourth", out.split(b"\\r\\n")[0].decode(), b"egress_max_connections" in out)
            held.pop().close()
            time.sleep(0.5)
            s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
            s.sendall(b"GET http://localhost:\(h)/after HTTP/1.1\\r\\n\\r\\n")
            print("after", s.recv(4096).split(b"\\r\\n")[0].decode())
            """
        let job = try daemon.run("c", ["python3", "-c", script], timeout: 60)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(job.stdout.contains("fourth HTTP/1.1 503 Service Unavailable True"), job.stdout)
        XCTAssertTrue(job.stdout.contains("after HTTP/1.1 200"), "a closed connection frees its place: \(job.stdout)")
        XCTAssertTrue(try audit("c").contains("egress_max_connections"))
        // Failed once in a full run under load (empty output, cause not found): what curl said
        // and the daemon's log, for the next time.
        let other = try sh("a", "curl --noproxy '' -sS http://localhost:\(h)/other-tenant")
        XCTAssertTrue(other.stdout.contains("path=/other-tenant"), "stdout \(other.stdout) stderr \(other.stderr) \(daemon.log.suffix(3000))")
    }

    /// A connection ends when its exchange does, however the two sides close: the next
    /// request never waits for (or is refused because of) one that is over. Each way of ending
    /// an intercepted HTTPS request (the client reads to the end and closes without
    /// close_notify, as Python's ssl does; it closes as soon as it has the head; it sends
    /// close_notify) and a plain HTTP one, ten times each in a row, under an
    /// egress_max_connections of 4: a connection left open after its exchange (NIOSSL waited
    /// 5 s for a close_notify a closed input cannot bring) fails the fifth. Then none of the
    /// tenant's connections is left in the proxy.
    func testEveryWayOfEndingARequestFreesItsConnectionAtOnce() throws {
        try start()
        let (h, s) = (up.httpPort, up.httpsPort)
        let put = try runCLI(["secret", "put", "d", "KEY", "--from-stdin"], socket: daemon.socket, stdin: secret)
        XCTAssertEqual(put.status, 0, put.stderr)
        let script = pythonClient(
            """
            import time
            ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
            def tls():
                c = socket.create_connection(("127.0.0.1", 3128), timeout=20)
                c.sendall(b"CONNECT localhost:\(s) HTTP/1.1\\r\\nHost: localhost:\(s)\\r\\n\\r\\n")
                head = b""
                while b"\\r\\n\\r\\n" not in head: head += c.recv(1)
                t = ctx.wrap_socket(c, server_hostname="localhost")
                t.sendall(b"GET /end HTTP/1.1\\r\\nHost: localhost:\(s)\\r\\nConnection: close\\r\\n\\r\\n")
                return t
            results = {}
            for way in ["read-to-eof", "close-after-head", "close-notify", "plain-http"]:
                got = []
                for i in range(10):
                    if way == "plain-http":
                        c = socket.create_connection(("127.0.0.1", 3128), timeout=20)
                        c.sendall(b"GET http://localhost:\(h)/end HTTP/1.1\\r\\nHost: localhost:\(h)\\r\\nConnection: close\\r\\n\\r\\n")
                        got.append(first(drain(c))); c.close(); continue
                    t = tls()
                    if way == "close-after-head":
                        got.append(first(t.recv(65536))); t.close(); continue
                    got.append(first(drain(t)))
                    if way == "close-notify":
                        try: t.unwrap()
                        except (ssl.SSLError, OSError): pass
                    t.close()
                results[way] = got
            for way, got in results.items():
                print(way, sum(1 for g in got if g.startswith("HTTP/1.1 200")), "of", len(got), sorted(set(got)))
            """)
        let job = try daemon.run("d", ["python3", "-c", script], timeout: 120)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        for way in ["read-to-eof", "close-after-head", "close-notify", "plain-http"] {
            XCTAssertTrue(job.stdout.contains("\(way) 10 of 10"), "every request of \(way) got its 200: \(job.stdout)")
        }
        XCTAssertFalse(try audit("d").contains("egress_max_connections"), "no request was refused for connections that were over")
        // And no connection to the proxy is left in the tenant's namespace, in any state but
        // TIME-WAIT (the client's side of a connection that ended properly).
        guard let worker = try daemon.tenantStatus("d")["worker_pid"]?.intValue else { return XCTFail("no worker for d") }
        var left = ""
        XCTAssertTrue(
            daemon.eventually(3) {
                left = (try? runHostCommand(["/usr/bin/nsenter", "-t", "\(worker)", "-n", "/usr/bin/ss", "-Htan", "state", "all"])) ?? "ss failed"
                return !left.split(separator: "\n").contains { $0.contains(":3128") && !$0.hasPrefix("LISTEN") && !$0.hasPrefix("TIME-WAIT") }
            }, "the proxy holds no connection of the finished requests: \(left)")
    }

    func testADeniedLoopWritesAFewAuditRowsAndCountsEveryRequest() throws {
        try start()
        let script = pythonClient(
            """
            for i in range(300): raw(b"GET http://localhost:\(up.httpPort)/denied HTTP/1.1\\r\\n\\r\\n")
            print("done")
            """)
        let job = try daemon.run("b", ["python3", "-c", script], timeout: 60)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        XCTAssertTrue(daemon.eventually(10) { ((try? daemon.tenantStatus("b"))?["egress"]?["requests_denied"]?.intValue ?? 0) == 300 })
        XCTAssertEqual(try audit("b").components(separatedBy: "egress.denied").count - 1, 1, "one row for the first")
        // When the 10 s window ends, one summary row counts the rest.
        XCTAssertTrue(daemon.eventually(15) { ((try? self.audit("b")) ?? "").contains("repeated=299") }, (try? audit("b")) ?? "")
        XCTAssertEqual(try audit("b").components(separatedBy: "egress.denied").count - 1, 2)
    }

    func testAStuckProxyCostsTheDaemonNothing() throws {
        try start()
        let proxy = try XCTUnwrap(proxyPID().flatMap { Int32($0) })
        // Stopped, it reads nothing: the control socket fills with the reloads' frames.
        XCTAssertEqual(kill(proxy, SIGSTOP), 0)
        var slowest = 0.0
        let deadline = Date().addingTimeInterval(60)
        while kill(proxy, 0) == 0 && Date() < deadline {
            let t0 = Date()
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Daemon.clawpen)
            p.arguments = ["policy", "reload"]
            p.environment = ["CLAWPEN_SOCKET": daemon.socket]
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            while p.isRunning && Date().timeIntervalSince(t0) < 8 { usleep(10_000) }
            if p.isRunning {
                p.terminate()
                XCTFail("the daemon did not answer a reload within 8 s while the proxy was stopped")
                break
            }
            slowest = max(slowest, Date().timeIntervalSince(t0))
        }
        XCTAssertNotEqual(kill(proxy, 0), 0, "the stuck proxy was killed (and reaped)")
        XCTAssertLessThan(slowest, 5, "no request waited for the proxy")
        XCTAssertTrue(daemon.log.contains("egress proxy is stuck"), daemon.log)
        XCTAssertEqual(try runCLI(["status"], socket: daemon.socket).status, 0)
    }
}
