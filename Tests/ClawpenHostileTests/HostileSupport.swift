import ClawpenTestSupport
import Foundation
import XCTest

extension Daemon {
    /// The gate of every hostile test: `tenant`'s jobs run as a non-root uid, in their own mount
    /// namespace, with no_new_privs. Without it the test fails (and is skipped) before it attacks.
    func assertSandboxed(_ tenant: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let probe = try run(tenant, ["sh", "-c", "id -u; readlink /proc/self/ns/mnt; grep NoNewPrivs /proc/self/status"])
        let lines = probe.stdout.split(separator: "\n").map(String.init)
        let hostMnt = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/mnt")) ?? "?"
        guard lines.count == 3, lines[0] != "0", lines[1] != hostMnt, lines[2].hasSuffix("1") else {
            XCTFail("the sandbox is not there (uid, mount namespace, no_new_privs): \(probe.stdout) \(probe.stderr); not attacking", file: file, line: line)
            throw XCTSkip("no sandbox")
        }
    }

    /// The tenant's uid, as its jobs see it.
    func uid(of tenant: String) throws -> UInt32 {
        UInt32(try run(tenant, ["id", "-u"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
    }

    /// Kills the tenant's worker and waits until it is gone, so that its next job starts a new one.
    func restartWorker(_ tenant: String) throws {
        guard let worker = try tenantStatus(tenant)["worker_pid"]?.intValue else { return }
        kill(Int32(worker), SIGKILL)
        XCTAssertTrue(eventually { (try? tenantStatus(tenant)["worker_pid"]?.intValue) != worker })
    }
}

/// Runs a host command as `nobody` (uid and gid 65534, no groups): a host user with no claim on
/// any workspace.
func runAsNobody(_ argv: [String]) throws -> (status: Int32, output: String) {
    // Through sh: setpriv looks up its own command before it is nobody's, sh's lookups are nobody's.
    try runCapturing(
        ["/usr/bin/setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--", "/bin/sh", "-c", "exec \"$0\" \"$@\""] + argv)
}

/// Runs a host command as root and returns what it wrote (stdout and stderr together).
func runHostCommand(_ argv: [String]) throws -> String { try runCapturing(argv).output }

/// Runs `argv` (an absolute path first) and waits for it: its status and its stdout and stderr together.
func runCapturing(_ argv: [String]) throws -> (status: Int32, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}
