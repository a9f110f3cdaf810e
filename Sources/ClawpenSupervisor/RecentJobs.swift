import ClawpenWire
import ClawpenProtocol

/// What the supervisor remembers of jobs read lately, so that a job read over and over costs one
/// store read and one decryption, not one per request. Two hundred pipelined `job.get`s of a
/// job with a megabyte of output, or four thousand `job.wait`s of a running job, made the loop
/// read and decrypt the record each time (a millisecond, or 40 µs for a running job's small
/// record: stalls of a fifth of a second for every other client, measured under hostile
/// clients).
///
/// * `finished`: final views, bounded by count and by the bytes of output they hold. A final
///   job never changes again.
/// * `tenants`: the tenant of a job id, which never changes either. A running job's view is
///   then taken from memory (Core) without reading its record.
///
/// What removes job records or their keys (retention, offboarding) empties both first, so
/// nothing removed is served from here. Confined to the supervisor's loop.
final class RecentJobs {
    private var finished = BoundedMap<JobView>(maxCount: 512)
    private var tenants = BoundedMap<TenantName>(maxCount: 8192)
    private var finishedBytes = 0
    let maxFinishedBytes: Int

    init(maxFinishedBytes: Int = 16 << 20) { self.maxFinishedBytes = maxFinishedBytes }

    func finishedView(_ id: String) -> JobView? { finished[id] }
    func tenant(_ id: String) -> TenantName? { tenants[id] }

    /// Remembers a job just read from the store: its tenant, and its view if it is final and
    /// not larger than the byte bound.
    func keep(_ view: JobView, tenant: TenantName) {
        tenants.insert(view.id, tenant)
        guard view.state.isFinal, finished[view.id] == nil else { return }
        let size = Self.size(view)
        guard size <= maxFinishedBytes else { return }
        while finishedBytes + size > maxFinishedBytes, let gone = finished.dropOldest() { finishedBytes -= Self.size(gone) }
        if let gone = finished.insert(view.id, view) { finishedBytes -= Self.size(gone) }
        finishedBytes += size
    }

    func removeAll() {
        finished.removeAll()
        tenants.removeAll()
        finishedBytes = 0
    }

    var counts: (finished: Int, finishedBytes: Int, tenants: Int) { (finished.count, finishedBytes, tenants.count) }

    /// What a view holds, near enough: its output and a fixed allowance for the rest.
    static func size(_ v: JobView) -> Int {
        v.stdout.utf8.count + v.stderr.utf8.count + (v.stdoutB64?.utf8.count ?? 0) + (v.stderrB64?.utf8.count ?? 0)
            + v.argv.reduce(0) { $0 + $1.utf8.count } + 1024
    }
}

/// A dictionary that forgets its oldest entries past `maxCount`.
struct BoundedMap<Value> {
    private var values: [String: Value] = [:]
    /// Keys oldest first, from `head` on.
    private var order: [String] = []
    private var head = 0
    let maxCount: Int

    init(maxCount: Int) { self.maxCount = maxCount }

    var count: Int { values.count }

    subscript(key: String) -> Value? { values[key] }

    /// Adds `value` unless `key` is there; returns what was dropped to make room.
    @discardableResult
    mutating func insert(_ key: String, _ value: Value) -> Value? {
        guard values[key] == nil else { return nil }
        let dropped = values.count >= maxCount ? dropOldest() : nil
        values[key] = value
        order.append(key)
        return dropped
    }

    mutating func dropOldest() -> Value? {
        while head < order.count {
            let key = order[head]
            head += 1
            if head > 1024 && head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
            if let v = values.removeValue(forKey: key) { return v }
        }
        return nil
    }

    mutating func removeAll() {
        values.removeAll()
        order.removeAll()
        head = 0
    }
}
