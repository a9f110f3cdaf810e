import CSystemd
import Glibc

/// systemd's file descriptor store (FDSTORE=1): descriptors the service manager keeps for the
/// service across a restart and passes back at the next start, with their names
/// (sd_listen_fds_with_names). The supervisor keeps its workers' sockets and pidfds there over
/// an upgrade (docs/reliability.md, "Upgrade without killing tenants").
public enum FDStore {
    /// The store is there to use: started by systemd (NOTIFY_SOCKET) with a store of at least
    /// one descriptor. systemd 254 and later set FDSTORE= to FileDescriptorStoreMax=; an older
    /// one does not, and the unit sets it itself (Environment=FDSTORE=, docs/systemd.md).
    public static var capacity: Int {
        guard getenv("NOTIFY_SOCKET") != nil, let raw = getenv("FDSTORE"), let n = Int(String(cString: raw)), n > 0 else { return 0 }
        return n
    }

    /// Stores `fd` under `name` (dup'd by the manager; the caller keeps its own). false: not sent.
    @discardableResult
    public static func store(_ fd: Int32, name: String) -> Bool {
        var fds = [fd]
        return sd_pid_notify_with_fds(0, 0, "FDSTORE=1\nFDNAME=\(name)", &fds, 1) > 0
    }

    /// Drops the manager's copies of every descriptor stored under `name`.
    @discardableResult
    public static func remove(name: String) -> Bool {
        sd_notify(0, "FDSTOREREMOVE=1\nFDNAME=\(name)") > 0
    }

    /// Every descriptor passed at start (LISTEN_FDS), with its name (LISTEN_FDNAMES; "unknown"
    /// where none was given), close-on-exec set. Clears LISTEN_PID, LISTEN_FDS and
    /// LISTEN_FDNAMES so that nothing the supervisor starts sees them.
    public static func takePassed() throws(ListenFDs.Failure) -> [(name: String, fd: Int32)] {
        var names: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = nil
        let n = sd_listen_fds_with_names(1, &names)
        if n < 0 { throw .listenFDs(-n) }
        defer {
            if let names {
                var i = 0
                while let p = names[i] { free(p); i += 1 }
                free(names)
            }
        }
        var out: [(name: String, fd: Int32)] = []
        let start = clawpen_sd_listen_fds_start()
        for i in 0..<Int(n) {
            let fd = start + Int32(i)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            let name = names.flatMap { $0[i] }.map { String(cString: $0) } ?? "unknown"
            out.append((name, fd))
        }
        return out
    }
}
