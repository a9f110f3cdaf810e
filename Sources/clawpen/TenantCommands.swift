import ArgumentParser
import ClawpenClient
import ClawpenProtocol

struct TenantCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tenant", abstract: "Create and inspect tenants.",
        subcommands: [Create.self, List.self, Show.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a tenant: its record, its uid and its workspace <workspace-root>/<name>.",
            discussion: "Names match ^[a-z0-9][a-z0-9_-]{0,62}$.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Option(help: "free, pro or enterprise.") var tier: String = "free"
        @Flag(help: "Print the tenant as JSON.") var json = false

        func run() throws {
            let t = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.tenant(.tenantCreate(name: name, tier: tier)) }
            if json { Output.json(t.json) } else {
                Output.line("created tenant \(t.name) (tier \(t.tier), uid \(t.uid), workspace \(t.workspace))")
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tenants.")
        @OptionGroup var connection: ConnectionOptions
        @Flag(help: "Print a JSON array.") var json = false

        func run() throws {
            let list = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.tenants() }
            if json { Output.json(.array(list.map(\.json))); return }
            var rows = [["TENANT", "TIER", "UID", "WORKSPACE"]]
            for t in list { rows.append([t.name, t.tier, String(t.uid), t.workspace]) }
            Output.writeStdout(Format.table(rows))
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one tenant.")
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            let t = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.tenant(.tenantShow(name: name)) }
            if json { Output.json(t.json); return }
            Output.writeStdout("tenant:     \(t.name)\ntier:       \(t.tier)\nuid:        \(t.uid)\nworkspace:  \(t.workspace)\n")
        }
    }
}
