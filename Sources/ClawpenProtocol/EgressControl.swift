import ClawpenWire

/// The messages between the supervisor and its egress proxy (clawpen-egress), one JSON object
/// per frame (4-byte big-endian length, as every clawpen socket). Not a public interface: both
/// ends are this release. The supervisor sends over the control socket (a `listener` frame
/// carries the listening socket as SCM_RIGHTS); the proxy reports over its report socket.
///
/// Supervisor -> proxy:
///   {"type":"trust","pem":...}                      the CA certificates upstream servers are checked against
///   {"type":"tenant","tenant":T,"allow":[RULE],"secrets":[SECRET],"max_connections":N,"ca_cert_pem":...,"ca_key_pem":...}
///   {"type":"listener","tenant":T,"listener":N}     + the fd: connections on it are tenant T's
///   {"type":"close","listener":N}                   the worker behind it is gone
///   {"type":"forget","tenant":T}
/// RULE = {"text","file","line"}; SECRET = {"name","placeholder","value_b64","hosts":[RULE],
/// "headers":[lower-case name],"allow_plain_http":B} (without headers: the default ones).
///
/// Proxy -> supervisor:
///   {"type":"ready"}
///   {"type":"denied","tenant":T,"host":H,"port":P,"rule":R}
///   {"type":"secret_used","tenant":T,"name":N,"host":H,"port":P}
///   {"type":"done","tenant":T,"allowed":B,"up":N,"down":N}
///   {"type":"log","level":L,"message":M}
/// Any report may carry "dropped":N, the reports the proxy dropped before it (its queue to a
/// supervisor that did not read was full).
public enum EgressControl {
    /// The largest control frame (a trust store of a few hundred certificates is ~250 KB).
    public static let maxFrameBytes = 4 * 1024 * 1024

    public static func frame(_ value: JSONValue) -> [UInt8] {
        Framing.frame(value.serialized())
    }

    public static func rule(text: String, file: String, line: Int) -> JSONValue {
        .object([("text", .string(text)), ("file", .string(file)), ("line", .int(Int64(line)))])
    }
}
