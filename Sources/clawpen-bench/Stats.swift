import Glibc

/// Monotonic time in nanoseconds.
enum Clock {
    static func nanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    static func milliseconds(since start: UInt64) -> Double {
        Double(nanoseconds() &- start) / 1_000_000
    }

    static func sleep(seconds: Double) {
        var ts = timespec(tv_sec: Int(seconds), tv_nsec: Int((seconds - Double(Int(seconds))) * 1e9))
        var rest = timespec()
        while nanosleep(&ts, &rest) != 0 && errno == EINTR { ts = rest }
    }
}

/// Percentiles of a set of samples, nearest-rank: the value at rank ceil(p/100 * n) of the
/// sorted samples.
struct Summary: Sendable {
    let count: Int
    let p50: Double
    let p99: Double
    let min: Double
    let max: Double
    let mean: Double

    init(_ samples: [Double]) {
        precondition(!samples.isEmpty, "no samples")
        let sorted = samples.sorted()
        count = sorted.count
        p50 = Summary.nearestRank(sorted, 50)
        p99 = Summary.nearestRank(sorted, 99)
        min = sorted[0]
        max = sorted[sorted.count - 1]
        mean = sorted.reduce(0, +) / Double(sorted.count)
    }

    static func nearestRank(_ sorted: [Double], _ p: Double) -> Double {
        let rank = Int((p / 100 * Double(sorted.count)).rounded(.up))
        return sorted[Swift.min(Swift.max(rank, 1), sorted.count) - 1]
    }

    static func median(_ values: [Double]) -> Double { nearestRank(values.sorted(), 50) }
}

/// Memory of a process from /proc/PID/smaps_rollup, in KiB.
struct ProcessMemory: Sendable {
    let privateKiB: Int // Private_Clean + Private_Dirty (USS)
    let rssKiB: Int

    static func read(pid: Int32) throws(BenchFailure) -> ProcessMemory {
        let path = "/proc/\(pid)/smaps_rollup"
        guard let text = readTextFile(path) else {
            throw BenchFailure("cannot read \(path): \(String(cString: strerror(errno))) (did the process exit?)")
        }
        var fields: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", omittingEmptySubsequences: true)
            guard parts.count >= 2, parts[0].hasSuffix(":"), let v = Int(parts[1]) else { continue }
            fields[String(parts[0].dropLast())] = v
        }
        guard let clean = fields["Private_Clean"], let dirty = fields["Private_Dirty"], let rss = fields["Rss"] else {
            throw BenchFailure("\(path) has no Private_Clean/Private_Dirty/Rss lines")
        }
        return ProcessMemory(privateKiB: clean + dirty, rssKiB: rss)
    }
}

/// CPU time (user + system) a process has used so far, in seconds, from /proc/PID/stat.
func cpuSeconds(pid: Int32, task: Int32? = nil) -> Double? {
    let path = task.map { "/proc/\(pid)/task/\($0)/stat" } ?? "/proc/\(pid)/stat"
    guard let text = readTextFile(path), let close = text.lastIndex(of: ")") else { return nil }
    // After "pid (comm) ": state is field 3, utime field 14, stime field 15.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
    return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

func readTextFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16384)
    while true {
        let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// What the numbers were measured on.
struct MachineInfo: Sendable {
    let nproc: Int
    let kernel: String
    let arch: String
    let cpuModel: String?
    let memTotalMiB: Int?

    static func current() -> MachineInfo {
        var u = utsname()
        uname(&u)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        let cpuinfo = readTextFile("/proc/cpuinfo") ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmedSpaces() }
        let meminfo = readTextFile("/proc/meminfo") ?? ""
        let memKiB = meminfo.split(separator: "\n").first { $0.hasPrefix("MemTotal:") }
            .flatMap { $0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first }
            .flatMap { Int($0) }
        return MachineInfo(
            nproc: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), kernel: field(u.release),
            arch: field(u.machine), cpuModel: model, memTotalMiB: memKiB.map { $0 / 1024 })
    }
}

extension Substring {
    func trimmedSpaces() -> String {
        var s = self[...]
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
