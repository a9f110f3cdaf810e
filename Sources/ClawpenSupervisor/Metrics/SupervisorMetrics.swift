import ClawpenCore
import ClawpenStore
import ClawpenWire
import ClawpenProtocol
import Prometheus

/// The daemon's Prometheus metrics (`serve --metrics-listen`, `clawpen metrics`). Every name
/// starts `clawpen_`; per-tenant series carry `tenant="NAME"`.
///
/// Two kinds of series, by where the truth is:
/// * **Events** the supervisor sees once (a job's end with its queue wait and run time, a
///   worker's start, a quarantine, a store commit) are recorded when they happen.
/// * **State** the core or the kernel already counts (refusals by rule, OOM kills from
///   memory.events, CPU from cpu.stat, memory in use, queues, workers by state) is read when the
///   metrics are asked for, so nothing on the job path pays for it and the figure is the one
///   `status` shows. Cumulative counts become counters by adding what grew since the last read
///   (a tenant cgroup made anew counts from zero again: that is a counter reset, added whole).
///
/// Confined to the supervisor's event loop, like the state it reads (the registry itself is
/// thread-safe: the HTTP server only asks the loop for the text).
final class SupervisorMetrics {
    let registry = PrometheusCollectorRegistry()

    /// Queue wait and run time, 0.5 ms to 5 min: a warm job is ~2 ms, a timeout is minutes.
    static let secondsBuckets: [Double] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300]
    /// Store commits and the event loop's lag: 50 µs to 1 s.
    static let shortBuckets: [Double] = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]

    private struct TenantSeries {
        let queueWait: ValueHistogram
        let runTime: ValueHistogram
        let workerStarts: Counter
        let workerStartTime: ValueHistogram
        let quarantines: Counter
        let oomKills: Counter
        var jobs: [JobState: Counter] = [:]
    }
    private var tenants: [TenantName: TenantSeries] = [:]
    /// What each state-derived counter showed at the last read, by series key.
    private var lastSeen: [String: Int64] = [:]
    private var counters: [String: Counter] = [:]
    private var gauges: [String: Gauge] = [:]

    let storeCommit: ValueHistogram
    let loopLag: ValueHistogram
    private let loopLagNow: Gauge

    init() {
        storeCommit = registry.makeValueHistogram(
            descriptor: Self.name("store_commit", "seconds", "Time of one group commit of the store (results and accepts of one event-loop tick)."),
            labels: [], buckets: Self.shortBuckets)
        loopLag = registry.makeValueHistogram(
            descriptor: Self.name("event_loop_lag", "seconds", "How late a task scheduled on the supervisor's event loop ran (sampled every second)."),
            labels: [], buckets: Self.shortBuckets)
        loopLagNow = registry.makeGauge(descriptor: Self.name("event_loop_lag_last", "seconds", "The last event-loop lag sample."), labels: [])
        let info = registry.makeGauge(
            descriptor: Self.name("build_info", "", "Always 1; the daemon's version as a label."), labels: [("version", ClawpenVersion.string)])
        info.set(1.0)
    }

    static func name(_ metric: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "clawpen", metricName: metric, unitName: unit, helpText: help)
    }

    private func series(_ t: TenantName) -> TenantSeries {
        if let s = tenants[t] { return s }
        let labels = [("tenant", t.value)]
        let s = TenantSeries(
            queueWait: registry.makeValueHistogram(
                descriptor: Self.name("job_queue_wait", "seconds", "From a job's acceptance to its start on the tenant's worker."),
                labels: labels, buckets: Self.secondsBuckets),
            runTime: registry.makeValueHistogram(
                descriptor: Self.name("job_run", "seconds", "From a job's start to its end."), labels: labels, buckets: Self.secondsBuckets),
            workerStarts: registry.makeCounter(
                descriptor: Self.name("worker_starts", "total", "Workers started for the tenant (cold starts)."), labels: labels),
            workerStartTime: registry.makeValueHistogram(
                descriptor: Self.name("worker_start", "seconds", "From a worker's spawn to its ready message (sandbox set up)."),
                labels: labels, buckets: Self.secondsBuckets),
            quarantines: registry.makeCounter(
                descriptor: Self.name("quarantines", "total", "Times the tenant was quarantined by the crash-loop rule."), labels: labels),
            oomKills: registry.makeCounter(
                descriptor: Self.name("oom_kills", "total", "Jobs of the tenant killed by the kernel for memory (memory.max)."), labels: labels))
        tenants[t] = s
        return s
    }

    // MARK: Events

    /// A job reached its final state (wall-clock times from its record).
    func jobFinished(_ job: JobRecord) {
        var s = series(job.tenant)
        let counter: Counter
        if let c = s.jobs[job.state] {
            counter = c
        } else {
            counter = registry.makeCounter(
                descriptor: Self.name("jobs", "total", "Jobs that reached a final state since the daemon started, by state."),
                labels: [("tenant", job.tenant.value), ("state", job.state.rawValue)])
            s.jobs[job.state] = counter
            tenants[job.tenant] = s
        }
        counter.increment()
        if job.state == .oomKilled { s.oomKills.increment() }
        if let started = job.startedAt {
            s.queueWait.record(max(0, started - job.createdAt))
            if let finished = job.finishedAt { s.runTime.record(max(0, finished - started)) }
        }
    }

    /// The tenant was offboarded: its series leave the exposition (a tenant created later under
    /// the name starts from nothing, which Prometheus reads as a counter reset).
    func forget(_ t: TenantName) {
        if let s = tenants.removeValue(forKey: t) {
            for h in [s.queueWait, s.runTime, s.workerStartTime] { registry.unregisterValueHistogram(h) }
            for c in [s.workerStarts, s.quarantines, s.oomKills] + Array(s.jobs.values) { registry.unregisterCounter(c) }
        }
        // State-derived series: their keys hold the labels as `tenant=NAME` (a name has no `,`).
        let label = "tenant=\(t.value)"
        func isTenants(_ key: String) -> Bool {
            guard let bar = key.firstIndex(of: "|") else { return false }
            return key[key.index(after: bar)...].split(separator: ",").contains { $0 == label }
        }
        for key in counters.keys where isTenants(key) {
            if let c = counters.removeValue(forKey: key) { registry.unregisterCounter(c) }
            lastSeen[key] = nil
        }
        for key in gauges.keys where isTenants(key) {
            if let g = gauges.removeValue(forKey: key) { registry.unregisterGauge(g) }
        }
    }

    func workerStarted(_ t: TenantName) { series(t).workerStarts.increment() }
    func workerReady(_ t: TenantName, seconds: Double) { series(t).workerStartTime.record(max(0, seconds)) }
    func quarantined(_ t: TenantName) { series(t).quarantines.increment() }

    func loopLag(seconds: Double) {
        loopLag.record(max(0, seconds))
        loopLagNow.set(max(0, seconds))
    }

    // MARK: State, read when asked

    /// A cumulative count as a counter: adds what grew since the last read.
    func syncCounter(_ descriptor: MetricNameDescriptor, labels: [(String, String)], total: Int64, scale: Double = 1) {
        let key = Self.seriesKey(descriptor, labels)
        let counter = Self.cached(&counters, key) { registry.makeCounter(descriptor: descriptor, labels: labels) }
        let before = lastSeen[key] ?? 0
        // Smaller than before: the source started again from zero (a new cgroup).
        let grown = total >= before ? total - before : total
        if grown > 0 {
            if scale == 1 { counter.increment(by: grown) } else { counter.increment(by: Double(grown) * scale) }
        }
        lastSeen[key] = total
    }

    func setGauge(_ descriptor: MetricNameDescriptor, labels: [(String, String)], _ value: Double) {
        let key = Self.seriesKey(descriptor, labels)
        Self.cached(&gauges, key) { registry.makeGauge(descriptor: descriptor, labels: labels) }.set(value)
    }

    private static func seriesKey(_ descriptor: MetricNameDescriptor, _ labels: [(String, String)]) -> String {
        descriptor.name + "|" + labels.map { "\($0.0)=\($0.1)" }.joined(separator: ",")
    }

    /// The series of `key`, made (and registered) the first time it is asked for.
    private static func cached<T>(_ cache: inout [String: T], _ key: String, make: () -> T) -> T {
        if let found = cache[key] { return found }
        let made = make()
        cache[key] = made
        return made
    }

    /// The exposition text (Prometheus text format 0.0.4).
    func text() -> [UInt8] { registry.emitToBuffer() }
}
