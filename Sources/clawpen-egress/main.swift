import CClawpenShim
import ClawpenEgress
import ClawpenSystem
import Glibc

// clawpen-egress: the egress proxy, started only by `clawpen serve` (docs/egress.md). It parses
// what tenants' jobs send to the internet, so before it reads a byte of it, and before it starts
// a thread, it confines itself: a read-only root of its libraries only (no state dir, no
// workspaces, no /proc), its own mount, pid, ipc and uts namespaces (made by its clone), its own
// uid with no capabilities and no_new_privs, and the seccomp filter the supervisor compiled.

func fail(_ step: String, _ e: Int32, _ detail: String = "") -> Never {
    let text = "clawpen-egress: \(step)\(detail.isEmpty ? "" : " \(detail)"): \(errnoString(e))\n"
    _ = text.withCString { write(2, $0, strlen($0)) }
    exit(70)
}

var controlFD: Int32 = -1, reportFD: Int32 = -1, seccompFD: Int32 = -1
var uid: UInt32 = 0, gid: UInt32 = 0
var binds: [String] = []
var args = CommandLine.arguments.dropFirst().makeIterator()
while let a = args.next() {
    guard let v = args.next() else { fail("usage: \(a) needs a value", EINVAL) }
    switch a {
    case "--control-fd": controlFD = Int32(v) ?? -1
    case "--report-fd": reportFD = Int32(v) ?? -1
    case "--seccomp-fd": seccompFD = Int32(v) ?? -1
    case "--uid": uid = UInt32(v) ?? 0
    case "--gid": gid = UInt32(v) ?? 0
    case "--bind": binds.append(v)
    default: fail("usage: unknown option \(a)", EINVAL)
    }
}
guard controlFD >= 0, reportFD >= 0, uid > 0, gid > 0 else { fail("usage: --control-fd, --report-fd, --uid and --gid are required", EINVAL) }

// 1. The seccomp program, read while the fd can still be read.
var program: [UInt8] = []
if seccompFD >= 0 {
    program = Files.readAll(seccompFD, limit: 1 << 20)
    close(seccompFD)
}
// 2. A root of read-only binds only.
if geteuid() == 0 {
    var step: Int32 = 0
    var failedPath: UnsafePointer<CChar>?
    let cPaths = binds.map { strdup($0) }
    let rc = cPaths.map { UnsafePointer($0) }.withUnsafeBufferPointer { cp_confine_root($0.baseAddress, $0.count, &step, &failedPath) }
    if rc != 0 { fail(String(cString: cp_confine_step_name(step)), errno, failedPath.map { String(cString: $0) } ?? "") }
    for p in cPaths { free(p) }
    // 3. Its own uid: no capabilities, no way back, no_new_privs.
    var idStep: Int32 = 0
    if cp_drop_identity(uid, gid, &idStep) != 0 { fail(String(cString: cp_identity_step_name(idStep)), errno) }
}
// Every relayed connection holds two sockets and, relayed in the kernel, two pipes (four fds): a
// soft limit of 1024 (systemd's default for services) would cap the proxy far below the tenants'
// egress_max_connections. The hard limit is the operator's; the soft one goes up to it.
var files = rlimit()
if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0, files.rlim_cur < files.rlim_max {
    files.rlim_cur = files.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
}
// 4. Seccomp last: from here on the process is what it will be while it serves.
if !program.isEmpty {
    let rc = program.withUnsafeBytes { cp_install_seccomp($0.baseAddress, $0.count) }
    if rc != 0 { fail("install seccomp", errno) }
}
EgressServer(controlFD: controlFD, reportFD: reportFD).run()
