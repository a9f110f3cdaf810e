import CClawpenShim
import ClawpenClient
import ClawpenProtocol
import FoundationEssentials
import Glibc

/// A job followed from this terminal, as `docker run -it` / `docker attach` do: its output
/// printed as it comes (stdout to fd 1, stderr to fd 2), our stdin sent as its input, the window
/// size followed, our signals passed on, and (with a terminal) raw mode that is undone on every
/// way out. One thread, one poll loop over the socket, stdin and a signalfd; what goes to the
/// daemon waits in a bounded buffer, so that a job that floods us and a stdin that floods it
/// cannot deadlock each other.
final class JobSession {
    let connection: ClawpenConnection
    /// The request whose stream this is (the submit or the attach).
    let streamID: JSONValue
    var jobID: String?
    /// Send our stdin as the job's input.
    var forwardInput: Bool
    /// Put the local terminal in raw mode and follow its size.
    var terminal: Bool
    /// ctrl-p ctrl-q detaches (docker's keys), with a terminal.
    var detachKeys: Bool
    /// Pass SIGINT, SIGTERM, SIGHUP, SIGQUIT on to the job (interactive jobs).
    var proxySignals: Bool
    /// Print the output frames (not with --json).
    var printOutput = true
    /// The stream is the job's from its first byte (a streamed submit): what the final JOB
    /// holds beyond what came as output frames (a start failure's message, written by the
    /// worker, not by the job) is printed at the end.
    var completeFromStart = false
    private var received: [String: Int] = [:]

    private var outbound: [UInt8] = []
    private var inputEnded = false
    private var sawCtrlP = false
    private var savedTermios: UnsafeMutableRawPointer?
    /// Input requests waiting before the job id is known.
    private var early: [(data: [UInt8], eof: Bool)] = []

    /// Beyond this much unsent request data, stdin is not read (the daemon is slowing us).
    static let outboundLimit = 256 * 1024

    enum End {
        case finished(JobView)
        case detached
        case failed(ClientError)
    }

    init(connection: ClawpenConnection, streamID: JSONValue, forwardInput: Bool, terminal: Bool, detachKeys: Bool, proxySignals: Bool) {
        self.connection = connection; self.streamID = streamID; self.forwardInput = forwardInput
        self.terminal = terminal; self.detachKeys = detachKeys; self.proxySignals = proxySignals
    }

    /// Queues a request frame.
    func queue(_ request: Request, id: JSONValue? = nil) {
        outbound += Framing.frame(RequestCodec.encode(request, id: id ?? connection.makeID()))
    }

    /// Runs until the job ends (or we detach). The terminal is restored before this returns,
    /// whatever ended it.
    func run() -> End {
        let sigfd = signalDescriptor()
        defer {
            if sigfd >= 0 { close(sigfd) }
            restoreTerminal()
        }
        // Raw only while we forward what is typed: raw mode turns ctrl-C and the detach keys into
        // input, and without stdin read nobody would see them.
        if terminal && forwardInput && isatty(0) == 1 { makeRaw() }
        let flags = fcntl(connection.descriptor, F_GETFL)
        _ = fcntl(connection.descriptor, F_SETFL, flags | O_NONBLOCK)
        defer { _ = fcntl(connection.descriptor, F_SETFL, flags) }
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            var fds = [pollfd(fd: connection.descriptor, events: Int16(POLLIN) | (outbound.isEmpty ? 0 : Int16(POLLOUT)), revents: 0)]
            let readStdin = forwardInput && !inputEnded && outbound.count < Self.outboundLimit
            if readStdin { fds.append(pollfd(fd: 0, events: Int16(POLLIN), revents: 0)) }
            if sigfd >= 0 { fds.append(pollfd(fd: sigfd, events: Int16(POLLIN), revents: 0)) }
            let n = poll(&fds, nfds_t(fds.count), -1)
            if n < 0 {
                if errno == EINTR { continue }
                return .failed(.unavailable("poll failed: \(String(cString: strerror(errno)))"))
            }
            do {
                for pfd in fds where pfd.revents != 0 {
                    if pfd.fd == connection.descriptor {
                        if pfd.revents & Int16(POLLOUT) != 0 { try connection.writeSome(&outbound) }
                        if pfd.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                            for frame in try connection.readAvailable() {
                                if let end = try handle(frame) { return end }
                            }
                        }
                    } else if pfd.fd == 0 {
                        let got = buffer.withUnsafeMutableBytes { read(0, $0.baseAddress, $0.count) }
                        if got < 0 && (errno == EINTR || errno == EAGAIN) { continue }
                        if got <= 0 {
                            inputEnded = true
                            sendInput([], eof: true)
                        } else if let end = typed(Array(buffer[0..<got])) {
                            return end
                        }
                    } else {
                        signalArrived(sigfd)
                    }
                }
                if !outbound.isEmpty { try connection.writeSome(&outbound) }
            } catch {
                return .failed(error)
            }
        }
    }

    /// What we typed: input for the job, unless it holds the detach keys.
    private func typed(_ bytes: [UInt8]) -> End? {
        guard detachKeys else { sendInput(bytes, eof: false); return nil }
        var out: [UInt8] = []
        for b in bytes {
            if sawCtrlP {
                sawCtrlP = false
                if b == 0x11 { // ctrl-q after ctrl-p: detach, the job keeps running
                    if !out.isEmpty { sendInput(out, eof: false) }
                    flushOutbound()
                    return .detached
                }
                out.append(0x10)
            }
            if b == 0x10 { sawCtrlP = true; continue }
            out.append(b)
        }
        if !out.isEmpty { sendInput(out, eof: false) }
        return nil
    }

    private func sendInput(_ data: [UInt8], eof: Bool) {
        guard let jobID else { early.append((data, eof)); return }
        queue(.runtime(.input(jobID: jobID, data: data, eof: eof)))
    }

    /// One frame from the daemon. Returns how the session ends, when it does.
    private func handle(_ frame: JSONValue) throws(ClientError) -> End? {
        let type = frame["type"]?.stringValue ?? ""
        let ours = frame["id"] == streamID
        switch type {
        case "output":
            if printOutput, let out = OutputFrame(frame) {
                received[out.stream, default: 0] += out.data.count
                writeAll(fd: out.stream == "stderr" ? 2 : 1, out.data)
            }
        case "accepted", "attached":
            guard ours, let v = frame["job"], let job = JobView(json: v) else { return nil }
            jobID = job.id
            for e in early { queue(.runtime(.input(jobID: job.id, data: e.data, eof: e.eof))) }
            early.removeAll()
            if terminal { sendWindowSize() }
        case "job":
            guard ours, let v = frame["job"], let job = JobView(json: v) else { return nil }
            if printOutput && completeFromStart {
                for (name, fd, bytes) in [("stdout", Int32(1), job.stdoutBytes), ("stderr", 2, job.stderrBytes)] {
                    let seen = received[name] ?? 0
                    if bytes.count > seen { writeAll(fd: fd, Array(bytes[seen...])) }
                }
            }
            return .finished(job)
        case "error":
            let e = frame["error"].flatMap(ProtocolError.init(json:)) ?? ProtocolError(.internal, "error reply without details")
            if ours { return .failed(.server(e)) }
            // A refused input, resize or signal: the job goes on; say why once.
            writeAll(fd: 2, Array("\r\nclawpen: \(e.code.rawValue): \(e.message)\r\n".utf8))
            if e.message.contains("stdin") { inputEnded = true }
        default: break
        }
        return nil
    }

    private func sendWindowSize() {
        guard let jobID else { return }
        var rows: UInt16 = 0, cols: UInt16 = 0
        guard cp_pty_get_size(0, &rows, &cols) == 0, rows > 0, cols > 0 else { return }
        queue(.runtime(.resize(jobID: jobID, rows: rows, cols: cols)))
    }

    // MARK: Signals

    private static let proxied: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT]

    /// SIGWINCH (terminal) and the proxied signals arrive as reads of a signalfd, never as
    /// handlers: nothing runs at an arbitrary point of the loop.
    private func signalDescriptor() -> Int32 {
        var sigs: [Int32] = []
        if terminal { sigs.append(SIGWINCH) }
        if proxySignals { sigs += Self.proxied }
        guard !sigs.isEmpty else { return -1 }
        return cp_signal_fd(sigs, Int32(sigs.count))
    }

    private func signalArrived(_ fd: Int32) {
        while true {
            let sig = cp_read_signal(fd)
            if sig == 0 { return }
            if sig == SIGWINCH {
                sendWindowSize()
            } else if let jobID, let name = JobSignal.table.first(where: { $0.1 == sig }) {
                queue(.runtime(.signal(jobID: jobID, signal: JobSignal(number: sig, name: name.0))))
            }
        }
    }

    // MARK: The terminal

    private func makeRaw() {
        let saved = UnsafeMutableRawPointer.allocate(byteCount: Int(cp_termios_size()), alignment: 16)
        if cp_tty_make_raw(0, saved) == 0 { savedTermios = saved } else { saved.deallocate() }
    }

    /// Idempotent: the terminal as it was before, once.
    func restoreTerminal() {
        guard let saved = savedTermios else { return }
        _ = cp_tty_restore(0, saved)
        saved.deallocate()
        savedTermios = nil
    }

    private func flushOutbound() {
        _ = fcntl(connection.descriptor, F_SETFL, fcntl(connection.descriptor, F_GETFL) & ~O_NONBLOCK)
        try? connection.writeAll(outbound)
        outbound.removeAll()
    }

    private func writeAll(fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                _ = poll(&p, 1, -1)
                continue
            }
            guard n > 0 else { return }
            offset += n
        }
    }
}
