import ClawpenTestSupport
import Foundation
import XCTest

/// Memory without a memory controller (this host: cgroup2 has none). The per-process RLIMIT_AS
/// fallback does not bound a tenant, so `status` must not call it a memory limit, `serve
/// --require-cgroup-limits` refuses to start, the IPC namespace's SysV shm is bounded by the
/// tenant's memory limit, and a tenant's IPC objects go with its worker. That memory across
/// processes, memfd and shm all count against memory.max where the controller exists is shown
/// in the VM (scripts/vm/checks.sh).
///
/// Safety: the gate proves the sandbox; the shm segments made here live in the tenant's own IPC
/// namespace and are at most 128 MiB.
final class MemoryLimitTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon(extraArgs: ["--idle-timeout", "1"]).start()
        try daemon.createTenant("a")
        try daemon.assertSandboxed("a")
    }

    override func tearDown() { daemon?.cleanup() }

    var hasMemoryController: Bool {
        get throws { (try daemon.status()["supervisor"]?["cgroup"]?["enabled_controllers"]?.arrayValue ?? []).contains(.string("memory")) }
    }

    func testStatusDoesNotCallThePerProcessRlimitAMemoryLimit() throws {
        guard try !hasMemoryController else { throw XCTSkip("this host has a memory controller: status says cgroup (checked in the VM)") }
        let t = try daemon.tenantStatus("a")
        XCTAssertEqual(t["enforcement"]?["memory"]?.stringValue, "per-process-rlimit")
        let warnings = (try daemon.status()["supervisor"]?["warnings"]?.arrayValue ?? []).compactMap(\.stringValue)
        let memory = warnings.first { $0.hasPrefix("memory:") }
        XCTAssertNotNil(memory, "\(warnings)")
        XCTAssertTrue(memory?.contains("not a memory limit for the tenant") == true, memory ?? "")
        XCTAssertTrue(daemon.log.contains("memory: no memory controller"), "serve logs the warning at start: \(daemon.log.suffix(2000))")
        // The reason it is not a limit, shown: three processes of one job each take most of
        // memory_max (256 MiB) at once, together far more than the limit.
        let job = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import os, time
                kids = []
                for i in range(3):
                    r, w = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(r)
                        b = bytearray(160 << 20)
                        for j in range(0, len(b), 4096): b[j] = 1
                        os.write(w, b"x"); time.sleep(1); os._exit(0)
                    os.close(w); kids.append((pid, r))
                got = sum(len(os.read(r, 1)) for _, r in kids)
                for pid, _ in kids: os.waitpid(pid, 0)
                print("processes holding 160 MiB each at once:", got)
                """,
            ], timeout: 30)
        XCTAssertTrue(job.stdout.contains("at once: 3"), "RLIMIT_AS is per process: \(job.stdout) \(job.stderr)")
    }

    func testRequireCgroupLimitsRefusesToStartWithoutControllers() throws {
        guard try !hasMemoryController else { throw XCTSkip("this host has the controllers") }
        let d2 = try Daemon(extraArgs: ["--require-cgroup-limits"])
        defer { d2.cleanup() }
        let r = try runCLI(d2.serveArguments, socket: nil)
        XCTAssertEqual(r.status, 78, "EX_CONFIG: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("--require-cgroup-limits: the tenant cgroups have no memory"), r.stderr)
        XCTAssertTrue(r.stderr.contains("Delegate=yes"), "the message says how to fix it: \(r.stderr)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: d2.socket), "it never served")
    }

    func testSysVSharedMemoryIsBoundedByTheTenantsMemoryLimit() throws {
        let job = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                libc.shmget.restype = ctypes.c_int
                print(open("/proc/sys/kernel/shmmax").read().strip(), open("/proc/sys/kernel/shmall").read().strip(), open("/proc/sys/kernel/shmmni").read().strip())
                big = libc.shmget(0, (256 << 20) + 4096, 0o1600)   # IPC_PRIVATE, just above memory_max
                print("above the limit:", "MADE" if big >= 0 else "refused %d" % ctypes.get_errno())
                small = libc.shmget(0, 1 << 20, 0o1600)
                print("small:", "made" if small >= 0 else "refused %d" % ctypes.get_errno())
                if small >= 0: libc.shmctl(small, 0, None)  # IPC_RMID
                """,
            ])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let lines = job.stdout.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "268435456 65536 256", "shmmax = memory_max, shmall = its pages, shmmni from it: \(job.stdout)")
        XCTAssertTrue(job.stdout.contains("above the limit: refused 22"), "EINVAL above shmmax: \(job.stdout)")
        XCTAssertTrue(job.stdout.contains("small: made"), job.stdout)
        // The host's own limits are untouched.
        let hostShmmax = try String(contentsOfFile: "/proc/sys/kernel/shmmax", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertNotEqual(hostShmmax, "268435456")
    }

    /// Shmem in /proc/meminfo, bytes: where SysV shm pages are counted host-wide.
    func hostShmem() throws -> Int64 {
        let text = try String(contentsOfFile: "/proc/meminfo", encoding: .utf8)
        let line = text.split(separator: "\n").first { $0.hasPrefix("Shmem:") } ?? ""
        return (Int64(line.split(separator: " ").dropFirst().first ?? "0") ?? 0) * 1024
    }

    func testATenantsIPCObjectsGoWhenItsWorkerStops() throws {
        // A job leaves a 128 MiB segment behind, its pages touched, and exits without IPC_RMID.
        let before = try hostShmem()
        let make = try daemon.run(
            "a",
            [
                "python3", "-c",
                """
                import ctypes
                libc = ctypes.CDLL(None, use_errno=True)
                libc.shmat.restype = ctypes.c_void_p
                size = 128 << 20
                id = libc.shmget(0x5eed, size, 0o1600)   # IPC_CREAT | 0600
                addr = libc.shmat(id, None, 0)
                ctypes.memset(addr, 7, size)
                print("segment", id)
                """,
            ])
        XCTAssertEqual(make.state, .succeeded, make.stderr)
        let during = try hostShmem()
        let seen = try daemon.run("a", ["sh", "-c", "tail -n +2 /proc/sysvipc/shm | wc -l"])
        XCTAssertEqual(seen.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "1", "the segment outlives its job within the worker: \(seen.stdout)")
        XCTAssertGreaterThan(during - before, 100 << 20, "the segment's pages are resident (Shmem \(before) -> \(during))")
        // The worker stops (idle timeout): its IPC namespace dies with its last process, and the
        // kernel frees every segment in it.
        let pid = try daemon.tenantStatus("a")["worker_pid"]?.intValue
        XCTAssertTrue(try daemon.eventually(10) { try daemon.tenantStatus("a")["state"]?.stringValue == "idle" }, "the idle worker stopped")
        if let pid { XCTAssertTrue(try daemon.eventually(5) { kill(Int32(pid), 0) != 0 }) }
        let freed = try daemon.eventually(5) { try self.hostShmem() < during - (100 << 20) }
        let now = try hostShmem()
        XCTAssertTrue(freed, "the segment's 128 MiB went with the worker (Shmem \(during) -> \(now))")
        // A new worker of the same tenant starts with an empty IPC namespace.
        let after = try daemon.run("a", ["sh", "-c", "tail -n +2 /proc/sysvipc/shm | wc -l"])
        XCTAssertEqual(after.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "0", "no segment left: \(after.stdout)")
        // And the host never saw it.
        let hostSegments = try String(contentsOfFile: "/proc/sysvipc/shm", encoding: .utf8)
        XCTAssertFalse(hostSegments.split(separator: "\n").contains { $0.split(separator: " ").first == "24301" }, "key 0x5eed is not the host's")
    }
}
