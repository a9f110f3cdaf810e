/// Why a tenant's worker failed, kept typed (stage and errno) until status or a log line shows
/// it: `status.last_error` says it in words and `last_error_detail` keeps the fields.
public struct WorkerFailure: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        /// The clone, the mounts the supervisor makes, the configure frame: before it ran.
        case start
        /// The worker's own sandbox setup reported a failing step.
        case setup
        /// It ended (exit status or signal) without being asked to.
        case exited
        /// It broke the protocol (a frame over the limit, garbage, a job it was not given).
        case misbehaved
    }

    public let kind: Kind
    /// What was being done: "clone3", "pivot_root", "send configure", "exited", ...
    public let stage: String
    public let errno: Int32?
    /// Words for the errno (strerror), filled by whoever saw it.
    public let errnoText: String?
    public let detail: String

    public init(_ kind: Kind, stage: String, errno: Int32? = nil, errnoText: String? = nil, detail: String = "") {
        self.kind = kind; self.stage = stage; self.errno = errno; self.errnoText = errnoText; self.detail = detail
    }

    public var description: String {
        let err = errno.map { e in ": " + (errnoText ?? "errno \(e)") } ?? ""
        let more = detail.isEmpty ? "" : " (\(detail))"
        switch kind {
        case .start: return "cannot start the worker: \(stage) failed\(err)\(more)"
        case .setup: return "worker setup failed at step '\(stage)'\(err)\(more)"
        case .exited: return "worker \(detail)"
        case .misbehaved: return "worker misbehaved (\(detail))"
        }
    }
}
