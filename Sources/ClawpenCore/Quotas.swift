import ClawpenPolicy

/// jobs_per_minute: a token bucket holding up to one minute's worth of submits, refilled
/// continuously at rate/60 per second. A full bucket allows a burst of `perMinute` submits.
public struct TokenBucket {
    private(set) var tokens: Double
    private var last: Double
    private(set) var perMinute: Int

    init(perMinute: Int, now: Double) {
        self.perMinute = max(1, perMinute)
        self.tokens = Double(self.perMinute)
        self.last = now
    }

    /// A policy reload changed the rate: keep the tokens, capped at the new capacity.
    mutating func setRate(_ perMinute: Int, now: Double) {
        refill(now)
        self.perMinute = max(1, perMinute)
        tokens = min(tokens, Double(self.perMinute))
    }

    private mutating func refill(_ now: Double) {
        if now > last { tokens = min(Double(perMinute), tokens + (now - last) * Double(perMinute) / 60) }
        last = max(last, now)
    }

    /// Takes one token; nil if taken, else the milliseconds until one is there.
    mutating func take(now: Double) -> Int? {
        refill(now)
        if tokens >= 1 { tokens -= 1; return nil }
        return Int(((1 - tokens) * 60_000 / Double(perMinute)).rounded(.up))
    }

    /// Tokens available now (for status).
    public mutating func available(now: Double) -> Int {
        refill(now)
        return Int(tokens)
    }
}

/// cpu_seconds_per_hour: CPU time of the tenant as a whole over the last hour, in one-minute
/// buckets (a sliding window with one-minute steps).
public struct CPUBudget {
    static let bucketSeconds = 60.0
    static let buckets = 60
    /// Microseconds per minute, indexed by minute number modulo `buckets`.
    private var usage = [Int64](repeating: 0, count: CPUBudget.buckets)
    private var minuteOf = [Int64](repeating: -1, count: CPUBudget.buckets)

    /// Adds CPU time used (microseconds) at `now` (monotonic seconds).
    mutating func record(micros: Int64, now: Double) {
        guard micros > 0 else { return }
        let minute = Int64(now / Self.bucketSeconds)
        let i = Int(minute % Int64(Self.buckets))
        if minuteOf[i] != minute { minuteOf[i] = minute; usage[i] = 0 }
        usage[i] += micros
    }

    /// CPU microseconds of the last hour.
    public func usedMicros(now: Double) -> Int64 {
        let minute = Int64(now / Self.bucketSeconds)
        var sum: Int64 = 0
        for i in 0..<Self.buckets where minuteOf[i] > minute - Int64(Self.buckets) && minuteOf[i] <= minute { sum += usage[i] }
        return sum
    }

    /// nil when under `budgetMicros`; else milliseconds until enough old minutes leave the
    /// window to bring the usage under it.
    func retryAfterMs(budgetMicros: Int64, now: Double) -> Int? {
        var used = usedMicros(now: now)
        guard used >= budgetMicros else { return nil }
        let minute = Int64(now / Self.bucketSeconds)
        // Oldest first: minute m leaves the window at the start of minute m + 60.
        let live = (0..<Self.buckets).filter { minuteOf[$0] > minute - Int64(Self.buckets) && minuteOf[$0] <= minute }
            .sorted { minuteOf[$0] < minuteOf[$1] }
        for i in live {
            used -= usage[i]
            if used < budgetMicros {
                let leaves = Double(minuteOf[i] + Int64(Self.buckets)) * Self.bucketSeconds
                return max(1, Int(((leaves - now) * 1000).rounded(.up)))
            }
        }
        return Int(Self.bucketSeconds * Double(Self.buckets) * 1000)
    }
}

/// 30 -> "30", 0.25 -> "0.25" (numbers in refusal messages).
public func formatSeconds(_ d: Double) -> String {
    if d.isFinite, d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
    return String((d * 1000).rounded() / 1000)
}
