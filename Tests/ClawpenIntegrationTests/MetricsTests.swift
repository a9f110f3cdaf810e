import ClawpenTestSupport
import Foundation
import XCTest

/// `serve --metrics-listen`, against the real daemon doing real jobs: the text is valid
/// Prometheus exposition, each family moves the way it should, and /healthz and /readyz flip
/// when they should.
final class MetricsTests: XCTestCase {
    var daemon: Daemon?
    override func tearDown() { daemon?.cleanup() }

    private func start() throws -> (Daemon, Int) {
        let port = try freePort()
        let d = try Daemon(extraArgs: ["--metrics-listen", "127.0.0.1:\(port)"]).start()
        daemon = d
        return (d, port)
    }

    private func scrape(_ port: Int) throws -> PrometheusText {
        let r = try HTTP.get(port: port, path: "/metrics")
        XCTAssertEqual(r.status, 200, r.body)
        XCTAssertTrue(r.headers.lowercased().contains("content-type: text/plain; version=0.0.4"), r.headers)
        return try PrometheusText(parsing: r.body)
    }

    func testTheExpositionIsValidAndEveryFamilyMoves() throws {
        let (d, port) = try start()
        try d.createTenant("a", tier: "pro")
        let before = try scrape(port)
        XCTAssertEqual(before.value("clawpen_build_info", ["version": ClawpenVersion.string]), 1)
        XCTAssertNil(before.value("clawpen_jobs_total", ["tenant": "a", "state": "succeeded"]), "no job ended yet")

        _ = try d.run("a", ["true"])
        _ = try d.run("a", ["sh", "-c", "exit 3"])
        _ = try d.run("a", ["true"])
        // A refusal: a timeout over the tier's timeout_max_s.
        XCTAssertThrowsError(try d.connect().submit(SubmitRequest(tenant: .t("a"), argv: ["true"], timeoutSeconds: 1_000_000, wait: true)))

        let after = try scrape(port)
        XCTAssertEqual(after.value("clawpen_jobs_total", ["tenant": "a", "state": "succeeded"]), 2)
        XCTAssertEqual(after.value("clawpen_jobs_total", ["tenant": "a", "state": "failed"]), 1)
        XCTAssertEqual(after.value("clawpen_refusals_total", ["tenant": "a", "rule": "timeout_max_s"]), 1)
        XCTAssertEqual(after.value("clawpen_worker_starts_total", ["tenant": "a"]), 1, "one cold start, then warm jobs")
        XCTAssertEqual(after.value("clawpen_worker_start_seconds_count", ["tenant": "a"]), 1)
        XCTAssertEqual(after.value("clawpen_job_run_seconds_count", ["tenant": "a"]), 3)
        XCTAssertEqual(after.value("clawpen_job_queue_wait_seconds_count", ["tenant": "a"]), 3)
        XCTAssertGreaterThan(after.value("clawpen_job_run_seconds_sum", ["tenant": "a"]) ?? 0, 0)
        XCTAssertEqual(after.value("clawpen_job_run_seconds_bucket", ["tenant": "a", "le": "+Inf"]), 3)
        XCTAssertEqual(after.value("clawpen_workers", ["state": "ready"]), 1)
        XCTAssertEqual(after.value("clawpen_tenants", [:]), 1)
        XCTAssertGreaterThanOrEqual(after.value("clawpen_store_commit_seconds_count", [:]) ?? 0, 3)
        XCTAssertNotNil(after.value("clawpen_event_loop_lag_seconds_count", [:]))
        XCTAssertEqual(after.value("clawpen_oom_kills_total", ["tenant": "a"]), 0)
        XCTAssertEqual(after.value("clawpen_quarantines_total", ["tenant": "a"]), 0)
        XCTAssertEqual(after.value("clawpen_tenant_jobs_running", ["tenant": "a"]), 0)
        // A running job shows in the gauges while it runs.
        let sleeper = try d.detach("a", ["sleep", "3"])
        XCTAssertTrue(try d.eventually(5) { try self.scrape(port).value("clawpen_jobs_running", [:]) == 1 })
        _ = try d.connect().job(.jobCancel(jobID: sleeper.id))
        // Counters never go down between scrapes.
        let third = try scrape(port)
        for (key, v) in after.samples where key.name.hasSuffix("_total") {
            XCTAssertGreaterThanOrEqual(third.samples[key] ?? -1, v, "\(key) went down")
        }
        // The same text over the control socket.
        let cli = try runCLI(["metrics"], socket: d.socket)
        XCTAssertEqual(cli.status, 0, cli.stderr)
        let viaSocket = try PrometheusText(parsing: cli.stdout)
        XCTAssertEqual(viaSocket.value("clawpen_jobs_total", ["tenant": "a", "state": "failed"]), 1)
        try promtoolCheck(try HTTP.get(port: port, path: "/metrics").body)
    }

    /// The agent runtime's families: streamed output and input, file operations by result and
    /// their bytes, counted by what really passed.
    func testRuntimeFamiliesCountStreamedBytesInputAndFileOperations() throws {
        let (d, port) = try start()
        try d.createTenant("a", tier: "pro")
        let c = try StreamClient(d)
        let streamed = c.streamSubmit("a", ["sh", "-c", "head -c 3000 /dev/zero | tr '\\0' x"])
        XCTAssertNotNil(streamed.jobID)
        let out = c.until("job", id: streamed.id)
        XCTAssertEqual(StreamClient.text(out.before).count, 3000)
        let talking = c.streamSubmit("a", ["cat"], extra: [("stdin_open", .bool(true))])
        let talkingID = try XCTUnwrap(talking.jobID)
        _ = c.input(talkingID, "hello", eof: true)
        _ = c.until("job", id: talking.id)

        let conn = try d.connect()
        let content = [UInt8](repeating: 7, count: 10_000)
        var sent = false
        _ = try conn.putFile(tenant: .t("a"), path: "/tmp/m.bin") { _ in
            defer { sent = true }
            return sent ? [] : content
        }
        var got = 0
        _ = try conn.getFile(tenant: .t("a"), path: "/tmp/m.bin") { got += $0.count }
        XCTAssertEqual(got, 10_000)
        XCTAssertThrowsError(try conn.getFile(tenant: .t("a"), path: "/tmp/missing") { _ in })

        let m = try scrape(port)
        XCTAssertEqual(m.value("clawpen_stream_output_bytes_total", ["tenant": "a"]), 3000 + 5, "the streamed job's bytes and cat's echo")
        XCTAssertEqual(m.value("clawpen_stream_input_bytes_total", ["tenant": "a"]), 5)
        XCTAssertEqual(m.value("clawpen_file_bytes_total", ["tenant": "a", "direction": "in"]), 10_000)
        XCTAssertEqual(m.value("clawpen_file_bytes_total", ["tenant": "a", "direction": "out"]), 10_000)
        XCTAssertEqual(m.value("clawpen_file_ops_total", ["tenant": "a", "op": "put", "result": "ok"]), 1)
        XCTAssertEqual(m.value("clawpen_file_ops_total", ["tenant": "a", "op": "get", "result": "ok"]), 1)
        XCTAssertEqual(m.value("clawpen_file_ops_total", ["tenant": "a", "op": "get", "result": "not_found"]), 1)
        XCTAssertEqual(m.value("clawpen_file_ops_in_progress", ["tenant": "a"]), 0)
        XCTAssertEqual(m.value("clawpen_stream_clients", ["tenant": "a"]), 0)
        XCTAssertEqual(m.value("clawpen_interactive_jobs", ["tenant": "a"]), 0)
        XCTAssertEqual(m.value("clawpen_egress_proxy_up", [:]) != nil, true)
        // An interactive job shows while it runs.
        let open = c.streamSubmit("a", ["sleep", "30"], extra: [("stdin_open", .bool(true))])
        let openID = try XCTUnwrap(open.jobID)
        XCTAssertTrue(try d.eventually(5) { try self.scrape(port).value("clawpen_interactive_jobs", ["tenant": "a"]) == 1 })
        XCTAssertEqual(try scrape(port).value("clawpen_stream_clients", ["tenant": "a"]), 1)
        _ = try d.connect().job(.jobCancel(jobID: openID))
    }

    /// Prometheus's own linter on the text, where scripts/fetch-promtool could fetch it
    /// ($CLAWPEN_PROMTOOL, else .build/tools/promtool).
    private func promtoolCheck(_ text: String) throws {
        let path = ProcessInfo.processInfo.environment["CLAWPEN_PROMTOOL"].flatMap { $0.isEmpty ? nil : $0 } ?? Daemon.repoRoot + "/.build/tools/promtool"
        guard FileManager.default.isExecutableFile(atPath: path) else {
            print("MetricsTests: promtool not found (scripts/fetch-promtool fetches it): checked by the parser above only")
            return
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = ["check", "metrics"]
        let inp = Pipe(), out = Pipe()
        p.standardInput = inp
        p.standardOutput = out
        p.standardError = out
        try p.run()
        inp.fileHandleForWriting.write(Data(text.utf8))
        try inp.fileHandleForWriting.close()
        let said = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "promtool check metrics: \(said)")
    }

    func testHealthAndReadinessAnswerAndRefuseWhatTheyShould() throws {
        let (d, port) = try start()
        XCTAssertEqual(try HTTP.get(port: port, path: "/healthz").status, 200)
        XCTAssertEqual(try HTTP.get(port: port, path: "/readyz").body, "ready\n")
        XCTAssertEqual(try HTTP.get(port: port, path: "/nope").status, 404)
        XCTAssertEqual(try HTTP.get(port: port, path: "/metrics", method: "POST").status, 405)
        // A shutdown with a job still running: not ready while it drains.
        try d.createTenant("a")
        _ = try d.detach("a", ["sleep", "2"])
        XCTAssertTrue(d.eventually(5) { (try? d.tenantStatus("a")["jobs"]?["running"]?.intValue) == 1 })
        kill(d.pid, SIGTERM)
        XCTAssertTrue(
            d.eventually(3) { (try? HTTP.get(port: port, path: "/readyz"))?.body.contains("shutting down") == true },
            "readyz says the daemon is shutting down")
        XCTAssertEqual(try HTTP.get(port: port, path: "/readyz").status, 503)
    }

    /// While the store cannot be opened the daemon waits, not ready and saying why, and serves
    /// once it can.
    func testNotReadyWhileTheStoreCannotBeOpened() throws {
        let port = try freePort()
        let d = try Daemon(extraArgs: ["--metrics-listen", "127.0.0.1:\(port)"])
        daemon = d
        // A directory where the database file goes: SQLite cannot open it.
        try FileManager.default.createDirectory(atPath: d.stateDir + "/clawpen.db", withIntermediateDirectories: true)
        let p = try Daemon.launch(d.serveArguments)
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        // First "not open yet", then, once it has tried, why it cannot be opened.
        XCTAssertTrue(
            d.eventually(10) {
                guard let r = try? HTTP.get(port: port, path: "/readyz") else { return false }
                return r.status == 503 && r.body.contains("cannot be opened")
            })
        let r = try HTTP.get(port: port, path: "/readyz")
        XCTAssertTrue(r.body.contains("the store cannot be opened"), r.body)
        XCTAssertEqual(try HTTP.get(port: port, path: "/healthz").status, 503, "no supervisor loop yet")
        XCTAssertTrue(p.isRunning, "the daemon waits for its store")
        try FileManager.default.removeItem(atPath: d.stateDir + "/clawpen.db")
        XCTAssertTrue(d.eventually(10) { (try? HTTP.get(port: port, path: "/readyz"))?.status == 200 }, "ready once the store opens")
        XCTAssertEqual(try d.connect().call(.ping)["type"]?.stringValue, "pong")
    }

    func testABadListenAddressIsAConfigError() throws {
        let d = try Daemon(extraArgs: ["--metrics-listen", "nowhere"])
        daemon = d
        let r = try runCLI(d.serveArguments, socket: nil)
        XCTAssertEqual(r.status, 78, r.stderr)
        XCTAssertTrue(r.stderr.contains("--metrics-listen must be HOST:PORT"), r.stderr)
    }

    private func freePort() throws -> Int {
        guard let port = Loopback.unusedPort() else { throw XCTSkip("cannot bind a loopback port") }
        return port
    }
}

/// A GET over a plain TCP socket (no client library between the test and the server).
enum HTTP {
    struct Response {
        var status: Int
        var headers: String
        var body: String
    }

    static func get(port: Int, path: String, method: String = "GET") throws -> Response {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = UInt16(port).bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
        guard connected else { throw NSError(domain: "HTTP", code: Int(errno), userInfo: [NSLocalizedDescriptionKey: "connect: errno \(errno)"]) }
        let request = Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        var data: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            data += buf[0..<n]
        }
        let text = String(decoding: data, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else {
            throw NSError(domain: "HTTP", code: 0, userInfo: [NSLocalizedDescriptionKey: "no HTTP response: \(text)"])
        }
        let head = String(text[..<split.lowerBound])
        let status = Int(head.split(separator: " ").dropFirst().first ?? "") ?? 0
        return Response(status: status, headers: head, body: String(text[split.upperBound...]))
    }
}
