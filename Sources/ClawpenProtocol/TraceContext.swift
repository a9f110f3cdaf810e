/// A W3C Trace Context `traceparent` (https://www.w3.org/TR/trace-context/):
/// `00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>`, lower case. `submit` takes the
/// caller's; the supervisor makes one when there is none. The job runs as a child span of it:
/// its `TRACEPARENT` keeps the trace id and flags, with the job's own span id.
public struct TraceContext: Sendable, Equatable {
    public let traceID: String
    public let parentID: String
    public let flags: String

    /// The header as it travels.
    public var traceparent: String { "00-\(traceID)-\(parentID)-\(flags)" }

    /// Parses a `traceparent` strictly: version 00 (a later version's first four fields are read
    /// as 00's, as the spec asks), lower-case hex, neither id all zeros.
    public init?(parsing raw: String) {
        let parts = raw.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 4, raw.utf8.count <= 512 else { return nil }
        let version = parts[0], trace = parts[1], parent = parts[2], flags = parts[3]
        guard Self.isHex(version, 2), version != "ff", Self.isHex(trace, 32), Self.isHex(parent, 16), Self.isHex(flags, 2) else { return nil }
        guard version != "00" || parts.count == 4 else { return nil }
        guard trace.contains(where: { $0 != "0" }), parent.contains(where: { $0 != "0" }) else { return nil }
        self.traceID = String(trace); self.parentID = String(parent); self.flags = String(flags)
    }

    public init(traceID: String, parentID: String, flags: String) {
        self.traceID = traceID; self.parentID = parentID; self.flags = flags
    }

    /// A new trace (sampled), for a submit that brought none.
    public static func generate() -> TraceContext {
        var rng = SystemRandomNumberGenerator()
        func hex(_ bytes: Int) -> String {
            var s = ""
            for _ in 0..<bytes {
                let b = UInt8.random(in: 0...255, using: &rng)
                s += String(b >> 4, radix: 16) + String(b & 0xF, radix: 16)
            }
            return s
        }
        var trace = hex(16)
        if !trace.contains(where: { $0 != "0" }) { trace = "0000000000000000000000000000000" + "1" }
        var parent = hex(8)
        if !parent.contains(where: { $0 != "0" }) { parent = "000000000000000" + "1" }
        return TraceContext(traceID: trace, parentID: parent, flags: "01")
    }

    /// The same trace with `spanID` as the parent: what the job is given as `TRACEPARENT`.
    public func child(spanID: String) -> TraceContext { TraceContext(traceID: traceID, parentID: spanID, flags: flags) }

    /// A span id for a job: the 64 random bits at the end of its id (JobID: 12 hex digits of
    /// milliseconds, then 16 of random), so that it is the job's own and needs no state.
    public static func spanID(forJob id: String) -> String {
        let tail = String(id.suffix(16))
        guard isHex(Substring(tail), 16), tail.contains(where: { $0 != "0" }) else { return "000000000000000" + "1" }
        return tail
    }

    private static func isHex(_ s: Substring, _ count: Int) -> Bool {
        s.utf8.count == count && s.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }
    }
}
