import ClawpenProtocol
import ClawpenStore

/// How a store failure reaches a client: a full disk is `unavailable` (rule `disk_full`: the
/// same request succeeds once space returns, with no restart), anything else `internal`.
extension Supervisor {
    static func storeRefusal(_ e: StoreError, _ what: String) -> ProtocolError {
        if e.isDiskFull {
            return ProtocolError(
                .unavailable, "\(what): \(e)", details: ["rule": .string("disk_full"), "retry_after_ms": .int(Int64(Self.storeRetryMs))])
        }
        return ProtocolError(.internal, "\(what): \(e)")
    }

    /// How long a failed write of results waits before it is tried again.
    static let storeRetryMs = 1000
}
