import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// The agent principal under attack (docs/subjobs.md): a job on its tenant's agent socket may act
/// only for its own tenant, within its own tree, never as an operator; what it sends (a tenant,
/// a forged CLAWPEN_JOB_ID) cannot change who it is, and a caller outside any running job gets
/// only refusals. Each test first proves the sandbox is there; each attack is harmless if it
/// works (the jobs it could touch are the test's own sleeps, the requests the test daemon's).
final class AgentPrincipalTests: XCTestCase {
    var daemon: Daemon!
    static let client = "/opt/clawpen/bin/clawpen"

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.createTenant("b")
        try daemon.assertSandboxed("a")
    }

    override func tearDown() { daemon?.cleanup() }

    /// Runs `script` as a job of `tenant` (sh -c), with AGENT_* variables for its targets.
    func inside(_ tenant: String, _ script: String, env: [String: String] = [:]) throws -> JobView {
        try daemon.run(tenant, ["sh", "-c", "C=\(Self.client); " + script], timeout: 60, env: env)
    }

    func put(_ tenant: String, _ path: String, _ text: String) throws {
        XCTAssertEqual(try runCLI(["cp", "-", "\(tenant):\(path)"], socket: daemon.socket, stdin: text).status, 0)
    }

    func state(_ id: String) throws -> JobState { try daemon.connect().job(.jobGet(jobID: id)).job.state }

    func auditRows(_ tenant: String) throws -> String { try runCLI(["audit", "--tenant", tenant], socket: daemon.socket).stdout }

    func testAJobCannotActForAnotherTenant() throws {
        try put("b", "/home/secret", "b's secret\n")
        let victim = try daemon.detach("b", ["sleep", "60"], timeout: 90)
        let job = try inside(
            "a",
            """
            $C submit --tenant b -- /bin/true; echo "submit=$?"
            $C job get $AGENT_VICTIM >/dev/null; echo "get=$?"
            $C job cancel $AGENT_VICTIM >/dev/null; echo "cancel=$?"
            $C cp b:/home/secret -; echo "cp=$?"
            $C ls b:/home; echo "ls=$?"
            """, env: ["AGENT_VICTIM": victim.id])
        for what in ["submit", "get", "cancel", "cp", "ls"] { XCTAssertTrue(job.stdout.contains("\(what)=77"), "\(what): \(job.stdout)") }
        XCTAssertFalse(job.stdout.contains("b's secret"), job.stdout)
        XCTAssertEqual(job.stderr.components(separatedBy: "principal agent").count - 1, 5, job.stderr)
        XCTAssertEqual(try state(victim.id), .running, "b's job is untouched")
        let audit = try auditRows("a")
        XCTAssertEqual(audit.components(separatedBy: "principal agent").count - 1, 5, audit)
    }

    func testAJobCannotTouchAnotherTreeOfItsOwnTenant() throws {
        let other = try daemon.detach("a", ["sleep", "60"], timeout: 90)
        XCTAssertTrue(daemon.eventually { (try? self.state(other.id)) == .running })
        let job = try inside(
            "a",
            """
            $C job get $AGENT_OTHER >/dev/null; echo "get=$?"
            $C job cancel $AGENT_OTHER >/dev/null; echo "cancel=$?"
            $C job tree $AGENT_OTHER >/dev/null; echo "tree=$?"
            $C job wait $AGENT_OTHER >/dev/null; echo "wait=$?"
            """, env: ["AGENT_OTHER": other.id])
        for what in ["get", "cancel", "tree", "wait"] { XCTAssertTrue(job.stdout.contains("\(what)=77"), "\(what): \(job.stdout)") }
        XCTAssertTrue(job.stderr.contains("is not in the tree of job \(job.id)"), job.stderr)
        XCTAssertEqual(try state(other.id), .running, "the other tree's job is untouched")
    }

    func testAnIdempotencyKeyDoesNotReachAnotherTree() throws {
        let other = try daemon.detach("a", ["sleep", "60"], timeout: 90, key: "shared-key")
        let job = try inside("a", "$C submit --detach --idempotency-key shared-key -- /bin/true; echo \"rc=$?\"")
        XCTAssertTrue(job.stdout.contains("rc=77"), job.stdout)
        XCTAssertFalse(job.stdout.contains(other.id), "the other tree's job id does not leak: \(job.stdout)")
        XCTAssertTrue(job.stderr.contains("principal agent") && job.stderr.contains("another tree"), job.stderr)
    }

    func testAJobIsNeverAnOperator() throws {
        let commands = [
            "status", "tenant list", "tenant show a", "tenant create intruder", "tenant suspend b", "tenant set-quota a --max-runs 64",
            "audit", "policy reload", "metrics", "secret list a", "job list", "tenant inspect a",
        ]
        let script = commands.map { "$C \($0) >/dev/null 2>>/tmp/err; echo \"\($0)=$?\"" }.joined(separator: "\n") + "\ncat /tmp/err >&2"
        let job = try inside("a", script)
        for c in commands { XCTAssertTrue(job.stdout.contains("\(c)=77"), "\(c): \(job.stdout)") }
        XCTAssertEqual(job.stderr.components(separatedBy: "principal agent").count - 1, commands.count, job.stderr)
        XCTAssertGreaterThanOrEqual(try auditRows("a").components(separatedBy: "principal agent").count - 1, commands.count, "each refusal is audited")
        XCTAssertEqual(try daemon.connect().call(.tenantList)["tenants"]?.arrayValue?.count, 2, "no tenant was created")
        XCTAssertEqual(try daemon.tenantStatus("b")["suspension"]?.isNull ?? true, true, "b is not suspended")
        XCTAssertEqual(try daemon.tenantStatus("a")["limits"]?["max_concurrent_runs"]?.intValue, 2, "no quota changed")
    }

    func testAForgedJobIDChangesNothing() throws {
        let other = try daemon.detach("a", ["sleep", "60"], timeout: 90)
        XCTAssertTrue(daemon.eventually { (try? self.state(other.id)) == .running })
        let job = try inside(
            "a",
            """
            export CLAWPEN_JOB_ID=$AGENT_OTHER
            $C ping --json
            $C job cancel $AGENT_OTHER >/dev/null; echo "cancel=$?"
            $C submit --json -- /bin/true
            """, env: ["AGENT_OTHER": other.id])
        XCTAssertTrue(job.stdout.contains("\"job_id\":\"\(job.id)\""), "the socket names the real caller: \(job.stdout)")
        XCTAssertTrue(job.stdout.contains("cancel=77"), job.stdout)
        XCTAssertEqual(try state(other.id), .running)
        let child = try XCTUnwrap(
            job.stdout.split(separator: "\n").compactMap { try? JSONValue.parse(Array($0.utf8)) }.compactMap(JobView.init(json:)).first)
        XCTAssertEqual(child.parentID, job.id, "the sub-job's parent is the real caller, not the forged id")
    }

    /// A job that loops on a refused request (an operator's `status`, pipelined on its agent
    /// socket) is refused every time, but its audit rows are coalesced: one at once, one
    /// summary when the window ends. Before, one such job wrote 114,500 rows (32 MB) in 10 s
    /// into the store every tenant shares.
    func testARefusalLoopWritesBoundedAuditRows() throws {
        let spam = """
            import socket, os, struct, time, json
            s = socket.socket(socket.AF_UNIX); s.connect(os.environ["CLAWPEN_SOCKET"])
            req = b'{"type":"status","id":1}'; frame = struct.pack(">I", len(req)) + req
            end = time.time() + 3; n = 0; buf = b''; denied = 0
            while time.time() < end:
                s.sendall(frame * 50); n += 50; got = 0
                while got < 50:
                    buf += s.recv(65536)
                    while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                        l = struct.unpack(">I", buf[:4])[0]
                        if json.loads(buf[4:4 + l])["error"]["code"] == "permission_denied": denied += 1
                        buf = buf[4 + l:]; got += 1
            print(n, denied)
            """
        try put("a", "/home/spam.py", spam)
        let dbBefore = try fileSize(daemon.stateDir + "/clawpen.db")
        let job = try daemon.run("a", ["python3", "/home/spam.py"], timeout: 60)
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let counts = job.stdout.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
        XCTAssertEqual(counts.count, 2, job.stdout)
        let sent = counts.first ?? 0
        XCTAssertGreaterThan(sent, 500, "the loop ran: \(job.stdout)")
        XCTAssertEqual(counts.last, sent, "every one was refused")
        func rows() throws -> [JSONValue] {
            let out = try runCLI(["audit", "--tenant", "a", "--json", "--limit", "100000"], socket: daemon.socket).stdout
            return (try JSONValue.parse(Array(out.utf8)).arrayValue ?? []).filter {
                $0["action"]?.stringValue == "permission.denied" && $0["detail"]?.stringValue?.hasPrefix("status") == true
            }
        }
        // One row at once; the rest as one summary when the window (10 s) ends.
        XCTAssertTrue(try daemon.eventually(20) { try rows().count == 2 }, "rows: \(String(describing: try? rows().count))")
        let summary = try rows().compactMap { $0["detail"]?.stringValue }.first { $0.contains("repeated=") } ?? ""
        XCTAssertTrue(summary.contains("repeated=\(sent - 1)"), summary)
        XCTAssertLessThan(try fileSize(daemon.stateDir + "/clawpen.db") - dbBefore, 1 << 20, "the store did not grow with the loop")
    }

    func fileSize(_ path: String) throws -> Int {
        let a = try FileManager.default.attributesOfItem(atPath: path)
        let wal = (try? FileManager.default.attributesOfItem(atPath: path + "-wal"))?[.size] as? Int ?? 0
        return (a[.size] as? Int ?? 0) + wal
    }

    func testAConnectionFromOutsideAnyJobGetsOnlyRefusals() throws {
        _ = try daemon.run("a", ["true"]) // the tenant's listener exists once its worker has started
        let path = daemon.stateDir + "/agent/a/clawpen.sock"
        XCTAssertTrue(FileManager.default.fileExists(atPath: path))
        // The test process itself: root, on the host, in no job cgroup.
        let before = try daemon.tenantStatus("a")["jobs"]?["succeeded"]?.intValue
        let sock = try RawSocket(path)
        for request in [#"{"type":"ping","id":1}"#, #"{"type":"submit","id":2,"argv":["/bin/true"]}"#, #"{"type":"status","id":3}"#] {
            sock.sendFrame(Array(request.utf8))
            let reply = try XCTUnwrap(sock.readFrame())
            XCTAssertEqual(reply["type"]?.stringValue, "error", "\(reply)")
            XCTAssertEqual(reply["error"]?["code"]?.stringValue, "permission_denied")
            let message = reply["error"]?["message"]?.stringValue ?? ""
            XCTAssertTrue(message.contains("principal agent") && message.contains("not as tenant 'a'"), message)
        }
        XCTAssertEqual(try daemon.tenantStatus("a")["jobs"]?["succeeded"]?.intValue, before, "nothing was submitted")
        XCTAssertEqual(try daemon.tenantStatus("a")["jobs"]?["queued"]?.intValue, 0)
    }

    func testAConnectionWhoseJobEndedGetsOnlyRefusals() throws {
        // Job "giver" opens the agent socket and hands the connection to job "taker" (another
        // root of the same tenant) over a Unix socket in the tenant's /tmp, then ends. The
        // connection still names the giver, which no longer runs.
        try put(
            "a", "/home/frame.py",
            """
            import json, socket, struct
            def call(s, obj):
                data = json.dumps(obj).encode()
                s.sendall(struct.pack(">I", len(data)) + data)
                n = struct.unpack(">I", s.recv(4, socket.MSG_WAITALL))[0]
                return json.loads(s.recv(n, socket.MSG_WAITALL))
            """)
        try put(
            "a", "/home/giver.py",
            """
            import os, socket, sys
            sys.path.insert(0, "/home")
            from frame import call
            agent = socket.socket(socket.AF_UNIX); agent.connect(os.environ["CLAWPEN_SOCKET"])
            print("giver ping:", call(agent, {"type": "ping", "id": 1}).get("job_id"))
            srv = socket.socket(socket.AF_UNIX); srv.bind("/tmp/pass.sock"); srv.listen(1); srv.settimeout(20)
            conn, _ = srv.accept()
            socket.send_fds(conn, [b"x"], [agent.fileno()])
            conn.recv(1)
            """)
        try put(
            "a", "/home/taker.py",
            """
            import socket, sys, time
            sys.path.insert(0, "/home")
            from frame import call
            s = socket.socket(socket.AF_UNIX)
            for _ in range(200):
                try:
                    s.connect("/tmp/pass.sock"); break
                except OSError:
                    time.sleep(0.05)
            _, fds, _, _ = socket.recv_fds(s, 1, 1)
            agent = socket.socket(fileno=fds[0])
            s.close()  # the giver ends now
            time.sleep(2)
            for req in ({"type": "ping", "id": 2}, {"type": "submit", "id": 3, "argv": ["/bin/true"]}):
                r = call(agent, req)
                print(r["type"], r.get("error", {}).get("code"), r.get("error", {}).get("message", ""))
            """)
        let giver = try daemon.detach("a", ["python3", "/home/giver.py"], timeout: 60)
        let taker = try daemon.run("a", ["python3", "/home/taker.py"], timeout: 60)
        let given = try daemon.connect().job(.jobWait(jobID: giver.id)).job
        XCTAssertEqual(given.state, .succeeded, given.stderr)
        XCTAssertTrue(given.stdout.contains("giver ping: \(giver.id)"), given.stdout)
        XCTAssertEqual(taker.state, .succeeded, taker.stderr)
        let lines = taker.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2, taker.stdout)
        for line in lines {
            XCTAssertTrue(line.hasPrefix("error permission_denied"), line)
            XCTAssertTrue(line.contains("principal agent") && line.contains("job \(giver.id), which opened this connection, is no longer running"), line)
        }
        XCTAssertNil(try daemon.connect().call(.jobTree(jobID: giver.id))["live"], "the giver has no sub-job")
    }
}
