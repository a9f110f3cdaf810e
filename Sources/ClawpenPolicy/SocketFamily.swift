/// The address families a seccomp profile may let a job open sockets of (`socket_families`).
///
/// Only what jobs need: Unix sockets, IPv4 and IPv6 (each confined to the tenant's own network
/// namespace), and netlink for routing only (`netlink-route`: socket(AF_NETLINK, *,
/// NETLINK_ROUTE), which `ip addr`, getifaddrs(3) and so Node's os.networkInterfaces() and
/// Python's socket.if_nameindex() use to read the interfaces; a job has no CAP_NET_ADMIN, so it
/// can only read, and only its own namespace). Everything else is refused by an argument rule on
/// socket(2)'s domain, as Docker's default profile refuses AF_VSOCK: AF_VSOCK is not confined by
/// network namespaces (on a host that is itself a VM, it reaches the hypervisor), AF_ALG is the
/// kernel's crypto API, AF_PACKET and AF_KEY are raw link-layer and IPsec key sockets, and the
/// other netlink protocols (uevents, audit, netfilter, xfrm) reach host-wide kernel state.
public enum SocketFamily: String, CaseIterable, Sendable {
    case unix
    case inet
    case inet6
    case netlinkRoute = "netlink-route"

    /// What a profile without `socket_families` gets.
    public static let defaults: [SocketFamily] = [.unix, .inet, .inet6]

    static let refusedNote = "vsock, alg, packet, key and the other families are refused on purpose: see docs/sandbox.md"

    /// The domain argument of socket(2) (AF_*; the same on x86_64 and aarch64).
    public var domain: UInt64 {
        switch self {
        case .unix: return 1
        case .inet: return 2
        case .inet6: return 10
        case .netlinkRoute: return 16
        }
    }

    /// The protocol argument the family is limited to (NETLINK_ROUTE = 0), nil for any.
    public var protocolArgument: UInt64? { self == .netlinkRoute ? 0 : nil }
}
