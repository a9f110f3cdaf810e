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
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Daemon.clawpen)
        p.arguments = d.serveArguments
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { p.terminate(); p.waitUntilExit() } }
        XCTAssertTrue(d.eventually(10) { (try? HTTP.get(port: port, path: "/readyz"))?.status == 503 })
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
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard bound else { throw XCTSkip("cannot bind a loopback port") }
        return Int(UInt16(bigEndian: addr.sin_port))
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

/// The Prometheus text exposition format (0.0.4), parsed strictly enough to catch what a
/// scraper would reject: every sample's family has a TYPE before it, names and label names are
/// valid, label values are quoted and escaped, values are numbers, no series repeats, and a
/// histogram's buckets are cumulative and end in +Inf equal to its _count.
struct PrometheusText {
    struct Key: Hashable, CustomStringConvertible {
        var name: String
        var labels: [String: String]
        var description: String { "\(name)\(labels.sorted { $0.key < $1.key })" }
    }
    var samples: [Key: Double] = [:]
    var types: [String: String] = [:]

    func value(_ name: String, _ labels: [String: String]) -> Double? { samples[Key(name: name, labels: labels)] }

    init(parsing text: String) throws {
        func fail(_ why: String, _ line: Substring) -> Error {
            NSError(domain: "PrometheusText", code: 0, userInfo: [NSLocalizedDescriptionKey: "\(why): \(line)"])
        }
        let nameOK = { (s: Substring) -> Bool in
            guard let f = s.first, f.isLetter || f == "_" || f == ":" else { return false }
            return s.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "_" || $0 == ":" }
        }
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                let parts = line.split(separator: " ", maxSplits: 3)
                guard parts.count >= 3, parts[1] == "HELP" || parts[1] == "TYPE" else { continue }
                guard nameOK(parts[2]) else { throw fail("bad metric name", line) }
                if parts[1] == "TYPE" {
                    guard parts.count == 4, ["counter", "gauge", "histogram", "summary", "untyped"].contains(String(parts[3])) else {
                        throw fail("bad TYPE", line)
                    }
                    guard types[String(parts[2])] == nil else { throw fail("TYPE twice", line) }
                    types[String(parts[2])] = String(parts[3])
                }
                continue
            }
            // name{labels} value
            var rest = line[...]
            let nameEnd = rest.firstIndex { $0 == "{" || $0 == " " } ?? rest.endIndex
            let name = rest[..<nameEnd]
            guard nameOK(name) else { throw fail("bad sample name", line) }
            rest = rest[nameEnd...]
            var labels: [String: String] = [:]
            if rest.first == "{" {
                rest = rest.dropFirst()
                while rest.first != "}" {
                    guard let eq = rest.firstIndex(of: "=") else { throw fail("label without =", line) }
                    let lname = rest[..<eq]
                    guard nameOK(lname) else { throw fail("bad label name", line) }
                    rest = rest[rest.index(after: eq)...]
                    guard rest.first == "\"" else { throw fail("unquoted label value", line) }
                    rest = rest.dropFirst()
                    var value = ""
                    while let c = rest.first, c != "\"" {
                        rest = rest.dropFirst()
                        if c == "\\" {
                            guard let e = rest.first, "\\\"n".contains(e) else { throw fail("bad escape", line) }
                            value.append(e == "n" ? "\n" : e)
                            rest = rest.dropFirst()
                        } else {
                            value.append(c)
                        }
                    }
                    guard rest.first == "\"" else { throw fail("unterminated label value", line) }
                    rest = rest.dropFirst()
                    labels[String(lname)] = value
                    if rest.first == "," { rest = rest.dropFirst() }
                }
                rest = rest.dropFirst()
            }
            guard rest.first == " " else { throw fail("no value", line) }
            let fields = rest.dropFirst().split(separator: " ")
            guard let raw = fields.first, fields.count <= 2 else { throw fail("bad value", line) }
            let v: Double
            switch raw {
            case "+Inf": v = .infinity
            case "-Inf": v = -.infinity
            case "NaN": v = .nan
            default:
                guard let d = Double(raw) else { throw fail("value is not a number", line) }
                v = d
            }
            var family = String(name)
            for suffix in ["_bucket", "_sum", "_count"] where family.hasSuffix(suffix) && types[family] == nil {
                family = String(family.dropLast(suffix.count))
            }
            guard types[family] != nil else { throw fail("sample before its TYPE", line) }
            let key = Key(name: String(name), labels: labels)
            guard samples[key] == nil else { throw fail("series repeated", line) }
            samples[key] = v
        }
        // Histograms: cumulative buckets, +Inf == _count.
        for (family, type) in types where type == "histogram" {
            var series: [[String: String]: [(Double, Double)]] = [:]
            for (k, v) in samples where k.name == family + "_bucket" {
                var rest = k.labels
                guard let le = rest.removeValue(forKey: "le") else { throw fail("bucket without le", Substring(k.description)) }
                series[rest, default: []].append((le == "+Inf" ? .infinity : Double(le) ?? .nan, v))
            }
            for (labels, buckets) in series {
                let sorted = buckets.sorted { $0.0 < $1.0 }
                for (a, b) in zip(sorted, sorted.dropFirst()) where b.1 < a.1 {
                    throw fail("buckets not cumulative", Substring("\(family)\(labels)"))
                }
                guard sorted.last?.0 == .infinity, sorted.last?.1 == samples[Key(name: family + "_count", labels: labels)] else {
                    throw fail("+Inf bucket missing or not equal to _count", Substring("\(family)\(labels)"))
                }
            }
        }
    }
}
