import ClawpenCore
import ClawpenWire

/// What the agent runtime moves that only the shell sees: output and input bytes go between the
/// worker's channel and the clients' channels, and file chunks between a client and the worker,
/// never through the core. Counted where they pass; exported by `metricsText`.
///
/// Confined to the supervisor's event loop.
struct RuntimeCounters {
    struct FileOpKey: Hashable {
        /// `get`, `put`, `list`, `stat`, `remove`, `mkdir`.
        let op: String
        /// `ok`, or the error code the client was given.
        let result: String
    }

    struct Tenant {
        /// Live output of streamed, interactive or followed jobs passed on to their clients
        /// (once per chunk, however many clients follow; replays are not new output).
        var outputBytes: Int64 = 0
        /// `job.input` bytes sent on to jobs' stdin.
        var inputBytes: Int64 = 0
        /// Attached clients detached because they stopped reading.
        var slowFollowersDetached: Int64 = 0
        /// File content from clients into the workspace (puts) and out of it (gets).
        var fileBytesIn: Int64 = 0
        var fileBytesOut: Int64 = 0
        var fileOps: [FileOpKey: Int64] = [:]
    }

    private(set) var tenants: [TenantName: Tenant] = [:]

    /// The tenant was offboarded: a tenant created later under the name starts from nothing.
    mutating func forget(_ t: TenantName) { tenants[t] = nil }
    mutating func output(_ t: TenantName, bytes: Int) { tenants[t, default: Tenant()].outputBytes += Int64(bytes) }
    mutating func input(_ t: TenantName, bytes: Int) { tenants[t, default: Tenant()].inputBytes += Int64(bytes) }
    mutating func slowFollowersDetached(_ t: TenantName, count: Int) {
        tenants[t, default: Tenant()].slowFollowersDetached += Int64(count)
    }
    mutating func fileIn(_ t: TenantName, bytes: Int) { tenants[t, default: Tenant()].fileBytesIn += Int64(bytes) }
    mutating func fileOut(_ t: TenantName, bytes: Int) { tenants[t, default: Tenant()].fileBytesOut += Int64(bytes) }

    /// An operation ended; `request` is its type (`file.get`).
    mutating func fileOpEnded(_ t: TenantName, request: String, result: String) {
        let op = request.hasPrefix("file.") ? String(request.dropFirst(5)) : request
        tenants[t, default: Tenant()].fileOps[FileOpKey(op: op, result: result), default: 0] += 1
    }
}
