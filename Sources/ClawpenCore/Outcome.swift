import ClawpenProtocol
import ClawpenStore
import ClawpenWire

/// Maps what the worker saw of a job to the contract's final state and result.
public enum Outcome {
    public static func map(_ rep: JobReport, _ job: JobRecord) -> (JobState, JobResult) {
        var result = JobResult(
            stdout: rep.stdout, stderr: rep.stderr, stdoutTruncated: rep.stdoutTruncated,
            stderrTruncated: rep.stderrTruncated, runMs: Double(rep.runMicros) / 1000,
            cpuMs: Double(rep.cpuMicros) / 1000, maxRSSKiB: Int64(clamping: rep.maxRSSKiB))
        switch rep.outcome {
        case .exited(let code):
            result.exitCode = code
            return (code == 0 ? .succeeded : .failed, result)
        case .signaled(let sig):
            result.signal = sig
            return (.killed, result)
        case .timedOut(let sig):
            result.signal = sig
            result.error = ProtocolError(.timedOut, "the job ran past its timeout of \(job.timeoutSeconds) s and was killed")
            return (.timedOut, result)
        case .canceled(let sig):
            result.signal = sig
            return (.canceled, result)
        case .spawnFailed:
            // As a shell would: 127, and the reason on stderr (the worker wrote it there).
            result.exitCode = 127
            result.runMs = nil; result.cpuMs = nil; result.maxRSSKiB = nil
            return (.failed, result)
        }
    }
}
