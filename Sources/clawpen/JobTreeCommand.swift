import ArgumentParser
import ClawpenClient
import ClawpenProtocol

/// `clawpen job tree ID`: the tree a job belongs to (docs/subjobs.md), root first, each sub-job
/// indented below the job that submitted it.
struct JobTreeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tree", abstract: "Show the tree of sub-jobs a job belongs to: its root and every job below it.",
        discussion: "Works from inside a job too (for jobs of its own tree).")
    @OptionGroup var connection: ConnectionOptions
    @Argument(help: "A job id (any job of the tree).") var id: String
    @Flag(help: "Print the tree as JSON.") var json = false

    func run() throws {
        let reply = try withClient(connection, json: json) { (c: ClawpenConnection) throws(ClientError) in try c.call(.jobTree(jobID: id)) }
        if json { Output.json(reply); return }
        let jobs = (reply["jobs"]?.arrayValue ?? []).compactMap(JobView.init(json:))
        Output.writeStdout(Self.render(jobs, root: reply["root_id"]?.stringValue ?? id))
        if let live = reply["live"]?.intValue {
            let cpu = reply["cpu_seconds"]?.doubleValue ?? 0
            Output.writeStdout("live: \(live) job(s), cpu \((cpu * 1000).rounded() / 1000) s\n")
        }
    }

    /// One line per job, children below their parent, in acceptance order.
    static func render(_ jobs: [JobView], root: String) -> String {
        var children: [String: [JobView]] = [:]
        for j in jobs where j.id != root { children[j.parentID ?? root, default: []].append(j) }
        var out = ""
        func line(_ j: JobView, _ indent: String) {
            let code = j.exitCode.map { " exit \($0)" } ?? ""
            out += "\(indent)\(j.id)  \(j.state.rawValue)\(code)  depth \(j.depth)  \(j.argv.joined(separator: " ").prefix(60))\n"
            for c in children[j.id] ?? [] { line(c, indent + "  ") }
        }
        if let r = jobs.first(where: { $0.id == root }) { line(r, "") }
        return out
    }
}
