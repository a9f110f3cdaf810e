import ClawpenPolicy
import ClawpenStore
import Glibc

/// Why `clawpen serve` could not start, each with what to do about it.
public enum ServeError: Error, CustomStringConvertible {
    case directory(path: String, errno: Int32)
    case policy(PolicyError)
    case policiesDirectoryMissing(String)
    case store(StoreError)
    case workerMissing(path: String)
    case socketInUse(path: String)
    case socketPathOccupied(path: String)
    case bind(path: String, message: String)
    case seccomp(String)
    /// `--require-cgroup-limits` without the controllers it needs.
    case cgroupLimitsMissing(String)
    /// The tenants' uid range cannot be this daemon's (UIDRange).
    case uidRange(String)
    /// A setting that cannot work as given (the message names it).
    case config(String)
    /// The master key could not be read or made (a world-readable file, a wrong length).
    case masterKey(String)
    /// The egress proxy could not be started.
    case egress(String)
    /// Another process holds the state directory's lock (StateDirLock).
    case stateDirInUse(stateDir: String, lockFile: String, holder: Int32?)
    /// The state directory's lock file cannot be opened or locked.
    case stateLock(path: String, problem: String)

    public var description: String {
        switch self {
        case .directory(let p, let e): return "cannot create directory \(p): \(errnoString(e))"
        case .policy(let e): return "invalid policy: \(e)"
        case .policiesDirectoryMissing(let p):
            return "policies directory \(p) does not exist (install the shipped policies/ there, or leave --policies out to use the embedded defaults)"
        case .store(let e): return "\(e)"
        case .workerMissing(let p):
            return "worker executable \(p) is missing or not executable (build it with `swift build`, or name it with --worker-path / CLAWPEN_WORKER)"
        case .socketInUse(let p): return "another clawpen daemon is already serving on \(p); stop it first (or use another --socket)"
        case .socketPathOccupied(let p): return "\(p) exists and is not a socket; refusing to replace it (remove it by hand if it is stale)"
        case .bind(let p, let m): return "cannot listen on \(p): \(m)"
        case .seccomp(let m): return "invalid seccomp policy: \(m)"
        case .cgroupLimitsMissing(let m): return m
        case .uidRange(let m): return m
        case .config(let m): return m
        case .masterKey(let m):
            return "\(m) (secrets need a master key: --master-key-file, the systemd credential clawpen-master-key, or <state-dir>/master.key)"
        case .egress(let m): return "egress proxy: \(m)"
        case .stateDirInUse(let dir, let file, let holder):
            let who = holder.map { "another process (pid \($0), by \(file))" } ?? "another process (by \(file))"
            return
                "state directory \(dir) is in use: \(who) holds its lock, most likely another clawpen serve; stop it first, or give this daemon its own --state-dir (two daemons on one state directory would run the same jobs twice)"
        case .stateLock(let path, let problem):
            return "state directory lock \(path): \(problem) (it must be a regular file in the state directory, not a link)"
        }
    }
}

extension ServeError {
    /// mkdir -p for the daemon's own directories; the failure names the directory.
    static func makeDirectories(_ path: String, mode: mode_t) throws(ServeError) {
        do { try Files.makeDirectories(path, mode: mode) } catch { throw .directory(path: error.detail, errno: error.errno) }
    }
}
