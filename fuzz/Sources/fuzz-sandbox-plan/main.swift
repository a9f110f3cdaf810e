import ClawpenWire
import FuzzSupport

// The sandbox plan, the worker's first frame (`configure`, tag 4): every input is the body of
// one, so that the fuzzer spends its time in SandboxPlan.decode. A plan that decodes encodes back
// to the same bytes, and its lists stay within the bounds the decoder promises (it reserves no
// more than the payload holds).

func plan(_ bytes: [UInt8]) -> SupervisorToWorker? { try? SupervisorToWorker.decode([4] + bytes) }

let harness = Harness(
    name: "sandbox-plan",
    seeds: {
        var p = SandboxPlan(
            enabled: true, tenant: "acme", uid: 100_000, gid: 100_000, workspace: "/var/lib/clawpen/workspaces/acme",
            readOnlyBinds: [.init(source: "/usr", target: "/usr"), .init(source: "/lib", target: "/lib")],
            etcBinds: [.init(source: "/etc/ssl", target: "/etc/ssl"), .init(source: "/etc/ld.so.cache", target: "/etc/ld.so.cache")],
            passwd: "root:x:0:0::/root:/bin/sh\nacme:x:1000:1000::/home/acme:/bin/sh\n", group: "root:x:0:\nacme:x:1000:\n",
            tmpSizeBytes: 64 << 20, workerLimits: [.init(resource: 7, soft: 1024, hard: 1024), .init(resource: 6, soft: 256, hard: 256)],
            jobLimits: [.init(resource: 9, soft: 1 << 30, hard: 1 << 30)])
        p.symlinks = [.init(source: "usr/bin", target: "/bin")]
        p.seccompProfile = "default"
        p.seccompProgram = Array(repeating: 0x15, count: 64)
        p.jobSeccompProgram = Array(repeating: 0x06, count: 16)
        p.cgroupNode = "/sys/fs/cgroup/clawpen/acme"
        p.mountsPrepared = true
        p.jobLandlockABI = 6
        p.shmMaxBytes = 1 << 26
        p.loopback = true
        let off = SandboxPlan(
            enabled: false, tenant: "t", uid: 0, gid: 0, workspace: "/w", readOnlyBinds: [], etcBinds: [], passwd: "", group: "",
            tmpSizeBytes: 0, workerLimits: [], jobLimits: [])
        return [p, off].map { Array(SupervisorToWorker.configure($0).encoded().dropFirst()) }
    },
    decode: { bytes in blackHole(plan(bytes)) },
    check: { bytes in
        guard let m = plan(bytes) else { return }
        guard case .configure(let p) = m else {
            require(false, "tag 4 decoded as \(m)")
            return
        }
        require(Array(m.encoded().dropFirst()) == bytes, "decoded and encoded again, the plan's bytes differ: \(shown(bytes))")
        require(p.readOnlyBinds.count <= 256 && p.etcBinds.count <= 256 && p.symlinks.count <= 64, "a list passed its bound")
        require(p.workerLimits.count <= 16 && p.jobLimits.count <= 16, "a list of limits passed its bound")
    })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
