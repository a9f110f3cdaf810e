import ClawpenTestSupport
import Foundation
import XCTest

/// A client that opens control socket connections without end (docs/reliability.md,
/// "Descriptors"): every one is a descriptor of the supervisor. Before `--max-clients-per-uid`
/// and `--max-clients` one leaking service could take the supervisor to its RLIMIT_NOFILE. The
/// attack is harmless if it works: it only holds connections of the test's own daemon.
final class ControlConnectionLimitTests: XCTestCase {
    var daemon: Daemon!

    override func tearDown() { daemon?.cleanup() }

    func start(_ args: [String]) throws {
        let dir = try Daemon.tempDir()
        chmod(dir, 0o755)
        daemon = try Daemon(extraArgs: args, dir: dir).start()
        chmod(daemon.socket, 0o666) // another uid reaches the socket (access.toml decides the rest)
    }

    func descriptors() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(daemon.pid)/fd").count) ?? -1 }

    func ping(_ s: RawSocket, id: Int64 = 1) -> JSONValue? {
        s.send(Framing.frame(JSONValue.object([("type", .string("ping")), ("id", .int(id))]).serialized()))
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        return s.readFrame()
    }

    /// A ping from uid 65534 (nobody), in a child process.
    func pingAsNobody() throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [
            "-c",
            """
            import os, socket, struct, json, sys
            os.setgroups([]); os.setgid(65534); os.setuid(65534)
            s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
            body = b'{"type":"ping","id":1}'; s.sendall(struct.pack(">I", len(body)) + body)
            n = struct.unpack(">I", s.recv(4))[0]; data = b""
            while len(data) < n: data += s.recv(n - len(data))
            print(json.loads(data)["type"])
            """,
            daemon.socket,
        ]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// A connection that is served: one accepted while an earlier one of the same uid is still
    /// closing on the daemon's side may be refused; it is tried again.
    func openServed() throws -> RawSocket? {
        for _ in 0..<100 {
            let s = try RawSocket(daemon.socket)
            if ping(s)?["type"]?.stringValue == "pong" { return s }
            usleep(20_000)
        }
        return nil
    }

    func testAUIDPastItsLimitIsToldWhyAndOtherUIDsAreServed() throws {
        try start(["--max-clients", "100", "--max-clients-per-uid", "12"])
        let status = try daemon.status()["supervisor"]?["clients"]?["control_connections"]
        XCTAssertEqual(status?["per_uid_limit"]?.intValue, 12, "\(String(describing: status))")
        XCTAssertEqual(status?["limit"]?.intValue, 100)
        XCTAssertEqual(status?["top_uids"]?.arrayValue?.first?["uid"]?.intValue, 0)
        let before = descriptors()
        // The test's own uid (root) holds all 12.
        var held: [RawSocket] = []
        for _ in 0..<12 { held.append(try XCTUnwrap(try openServed(), daemon.log)) }

        // Many more from the same uid: each is told the rule and closed, and costs no descriptor.
        var told = 0, closed = 0
        for _ in 0..<200 {
            let s = try RawSocket(daemon.socket)
            var tv = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(s.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            if let reply = s.readFrame(), reply["error"]?["code"]?.stringValue == "quota_exceeded",
                reply["error"]?["quota"]?.stringValue == "client_connections_per_uid"
            {
                told += 1
            }
            if s.isClosedByPeer() { closed += 1 }
        }
        XCTAssertEqual(told, 200, "every refused connection is told the rule: \(daemon.log)")
        XCTAssertEqual(closed, 200)
        XCTAssertLessThanOrEqual(descriptors() - before, 12 + 4, "the daemon holds no more than the limit's descriptors")
        XCTAssertTrue(daemon.log.contains("--max-clients-per-uid"), "the limit is logged, naming the flag: \(daemon.log)")
        // Going to the limit and back, over and over, is logged once per 10 s, not each time.
        for _ in 0..<20 {
            held.removeLast()
            held.append(try XCTUnwrap(try openServed()))
        }
        XCTAssertEqual(daemon.log.components(separatedBy: "a peer uid holds its limit").count - 1, 1, daemon.log)

        // Another uid is served throughout.
        XCTAssertEqual(try pingAsNobody(), "pong", daemon.log)

        // One closed: the uid is served again.
        held.removeLast()
        XCTAssertTrue(daemon.eventually(5) { (try? daemon.connect().call(.ping))?["type"]?.stringValue == "pong" })
        // The operator's view names it (root holds 11, the status request the 12th).
        var table = ""
        XCTAssertTrue(
            daemon.eventually(5) {
                table = (try? runCLI(["status"], socket: daemon.socket).stdout) ?? ""
                // 200 and more refused (a connection opened while another closes may be too).
                return table.contains("clients: control 12/100 connections, 2") && table.contains(" refused (uid 0 holds its 12)")
            }, table)
        XCTAssertTrue(
            daemon.eventually(5) { (try? daemon.status())?["supervisor"]?["clients"]?["control_connections"]?["refused_per_uid"]?.intValue ?? 0 >= 200 },
            daemon.log)
    }

    func testAtTheCommonLimitTheSocketWaitsAndTakesTheNextOnceOneCloses() throws {
        try start(["--max-clients", "12", "--max-clients-per-uid", "12"])
        var held: [RawSocket] = []
        for _ in 0..<12 { held.append(try XCTUnwrap(try openServed(), daemon.log)) }
        // The 13th is not accepted: it waits in the backlog, unanswered.
        let waiting = try RawSocket(daemon.socket)
        waiting.send(Framing.frame(JSONValue.object([("type", .string("ping")), ("id", .int(13))]).serialized()))
        var tv = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(waiting.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        XCTAssertNil(waiting.readFrame(), "not accepted while all are held")
        XCTAssertTrue(daemon.log.contains("--max-clients"), daemon.log)
        // One closes: the waiting one is accepted and answered.
        held.removeFirst()
        tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(waiting.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        XCTAssertEqual(waiting.readFrame()?["type"]?.stringValue, "pong", daemon.log)
    }
}
