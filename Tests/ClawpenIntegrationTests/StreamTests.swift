import ClawpenTestSupport
import Foundation
import XCTest

/// The agent runtime against the real daemon: output as it is written, stdin with its end, a
/// terminal with resizes, attach by several clients, logs, list, signals (docs/protocol.md,
/// "Streaming, stdin, terminals, attach and logs").
final class StreamTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
    }
    override func tearDown() { daemon?.cleanup() }

    func testOutputArrivesAsWrittenInOrderAndIsStillCaptured() throws {
        let c = try StreamClient(daemon)
        let (id, jobID) = c.streamSubmit("a", ["sh", "-c", "echo one; sleep 1; echo two >&2; sleep 0.2; echo three"])
        XCTAssertNotNil(jobID, "accepted carries the job")
        let start = Date()
        guard let first = c.next() else { return XCTFail("no output frame") }
        // The first line comes while the job sleeps, not when it ends.
        XCTAssertLessThan(Date().timeIntervalSince(start), 0.8, "the first line arrived before the job ended")
        XCTAssertEqual(first["type"]?.stringValue, "output")
        XCTAssertEqual(first["job_id"]?.stringValue, jobID)
        XCTAssertEqual(StreamClient.text([first]), "one\n")
        let (rest, final) = c.until("job", id: id)
        let frames = [first] + rest
        XCTAssertEqual(StreamClient.text(frames), "one\nthree\n")
        XCTAssertEqual(StreamClient.text(frames, stream: "stderr"), "two\n")
        // In write order across the streams (as far as the worker's reads can tell: two writes
        // to two pipes within one poll are read stdout first): seq grows, stderr's line between.
        let seqs = frames.compactMap { $0["seq"]?.intValue }
        XCTAssertEqual(seqs, seqs.sorted(), "seq in order")
        XCTAssertEqual(Set(seqs).count, seqs.count)
        let streams = frames.map { $0["stream"]?.stringValue ?? "" }
        XCTAssertEqual(streams, ["stdout", "stderr", "stdout"])
        XCTAssertEqual(frames.last?["offset"]?.intValue, 4, "offset within its stream")
        XCTAssertEqual(final?["job"]?["state"]?.stringValue, "succeeded")
        XCTAssertEqual(final?["job"]?["stdout"]?.stringValue, "one\nthree\n", "still captured")
    }

    func testBytesThatAreNotUTF8AreKeptInBase64() throws {
        let job = try daemon.run("a", ["sh", "-c", "printf 'a\\377b'; printf ok >&2"])
        let j = try JSONValue.parse(Array(runCLI(["job", "get", "--json", job.id], socket: daemon.socket).stdout.utf8))
        XCTAssertEqual(j["stdout_b64"]?.stringValue, Data([0x61, 0xFF, 0x62]).base64EncodedString())
        XCTAssertEqual(j["stdout"]?.stringValue, "a\u{FFFD}b")
        XCTAssertNil(j["stderr_b64"], "only for a stream that is not UTF-8")
    }

    func testCLIPrintsOutputAsItIsWritten() throws {
        // The CLI's stdout is a pipe we read as it comes.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Daemon.clawpen)
        p.arguments = ["submit", "--tenant", "a", "--", "sh", "-c", "echo early; sleep 2; echo late"]
        p.environment = ["CLAWPEN_SOCKET": daemon.socket]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let start = Date()
        let first = out.fileHandleForReading.availableData
        XCTAssertEqual(String(decoding: first, as: UTF8.self), "early\n")
        XCTAssertLessThan(Date().timeIntervalSince(start), 1.5, "printed while the job ran")
        let rest = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(String(decoding: rest, as: UTF8.self), "late\n")
        XCTAssertEqual(p.terminationStatus, 0)
    }

    func testStdinStaysOpenUntilEOF() throws {
        let c = try StreamClient(daemon)
        let (id, jobID) = c.streamSubmit("a", ["sh", "-c", "read x; echo got $x; cat; echo end"], extra: [("stdin_open", .bool(true))])
        guard let jobID else { return XCTFail("not accepted") }
        let i1 = c.input(jobID, "hello\n")
        let (_, reply) = c.until("input", id: i1)
        XCTAssertEqual(reply?["bytes"]?.intValue, 6)
        var frames: [JSONValue] = []
        while StreamClient.text(frames) != "got hello\n", let f = c.next() { frames.append(f) }
        XCTAssertEqual(StreamClient.text(frames), "got hello\n", "the job answers before its stdin ends")
        _ = c.input(jobID, "rest", eof: true)
        let (more, final) = c.until("job", id: id)
        XCTAssertEqual(StreamClient.text(frames + more), "got hello\nrestend\n")
        XCTAssertEqual(final?["job"]?["state"]?.stringValue, "succeeded")
        XCTAssertEqual(final?["job"]?["stdin_open"], .bool(true))
        XCTAssertEqual(final?["job"]?["timeout_s"]?.doubleValue, 600, "interactive jobs default to interactive_timeout_max_s")
        // After the end: refused, saying why.
        let late = c.input(jobID, "x")
        let (_, refused) = c.until("error", id: late)
        XCTAssertEqual(refused?["error"]?["code"]?.stringValue, "invalid_request")
        // An unknown job, and a job that takes no input.
        let unknown = c.input("0196a0c3e2f1-5b7d2c9a01e4f388", "x")
        XCTAssertEqual(c.until("error", id: unknown).frame?["error"]?["code"]?.stringValue, "unknown_job")
        let plain = try daemon.detach("a", ["sleep", "2"])
        let noStdin = c.input(plain.id, "x")
        let msg = c.until("error", id: noStdin).frame?["error"]?["message"]?.stringValue ?? ""
        XCTAssertTrue(msg.contains("stdin_open"), msg)
    }

    func testCLIInteractiveStdinStreams() throws {
        let r = try runCLI(["submit", "-i", "--tenant", "a", "--", "sh", "-c", "cat; echo done"], socket: daemon.socket, stdin: "abc\n")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(r.stdout, "abc\ndone\n")
    }

    func testTerminalSizeAndResize() throws {
        let c = try StreamClient(daemon)
        let (id, jobID) = c.streamSubmit(
            "a", ["sh", "-c", "stty size; tty; read x; stty size"],
            extra: [("stdin_open", .bool(true)), ("tty", .bool(true)), ("rows", .int(30)), ("cols", .int(90))])
        guard let jobID else { return XCTFail("not accepted") }
        var frames: [JSONValue] = []
        while !StreamClient.text(frames).contains("/dev/pts/"), let f = c.next() { frames.append(f) }
        let before = StreamClient.text(frames)
        XCTAssertTrue(before.hasPrefix("30 90\r\n"), "a terminal of the size asked, with CRLF: \(before.debugDescription)")
        XCTAssertTrue(before.contains("/dev/pts/0"), "its own devpts: the first terminal of the instance: \(before)")
        let rz = c.send("job.resize", [("job_id", .string(jobID)), ("rows", .int(50)), ("cols", .int(132))])
        XCTAssertEqual(c.until("ok", id: rz).frame?["job_id"]?.stringValue, jobID)
        _ = c.input(jobID, "go\n")
        let (after, final) = c.until("job", id: id)
        XCTAssertTrue(StreamClient.text(after).contains("50 132"), StreamClient.text(after))
        XCTAssertEqual(final?["job"]?["tty"], .bool(true))
        XCTAssertEqual(final?["job"]?["state"]?.stringValue, "succeeded")
        // Only a terminal job can be resized.
        let plain = try daemon.detach("a", ["sleep", "2"])
        XCTAssertTrue(eventually { (try? daemon.connect().job(.jobGet(jobID: plain.id)).job.state) == .running })
        let bad = c.send("job.resize", [("job_id", .string(plain.id)), ("rows", .int(5)), ("cols", .int(5))])
        XCTAssertEqual(c.until("error", id: bad).frame?["error"]?["code"]?.stringValue, "invalid_request")
    }

    func testEOFOnATerminalEndsTheJobsInput() throws {
        let c = try StreamClient(daemon)
        let (id, jobID) = c.streamSubmit("a", ["cat"], extra: [("stdin_open", .bool(true)), ("tty", .bool(true))])
        guard let jobID else { return XCTFail("not accepted") }
        _ = c.input(jobID, "", eof: true)
        let final = c.until("job", id: id).frame?["job"]
        XCTAssertEqual(final?["state"]?.stringValue, "succeeded", "ctrl-D ended cat: \(final?.text ?? "no final frame")")
    }

    func testTwoClientsAttachAndOneComesBack() throws {
        let job = try daemon.detach("a", ["sh", "-c", "i=0; while [ $i -lt 12 ]; do echo line $i; i=$((i+1)); sleep 0.25; done"])
        XCTAssertTrue(eventually { (try? daemon.connect().job(.jobGet(jobID: job.id)).job.state) == .running })
        usleep(400_000)
        var a: StreamClient? = try StreamClient(daemon)
        let b = try StreamClient(daemon)
        guard let aid = a?.send("job.attach", [("job_id", .string(job.id)), ("replay", .bool(true))]) else { return }
        let bid = b.send("job.attach", [("job_id", .string(job.id))])
        XCTAssertEqual(a?.until("attached", id: aid).frame?["job"]?["state"]?.stringValue, "running")
        XCTAssertNotNil(b.until("attached", id: bid).frame)
        // a: from the start (a replay), then live.
        var af: [JSONValue] = []
        while !StreamClient.text(af).contains("line 4"), let f = a?.next() { af.append(f) }
        XCTAssertTrue(StreamClient.text(af).hasPrefix("line 0\n"), StreamClient.text(af))
        XCTAssertTrue(af.first?["replay"] == .bool(true), "the kept output comes marked as a replay")
        // a goes away; the job goes on for b.
        a = nil
        var bf: [JSONValue] = []
        while !StreamClient.text(bf).contains("line 6"), let f = b.next() { bf.append(f) }
        XCTAssertFalse(StreamClient.text(bf).contains("line 0"), "b sees from the moment it attached")
        // A new client comes back with a replay of everything so far.
        let c = try StreamClient(daemon)
        let cid = c.send("job.attach", [("job_id", .string(job.id)), ("replay", .bool(true))])
        let (cframes, cfinal) = c.until("job", id: cid)
        let all = (0..<12).map { "line \($0)\n" }.joined()
        XCTAssertEqual(StreamClient.text(cframes), all, "replay and live output without a gap or a repeat")
        XCTAssertEqual(cfinal?["job"]?["state"]?.stringValue, "succeeded")
        let (brest, bfinal) = b.until("job", id: bid)
        XCTAssertTrue(StreamClient.text(bf + brest).hasSuffix("line 11\n"))
        XCTAssertNotNil(bfinal)
    }

    func testDetachLeavesTheJobRunning() throws {
        let c = try StreamClient(daemon)
        let (id, jobID) = c.streamSubmit("a", ["sh", "-c", "sleep 1; echo finished"])
        guard let jobID else { return XCTFail("not accepted") }
        let d = c.send("job.detach", [("job_id", .string(jobID)), ("attach_id", .int(id))])
        XCTAssertNotNil(c.until("ok", id: d).frame)
        let done = try daemon.connect().job(.jobWait(jobID: jobID)).job
        XCTAssertEqual(done.state, .succeeded)
        XCTAssertEqual(done.stdout, "finished\n")
        // The detached stream got no final frame: the next frame is the answer to a ping.
        let p = c.send("ping", [])
        XCTAssertEqual(c.next()?["id"], .int(p))
    }

    func testLogsAndFollow() throws {
        let job = try daemon.detach("a", ["sh", "-c", "echo a; echo b >&2; sleep 1.5; echo c"])
        XCTAssertTrue(eventually { (try? daemon.connect().job(.jobGet(jobID: job.id)).job.state) == .running })
        usleep(300_000)
        let now = try runCLI(["job", "logs", job.id], socket: daemon.socket)
        XCTAssertEqual(now.status, 0, now.stderr)
        XCTAssertEqual(now.stdout, "a\n", "what is kept so far, at once")
        XCTAssertEqual(now.stderr, "b\n")
        let followed = try runCLI(["job", "logs", "--follow", job.id], socket: daemon.socket)
        XCTAssertEqual(followed.stdout, "a\nc\n", "until the job ends")
        let after = try runCLI(["job", "logs", job.id], socket: daemon.socket)
        XCTAssertEqual(after.stdout, "a\nc\n", "from the store once it ended")
        XCTAssertEqual(try runCLI(["job", "logs", "0196a0c3e2f1-5b7d2c9a01e4f388"], socket: daemon.socket).status, 64)
    }

    func testListFilters() throws {
        try daemon.createTenant("b")
        _ = try daemon.run("a", ["true"])
        _ = try daemon.run("a", ["false"])
        _ = try daemon.run("b", ["true"])
        let sleeper = try daemon.detach("a", ["sleep", "2"])
        XCTAssertTrue(eventually { (try? daemon.connect().job(.jobGet(jobID: sleeper.id)).job.state) == .running })
        func list(_ args: [String]) throws -> [JSONValue] {
            let r = try runCLI(["job", "list", "--json"] + args, socket: daemon.socket)
            XCTAssertEqual(r.status, 0, r.stderr)
            return try JSONValue.parse(Array(r.stdout.utf8)).arrayValue ?? []
        }
        XCTAssertEqual(try list(["--tenant", "a"]).count, 3)
        XCTAssertEqual(try list(["--tenant", "b"]).map { $0["tenant"]?.stringValue }, ["b"])
        XCTAssertEqual(try list(["--tenant", "a", "--state", "failed"]).map { $0["argv"]?.arrayValue?.first?.stringValue }, ["false"])
        let running = try list(["--state", "running"])
        XCTAssertEqual(running.map { $0["id"]?.stringValue }, [sleeper.id], "running comes from the supervisor's memory")
        XCTAssertEqual(try list(["--state", "queued"]).count, 0, "a running job is not listed as queued")
        let newest = try list(["--limit", "1"])
        XCTAssertEqual(newest.first?["id"]?.stringValue, sleeper.id, "newest first")
        XCTAssertNil(newest.first?["stdout"], "no output in a list")
        let table = try runCLI(["job", "list", "--tenant", "a"], socket: daemon.socket)
        XCTAssertTrue(table.stdout.contains(sleeper.id) && table.stdout.contains("running"), table.stdout)
        XCTAssertEqual(try runCLI(["job", "list", "--state", "bogus"], socket: daemon.socket).status, 64)
    }

    func testSignalReachesTheJobsProcessGroup() throws {
        // The shell traps TERM and says so: the signal reached it, and its child.
        let c = try StreamClient(daemon)
        let (id, jobID) = c.streamSubmit("a", ["sh", "-c", "trap 'echo caught TERM; exit 7' TERM; echo ready; sleep 30 & wait"])
        guard let jobID else { return XCTFail("not accepted") }
        var frames: [JSONValue] = []
        while !StreamClient.text(frames).contains("ready"), let f = c.next() { frames.append(f) }
        let s = c.send("job.signal", [("job_id", .string(jobID)), ("signal", .string("SIGTERM"))])
        XCTAssertNotNil(c.until("ok", id: s).frame)
        let (rest, final) = c.until("job", id: id)
        XCTAssertTrue(StreamClient.text(rest).contains("caught TERM"))
        XCTAssertEqual(final?["job"]?["exit_code"]?.intValue, 7)
        // Through the CLI: KILL ends a job with 128+9; a name that is no signal is refused.
        let sleeper = try daemon.detach("a", ["sleep", "30"])
        XCTAssertTrue(eventually { (try? daemon.connect().job(.jobGet(jobID: sleeper.id)).job.state) == .running })
        let bogus = try runCLI(["job", "signal", sleeper.id, "SIGBOGUS"], socket: daemon.socket)
        XCTAssertEqual(bogus.status, 64)
        XCTAssertTrue(bogus.stderr.contains("not a signal"), bogus.stderr)
        XCTAssertEqual(try runCLI(["job", "signal", sleeper.id, "INT"], socket: daemon.socket).status, 0)
        let ended = try runCLI(["job", "wait", sleeper.id], socket: daemon.socket)
        XCTAssertEqual(ended.status, 128 + 2)
        XCTAssertEqual(try runCLI(["job", "signal", sleeper.id, "INT"], socket: daemon.socket).status, 64, "a finished job")
    }

    func testInteractiveTimeoutKey() throws {
        let c = try StreamClient(daemon)
        let id = c.send(
            "submit",
            [
                ("tenant", .string("a")), ("argv", .array([.string("true")])), ("stdin_open", .bool(true)), ("timeout_s", .int(601)),
            ])
        let e = c.until("error", id: id).frame?["error"]
        XCTAssertEqual(e?["code"]?.stringValue, "quota_exceeded")
        XCTAssertEqual(e?["quota"]?.stringValue, "interactive_timeout_max_s")
        // The same timeout is fine for a pro tenant (3600).
        try daemon.createTenant("p", tier: "pro")
        let ok = c.send(
            "submit",
            [
                ("tenant", .string("p")), ("argv", .array([.string("true")])), ("stdin_open", .bool(true)), ("timeout_s", .int(601)),
                ("wait", .bool(true)),
            ])
        XCTAssertEqual(c.until("job", id: ok).frame?["job"]?["state"]?.stringValue, "succeeded")
    }

    private func eventually(_ body: () -> Bool) -> Bool { daemon.eventually(10) { body() } }
}
