import ClawpenSystem
import Glibc

/// One daemon per state directory: an exclusive `flock` on `<state-dir>/clawpen.lock`, held
/// for the life of the process.
///
/// Why: a second daemon started on the same state directory (another `--socket`, a unit file
/// copied by hand) would read the first one's running jobs as left behind by a crash and run
/// them again, beside the first daemon's workers, under the same uids (seen: a `sleep 30`
/// running twice, attempt 1 and attempt 2, in two daemons). SQLite's own locks last only as
/// long as a transaction, so the store cannot tell. The kernel drops the lock when the
/// process dies, `kill -9` included, so a crash never leaves a stale lock; the descriptor is
/// close-on-exec, so workers and the egress proxy (which outlive a restart under systemd's
/// descriptor store) never hold it.
public final class StateDirLock {
    public static let fileName = "clawpen.lock"
    public let path: String
    private let fd: Int32

    private init(fd: Int32, path: String) {
        self.fd = fd
        self.path = path
    }

    /// Takes the lock or says who holds it. The pid written in the file is for that message
    /// only; the lock is the `flock`, not the file's content. The daemon keeps the returned
    /// value until it stops; letting it go closes the descriptor and releases the lock.
    public static func acquire(stateDir: String) throws(ServeError) -> StateDirLock {
        let path = stateDir + "/" + fileName
        // O_NOFOLLOW: a link planted in the state directory is refused, not followed.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw .stateLock(path: path, problem: "cannot open it: \(errnoString(errno))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            close(fd)
            guard e == EWOULDBLOCK else { throw .stateLock(path: path, problem: "cannot lock it: \(errnoString(e))") }
            throw .stateDirInUse(stateDir: stateDir, lockFile: path, holder: holderPID(path))
        }
        let line = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = line.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        return StateDirLock(fd: fd, path: path)
    }

    /// The pid the holder wrote, when it reads as one.
    static func holderPID(_ path: String) -> Int32? {
        guard let text = Files.readSmallFile(path, limit: 64)?.trimmingSpaces, let pid = Int32(text), pid > 0 else { return nil }
        return pid
    }

    deinit { close(fd) }
}
