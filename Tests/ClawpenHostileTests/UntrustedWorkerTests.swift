import ClawpenTestSupport
import Foundation
import XCTest

/// Everything a worker sends is untrusted: tenant code runs beside it. These stand in a fake
/// "worker" (a shell script given as --worker-path) that lies on the socketpair, and check that
/// the supervisor kills it, says why, and keeps serving.
final class UntrustedWorkerTests: XCTestCase {
    var daemons: [Daemon] = []
    override func tearDown() { daemons.forEach { $0.cleanup() } }

    /// A daemon whose workers are `script` (fd 3 is the supervisor socket).
    func daemon(worker script: String) throws -> Daemon {
        let dir = try Daemon.tempDir()
        let path = dir + "/fake-worker"
        try ("#!/bin/sh\n" + script + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
        let d = try Daemon(extraArgs: ["--worker-path", path], dir: dir)
        daemons.append(d)
        try d.start()
        try d.createTenant("a")
        return d
    }

    func check(_ script: String, says words: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let d = try daemon(worker: script)
        let job = try d.run("a", ["true"])
        XCTAssertEqual(job.state, .failed, file: file, line: line)
        XCTAssertEqual(job.error?.code, .workerCrashed, file: file, line: line)
        XCTAssertTrue(d.log.contains(words), "log names the misbehaviour '\(words)':\n\(d.log.suffix(2000))", file: file, line: line)
        XCTAssertNoThrow(try d.connect().call(.ping), file: file, line: line)
        XCTAssertNotNil(try d.tenantStatus("a")["last_error"]?.stringValue, file: file, line: line)
    }

    func testWorkerSendingGarbageIsKilled() throws {
        try check(#"printf '\000\000\000\005hello' >&3; sleep 30"#, says: "undecodable")
    }

    func testWorkerAnnouncingAHugeFrameIsKilled() throws {
        try check(#"printf '\177\377\377\377' >&3; sleep 30"#, says: "sent a frame of")
    }

    func testWorkerReportingAJobItWasNotGivenIsKilled() throws {
        // ready(pid 1), then started("nope", pid 1, slot 0)
        try check(
            #"printf '\000\000\000\005\001\000\000\000\001' >&3; printf '\000\000\000\021\003\000\000\000\004nope\000\000\000\001\000\000\000\000' >&3; sleep 30"#,
            says: "was not given")
    }

    func testWorkerSayingReadyTwiceIsKilled() throws {
        try check(#"printf '\000\000\000\005\001\000\000\000\001\000\000\000\005\001\000\000\000\001' >&3; sleep 30"#, says: "ready twice")
    }

    func testWorkerThatExitsAtOnceFailsJobsClearly() throws {
        try check("exit 3", says: "exited with status 3")
    }
}

/// The supervisor never follows a symlink a tenant (or anyone) planted in the workspace root.
final class SymlinkTests: XCTestCase {
    var daemon: Daemon!
    override func setUpWithError() throws { daemon = try Daemon().start() }
    override func tearDown() { daemon?.cleanup() }

    func testSymlinkAtTheWorkspacePathIsNotFollowed() throws {
        let target = daemon.dir + "/outside"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: daemon.workspaceRoot + "/evil", withDestinationPath: target)
        XCTAssertThrowsError(try daemon.createTenant("evil")) { e in
            XCTAssertTrue((e as? ClientError)?.message.contains("symlink") ?? false, "\(e)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: target), [], "nothing created through the link")
        XCTAssertThrowsError(try daemon.connect().tenant(.tenantShow(name: .t("evil"))), "no tenant record was made")
    }

    func testSymlinkAtHomeInsideTheWorkspaceIsNotFollowed() throws {
        let target = daemon.dir + "/outside-home"
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: daemon.workspaceRoot + "/planted", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: daemon.workspaceRoot + "/planted/home", withDestinationPath: target)
        XCTAssertThrowsError(try daemon.createTenant("planted"))
        var st = stat()
        XCTAssertEqual(stat(target, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o755, "the link's target was not chmod-ed")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: target), [])
    }
}
