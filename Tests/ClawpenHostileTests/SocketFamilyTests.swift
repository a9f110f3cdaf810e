import ClawpenTestSupport
import Foundation
import XCTest

/// Socket families: only AF_UNIX, AF_INET, AF_INET6 and netlink for routing reach the kernel
/// from a job; AF_VSOCK (not confined by network namespaces: on this host, itself a VM, it
/// reaches the hypervisor), AF_ALG, AF_PACKET, AF_KEY, the other netlink protocols and the rest
/// are refused by the seccomp profile's argument rule on socket(2)'s domain (EPERM).
///
/// Safety: the gate proves the sandbox; the probes only create sockets and close them (nothing
/// is connected, bound or sent), so a broken filter fails the test without reaching anything.
final class SocketFamilyTests: XCTestCase {
    var daemon: Daemon!

    override func setUpWithError() throws {
        daemon = try Daemon().start()
        try daemon.createTenant("a")
        try daemon.assertSandboxed("a")
    }

    override func tearDown() { daemon?.cleanup() }

    /// (family, type, protocol, name) of every probe; the same list runs on the host first.
    static let probes = """
        import socket, errno
        probes = [
            (socket.AF_UNIX, socket.SOCK_STREAM, 0, "unix"),
            (socket.AF_INET, socket.SOCK_STREAM, 0, "inet"),
            (socket.AF_INET6, socket.SOCK_DGRAM, 0, "inet6"),
            (socket.AF_NETLINK, socket.SOCK_RAW, 0, "netlink-route"),
            (40, socket.SOCK_STREAM, 0, "vsock"),
            (38, socket.SOCK_SEQPACKET, 0, "alg"),
            (17, socket.SOCK_DGRAM, 0, "packet"),
            (15, socket.SOCK_RAW, 2, "key"),
            (socket.AF_NETLINK, socket.SOCK_RAW, 15, "netlink-uevent"),
            (socket.AF_NETLINK, socket.SOCK_RAW, 9, "netlink-audit"),
            (socket.AF_NETLINK, socket.SOCK_RAW, 12, "netlink-netfilter"),
            (socket.AF_NETLINK, socket.SOCK_RAW, 16, "netlink-generic"),
            (4, socket.SOCK_DGRAM, 0, "ipx"),
            (30, socket.SOCK_RDM, 0, "tipc"),
            (44, socket.SOCK_RAW, 0, "xdp"),
        ]
        for fam, typ, proto, name in probes:
            try:
                s = socket.socket(fam, typ, proto); s.close(); print(name, "OPEN")
            except OSError as e:
                print(name, "refused", errno.errorcode.get(e.errno, e.errno))
        try:
            a, b = socket.socketpair(socket.AF_UNIX); a.close(); b.close(); print("socketpair-unix OPEN")
        except OSError as e: print("socketpair-unix refused", e.errno)
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        sv = (ctypes.c_int * 2)()
        r = libc.socketpair(40, socket.SOCK_STREAM, 0, sv)
        print("socketpair-vsock", "OPEN" if r == 0 else "refused", errno.errorcode.get(ctypes.get_errno(), ""))
        """

    func results(_ output: String) -> [String: String] {
        var out: [String: String] = [:]
        for line in output.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count >= 2 { out[String(parts[0])] = parts.dropFirst().joined(separator: " ") }
        }
        return out
    }

    func testOnlyUnixInetInet6AndNetlinkRouteSocketsOpen() throws {
        // On the host (as root, outside any sandbox) the refused families exist: the refusal
        // inside is the filter's, not a kernel without them.
        let host = Process()
        host.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        host.arguments = ["python3", "-c", Self.probes]
        let pipe = Pipe()
        host.standardOutput = pipe
        try host.run()
        let hostOut = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        host.waitUntilExit()
        let onHost = results(hostOut)

        let job = try daemon.run("a", ["python3", "-c", Self.probes])
        XCTAssertEqual(job.state, .succeeded, job.stderr)
        let inside = results(job.stdout)
        for name in ["unix", "inet", "inet6", "netlink-route", "socketpair-unix"] {
            XCTAssertEqual(inside[name], "OPEN", "\(name) is what jobs need: \(job.stdout)")
        }
        for name in [
            "vsock", "alg", "packet", "key", "netlink-uevent", "netlink-audit", "netlink-netfilter", "netlink-generic", "ipx", "tipc", "xdp",
            "socketpair-vsock",
        ] {
            XCTAssertEqual(inside[name]?.hasPrefix("refused EPERM"), true, "\(name) must be refused by the filter (EPERM): \(inside[name] ?? "missing")")
        }
        // AF_VSOCK opens on this host (a VM): the filter, not the kernel, refused it inside. For
        // the others EPERM is the filter's answer too: a kernel without the family says
        // EAFNOSUPPORT (as this host does for AF_ALG, whose module is not loaded).
        XCTAssertEqual(onHost["vsock"], "OPEN", "the host has AF_VSOCK (this machine is a VM): \(hostOut)")
    }

    func testIpAndInterfaceListingsWorkThroughNetlinkRoute() throws {
        // The reason netlink-route is allowed: tools read the job's own interfaces with it.
        let job = try daemon.run("a", ["sh", "-c", "ip -o link show lo && python3 -c 'import socket; print(socket.if_nameindex())'"])
        XCTAssertEqual(job.state, .succeeded, job.stdout + job.stderr)
        XCTAssertTrue(job.stdout.contains("lo:"), job.stdout)
        XCTAssertTrue(job.stdout.contains("'lo'"), job.stdout)
        // Reading only: changing an interface needs CAP_NET_ADMIN, which no job has.
        let change = try daemon.run("a", ["ip", "link", "set", "lo", "mtu", "1400"])
        XCTAssertNotEqual(change.exitCode, 0, "a job changed an interface: \(change.stdout)")
    }

    func testStrictProfileRefusesSocketsAltogether() throws {
        daemon.cleanup()
        let dir = try Daemon.tempDir()
        let pol = try Daemon.policiesWithOverrides(in: dir, ["s": "seccomp_profile = \"strict\"\n"])
        daemon = try Daemon(dir: dir, policies: pol).start()
        try daemon.createTenant("s")
        let job = try daemon.run("s", ["python3", "-c", Self.probes])
        let inside = results(job.stdout)
        XCTAssertEqual(inside["socketpair-unix"], "OPEN", job.stdout + job.stderr)
        for name in ["unix", "inet", "inet6", "netlink-route", "vsock", "alg", "socketpair-vsock"] {
            XCTAssertEqual(inside[name]?.hasPrefix("refused EPERM"), true, "\(name): \(inside[name] ?? "missing") \(job.stderr)")
        }
    }
}
