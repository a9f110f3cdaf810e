import CClawpenShim
import ClawpenClient
import ClawpenSpawn
import ClawpenProtocol
import Foundation
import Glibc

/// A command prepared once (C strings allocated up front), spawned many times. The floor
/// measurement uses this, so it pays for exactly one clone + exec + wait per run, through the same
/// spawn code as the worker's jobs.
final class PreparedCommand {
    private let command: SpawnCommand
    var path: String { command.path }

    init(path: String, arguments: [String], environment: [String]) {
        command = SpawnCommand(path: path, arguments: arguments, environment: environment)
    }

    /// Starts the command with the given descriptors as 0, 1 and 2; returns its pid.
    func spawn(stdin: Int32, stdout: Int32, stderr: Int32, parentDeathSignal: Int32 = 0) throws(BenchFailure) -> pid_t {
        var options = SpawnOptions(fds: [stdin, stdout, stderr])
        options.parentDeathSignal = parentDeathSignal
        do { return try command.spawn(options) } catch {
            throw BenchFailure("cannot start \(path): \(error)")
        }
    }

    /// Waits for the child; returns a description of how it ended, or nil when it exited 0.
    static func wait(_ pid: pid_t) throws(BenchFailure) -> String? {
        var status: Int32 = 0
        while true {
            let r = cp_wait4(pid, &status, 0, nil)
            if r == pid { break }
            if r < 0 && errno == EINTR { continue }
            throw BenchFailure("waitpid(\(pid)): \(String(cString: strerror(errno)))")
        }
        return exitDescription(status)
    }

    static func exitDescription(_ status: Int32) -> String? {
        if cp_wifexited(status) != 0 {
            let code = cp_wexitstatus(status)
            return code == 0 ? nil : "exited with status \(code)"
        }
        if cp_wifsignaled(status) != 0 { return "was killed by signal \(cp_wtermsig(status))" }
        return "ended with wait status \(status)"
    }
}

/// A `clawpen serve` of our own in fresh temporary directories.
final class Daemon {
    let root: String
    let socketPath: String
    let logPath: String
    let pid: pid_t
    private let keepTemp: Bool
    private var reaped = false

    private init(root: String, pid: pid_t, keepTemp: Bool) {
        self.root = root
        self.socketPath = root + "/clawpen.sock"
        self.logPath = root + "/daemon.log"
        self.pid = pid
        self.keepTemp = keepTemp
    }

    /// Starts a daemon, runs `body` with it, then stops it (SIGTERM, wait) and removes its
    /// directories. A failure anywhere carries the tail of the daemon's log.
    static func with<T>(_ setup: Setup, label: String, _ body: (Daemon) throws -> T) throws -> T {
        let d = try start(setup, label: label)
        let result: T
        do {
            result = try body(d)
        } catch {
            let tail = d.logTail()
            try? d.stop()
            d.removeTemp()
            throw BenchFailure("\(error)\n--- last lines of the daemon log (\(d.logPath)) ---\n\(tail)")
        }
        do { try d.stop() } catch {
            let tail = d.logTail()
            d.removeTemp()
            throw BenchFailure("\(error)\n--- last lines of the daemon log ---\n\(tail)")
        }
        d.removeTemp()
        return result
    }

    /// The bench's daemons register their uid range in files of their own, not the host's. An
    /// older build (compared by scripts/bench-alternate) has no such option and registers nothing.
    static func uidRangeArguments(_ clawpen: String, root: String) -> [String] {
        guard serves(clawpen, option: "--subuid-file") else { return [] }
        return ["--subuid-file", root + "/subuid", "--subgid-file", root + "/subgid"]
    }

    nonisolated(unsafe) private static var serveHelp: [String: String] = [:]

    /// Whether `clawpen serve` of this build takes `option` (its --help names it): an older
    /// build compared by scripts/bench-alternate may not.
    static func serves(_ clawpen: String, option: String) -> Bool {
        if let help = serveHelp[clawpen] { return help.contains(option) }
        var help = ""
        if let pipe = popen("'\(clawpen)' serve --help 2>&1", "r") {
            var buffer = [CChar](repeating: 0, count: 4096)
            while fgets(&buffer, Int32(buffer.count), pipe) != nil {
                help += String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            pclose(pipe)
        }
        serveHelp[clawpen] = help
        return help.contains(option)
    }

    static func start(_ setup: Setup, label: String) throws(BenchFailure) -> Daemon {
        var template = Array("/tmp/clawpen-bench-\(label)-XXXXXX".utf8CString)
        guard mkdtemp(&template) != nil else {
            throw BenchFailure("mkdtemp under /tmp: \(String(cString: strerror(errno)))")
        }
        let root = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // Tenant workers run under their own uids and must be able to reach their workspaces.
        chmod(root, 0o755)
        let logFD = open(root + "/daemon.log", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        let devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard logFD >= 0, devNull >= 0 else {
            throw BenchFailure("cannot open the daemon log in \(root): \(String(cString: strerror(errno)))")
        }
        defer { close(logFD); close(devNull) }
        let args =
            [
                setup.clawpen, "serve",
                "--socket", root + "/clawpen.sock",
                "--state-dir", root + "/state",
                "--workspace-root", root + "/workspaces",
                "--policies", setup.policies,
                "--idle-timeout", "3600",
            ] + uidRangeArguments(setup.clawpen, root: root) + setup.serveArgs
        let cmd = PreparedCommand(
            path: setup.clawpen, arguments: args,
            environment: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"])
        // SIGTERM on our death: the daemon shuts down cleanly even if the bench is killed.
        let pid = try cmd.spawn(stdin: devNull, stdout: logFD, stderr: logFD, parentDeathSignal: SIGTERM)
        let d = Daemon(root: root, pid: pid, keepTemp: setup.keepTemp)
        Progress.say("[\(label)] started clawpen serve (pid \(pid)) in \(root)")

        let start = Clock.nanoseconds()
        while true {
            if let conn = try? ClawpenConnection(socketPath: d.socketPath), (try? conn.call(.ping)) != nil {
                return d
            }
            var status: Int32 = 0
            if cp_wait4(pid, &status, WNOHANG, nil) == pid {
                d.reaped = true
                let tail = d.logTail()
                d.removeTemp()
                throw BenchFailure("clawpen serve \(PreparedCommand.exitDescription(status) ?? "exited with status 0") while starting:\n\(tail)")
            }
            if Clock.milliseconds(since: start) > 30_000 {
                let tail = d.logTail()
                try? d.stop()
                d.removeTemp()
                throw BenchFailure("clawpen serve did not answer a ping within 30 s:\n\(tail)")
            }
            Clock.sleep(seconds: 0.02)
        }
    }

    func connect() throws(BenchFailure) -> ClawpenConnection {
        do { return try ClawpenConnection(socketPath: socketPath) } catch {
            throw BenchFailure("connect to \(socketPath): \(error)")
        }
    }

    /// SIGTERM, then wait up to 60 s for a clean exit (status 0).
    func stop() throws(BenchFailure) {
        guard !reaped else { return }
        kill(pid, SIGTERM)
        let start = Clock.nanoseconds()
        while true {
            var status: Int32 = 0
            let r = cp_wait4(pid, &status, WNOHANG, nil)
            if r == pid {
                reaped = true
                if let bad = PreparedCommand.exitDescription(status) {
                    throw BenchFailure("clawpen serve \(bad) after SIGTERM (expected a clean exit)")
                }
                return
            }
            if r < 0 && errno != EINTR {
                reaped = true
                throw BenchFailure("waitpid(daemon \(pid)): \(String(cString: strerror(errno)))")
            }
            if Clock.milliseconds(since: start) > 60_000 {
                kill(pid, SIGKILL)
                _ = try? PreparedCommand.wait(pid)
                reaped = true
                throw BenchFailure("clawpen serve did not exit within 60 s of SIGTERM; killed it")
            }
            Clock.sleep(seconds: 0.01)
        }
    }

    func removeTemp() {
        if keepTemp {
            Progress.say("kept \(root)")
            return
        }
        do { try FileManager.default.removeItem(atPath: root) } catch {
            Progress.say("warning: could not remove \(root): \(error)")
        }
    }

    func logTail(lines: Int = 40) -> String {
        guard let text = readTextFile(logPath) else { return "(no log)" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }
}
