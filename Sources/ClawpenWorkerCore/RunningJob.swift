import ClawpenSandbox
import ClawpenWire
import Glibc

/// One job process inside the worker, from spawn to its report.
struct RunningJob {
    enum KillReason { case timeout, cancel }

    let id: String
    let pid: Int32
    let startedAt: UInt64
    var deadline: UInt64
    let outputCap: Int
    /// Its own cgroup (`job-<id>`), when the tenant has one.
    let cgroup: JobCgroup?

    var stdoutFD: Int32
    var stderrFD: Int32
    var stdinFD: Int32
    var pendingInput: [UInt8]
    var inputOffset = 0

    var stdout = OutputBuffer()
    var stderr = OutputBuffer()

    var killReason: KillReason?
    var waitStatus: Int32?
    var exitedAt: UInt64 = 0
    var cpuMicros: UInt64 = 0
    var maxRSSKiB: UInt64 = 0
    /// After the job's process has exited, how long its pipes may stay open (held by a process
    /// that left the job's process group) before the report is sent anyway.
    var drainDeadline: UInt64 = 0

    // The agent runtime (Worker+Runtime.swift).
    /// Streamed, stdin open, terminal.
    var options = RunOptions()
    /// Someone follows the output: every chunk read is sent to the supervisor.
    var watched = false
    /// Output bytes sent and not yet acknowledged: at `Worker.outputWindow` the pipes are not
    /// read, so the job blocks on its own full pipe.
    var unacknowledged = 0
    /// Chunks read so far (both streams): the next chunk's `seq`.
    var seq: UInt64 = 0
    var stdoutOffset: UInt64 = 0
    var stderrOffset: UInt64 = 0
    /// The terminal's master (tty jobs; it is also `stdoutFD`), for resizes.
    var ptyMaster: Int32 = -1
    /// `input` asked for the end of stdin once what is pending is written.
    var eofRequested = false
    /// A terminal's input has ended (its EOF character was sent); the descriptor stays open.
    var inputClosed = false
    /// Bytes of `pendingInput` that came with the run request (not reported as taken).
    var initialInput = 0
    /// Bytes of input written (or dropped) and not yet reported to the supervisor.
    var inputToReport = 0

    var pipesClosed: Bool { stdoutFD < 0 && stderrFD < 0 }
    var hasPendingInput: Bool { !inputClosed && inputOffset < pendingInput.count }
    var outputBlocked: Bool { watched && unacknowledged >= Worker.outputWindow }
    var hasExited: Bool { waitStatus != nil }
}

/// Captured output, capped: beyond the cap bytes are read and dropped so the job never blocks
/// on a full pipe, and the worker's memory stays bounded whatever the job prints.
struct OutputBuffer {
    var bytes: [UInt8] = []
    var truncated = false

    mutating func append(_ chunk: UnsafeRawBufferPointer, cap: Int) {
        let room = cap - bytes.count
        if room <= 0 {
            if chunk.count > 0 { truncated = true }
            return
        }
        if chunk.count > room {
            bytes.append(contentsOf: chunk.prefix(room))
            truncated = true
        } else {
            bytes.append(contentsOf: chunk)
        }
    }
}
