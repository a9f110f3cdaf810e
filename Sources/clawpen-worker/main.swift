// clawpen-worker: one per tenant, started only by the supervisor (`clawpen serve`).
//   clawpen-worker --fd N [--netns] [--tenant NAME --root WORKSPACE]
// It serves jobs over the socketpair at fd N until the supervisor tells it to stop or goes away.
// Without --tenant it is a spare: the tenant and its workspace come with its configure frame.
import ClawpenWire
import ClawpenWorkerCore
import Glibc

func fail(_ message: String) -> Never {
    var line = "clawpen-worker: \(message)\n"
    line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    exit(64)
}

var tenant: String?
var root: String?
var fd: Int32?
var netns = false
var args = CommandLine.arguments.dropFirst().makeIterator()
while let arg = args.next() {
    switch arg {
    case "--tenant": tenant = args.next()
    case "--root": root = args.next()
    case "--fd": fd = args.next().flatMap { Int32($0) }
    case "--netns": netns = true
    case "--help", "-h":
        print("clawpen-worker --fd N [--netns] [--tenant NAME --root WORKSPACE]\n(started by `clawpen serve`; not for direct use)")
        exit(0)
    default: fail("unknown argument '\(arg)' (this program is started by `clawpen serve`)")
    }
}
guard let fd else { fail("--fd is required (this program is started by `clawpen serve`)") }
var name: TenantName?
if let tenant {
    do { name = try TenantName(validating: tenant) } catch { fail(error.description) }
}
Worker(config: WorkerConfig(tenant: name, root: root, socketFD: fd, ownNetworkNamespace: netns)).run()
