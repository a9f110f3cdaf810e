import ClawpenProtocol

/// Everything measured, printed as a table and as JSON. A scenario that did not run leaves its
/// figures nil (`null` in JSON).
struct Report {
    let machine: MachineInfo

    var floor: Summary?
    var warm: Summary?
    var bwrapRan = false
    var bwrap: Summary?
    var bwrapPath: String?
    var bwrapNote: String?

    var throughputJobsPerS: Double?
    var throughputJobs: Int?
    var throughputThreads: Int?
    var throughputTenants: Int?
    var throughputSeconds: Double?
    var throughputLatency: Summary?
    var throughputFloorJobsPerS: Double? // /bin/true run by as many shell loops as submitters
    var throughputBenchCPU: Double? // CPUs used by this process (the submitters) during the run
    var throughputDaemonCPU: Double? // CPUs used by the supervisor process (not its workers)

    var cold: Summary?
    var coldPrestartedWorkers: Int?
    var coldGapMs: Double?

    var supervisorBaselineMiB: Double?
    var idleWorkerKiB: Double?
    var idleWorkerRssKiB: Double?
    var idleWorkersMeasured: Int?
    var densityTenants: Int?
    var densityWorkersUp: Int?
    var supervisorMiB: Double?
    var supervisorRssMiB: Double?
    var workerKiBAtDensity: Double?
    var workersTotalPrivateMiB: Double?

    /// Whether the daemon sandboxed its workers (it does when it runs as root).
    var sandboxed: Bool?

    init(machine: MachineInfo) { self.machine = machine }

    static let coldTargetMs = 5.0
    static let bwrapRatioTarget = 2.0

    /// How many times longer a bwrap /bin/true takes than a sandboxed warm clawpen job.
    var bwrapOverWarm: Double? {
        guard let b = bwrap, let w = warm, w.p50 > 0 else { return nil }
        return b.p50 / w.p50
    }

    // Targets (the issue's numbers).
    static let warmRatioTarget = 2.0
    static let throughputTarget = 1500.0
    static let idleWorkerTargetKiB = 1024.0
    static let supervisorTargetMiB = 100.0

    var warmRatio: Double? {
        guard let w = warm, let f = floor, f.p50 > 0 else { return nil }
        return w.p50 / f.p50
    }

    var fairness: [FairnessFigures] = []
    var hostile: HostileFigures?
    var egress: EgressFigures?
    /// `stream` and `interactive` (Runtime.swift).
    var stream: RuntimeFigures?
    var interactive: RuntimeFigures?
    static let streamOverFloorTargetMs = 0.3
    static let interactiveOverFloorTargetMs = 0.5

    var hasFigures: Bool {
        warm != nil || throughputJobsPerS != nil || cold != nil || idleWorkerKiB != nil || !fairness.isEmpty || hostile != nil || stream != nil
            || interactive != nil || egress != nil
    }

    // MARK: Table

    func table() -> String {
        var rows: [[String]] = [["figure", "value", "target", "met"]]
        func row(_ name: String, _ value: String, _ target: String = "", _ met: Bool? = nil) {
            rows.append([name, value, target, met.map { $0 ? "yes" : "NO" } ?? ""])
        }
        if let f = floor, let w = warm {
            row("floor: fork/exec /bin/true p50", ms(f.p50) + "  (\(f.count) runs)")
            row("floor: fork/exec /bin/true p99", ms(f.p99))
            row("warm job p50", ms(w.p50) + "  (\(w.count) jobs)")
            row("warm job p99", ms(w.p99))
            if let r = warmRatio {
                row("warm p50 / floor p50", fmt(r, 2) + "x", "<= \(fmt(Self.warmRatioTarget, 0))x", r <= Self.warmRatioTarget)
            }
        }
        if bwrapRan {
            if let b = bwrap {
                row("peer: bwrap /bin/true p50", ms(b.p50) + "  (\(b.count) runs)")
                if let r = bwrapOverWarm {
                    row(
                        "bwrap p50 / warm job p50", fmt(r, 2) + "x" + (sandboxed == true ? "" : "  (workers NOT sandboxed)"),
                        ">= \(fmt(Self.bwrapRatioTarget, 0))x", sandboxed == true ? r >= Self.bwrapRatioTarget : nil)
                }
            } else {
                row("peer: bwrap /bin/true p50", "n/a: " + (bwrapNote ?? "not measured"))
            }
        }
        if let t = throughputJobsPerS {
            row(
                "throughput", fmt(t, 0) + " jobs/s  (\(throughputJobs ?? 0) jobs, \(throughputThreads ?? 0) threads, \(throughputTenants ?? 0) tenants)",
                ">= \(fmt(Self.throughputTarget, 0)) jobs/s", t >= Self.throughputTarget)
            if let l = throughputLatency {
                row("  job latency under load p50 / p99", ms(l.p50) + " / " + ms(l.p99))
            }
            if let f = throughputFloorJobsPerS {
                row("  floor: /bin/true from \(throughputThreads ?? 0) shell loops", fmt(f, 0) + " /s")
            }
            if let b = throughputBenchCPU, let dm = throughputDaemonCPU {
                row("  CPUs used: bench / supervisor", fmt(b, 2) + " / " + fmt(dm, 2) + "  (of \(machine.nproc))")
            }
        }
        if let c = cold {
            row(
                "cold start p50",
                ms(c.p50) + "  (\(c.count) tenants, \(fmt(coldGapMs ?? 0, 0)) ms apart\(sandboxed == true ? ", sandboxed" : ", NOT sandboxed"))",
                "<= \(fmt(Self.coldTargetMs, 0)) ms", c.p50 <= Self.coldTargetMs)
            row("cold start p99", ms(c.p99))
        }
        if let k = idleWorkerKiB {
            row(
                "idle worker private (median)", fmt(k, 0) + " KiB  (\(idleWorkersMeasured ?? 0) workers)",
                "<= \(fmt(Self.idleWorkerTargetKiB, 0)) KiB", k <= Self.idleWorkerTargetKiB)
        }
        if let s = supervisorMiB, let n = densityTenants {
            let target = n == 1000 ? "<= \(fmt(Self.supervisorTargetMiB, 0)) MiB" : "(target is for 1,000)"
            row(
                "supervisor private, \(n) tenants", fmt(s, 1) + " MiB  (\(densityWorkersUp ?? 0) workers up)",
                target, n == 1000 ? s <= Self.supervisorTargetMiB : nil)
            if let b = supervisorBaselineMiB { row("  supervisor private, 0 tenants", fmt(b, 1) + " MiB") }
            if let w = workerKiBAtDensity { row("  worker private at \(n) tenants (median)", fmt(w, 0) + " KiB") }
        }
        if let s = stream, let o = s.ours, let f = s.floor {
            row("stream: line write -> client p50 / p99", ms(o.p50) + " / " + ms(o.p99) + "  (\(s.samples) lines)")
            row("  floor: a plain pipe p50 / p99", ms(f.p50) + " / " + ms(f.p99))
            if let d = s.p50Over {
                row("  stream p50 - floor p50", ms(d), "<= \(ms(Self.streamOverFloorTargetMs))", d <= Self.streamOverFloorTargetMs)
            }
        }
        if let s = interactive, let o = s.ours, let f = s.floor {
            row("interactive: REPL 1+1 round trip p50 / p99", ms(o.p50) + " / " + ms(o.p99) + "  (\(s.samples) round trips)")
            row("  floor: same REPL on a local pty p50 / p99", ms(f.p50) + " / " + ms(f.p99))
            if let d = s.p50Over {
                row("  interactive p50 - floor p50", ms(d), "<= \(ms(Self.interactiveOverFloorTargetMs))", d <= Self.interactiveOverFloorTargetMs)
            }
        }
        for f in fairness {
            let tag = f.mode == "fair" ? "fair" : "FIFO"
            if let b = f.quietBaseline { row("\(tag): quiet p50 / p99, no flood", ms(b.p50) + " / " + ms(b.p99) + "  (\(b.count) jobs)") }
            if let q = f.quietFlood { row("\(tag): quiet p50 / p99, under flood", ms(q.p50) + " / " + ms(q.p99) + "  (\(q.count) jobs)") }
            if let r = f.p99Ratio {
                row(
                    "\(tag): quiet p99 under flood / without", fmt(r, 2) + "x", f.mode == "fair" ? "<= \(fmt(Scenarios.fairnessRatioTarget, 0))x" : "",
                    f.mode == "fair" ? r <= Scenarios.fairnessRatioTarget : nil)
            }
            if let s = f.floodShare {
                row("\(tag): flood's share of running slots", fmt(s * 100, 1) + " %  (backlog \(f.floodBacklog), max_running \(f.maxRunning))")
            }
        }
        if let e = egress {
            func pair(_ d: Summary?, _ p: Summary?) -> String {
                guard let d, let p else { return "-" }
                return "direct " + ms(d.p50) + ", proxied " + ms(p.p50) + " (p99 " + ms(d.p99) + " / " + ms(p.p99) + ")"
            }
            row("egress HTTP GET p50 (new connection, \(e.requests))", pair(e.httpDirect, e.httpProxied))
            row("egress HTTP added p50", e.httpAddedMs.map { ms($0) } ?? "-", "<= 0.5 ms", e.httpAddedMs.map { $0 <= 0.5 })
            row("egress HTTPS GET + substitution p50 (new connection)", pair(e.httpsDirect, e.httpsProxied))
            row("egress HTTPS added p50", e.httpsAddedMs.map { ms($0) } ?? "-", "<= 2 ms", e.httpsAddedMs.map { $0 <= 2 })
            row(
                "egress download \(e.downloadBytes >> 20) MiB: direct / proxied",
                (e.downloadDirectMBps.map { fmt($0, 0) } ?? "-") + " / " + (e.downloadProxiedMBps.map { fmt($0, 0) } ?? "-") + " MB/s")
            row("egress download proxied / direct", e.downloadRatio.map { fmt($0, 2) } ?? "-", ">= 0.80", e.downloadRatio.map { $0 >= 0.8 })
            row(
                "egress download, bare relay (peer) / direct",
                (e.relayRatio.map { fmt($0, 2) } ?? "-")
                    + (e.downloadRelayMBps.map { " (\(fmt($0, 0)) MB/s: the same kernel relay on the host, no proxy, no namespaces)" } ?? ""), "", nil)
        }
        if let h = hostile {
            if let u = h.pingUnloaded { row("ping p50 / p99 / max, unloaded", ms(u.p50) + " / " + ms(u.p99) + " / " + ms(u.max) + "  (\(u.count) pings)") }
            if let l = h.pingLoaded {
                row(
                    "ping p50 / p99 / max, \(h.senders) client(s) sending \(h.frameBytes)-byte frames",
                    ms(l.p50) + " / " + ms(l.p99) + " / " + ms(l.max) + "  (\(l.count) pings)")
            }
            if let r = h.p99Ratio { row("ping p99 loaded / unloaded", fmt(r, 2) + "x") }
            if let f = h.hostileRoundTrip {
                row("hostile frame round trip p50 / p99", ms(f.p50) + " / " + ms(f.p99) + "  (\(f.count) frames)")
                row("  parse and transfer rate (p50)", fmt(Double(h.frameBytes) / 1_048_576 / (f.p50 / 1000), 0) + " MiB/s")
            }
            if let l = h.loopCPUPerFrameMs, let p = h.poolCPUPerFrameMs {
                row("CPU per hostile frame: event loop / parser pool", fmt(l, 1) + " ms / " + fmt(p, 1) + " ms")
            }
            if let w = h.inlineWorstMicros { row("4 KiB frame on the loop, slowest shape", fmt(w, 1) + " µs  (\(h.inlineWorstShape))") }
        }
        let widths = (0..<4).map { c in rows.map { $0[c].count }.max() ?? 0 }
        var out = "clawpen-bench on \(machine.nproc) CPU(s), Linux \(machine.kernel) \(machine.arch)"
        if let m = machine.cpuModel { out += ", \(m)" }
        out += "\n"
        for (i, r) in rows.enumerated() {
            let line = (0..<4).map { c in r[c] + String(repeating: " ", count: widths[c] - r[c].count) }.joined(separator: "  ")
            out += line.trimmedTrailing() + "\n"
            if i == 0 { out += widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n" }
        }
        return out
    }

    // MARK: JSON

    func json() -> JSONValue {
        var o = JSONObjectBuilder()
        if let s = stream {
            o.set("stream_p50_ms", r3(s.ours?.p50)); o.set("stream_p99_ms", r3(s.ours?.p99))
            o.set("stream_floor_p50_ms", r3(s.floor?.p50)); o.set("stream_floor_p99_ms", r3(s.floor?.p99))
        }
        if let s = interactive {
            o.set("interactive_p50_ms", r3(s.ours?.p50)); o.set("interactive_p99_ms", r3(s.ours?.p99))
            o.set("interactive_floor_p50_ms", r3(s.floor?.p50)); o.set("interactive_floor_p99_ms", r3(s.floor?.p99))
        }
        o.set("floor_p50_ms", r3(floor?.p50))
        o.set("floor_p99_ms", r3(floor?.p99))
        o.set("warm_p50_ms", r3(warm?.p50))
        o.set("warm_p99_ms", r3(warm?.p99))
        o.set("warm_ratio", r3(warmRatio))
        o.set("warm_jobs", warm?.count)
        o.set("floor_runs", floor?.count)
        o.set("bwrap_p50_ms", r3(bwrap?.p50))
        o.set("bwrap_p99_ms", r3(bwrap?.p99))
        o.set("bwrap_runs", bwrap?.count)
        o.set("bwrap_note", bwrapNote)
        o.set("bwrap_over_warm", r3(bwrapOverWarm))
        o.set("sandboxed", sandboxed.map(JSONValue.bool) ?? .null)
        o.set("cold_gap_ms", coldGapMs)
        o.set("throughput_jobs_per_s", r3(throughputJobsPerS))
        o.set("throughput_jobs", throughputJobs)
        o.set("throughput_threads", throughputThreads)
        o.set("throughput_tenants", throughputTenants)
        o.set("throughput_seconds", r3(throughputSeconds))
        o.set("throughput_latency_p50_ms", r3(throughputLatency?.p50))
        o.set("throughput_latency_p99_ms", r3(throughputLatency?.p99))
        o.set("throughput_floor_per_s", r3(throughputFloorJobsPerS))
        o.set("throughput_bench_cpus", r3(throughputBenchCPU))
        o.set("throughput_supervisor_cpus", r3(throughputDaemonCPU))
        o.set("cold_p50_ms", r3(cold?.p50))
        o.set("cold_p99_ms", r3(cold?.p99))
        o.set("cold_tenants", cold?.count)
        o.set("idle_worker_private_kib", idleWorkerKiB.map { Int($0) })
        o.set("idle_worker_rss_kib", idleWorkerRssKiB.map { Int($0) })
        o.set("idle_workers_measured", idleWorkersMeasured)
        o.set("supervisor_private_mib_1000", densityTenants == 1000 ? r3(supervisorMiB) : nil)
        o.set("supervisor_private_mib", r3(supervisorMiB))
        o.set("supervisor_rss_mib", r3(supervisorRssMiB))
        o.set("supervisor_private_mib_0", r3(supervisorBaselineMiB))
        o.set("density_tenants", densityTenants)
        o.set("density_workers_up", densityWorkersUp)
        o.set("worker_private_kib_median_at_density", workerKiBAtDensity.map { Int($0) })
        o.set("workers_private_mib_total_at_density", r3(workersTotalPrivateMiB))
        for f in fairness {
            let prefix = f.mode == "fair" ? "" : "fifo_"
            o.set(prefix + "quiet_p50_ms", r3(f.quietBaseline?.p50))
            o.set(prefix + "quiet_p99_ms", r3(f.quietBaseline?.p99))
            o.set(prefix + "quiet_flood_p50_ms", r3(f.quietFlood?.p50))
            o.set(prefix + "quiet_flood_p99_ms", r3(f.quietFlood?.p99))
            o.set(prefix + "quiet_p99_ratio", r3(f.p99Ratio))
            o.set(prefix + "flood_share", r3(f.floodShare))
            o.set(prefix + "flood_backlog", f.floodBacklog)
            o.set(prefix + "max_running", f.maxRunning)
        }
        if let e = egress {
            o.set("egress_requests", e.requests)
            o.set("egress_http_direct_p50_ms", r3(e.httpDirect?.p50))
            o.set("egress_http_proxied_p50_ms", r3(e.httpProxied?.p50))
            o.set("egress_https_direct_p50_ms", r3(e.httpsDirect?.p50))
            o.set("egress_https_proxied_p50_ms", r3(e.httpsProxied?.p50))
            o.set("egress_download_direct_mbps", r3(e.downloadDirectMBps))
            o.set("egress_download_proxied_mbps", r3(e.downloadProxiedMBps))
            o.set("egress_download_relay_mbps", r3(e.downloadRelayMBps))
            o.set("egress_download_relay_ratio", r3(e.relayRatio))
        }
        if let h = hostile {
            o.set("hostile_senders", h.senders)
            o.set("hostile_frame_bytes", h.frameBytes)
            o.set("hostile_ping_unloaded_p50_ms", r3(h.pingUnloaded?.p50))
            o.set("hostile_ping_unloaded_p99_ms", r3(h.pingUnloaded?.p99))
            o.set("hostile_ping_loaded_p50_ms", r3(h.pingLoaded?.p50))
            o.set("hostile_ping_loaded_p99_ms", r3(h.pingLoaded?.p99))
            o.set("hostile_ping_unloaded_max_ms", r3(h.pingUnloaded?.max))
            o.set("hostile_ping_loaded_max_ms", r3(h.pingLoaded?.max))
            o.set("hostile_ping_p99_ratio", r3(h.p99Ratio))
            o.set("hostile_frame_round_trip_p50_ms", r3(h.hostileRoundTrip?.p50))
            o.set("hostile_frame_round_trip_p99_ms", r3(h.hostileRoundTrip?.p99))
            o.set("hostile_frames", h.hostileRoundTrip?.count)
            o.set("hostile_loop_cpu_ms_per_frame", r3(h.loopCPUPerFrameMs))
            o.set("hostile_pool_cpu_ms_per_frame", r3(h.poolCPUPerFrameMs))
            o.set("inline_4k_worst_us", r3(h.inlineWorstMicros))
            o.set("inline_4k_worst_shape", h.inlineWorstShape)
        }
        var targets = JSONObjectBuilder()
        targets.set("warm_ratio_max", Self.warmRatioTarget)
        targets.set("throughput_jobs_per_s_min", Self.throughputTarget)
        targets.set("idle_worker_private_kib_max", Self.idleWorkerTargetKiB)
        targets.set("supervisor_private_mib_1000_max", Self.supervisorTargetMiB)
        targets.set("quiet_p99_ratio_max", Scenarios.fairnessRatioTarget)
        o.set("targets", targets.value)
        var met = JSONObjectBuilder()
        met.set("warm_ratio", warmRatio.map { JSONValue.bool($0 <= Self.warmRatioTarget) } ?? .null)
        met.set("throughput", throughputJobsPerS.map { JSONValue.bool($0 >= Self.throughputTarget) } ?? .null)
        met.set("idle_worker", idleWorkerKiB.map { JSONValue.bool($0 <= Self.idleWorkerTargetKiB) } ?? .null)
        met.set("supervisor_1000", densityTenants == 1000 ? supervisorMiB.map { JSONValue.bool($0 <= Self.supervisorTargetMiB) } ?? .null : .null)
        met.set("fairness", fairness.first { $0.mode == "fair" }?.p99Ratio.map { JSONValue.bool($0 <= Scenarios.fairnessRatioTarget) } ?? .null)
        o.set("met", met.value)
        var m = JSONObjectBuilder()
        m.set("nproc", machine.nproc)
        m.set("kernel", machine.kernel)
        m.set("arch", machine.arch)
        m.set("cpu_model", machine.cpuModel)
        m.set("mem_total_mib", machine.memTotalMiB)
        o.set("machine", m.value)
        return o.value
    }

    private func r3(_ d: Double?) -> Double? { d.map { ($0 * 1000).rounded() / 1000 } }
    private func ms(_ d: Double) -> String { fmt(d, 3) + " ms" }
}

/// Fixed-point formatting without Foundation's locale machinery.
func fmt(_ value: Double, _ decimals: Int) -> String {
    guard value.isFinite else { return "\(value)" }
    var scale = 1.0
    for _ in 0..<decimals { scale *= 10 }
    let scaled = (abs(value) * scale).rounded()
    let whole = Int(scaled / scale)
    let frac = Int(scaled - Double(whole) * scale)
    var s = (value < 0 && scaled > 0 ? "-" : "") + String(whole)
    if decimals > 0 {
        let f = String(frac)
        s += "." + String(repeating: "0", count: decimals - f.count) + f
    }
    return s
}

extension String {
    func trimmedTrailing() -> String {
        var s = self[...]
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
