/// How fast one client connection may send requests while other connections are being served
/// too (`clawpen serve --client-requests-per-second`; docs/reliability.md, "Fairness between
/// clients").
///
/// Why a rate and not only turns (LoopTicks.swift): a client that sends a ping as soon as the
/// last is answered is served like any client that sends one request at a time, and ten of them
/// made 44,000 requests a second, measured. The loop served every other client in time, but the
/// flooders' own threads and their wake-ups took the machine's two cores: an ordinary client's
/// submit of `/bin/true`, which needs the loop, its worker, a fork and a commit, went from 3.8 to
/// 107 ms at p99. Held to a rate, a flooder waits for its replies instead of spinning, and what
/// it costs the machine is bounded. Requests are delayed, never refused or dropped: the
/// connection is simply not read until its next request may go.
///
/// Only while another connection is being served: a service alone on the socket (a bulk submit
/// of ten thousand jobs on one connection) goes as fast as the loop takes it.
public struct ClientPacing: Sendable, Equatable {
    public var requestsPerSecond: Double
    /// Requests a connection may send at once above the rate.
    public var burst: Double

    public static let defaultRequestsPerSecond = 1000.0

    public init(requestsPerSecond: Double) {
        self.requestsPerSecond = requestsPerSecond
        burst = max(1, requestsPerSecond / 4)
    }
}

/// One connection's token bucket (ClientPacing). Pure: the caller passes the clock.
struct RequestPacer {
    let pacing: ClientPacing
    private var tokens: Double
    private var last: UInt64?

    init(_ pacing: ClientPacing) {
        self.pacing = pacing
        tokens = pacing.burst
    }

    /// 0 if a request may go now (it takes a token), else the nanoseconds until one may. When
    /// no other connection is being served (`contended` false) it always may; it still takes a
    /// token if there is one, so that a connection that floods alone does not come to the
    /// others with a full burst.
    mutating func delay(now: UInt64, contended: Bool) -> UInt64 {
        if let last, now > last {
            tokens = min(pacing.burst, tokens + Double(now - last) * pacing.requestsPerSecond / 1e9)
        }
        last = now
        guard contended else {
            tokens = max(0, tokens - 1)
            return 0
        }
        if tokens >= 1 {
            tokens -= 1
            return 0
        }
        return UInt64(((1 - tokens) / pacing.requestsPerSecond * 1e9).rounded(.up))
    }
}

/// How many connections asked to be served lately: those with a request in this window of
/// `windowNanos` or the last. Two or more: they contend, and ClientPacing applies. Pure.
struct ActiveClients {
    static let windowNanos: UInt64 = 100_000_000
    private var window: UInt64 = 0
    private var current = 0
    private var previous = 0

    /// A connection has a request; `seen` is its own memo of the window it was last counted in.
    mutating func request(now: UInt64, seen: inout UInt64?) {
        roll(now)
        guard seen != window else { return }
        seen = window
        current += 1
    }

    /// Connections with a request in this window or the last (the larger count).
    mutating func count(now: UInt64) -> Int {
        roll(now)
        return max(current, previous)
    }

    private mutating func roll(_ now: UInt64) {
        let w = now / Self.windowNanos
        guard w != window else { return }
        previous = w == window + 1 ? current : 0
        current = 0
        window = w
    }
}
