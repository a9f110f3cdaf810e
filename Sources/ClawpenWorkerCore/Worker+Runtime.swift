import CClawpenShim
import ClawpenWire
import Glibc

/// The agent runtime in the worker: output sent as it is read (within a window), input written
/// as the job reads it, the terminal's size and signals (docs/protocol.md, "Streaming").
extension Worker {
    /// Output bytes of one job in flight to the supervisor, not yet acknowledged. Beyond it the
    /// worker stops reading the job's pipes: the job blocks on its own full pipe, and neither
    /// the worker nor the supervisor holds more than this per job however slow its clients.
    static let outputWindow = 256 * 1024

    /// One chunk read from a job's pipe (or terminal): captured (capped), and sent when someone
    /// follows the job.
    func took(_ chunk: UnsafeRawBufferPointer, stdout: Bool, _ job: inout RunningJob) {
        if stdout { job.stdout.append(chunk, cap: job.outputCap) } else { job.stderr.append(chunk, cap: job.outputCap) }
        let offset = stdout ? job.stdoutOffset : job.stderrOffset
        if stdout { job.stdoutOffset += UInt64(chunk.count) } else { job.stderrOffset += UInt64(chunk.count) }
        let seq = job.seq
        job.seq += 1
        guard job.watched else { return }
        job.unacknowledged += chunk.count
        send(
            .runtime(
                .output(OutputChunk(jobID: job.id, stream: stdout ? .stdout : .stderr, seq: seq, offset: offset, data: Array(chunk)))))
    }

    func handle(_ command: RuntimeCommand) {
        guard var job = jobs[command.jobID] else { return }
        switch command {
        case .watch(_, let token):
            job.watched = true
            if token != 0 { replay(job, token: token) }
        case .unwatch:
            job.watched = false
            job.unacknowledged = 0
        case .ack(_, let bytes):
            job.unacknowledged = max(0, job.unacknowledged - Int(bytes))
        case .input(_, let data, let eof):
            if job.stdinFD < 0 || job.inputClosed {
                // Its stdin is closed (the job closed it, or it is over): nothing to write to.
                if !data.isEmpty { send(.runtime(.inputTaken(jobID: job.id, bytes: UInt32(data.count)))) }
            } else {
                if job.inputOffset > 0 && !job.hasPendingInput {
                    job.pendingInput.removeAll(keepingCapacity: true)
                    job.inputOffset = 0
                }
                job.pendingInput.append(contentsOf: data)
                if eof { job.eofRequested = true }
                writeInput(&job)
                reportInput(&job)
            }
        case .resize(_, let rows, let cols):
            if job.ptyMaster >= 0 && !job.hasExited { _ = cp_pty_resize(job.ptyMaster, rows, cols) }
        case .signal(_, let sig):
            if !job.hasExited { kill(-job.pid, sig) }
        }
        jobs[command.jobID] = job
    }

    /// The kept output (stdout's, then stderr's) to whoever asked with `token`, then the marker.
    private func replay(_ job: RunningJob, token: UInt32) {
        for (stream, bytes) in [(OutputStream.stdout, job.stdout.bytes), (.stderr, job.stderr.bytes)] {
            var offset = 0
            while offset < bytes.count {
                let end = min(bytes.count, offset + OutputChunk.maxBytes)
                send(
                    .runtime(
                        .output(
                            OutputChunk(
                                jobID: job.id, stream: stream, seq: nil, offset: UInt64(offset), replayToken: token,
                                data: Array(bytes[offset..<end])))))
                offset = end
            }
        }
        send(.runtime(.replayed(jobID: job.id, replayToken: token)))
    }

    /// Writes what is pending into the job's stdin as far as the pipe takes it; at the end of
    /// the input closes it (a pipe) or types the end-of-file character (a terminal).
    func writeInput(_ job: inout RunningJob) {
        var dropped = false
        while job.hasPendingInput {
            let n = job.pendingInput[job.inputOffset...].withUnsafeBytes { write(job.stdinFD, $0.baseAddress, $0.count) }
            if n > 0 { taken(n, &job); continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { return }
            dropped = true // EPIPE (or EIO on a terminal): the job closed its stdin; the rest is dropped
            break
        }
        if dropped {
            taken(job.pendingInput.count - job.inputOffset, &job)
            job.eofRequested = true
        }
        guard job.eofRequested, !job.inputClosed else { return }
        if job.options.tty && !dropped {
            // A terminal has no end of its own: the job sees end-of-file when the line
            // discipline gets its EOF character (ctrl-D) at the start of a line. The input
            // descriptor stays open (it is the terminal's master; it closes with the job):
            // closing it while the job reads made the kernel hang the terminal up under the
            // job now and then (SIGHUP instead of its own exit).
            let eof = cp_pty_eof_char(job.stdinFD)
            var c = UInt8(eof > 0 ? eof : 4)
            _ = write(job.stdinFD, &c, 1)
            job.pendingInput = []
            job.inputOffset = 0
            job.inputClosed = true
            return
        }
        close(job.stdinFD)
        job.stdinFD = -1
        job.pendingInput = []
        job.inputOffset = 0
    }

    private func taken(_ n: Int, _ job: inout RunningJob) {
        job.inputOffset += n
        let initial = min(n, job.initialInput)
        job.initialInput -= initial
        job.inputToReport += n - initial
    }

    /// Tells the supervisor how much of the input it sent is written (its input window).
    func reportInput(_ job: inout RunningJob) {
        guard job.inputToReport > 0 else { return }
        send(.runtime(.inputTaken(jobID: job.id, bytes: UInt32(clamping: job.inputToReport))))
        job.inputToReport = 0
    }
}
