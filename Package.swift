// swift-tools-version:6.1
// clawpen: a process-per-tenant supervisor. Layout (see docs/architecture.md):
//   C shims (CClawpenShim, CSQLite) <- ClawpenSpawn; ClawpenWire <- ClawpenProtocol <- ClawpenClient
//   ClawpenSystem (StepFailure, clocks, files) <- ClawpenSpawn, ClawpenSandbox, ClawpenSupervisor, ClawpenWorkerCore
//   ClawpenSandbox (one file per facility, the checklist) <- ClawpenSupervisor and ClawpenWorkerCore
//   ClawpenTOML <- ClawpenPolicy <- ClawpenCore (the decisions, no I/O) <- ClawpenSupervisor (NIO) <- clawpen
//   ClawpenStore, ClawpenSystemd (CSystemd) <- ClawpenSupervisor
//   ClawpenWorkerCore (no Foundation, no NIO: it is multiplied by the tenant count) <- clawpen-worker
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "clawpen",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "clawpen", targets: ["clawpen"]),
        .executable(name: "clawpen-serve", targets: ["clawpen-serve"]),
        .executable(name: "clawpen-worker", targets: ["clawpen-worker"]),
        .executable(name: "clawpen-bench", targets: ["clawpen-bench"]),
        .executable(name: "clawpen-egress", targets: ["clawpen-egress"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.0.0"),
        // AES-256-GCM for the secret store; TLS and certificates for the egress proxy's per-tenant CA.
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
    ],
    targets: [
        // Syscalls Swift's Glibc module cannot see (it is not built with _GNU_SOURCE) and the
        // fork-to-exec path, which must be async-signal-safe C.
        .target(name: "CClawpenShim", cSettings: [.define("_GNU_SOURCE")]),
        .systemLibrary(name: "CSQLite", pkgConfig: "sqlite3", providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp", providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd", providers: [.apt(["libsystemd-dev"])]),
        // The supervisor's side of systemd: socket activation, sd_notify, the journal log handler.
        // Never a dependency of the worker.
        .target(
            name: "ClawpenSystemd", dependencies: ["CSystemd", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),

        // The one copy of each low-level helper: StepFailure (step, errno, detail) and errnoString,
        // the clocks, small file reads and writes. No Foundation, no other target.
        .target(name: "ClawpenSystem", swiftSettings: strict),
        // The safe Swift face of cp_spawn: prepared commands and spawn options.
        .target(name: "ClawpenSpawn", dependencies: ["CClawpenShim", "ClawpenSystem"], swiftSettings: strict),
        // Framing, tenant names and the supervisor<->worker binary codec. No Foundation.
        .target(name: "ClawpenWire", swiftSettings: strict),
        // Client<->supervisor JSON messages (FoundationEssentials only).
        .target(name: "ClawpenProtocol", dependencies: ["ClawpenWire"], swiftSettings: strict),
        // Blocking Unix-socket client used by the CLI and the bench.
        .target(name: "ClawpenClient", dependencies: ["ClawpenProtocol", "CClawpenShim"], swiftSettings: strict),
        .target(name: "ClawpenStore", dependencies: ["ClawpenProtocol", "CSQLite"], swiftSettings: strict),
        // The key hierarchy (master key -> per-tenant data keys -> values), AES-256-GCM. Pure: the
        // store keeps only ciphertext, the supervisor keeps the master key.
        .target(name: "ClawpenSecrets", dependencies: [.product(name: "Crypto", package: "swift-crypto")], swiftSettings: strict),
        // The egress proxy: HTTP forward proxy and CONNECT, the allowlist and the SSRF ranges, TLS
        // interception with a per-tenant CA. It runs in its own unprivileged process
        // (clawpen-egress), never inside the root supervisor.
        .target(
            name: "ClawpenEgress",
            dependencies: [
                "ClawpenSystem", "CClawpenShim", "ClawpenPolicy", "ClawpenProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strict),
        // The TOML subset that policies and `serve --config` are written in. No Foundation; linear
        // in its input (nesting and table depth are capped).
        .target(name: "ClawpenTOML", swiftSettings: strict),
        .target(name: "ClawpenPolicy", dependencies: ["ClawpenTOML", "ClawpenWire", "ClawpenSystem"], swiftSettings: strict),
        // The supervisor's decisions as value types that take events and return actions: the
        // worker life cycle, the crash-loop rule, admission, the router and quotas. No NIO, no
        // syscalls: every rule is tested with a fake clock (Tests/ClawpenCoreTests).
        .target(
            name: "ClawpenCore", dependencies: ["ClawpenPolicy", "ClawpenStore", "ClawpenProtocol", "ClawpenWire"],
            swiftSettings: strict),
        .target(
            name: "ClawpenSupervisor",
            dependencies: [
                "ClawpenCore", "ClawpenProtocol", "ClawpenStore", "ClawpenPolicy", "ClawpenSpawn", "CClawpenShim", "CSeccomp", "ClawpenSystemd",
                "ClawpenSandbox", "ClawpenSystem", "ClawpenSecrets",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: strict),
        // The sandbox, one file per facility (mounts, identity, seccomp, network, cgroups,
        // workspace) with its supervisor-side and worker-side verbs, and the checklist that orders
        // them. Linked by the supervisor and the worker: no Foundation, NIO, libseccomp or policy.
        .target(name: "ClawpenSandbox", dependencies: ["ClawpenWire", "ClawpenSystem", "CClawpenShim"], swiftSettings: strict),
        .target(
            name: "ClawpenWorkerCore", dependencies: ["ClawpenWire", "ClawpenSpawn", "ClawpenSandbox", "ClawpenSystem", "CClawpenShim"],
            swiftSettings: strict),

        // The client: every command but the daemon's. A static executable (no dynamic loader, no
        // Swift runtime to find): it starts in about a millisecond and runs on a host without the
        // toolchain. `clawpen serve` executes clawpen-serve (docs/architecture.md, "Two binaries").
        .executableTarget(
            name: "clawpen",
            dependencies: [
                "ClawpenClient", "ClawpenPolicy", "ClawpenTOML",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict,
            // FoundationEssentials (base64 in ClawpenProtocol) needs its two helper archives named
            // when it is linked statically.
            linkerSettings: [.unsafeFlags(["-static-executable", "-l_FoundationCollections", "-l_FoundationCShims", "-lswiftSynchronization"])]),
        // The daemon (NIO, SQLite, libsystemd, libseccomp). scripts/package links the Swift
        // runtime into it (--static-swift-stdlib): it needs only Debian's libraries.
        .executableTarget(
            name: "clawpen-serve",
            dependencies: [
                "ClawpenSupervisor", "ClawpenPolicy", "ClawpenTOML", "ClawpenSystemd",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // A static executable (Swift runtime, libc, libstdc++ linked in; no dynamic loader): a
        // worker starts in about a third of the CPU time of a -static-stdlib one (no symbol
        // lookups, no relocations), which is most of a sandboxed cold start's exec cost, and the
        // static runtime saves 1.4-2.8 MiB RSS per worker (measured here; BENCHMARKS.md). The worker uses no NSS
        // (its passwd and group come in the sandbox plan). Non-PIE: docs/sandbox.md weighs it.
        .executableTarget(
            name: "clawpen-worker", dependencies: ["ClawpenWorkerCore"], swiftSettings: strict,
            linkerSettings: [.unsafeFlags(["-static-executable"])]),
        // The egress proxy process: confines itself, then serves (ClawpenEgress).
        .executableTarget(name: "clawpen-egress", dependencies: ["ClawpenEgress", "ClawpenSystem", "CClawpenShim"], swiftSettings: strict),
        .executableTarget(
            name: "clawpen-bench",
            dependencies: [
                "ClawpenClient", "ClawpenProtocol", "ClawpenSpawn", "CClawpenShim",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),

        .testTarget(
            name: "ClawpenCoreTests", dependencies: ["ClawpenCore", "ClawpenPolicy", "ClawpenStore", "ClawpenProtocol", "ClawpenWire"],
            swiftSettings: strict),
        .testTarget(
            name: "ClawpenUnitTests",
            dependencies: [
                "ClawpenWire", "ClawpenProtocol", "ClawpenPolicy", "ClawpenStore", "ClawpenCore", "ClawpenSupervisor", "ClawpenSandbox", "ClawpenSystem",
                "CClawpenShim", "ClawpenSystemd", "ClawpenSecrets", "ClawpenEgress", "ClawpenTestSupport",
                .product(name: "NIOEmbedded", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .testTarget(name: "ClawpenTOMLTests", dependencies: ["ClawpenTOML"], swiftSettings: strict),
        // Starts the real daemon in temporary directories; shared by the two suites below.
        .target(name: "ClawpenTestSupport", dependencies: ["ClawpenClient"], path: "Tests/ClawpenTestSupport", swiftSettings: strict),
        // `clawpen-serve` is a dependency so that `swift test` builds it. clawpen and clawpen-worker
        // cannot be: their -static-executable link flag would leak into the test product.
        // scripts/test builds every product first.
        .testTarget(
            name: "ClawpenIntegrationTests",
            dependencies: ["ClawpenTestSupport", "ClawpenClient", "clawpen-serve"],
            swiftSettings: strict),
        .testTarget(
            name: "ClawpenHostileTests",
            dependencies: ["ClawpenTestSupport", "ClawpenClient", "clawpen-serve"],
            swiftSettings: strict),
    ]
)
