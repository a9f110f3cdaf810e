import ArgumentParser
import Glibc

/// `clawpen serve`: runs the daemon binary, clawpen-serve, in this process (execv: the pid, the
/// systemd socket-activation fds and NOTIFY_SOCKET stay as systemd gave them). `clawpen` itself
/// is a static executable without NIO, SQLite or libsystemd, so that every client command starts
/// in about a millisecond on any host; the daemon is the binary that links them.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the supervisor (normally started by systemd).",
        discussion: """
            Runs clawpen-serve (next to clawpen, else /usr/lib/clawpen/clawpen-serve) with the same \
            arguments. `clawpen serve --help` lists its options.
            """)

    @Argument(parsing: .captureForPassthrough, help: "The daemon's options (clawpen serve --help).")
    var arguments: [String] = []

    func run() throws { DaemonBinary.exec(arguments) }
}

enum DaemonBinary {
    /// Where clawpen-serve is looked for: beside this executable, then the package's directory.
    static func candidates() -> [String] {
        var paths: [String] = []
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        if n > 0 {
            let me = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if let slash = me.lastIndex(of: "/") { paths.append(String(me[..<slash]) + "/clawpen-serve") }
        }
        paths.append("/usr/lib/clawpen/clawpen-serve")
        return paths
    }

    /// Replaces this process with the daemon; returns only by exiting with a message.
    static func exec(_ arguments: [String]) -> Never {
        var tried: [String] = []
        for path in candidates() {
            let argv = ["clawpen-serve"] + arguments
            var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
            cargs.append(nil)
            execv(path, cargs)
            let err = errno
            tried.append("\(path): \(String(cString: strerror(err)))")
            for p in cargs { free(p) }
        }
        Output.writeStderr(
            "clawpen: unavailable: cannot run the daemon binary (\(tried.joined(separator: "; "))): install clawpen-serve next to clawpen\n")
        exit(69)
    }
}
