import CClawpenShim
import ClawpenClient
import ClawpenProtocol
import ClawpenWire
import Foundation
import Glibc

/// The `subjobs` scenario: a submit of `/bin/true` that waits for its end, from inside a job
/// (through the tenant's agent socket, $CLAWPEN_SOCKET, as a sub-job) against the same submit from
/// outside (the control socket, a root job), by the same client program (the Python script
/// below: one connection, one request at a time), in alternating blocks of one run. The inside
/// client runs in the sandbox, under seccomp and in its job cgroup; the outside one on the host.
struct SubJobFigures {
    var rounds = 0
    var perBlock = 0
    /// Each round's p50 (ms).
    var insideP50s: [Double] = []
    var outsideP50s: [Double] = []
    var inside: Summary?
    var outside: Summary?

    static let ratioTarget = 1.2

    /// Median over the rounds of inside p50 / outside p50 of the same round.
    var ratio: Double? {
        guard !insideP50s.isEmpty, insideP50s.count == outsideP50s.count else { return nil }
        return Summary.median(zip(insideP50s, outsideP50s).map { $0 / $1 })
    }

    func table() -> String {
        var rows: [[String]] = [["subjobs", "value", "target", "met"]]
        func ms(_ s: Summary?) -> String { s.map { "p50 \(fmt($0.p50, 3)) ms, p99 \(fmt($0.p99, 3)) ms (n=\($0.count))" } ?? "-" }
        func med(_ v: [Double]) -> String { v.isEmpty ? "-" : "\(fmt(Summary.median(v), 3)) ms (rounds: \(v.map { fmt($0, 2) }.joined(separator: " ")))" }
        rows.append(["inside: sub-job submit+wait /bin/true", ms(inside), "", ""])
        rows.append(["outside: submit+wait /bin/true", ms(outside), "", ""])
        rows.append(["  inside p50, median of rounds", med(insideP50s), "", ""])
        rows.append(["  outside p50, median of rounds", med(outsideP50s), "", ""])
        rows.append([
            "  inside p50 / outside p50 (median of rounds)", ratio.map { fmt($0, 3) } ?? "-", "<= \(fmt(Self.ratioTarget, 1))",
            ratio.map { $0 <= Self.ratioTarget ? "yes" : "NO" } ?? "",
        ])
        return renderTable(rows)
    }

    func json() -> JSONValue {
        func s(_ v: Summary?) -> JSONValue {
            v.map { .object([("p50_ms", .double($0.p50)), ("p99_ms", .double($0.p99)), ("n", .int(Int64($0.count)))]) } ?? .null
        }
        return .object([
            (
                "subjobs",
                .object([
                    ("rounds", .int(Int64(rounds))), ("per_block", .int(Int64(perBlock))), ("inside", s(inside)), ("outside", s(outside)),
                    ("inside_round_p50_ms", .array(insideP50s.map(JSONValue.double))),
                    ("outside_round_p50_ms", .array(outsideP50s.map(JSONValue.double))),
                    ("ratio", ratio.map(JSONValue.double) ?? .null),
                ])
            )
        ])
    }
}

extension Scenarios {
    /// The client, the same inside and out: raw frames on one connection, `n` submits that wait,
    /// each timed from before its send to its reply; prints the times (ms) as JSON.
    static let subJobClient = """
        import json, socket, struct, sys, time
        path, n = sys.argv[1], int(sys.argv[2])
        tenant = sys.argv[3] if len(sys.argv) > 3 else None
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        def recv(k):
            b = b""
            while len(b) < k:
                c = s.recv(k - len(b))
                if not c: raise SystemExit("connection closed")
                b += c
            return b
        req = {"type": "submit", "argv": ["/bin/true"], "wait": True}
        if tenant: req["tenant"] = tenant
        out = []
        for i in range(n + 5):
            req["id"] = i
            data = json.dumps(req).encode()
            t0 = time.perf_counter_ns()
            s.sendall(struct.pack(">I", len(data)) + data)
            r = json.loads(recv(struct.unpack(">I", recv(4))[0]))
            t1 = time.perf_counter_ns()
            if r.get("type") != "job" or r["job"]["state"] != "succeeded": raise SystemExit("refused: %s" % str(r)[:300])
            if i >= 5: out.append((t1 - t0) / 1e6)
        print(json.dumps(out))
        """

    func subjobs() throws -> SubJobFigures {
        var f = SubJobFigures()
        f.rounds = options.subjobRounds
        f.perBlock = options.subjobJobs
        let python = findInPath("python3") ?? "/usr/bin/python3"
        // One inside client makes all of a block's sub-jobs in one tree: a copy of the policies
        // with a tenant override lifts tree_max_jobs (50) for the bench tenant.
        var template = Array("/tmp/clawpen-bench-policies-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else { throw BenchFailure("mkdtemp: \(String(cString: strerror(errno)))") }
        let polRoot = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        defer { try? FileManager.default.removeItem(atPath: polRoot) }
        try FileManager.default.copyItem(atPath: setup.policies, toPath: polRoot + "/policies")
        try "tree_max_jobs = 100000\n".write(toFile: polRoot + "/policies/tenants/subjobs.toml", atomically: true, encoding: .utf8)
        let setup = Setup(clawpen: setup.clawpen, policies: polRoot + "/policies", keepTemp: setup.keepTemp, serveArgs: setup.serveArgs)
        try Daemon.with(setup, label: "subjobs") { d in
            let conn = try d.connect()
            let tenant = try benchTenant("subjobs")
            _ = try call("create tenant subjobs") { () throws(ClientError) in try conn.tenant(.tenantCreate(name: tenant, tier: Scenarios.tier)) }
            Progress.say("[subjobs] \(f.rounds) rounds of \(f.perBlock) submits of /bin/true that wait, from inside a job and from outside, alternating")
            var allInside: [Double] = [], allOutside: [Double] = []
            for round in 0..<f.rounds {
                // Alternate which goes first, so that neither always follows the other's load.
                var inside: [Double] = [], outside: [Double] = []
                for first in (round % 2 == 0 ? [true, false] : [false, true]) {
                    if first {
                        inside = try subJobsInside(conn, tenant: tenant, n: f.perBlock)
                    } else {
                        outside = try subJobsOutside(python, socket: d.socketPath, tenant: tenant, n: f.perBlock)
                    }
                }
                f.insideP50s.append(Summary(inside).p50)
                f.outsideP50s.append(Summary(outside).p50)
                allInside += inside
                allOutside += outside
                Progress.say("  round \(round + 1): inside p50 \(fmt(f.insideP50s.last ?? 0, 3)) ms, outside \(fmt(f.outsideP50s.last ?? 0, 3)) ms")
            }
            f.inside = Summary(allInside)
            f.outside = Summary(allOutside)
        }
        return f
    }

    /// The client as a job: its sub-jobs go through $CLAWPEN_SOCKET (the tenant left out).
    private func subJobsInside(_ conn: ClawpenConnection, tenant: TenantName, n: Int) throws -> [Double] {
        let submit = SubmitRequest(
            tenant: tenant, argv: ["python3", "-c", Self.subJobClient, "/run/clawpen/clawpen.sock", String(n)], timeoutSeconds: 300, wait: true)
        let (job, _) = try call("inside client") { () throws(ClientError) in try conn.submit(submit) }
        guard job.state == .succeeded else { throw BenchFailure("the inside client ended \(job.state.rawValue): \(job.stderr.prefix(400))") }
        return try Self.times(job.stdout, n: n)
    }

    /// The same client on the host, on the control socket.
    private func subJobsOutside(_ python: String, socket: String, tenant: TenantName, n: Int) throws -> [Double] {
        var fds: [Int32] = [-1, -1]
        guard cp_pipe(&fds, 0) == 0 else { throw BenchFailure("pipe: \(String(cString: strerror(errno)))") }
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(devNull) }
        let cmd = PreparedCommand(
            path: python, arguments: ["python3", "-c", Self.subJobClient, socket, String(n), tenant.value], environment: ["PATH=/usr/bin:/bin"])
        let pid = try cmd.spawn(stdin: devNull, stdout: fds[1], stderr: 2, parentDeathSignal: SIGKILL)
        close(fds[1])
        var text: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let r = buf.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
            if r < 0 && errno == EINTR { continue }
            if r <= 0 { break }
            text += buf[0..<r]
        }
        close(fds[0])
        if let bad = try PreparedCommand.wait(pid) { throw BenchFailure("the outside client \(bad)") }
        return try Self.times(String(decoding: text, as: UTF8.self), n: n)
    }

    static func times(_ text: String, n: Int) throws -> [Double] {
        guard let v = try? JSONValue.parse(Array(text.trimmingCharacters(in: .whitespacesAndNewlines).utf8)), let a = v.arrayValue else {
            throw BenchFailure("the client printed no times: \(text.prefix(300))")
        }
        let times = a.compactMap(\.doubleValue)
        guard times.count == n else { throw BenchFailure("\(times.count) of \(n) times") }
        return times
    }
}
