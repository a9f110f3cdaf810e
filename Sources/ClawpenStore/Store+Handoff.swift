/// An upgrade without killing tenants (docs/reliability.md): the jobs an adopted worker still
/// runs were not run again by the restart.
extension Store {
    /// Undoes `recoverUnfinishedJobs`' attempt count for `ids` (jobs of adopted workers), in one
    /// transaction. A crash before it leaves the count one higher, which only shortens the
    /// job's retries: never a lost or doubled job.
    public func undoRecoveryAttempt(_ ids: [String]) throws(StoreError) {
        guard !ids.isEmpty else { return }
        try db.exec("BEGIN IMMEDIATE")
        do {
            for id in ids { try db.run("UPDATE jobs SET attempt=attempt-1 WHERE id=? AND attempt>0", [.text(id)]) }
            try db.exec("COMMIT")
        } catch {
            try? db.exec("ROLLBACK")
            throw error
        }
    }
}
