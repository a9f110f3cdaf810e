import Glibc

enum Clock {
    /// Wall-clock Unix seconds (stored in job records).
    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Monotonic seconds (uptimes, backoff).
    static func monotonic() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Job ids: 12 hex digits of milliseconds since the epoch (sortable by acceptance time), then 16
/// random hex digits.
enum JobID {
    static func make() -> String {
        var rng = SystemRandomNumberGenerator()
        let ms = UInt64(Clock.now() * 1000)
        return hex(ms, digits: 12) + "-" + hex(rng.next(), digits: 16)
    }

    static func hex(_ v: UInt64, digits: Int) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: max(0, digits - s.count)) + s
    }

    /// Ids we hand out have this shape; anything else cannot be a job of ours.
    static func isWellFormed(_ s: String) -> Bool {
        s.utf8.count <= 64 && !s.isEmpty && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) || $0 == 0x2D }
    }
}
