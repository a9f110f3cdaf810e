import ClawpenStore
import Dispatch
import Glibc
import Synchronization

/// The thread that commits the event loop's group commits, on a SQLite connection of its own
/// (WAL: the loop's reads never wait for it). A slow disk, an fsync of 200 ms, then slows the
/// jobs that wait for their commit, never the loop: pings, `status`, streamed output and every
/// request that needs no store read go on meanwhile. The batches are written one at a time, in
/// the order they were handed over (GroupCommit.swift keeps the ordering rules).
final class StoreWriter: Sendable {
    private let queue = DispatchQueue(label: "clawpen.store-writer")
    private let path: String
    private let fsyncAccepts: Bool
    let commitDelayMicros: UInt32
    /// The writer's connection: opened on its thread at the first batch, again after a failure to.
    private let connection = Mutex<Store?>(nil)

    /// `CLAWPEN_TEST_STORE_COMMIT_DELAY_MS`: a test hook that makes every commit of the writer
    /// hold its lock this long (a slow disk), for the tests and the `slow-store` bench scenario.
    static let delayVariable = "CLAWPEN_TEST_STORE_COMMIT_DELAY_MS"

    init(path: String, fsyncAccepts: Bool, commitDelayMicros: UInt32 = StoreWriter.delayFromEnvironment()) {
        self.path = path
        self.fsyncAccepts = fsyncAccepts
        self.commitDelayMicros = commitDelayMicros
    }

    static func delayFromEnvironment() -> UInt32 {
        guard let raw = getenv(delayVariable), let ms = UInt32(String(cString: raw)), ms <= 60_000 else { return 0 }
        return ms * 1000
    }

    /// Writes `batch` on the writer thread, then hands the outcome to `done` (on that thread).
    func write(_ batch: Store.WriteBatch, _ done: @escaping @Sendable (Store.WriteOutcome) -> Void) {
        queue.async { [self] in done(writeNow(batch)) }
    }

    /// Returns once every batch handed over before has been written.
    func waitIdle() { queue.sync {} }

    private func writeNow(_ batch: Store.WriteBatch) -> Store.WriteOutcome {
        connection.withLock { store in
            if store == nil {
                do throws(StoreError) {
                    let opened = try Store(path: path, fsyncAccepts: fsyncAccepts)
                    opened.commitDelayMicros = commitDelayMicros
                    store = opened
                } catch {
                    return Self.failed(batch, error)
                }
            }
            return store!.write(batch)
        }
    }

    private static func failed(_ batch: Store.WriteBatch, _ error: StoreError) -> Store.WriteOutcome {
        var out = Store.WriteOutcome()
        if batch.audits.count > 0 { out.audits = .failure(error) }
        if batch.finishes.count > 0 { out.finishes = .failure(error) }
        if !batch.requeues.isEmpty { out.requeues = .failure(error) }
        if batch.accepts.count > 0 { out.accepts = .failure(error) }
        return out
    }
}
