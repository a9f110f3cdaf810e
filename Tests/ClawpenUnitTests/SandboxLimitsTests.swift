@testable import ClawpenPolicy
@testable import ClawpenSandbox
@testable import ClawpenSupervisor
import XCTest

/// The pure parts of the sandbox limits: the shm values, the subuid parser, the profile's
/// socket families, the disk keys.
final class SandboxLimitsTests: XCTestCase {
    func testShmLimitsFollowTheMemoryLimit() {
        let v = IPCLimits.values(forMemoryBytes: 256 << 20, pageSize: 4096)
        XCTAssertEqual(v.shmmax, 256 << 20)
        XCTAssertEqual(v.shmall, 65_536)
        XCTAssertEqual(v.shmmni, 256)
        XCTAssertEqual(IPCLimits.values(forMemoryBytes: 1 << 20, pageSize: 4096).shmmni, 16, "at least 16 segments")
        XCTAssertEqual(IPCLimits.values(forMemoryBytes: 64 << 30, pageSize: 4096).shmmni, 4096, "at most the kernel's default")
    }

    func testSubuidParsingAndOverlap() {
        let entries = UIDRange.parse("# comment\n\nalice:100000:65536\nbroken line\nbob:x:1\nclawpen:200000:65536\n")
        XCTAssertEqual(entries.map(\.name), ["alice", "clawpen"])
        XCTAssertEqual(entries.map(\.line), [3, 6])
        XCTAssertTrue(entries[0].overlaps(165_535...165_535))
        XCTAssertFalse(entries[0].overlaps(165_536...200_000))
        XCTAssertFalse(UIDRange.Entry(name: "z", first: 5, count: 0, line: 1).overlaps(0...10), "an empty range holds nothing")
    }

    func testSocketFamiliesOfAProfile() throws {
        let p = try SeccompProfile.parse("allow = [\"socket\"]\nsocket_families = [\"unix\", \"netlink-route\"]\n", file: "t.toml", name: "t")
        XCTAssertEqual(p.socketFamilies, [.unix, .netlinkRoute])
        XCTAssertEqual(try SeccompProfile.parse("allow = [\"socket\"]\n", file: "t.toml", name: "t").socketFamilies, [.unix, .inet, .inet6])
        XCTAssertThrowsError(try SeccompProfile.parse("allow = [\"socket\"]\nsocket_families = [\"vsock\"]\n", file: "t.toml", name: "t")) { e in
            XCTAssertTrue("\(e)".contains("vsock"), "\(e)")
        }
        XCTAssertEqual(SocketFamily.netlinkRoute.domain, 16)
        XCTAssertEqual(SocketFamily.netlinkRoute.protocolArgument, 0)
        // Both shipped profiles compile with the argument rules.
        for (name, profile) in SeccompProfiles.embedded {
            XCTAssertNoThrow(try SeccompCompiler.compile(profile, allowClone3: true), name)
        }
    }

    func testDiskKeysAreChecked() throws {
        var o = TenantOverride()
        try LimitKey.diskMax.decode(.string("2G"), file: "f.toml", line: 1, into: &o)
        try LimitKey.inodesMax.decode(.integer(5000), file: "f.toml", line: 2, into: &o)
        XCTAssertEqual(o.diskMaxBytes, 2 << 30)
        XCTAssertEqual(o.inodesMax, 5000)
        XCTAssertThrowsError(try LimitKey.diskMax.decode(.string("1K"), file: "f.toml", line: 1, into: &o))
        XCTAssertThrowsError(try LimitKey.inodesMax.decode(.integer(3), file: "f.toml", line: 1, into: &o))
        let applied = o.applied(to: TierLimits.defaults(for: .free))
        XCTAssertEqual(applied.diskMaxBytes, 2 << 30)
        XCTAssertEqual(applied.inodesMax, 5000)
    }
}
