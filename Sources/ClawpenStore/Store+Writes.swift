import Glibc

/// Rows ready to be written: their private fields sealed already, by the connection whose
/// store holds the cipher (the event loop's; the keyring is the loop's alone). Opaque outside
/// the store: nothing but the store's own statements can be fed with them.
public struct SealedRows: Sendable {
    let rows: [[SQLValue]]
    init(_ rows: [[SQLValue]]) { self.rows = rows }
    public static let empty = SealedRows([])
    public var count: Int { rows.count }
}

extension Store {
    /// What one event-loop tick wrote (the supervisor's group commit), sealed on the loop and
    /// committed by the store writer's thread on a connection of its own, as up to four
    /// transactions in this order: audit events, results, re-queues (none fsynced), then
    /// accepts (fsynced). A batch's accepts never come after a later batch's results: the
    /// writer takes batches one at a time, in order.
    public struct WriteBatch: Sendable {
        public var audits: SealedRows = .empty
        public var finishes: SealedRows = .empty
        public var requeues: [String] = []
        public var accepts: SealedRows = .empty
        public init() {}
        public var isEmpty: Bool { audits.count == 0 && finishes.count == 0 && requeues.isEmpty && accepts.count == 0 }
    }

    /// How each part of a batch went; nil: it had nothing to write.
    public struct WriteOutcome: Sendable {
        public var audits: Result<Void, StoreError>?
        public var finishes: Result<Void, StoreError>?
        public var requeues: Result<Void, StoreError>?
        public var accepts: Result<Void, StoreError>?
        /// How long the results' and the accepts' commits took (seconds).
        public var finishSeconds = 0.0
        public var acceptSeconds = 0.0
        public init() {}
    }

    /// Writes a batch, each part in its own transaction: a part that fails leaves the others
    /// written (an audit row that cannot be written does not refuse a job).
    public func write(_ batch: WriteBatch) -> WriteOutcome {
        var out = WriteOutcome()
        func attempt(_ body: () throws(StoreError) -> Void) -> Result<Void, StoreError> {
            do throws(StoreError) {
                try body()
                return .success(())
            } catch { return .failure(error) }
        }
        if batch.audits.count > 0 { out.audits = attempt { () throws(StoreError) in try writeAudit(batch.audits) } }
        if batch.finishes.count > 0 {
            let began = Self.monotonicSeconds()
            out.finishes = attempt { () throws(StoreError) in try writeFinishes(batch.finishes) }
            out.finishSeconds = Self.monotonicSeconds() - began
        }
        if !batch.requeues.isEmpty { out.requeues = attempt { () throws(StoreError) in try requeue(ids: batch.requeues) } }
        if batch.accepts.count > 0 {
            let began = Self.monotonicSeconds()
            out.accepts = attempt { () throws(StoreError) in try writeAccepts(batch.accepts) }
            out.acceptSeconds = Self.monotonicSeconds() - began
        }
        return out
    }

    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
