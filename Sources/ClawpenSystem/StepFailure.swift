import Glibc

/// A system step that failed: what was being done, the errno it failed with, and what it was
/// done to (a path, a uid, a profile). The one error type of the low-level layers (spawning, the
/// sandbox, cgroups, files): it stays typed up to the edge, where `description` makes the
/// operator's message ("bind /usr failed: Permission denied (/usr)").
public struct StepFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public let step: String
    public let errno: Int32
    public let detail: String

    public init(step: String, errno: Int32, detail: String = "") {
        self.step = step; self.errno = errno; self.detail = detail
    }

    public var description: String {
        "\(step) failed: \(errnoString(errno))" + (detail.isEmpty ? "" : " (\(detail))")
    }

    /// Runs `body` (a C call: negative means failure, errno set) and throws a StepFailure naming
    /// `step` when it fails; returns the result otherwise.
    @discardableResult
    public static func check(_ step: String, _ detail: String = "", _ body: () -> Int32) throws(StepFailure) -> Int32 {
        let r = body()
        if r < 0 { throw StepFailure(step: step, errno: Glibc.errno, detail: detail) }
        return r
    }
}

/// strerror(3) as a String ("Permission denied").
public func errnoString(_ e: Int32) -> String { String(cString: strerror(e)) }
