import ClawpenTestSupport
import Foundation
import XCTest

/// `clawpen tenant inspect`: what a live worker actually has, read from the kernel, beside what
/// the policy asks. On this host the cgroup2 hierarchy has no memory, pids or cpu controller,
/// so those limits are not in force and inspect must say so (a mismatch, exit 1): the honest
/// mismatch case. The VM test checks the same facts with real controllers.
final class TenantInspectTests: XCTestCase {
    var daemon: Daemon!
    override func setUpWithError() throws {
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["l": "network = \"loopback\"\n"])
        daemon = try Daemon(dir: dir, policies: pol).start()
        try daemon.createTenant("a")
        try daemon.createTenant("l")
    }
    override func tearDown() { daemon?.cleanup() }

    func facts(_ tenant: String) throws -> (status: Int32, byName: [String: JSONValue], json: JSONValue) {
        let r = try runCLI(["tenant", "inspect", tenant, "--json"], socket: daemon.socket)
        let json = try JSONValue.parse(Array(r.stdout.utf8))
        var byName: [String: JSONValue] = [:]
        for f in json["facts"]?.arrayValue ?? [] { if let n = f["fact"]?.stringValue { byName[n] = f } }
        return (r.status, byName, json)
    }

    func testNoWorkerRunningSaysSoAndExits3() throws {
        let r = try runCLI(["tenant", "inspect", "a"], socket: daemon.socket)
        XCTAssertEqual(r.status, 3, r.stdout + r.stderr)
        XCTAssertTrue(r.stdout.contains("no running worker"), r.stdout)
        let unknown = try runCLI(["tenant", "inspect", "nobody"], socket: daemon.socket)
        XCTAssertEqual(unknown.status, 64, unknown.stderr)
    }

    func testLiveWorkerFactsAreReadFromTheKernel() throws {
        _ = try daemon.run("l", ["true"])
        let (status, f, json) = try facts("l")
        let uid = try daemon.connect().tenant(.tenantShow(name: .t("l"))).uid
        let pid = Int32(json["worker_pid"]?.intValue ?? -1)
        XCTAssertGreaterThan(pid, 0)
        XCTAssertEqual(f["uid"]?["actual"]?.stringValue, "\(uid) \(uid) \(uid) \(uid)")
        // The worker's own /proc status, read independently here.
        let procStatus = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        XCTAssertTrue(procStatus.contains("Uid:\t\(uid)\t\(uid)\t\(uid)\t\(uid)"))
        for name in [
            "uid", "gid", "supplementary groups", "capabilities inh", "capabilities prm", "capabilities eff",
            "capabilities bnd", "capabilities amb", "no_new_privs", "seccomp mode", "seccomp filters",
            "namespace mnt", "namespace pid", "namespace net", "namespace ipc", "namespace uts", "namespace cgroup",
            "root", "home", "cgroup", "network interfaces up", "job isolation",
        ] {
            XCTAssertEqual(f[name]?["ok"]?.boolValue, true, "\(name): \(f[name].map { "\($0)" } ?? "missing")")
        }
        XCTAssertEqual(f["namespace net"]?["actual"]?.stringValue, try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/net"))
        XCTAssertEqual(f["network interfaces up"]?["actual"]?.stringValue, "lo")
        XCTAssertEqual(f["seccomp filters"]?["actual"]?.stringValue, "1")
        // The limits are read back from the tenant's cgroup files: without controllers there
        // are none, and that is a mismatch, not a claim.
        let hasMemory = (try daemon.status()["supervisor"]?["cgroup"]?["enabled_controllers"]?.arrayValue ?? []).contains(.string("memory"))
        if !hasMemory {
            XCTAssertEqual(f["memory.max"]?["ok"]?.boolValue, false)
            XCTAssertTrue(f["memory.max"]?["actual"]?.isNull == true, "\(f["memory.max"].map { "\($0)" } ?? "")")
            XCTAssertEqual(status, 1, "a limit the kernel does not hold here is a mismatch: exit 1")
            XCTAssertGreaterThan(json["mismatches"]?.intValue ?? 0, 0)
        } else {
            XCTAssertEqual(f["memory.max"]?["ok"]?.boolValue, true)
        }
        // The table form says the same.
        let table = try runCLI(["tenant", "inspect", "l"], socket: daemon.socket)
        XCTAssertEqual(table.status, status)
        XCTAssertTrue(table.stdout.contains("FACT"), table.stdout)
    }

    func testAMismatchInTheNetworkIsReported() throws {
        // Tenant a asks for network "none" (no interface up); whether lo is up is read from its
        // worker's namespace, and a disagreement is reported, never hidden.
        _ = try daemon.run("a", ["true"])
        let (_, f, _) = try facts("a")
        let up = f["network interfaces up"]
        XCTAssertEqual(up?["expected"]?.stringValue, "none")
        XCTAssertEqual(up?["ok"]?.boolValue, up?["actual"]?.stringValue == "none", "\(up.map { "\($0)" } ?? "")")
    }

    func testInspectIsForOperatorsOnly() throws {
        _ = try daemon.run("a", ["true"])
        // uid 65534 (nobody) is no operator.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
        p.arguments = ["--reuid", "65534", "--regid", "65534", "--clear-groups", Daemon.clawpen, "tenant", "inspect", "a", "--socket", daemon.socket]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        chmod(daemon.dir, 0o711)
        chmod(daemon.socket, 0o666) // the caller reaches the socket; access.toml decides what it may do
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 77, text)
        XCTAssertTrue(text.contains("permission_denied") && text.contains("tenant inspect"), text)
    }
}
