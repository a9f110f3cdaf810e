import ArgumentParser
import ClawpenClient
import ClawpenProtocol

extension TenantCommand {
    struct Suspend: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "suspend",
            abstract: "Freeze a tenant (operators only): new jobs refused, queued jobs wait, running jobs stopped.",
            discussion: """
                New submits are refused with `unavailable` (exit 69), saying the tenant is suspended and by \
                whom. Queued jobs stay queued. Running jobs are frozen where they stand: with the tenant's \
                cgroup (cgroup.freeze), every process of the tenant; without one, the worker stops each job's \
                process group with SIGSTOP (`clawpen status` says which). A suspended job's timeout does not \
                run. The suspension is kept across daemon restarts and audited. Undo with `clawpen tenant resume`.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Flag(help: "Print the reply as JSON.") var json = false

        func run() throws {
            let tenantName = try TenantArgument.parse(name)
            let reply = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.call(.tenantSuspend(name: tenantName)) }
            if json { Output.json(reply); return }
            let by = reply["suspension"]?["by"]?.stringValue ?? "?"
            let frozen = reply["suspension"]?["frozen_by"]?.stringValue ?? "nothing was running"
            Output.line("suspended tenant \(name) (by \(by); running jobs: \(frozen))")
        }
    }

    struct Resume: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "resume",
            abstract: "Undo a suspension and lift a crash-loop quarantine (operators only).",
            discussion: """
                Frozen jobs continue (their deadlines move by the time they were frozen), queued jobs start, \
                submits are accepted again. A quarantined tenant's failure count starts again and its worker \
                is started at once if jobs wait. Audited.
                """)
        @OptionGroup var connection: ConnectionOptions
        @Argument(help: "The tenant's name.") var name: String
        @Flag(help: "Print the reply as JSON.") var json = false

        func run() throws {
            let tenantName = try TenantArgument.parse(name)
            let reply = try withClient(connection) { (c: ClawpenConnection) throws(ClientError) in try c.call(.tenantResume(name: tenantName)) }
            if json { Output.json(reply); return }
            let lifted = reply["lifted"]?.arrayValue?.compactMap(\.stringValue) ?? []
            Output.line(
                lifted.isEmpty ? "tenant \(name) was neither suspended nor quarantined" : "resumed tenant \(name) (lifted \(lifted.joined(separator: "; ")))")
        }
    }
}
