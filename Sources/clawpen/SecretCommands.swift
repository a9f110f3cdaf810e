import ArgumentParser
import ClawpenClient
import ClawpenProtocol
import Glibc

/// `clawpen secret put|list|rm` (operators). A value is read from a file or stdin, never from
/// the command line (which other users can read in /proc), and never printed.
struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret", abstract: "Store, list and remove a tenant's secrets (operators only).",
        discussion: """
            Values are sealed with the tenant's data key (AES-256-GCM), itself wrapped by the host's master \
            key; nothing prints them. A job sees a secret only as its policy's [secrets.NAME] table says: \
            a placeholder that the egress proxy replaces in requests to the listed hosts (docs/egress.md).
            """,
        subcommands: [Put.self, List.self, Remove.self])

    struct Put: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "put",
            abstract: "Store or replace a secret (its version grows by one).",
            discussion: "Example: clawpen secret put acme OPENAI --from-file /run/keys/openai")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant.") var tenant: String
        @Argument(help: "The secret's name (^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$).") var name: String
        @Option(name: .customLong("from-file"), help: "Read the value from this file.") var fromFile: String?
        @Flag(name: .customLong("from-stdin"), help: "Read the value from standard input.") var fromStdin = false
        @Flag(help: "Print the stored secret's record (never its value) as JSON.") var json = false

        func run() throws {
            let t = try TenantArgument.parse(tenant)
            guard RequestCodec.isValidSecretName(name) else {
                throw Output.fail(.invalidRequest, "secret name '\(name.prefix(64))' must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
            }
            guard (fromFile != nil) != fromStdin else { throw Output.fail(.invalidRequest, "give exactly one of --from-file F and --from-stdin") }
            var value = try fromFile.map { try readValue(path: $0) } ?? readValue(fd: 0, what: "standard input")
            defer { for i in value.indices { value[i] = 0 } }
            // A file written by an editor or `echo` ends in a newline that is not part of a key.
            if value.last == 0x0A { value.removeLast(); if value.last == 0x0D { value.removeLast() } }
            guard !value.isEmpty else { throw Output.fail(.invalidRequest, "the value is empty") }
            guard value.count <= RequestCodec.maxSecretBytes else {
                throw Output.fail(.invalidRequest, "the value is \(value.count) bytes; a secret is at most \(RequestCodec.maxSecretBytes)")
            }
            let v = value
            let reply = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.call(.secretPut(tenant: t, name: name, value: v)) }
            let record = reply["secret"] ?? .null
            if json { Output.json(record); return }
            Output.line("stored secret \(name) of tenant \(t) (version \(record["version"]?.intValue ?? 0))")
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "list", abstract: "List a tenant's secrets: names, versions and times, never values.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant.") var tenant: String
        @Flag(help: "Print a JSON array.") var json = false

        func run() throws {
            let t = try TenantArgument.parse(tenant)
            let reply = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.call(.secretList(tenant: t)) }
            let list = reply["secrets"]?.arrayValue ?? []
            if json { Output.json(.array(list)); return }
            var rows = [["NAME", "VERSION", "CREATED", "UPDATED"]]
            for s in list {
                rows.append([
                    s["name"]?.stringValue ?? "?", String(s["version"]?.intValue ?? 0), utcTime(s["created_at"]?.doubleValue),
                    utcTime(s["updated_at"]?.doubleValue),
                ])
            }
            Output.writeStdout(Format.table(rows))
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a secret.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant.") var tenant: String
        @Argument(help: "The secret's name.") var name: String

        func run() throws {
            let t = try TenantArgument.parse(tenant)
            guard RequestCodec.isValidSecretName(name) else {
                throw Output.fail(.invalidRequest, "secret name '\(name.prefix(64))' must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
            }
            _ = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.call(.secretRemove(tenant: t, name: name)) }
            Output.line("removed secret \(name) of tenant \(t)")
        }
    }
}

private func readValue(path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw Output.fail(.invalidRequest, "cannot read \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    return try readValue(fd: fd, what: path)
}

private func readValue(fd: Int32, what: String) throws -> [UInt8] {
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16 * 1024)
    defer { for i in chunk.indices { chunk[i] = 0 } }
    while out.count <= RequestCodec.maxSecretBytes + 2 {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n >= 0 else { throw Output.fail(.invalidRequest, "cannot read \(what): \(String(cString: strerror(errno)))") }
        if n == 0 { break }
        out.append(contentsOf: chunk[0..<n])
    }
    return out
}

/// "2026-12-02 00:31:07Z": when a secret was stored.
private func utcTime(_ t: Double?) -> String {
    guard let t, t.isFinite else { return "-" }
    var secs = time_t(t)
    var tm = Glibc.tm()
    guard gmtime_r(&secs, &tm) != nil else { return "-" }
    func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(tm.tm_year + 1900)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday)) \(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))Z"
}
