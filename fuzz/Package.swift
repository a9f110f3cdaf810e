// swift-tools-version:6.1
// The fuzz harnesses (libFuzzer), one per decoder: a package of their own, so that the project's
// `swift build` and `swift test` never see them (fuzz/README.md). Build with
//   swift build -c release --sanitize=fuzzer   (in fuzz/; scripts/fuzz does it)
// The decoders' modules are the project's own sources, linked here (Sources/ClawpenWire ->
// ../../Sources/ClawpenWire ...), not copies: a harness tests what the daemon runs. The few
// decoders that live in big targets (the supervisor's frame decoder and file fast path, the
// proxy's request parser) are single files linked into their harness, so that a harness builds
// without the supervisor's or the proxy's dependencies (TLS, SQLite).
import PackageDescription

// Harnesses reach internal decoders (JSONParser with the request limits, PolicyLoader.decode,
// the TOML parser) through `@testable import`; that needs the modules built for testing.
let testable: [SwiftSetting] = [.swiftLanguageMode(.v6), .unsafeFlags(["-enable-testing"])]
// libFuzzer supplies `main`: a harness's main.swift is a library file.
let harness: [SwiftSetting] = [.swiftLanguageMode(.v6), .unsafeFlags(["-parse-as-library"])]

let nioCore = Target.Dependency.product(name: "NIOCore", package: "swift-nio")
let nioEmbedded = Target.Dependency.product(name: "NIOEmbedded", package: "swift-nio")

let package = Package(
    name: "clawpen-fuzz",
    dependencies: [
        // The version the project resolves (its .build/workspace-state.json).
        .package(url: "https://github.com/apple/swift-nio.git", exact: "2.101.3")
    ],
    targets: [
        .target(name: "ClawpenSystem", swiftSettings: testable),
        .target(name: "ClawpenWire", swiftSettings: testable),
        .target(name: "ClawpenProtocol", dependencies: ["ClawpenWire"], swiftSettings: testable),
        .target(name: "ClawpenTOML", swiftSettings: testable),
        .target(name: "ClawpenPolicy", dependencies: ["ClawpenTOML", "ClawpenWire", "ClawpenSystem"], swiftSettings: testable),
        // The entry points every harness shares: invariant checks, the corpus timing mode.
        .target(name: "FuzzSupport", swiftSettings: [.swiftLanguageMode(.v6)]),

        .executableTarget(name: "fuzz-frames", dependencies: ["FuzzSupport", "ClawpenWire", nioCore, nioEmbedded], swiftSettings: harness),
        .executableTarget(name: "fuzz-json", dependencies: ["FuzzSupport", "ClawpenProtocol"], swiftSettings: harness),
        .executableTarget(
            name: "fuzz-request", dependencies: ["FuzzSupport", "ClawpenProtocol", "ClawpenWire", nioCore], swiftSettings: harness),
        .executableTarget(
            name: "fuzz-worker-codec", dependencies: ["FuzzSupport", "ClawpenProtocol", "ClawpenWire", nioCore], swiftSettings: harness),
        .executableTarget(name: "fuzz-sandbox-plan", dependencies: ["FuzzSupport", "ClawpenWire"], swiftSettings: harness),
        .executableTarget(name: "fuzz-toml", dependencies: ["FuzzSupport", "ClawpenTOML"], swiftSettings: harness),
        .executableTarget(name: "fuzz-policy", dependencies: ["FuzzSupport", "ClawpenPolicy", "ClawpenTOML"], swiftSettings: harness),
        .executableTarget(name: "fuzz-request-head", dependencies: ["FuzzSupport"], swiftSettings: harness),
    ]
)
