import ClawpenProtocol
import ClawpenTestSupport
import Foundation
import XCTest

/// The agent runtime's requests need a grant for the job's tenant, as submit does: a user with
/// a grant for alpha may not attach to, read, type into or signal a job of beta.
extension CallerPermissionTests {
    func testRuntimeRequestsNeedAGrantForTheJobsTenant() throws {
        let c = try StreamClient(daemon)
        let (_, betaJob) = c.streamSubmit("beta", ["sh", "-c", "cat; echo done"], extra: [("stdin_open", .bool(true))])
        guard let betaJob else { return XCTFail("not accepted") }
        for args in [
            ["job", "attach", "--no-stdin", betaJob], ["job", "logs", betaJob], ["job", "signal", betaJob, "KILL"],
            ["job", "list", "--tenant", "beta"],
        ] {
            let r = try cliAs(Self.user, args)
            XCTAssertEqual(r.0, 77, "\(args) without a grant for beta: \(r.1)")
            XCTAssertTrue(r.1.contains("permission_denied"), r.1)
        }
        // Input through a raw connection as the user: refused, and the job is untouched.
        let input = try cliAs(Self.user, ["submit", "--tenant", "beta", "-i", "--", "true"])
        XCTAssertEqual(input.0, 77, input.1)
        // job.list without a tenant shows the tenants granted, and only them.
        let alphaJob = try daemon.detach("alpha", ["true"])
        let listed = try cliAs(Self.user, ["job", "list", "--json"])
        XCTAssertEqual(listed.0, 0, listed.1)
        XCTAssertTrue(listed.1.contains(alphaJob.id), listed.1)
        XCTAssertFalse(listed.1.contains(betaJob), "no job of beta in a list for a caller of alpha")
        // The job of beta was neither killed nor fed: it still runs, then ends as its owner says.
        XCTAssertEqual(try daemon.connect().job(.jobGet(jobID: betaJob)).job.state, .running)
        _ = c.input(betaJob, "", eof: true)
        XCTAssertEqual(try daemon.connect().job(.jobWait(jobID: betaJob)).job.stdout, "done\n")
        // Every refusal is audited with the caller's uid.
        let uid = Int64(getpwnam(Self.user)!.pointee.pw_uid)
        let audit = try JSONValue.parse(Array(runCLI(["audit", "--json"], socket: daemon.socket).stdout.utf8)).arrayValue ?? []
        let denied = audit.filter { $0["action"]?.stringValue == "permission.denied" && $0["caller_uid"]?.intValue == uid }
        // (The CLI's attach asks job.get first, to learn whether the job has a terminal.)
        for request in ["job.get", "job.logs", "job.signal", "job.list"] {
            XCTAssertTrue(denied.contains { $0["detail"]?.stringValue == request }, "\(request) audited: \(denied)")
        }
    }

    func testJobInputAttachAndResizeWithoutAGrantAreRefused() throws {
        let c = try StreamClient(daemon)
        let (_, betaJob) = c.streamSubmit("beta", ["cat"], extra: [("stdin_open", .bool(true))])
        guard let betaJob else { return XCTFail("not accepted") }
        // A raw client as the user: setpriv runs python to send one job.input frame.
        let script = """
            import json, socket, struct, sys
            s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
            for i, req in enumerate([{"type": "job.input", "data_b64": "aGkK"}, {"type": "job.attach", "replay": True},
                                     {"type": "job.resize", "rows": 5, "cols": 5}, {"type": "job.detach", "attach_id": 1}]):
                b = json.dumps(dict(req, id=i, job_id=sys.argv[2])).encode()
                s.sendall(struct.pack(">I", len(b)) + b)
                n = struct.unpack(">I", s.recv(4))[0]
                print(req["type"], json.loads(s.recv(n))["error"]["code"])
            """
        let r = try Self.run(
            ["/usr/bin/setpriv", "--reuid", Self.user, "--regid", Self.user, "--init-groups", "--", "/usr/bin/python3", "-c", script, daemon.socket, betaJob])
        XCTAssertEqual(
            r.1.split(separator: "\n").map(String.init),
            ["job.input permission_denied", "job.attach permission_denied", "job.resize permission_denied", "job.detach permission_denied"], r.1)
        _ = c.input(betaJob, "", eof: true)
        XCTAssertEqual(try daemon.connect().job(.jobWait(jobID: betaJob)).job.stdout, "", "nothing of the refused input reached the job")
    }
}
