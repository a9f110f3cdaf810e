/// What the supervisor found of cgroup v2 at start-up, reported by `status` as
/// `supervisor.cgroup`. Nothing is written here: this only reads /proc/self/cgroup,
/// /proc/self/mountinfo and the cgroup's `cgroup.controllers`.
struct CgroupInfo: Sendable {
    enum Mode: String, Sendable { case v2, v2NoControllers = "v2-no-controllers", none }
    var mode: Mode
    var path: String?
    var controllers: [String]

    static func probe() -> CgroupInfo {
        guard let mount = cgroup2MountPoint(),
              let own = FileIO.readSmallFile("/proc/self/cgroup")?
                .split(separator: "\n").first(where: { $0.hasPrefix("0::") }).map({ String($0.dropFirst(3)) })
        else { return CgroupInfo(mode: .none, path: nil, controllers: []) }
        let path = own == "/" ? mount : mount + own
        let controllers = (FileIO.readSmallFile(path + "/cgroup.controllers") ?? "")
            .split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
        let needed: Set<String> = ["memory", "pids", "cpu"]
        let mode: Mode = needed.isSubset(of: Set(controllers)) ? .v2 : .v2NoControllers
        return CgroupInfo(mode: mode, path: path, controllers: controllers)
    }

    /// The cgroup2 mount point from mountinfo (field 5 is the mount point; the fstype follows " - ").
    static func cgroup2MountPoint() -> String? {
        guard let info = FileIO.readSmallFile("/proc/self/mountinfo") else { return nil }
        for line in info.split(separator: "\n") {
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2, halves[1].hasPrefix("cgroup2 ") else { continue }
            let fields = halves[0].split(separator: " ")
            if fields.count >= 5 { return String(fields[4]) }
        }
        return nil
    }
}
