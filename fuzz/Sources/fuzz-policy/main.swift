@testable import ClawpenPolicy
import ClawpenTOML
import FuzzSupport

// The policy loader's decoding of each kind of file it reads (PolicyLoader.analyze): a tier
// file, a tenant override (also a quota override: the same decoder), access.toml, a seccomp
// profile. The text goes through the TOML parser first, as the loader does. Checked: a file is
// valid exactly when no problem was reported, every problem names the file it is in, and a tier
// file that decodes completely gives limits the loader could use.
//
// Input: byte 0 picks the kind (mod 4), the rest is the file.

let tiers = PolicyLoader.embedded.tiers

func text(_ bytes: [UInt8]) -> String? {
    let s = String(decoding: bytes, as: UTF8.self)
    return s.utf8.elementsEqual(bytes) ? s : nil
}

/// The problems one file has, as the loader would report them.
func load(_ bytes: [UInt8]) -> (file: String, problems: [PolicyError], valid: Bool)? {
    guard let kind = bytes.first, let s = text(Array(bytes.dropFirst())) else { return nil }
    var errors: [PolicyError] = []
    switch kind % 4 {
    case 0, 1:
        let isTenant = kind % 4 == 1
        let file = isTenant ? "/p/tenants/acme.toml" : "/p/tiers/pro.toml"
        let root: TOMLTable
        do { root = try TOMLDocument.parse(s, file: file).root } catch { return (file, [PolicyError(error)], false) }
        let decoded = PolicyLoader.decode(root, file: file, origin: isTenant ? "tenants/acme.toml" : "tiers/pro.toml", isTenantFile: isTenant, errors: &errors)
        require(decoded.valid == errors.isEmpty, "valid is \(decoded.valid) with \(errors.count) problems")
        if isTenant {
            if decoded.valid { _ = PolicyLoader.checkOverride(decoded, file: file, tiers: tiers, errors: &errors) }
        } else if let limits = decoded.values.withCrashLoopDefaults(of: .pro).complete {
            blackHole(limits)
        }
        return (file, errors, decoded.valid)
    case 2:
        let file = "/p/access.toml"
        do {
            let root = try TOMLDocument.parse(s, file: file).root
            blackHole(try AccessPolicy.parse(root, file: file))
            return (file, [], true)
        } catch let e as PolicyError {
            return (file, [e], false)
        } catch {
            return (file, [PolicyError(error as! TOMLError)], false)
        }
    default:
        let file = "/p/seccomp/custom.toml"
        do {
            blackHole(try SeccompProfile.parse(s, file: file, name: "custom"))
            return (file, [], true)
        } catch {
            return (file, [error], false)
        }
    }
}

let harness = Harness(
    name: "policy",
    // The corpus starts from the shipped policies/, each file behind its kind's byte
    // (scripts/fuzz --seed).
    seeds: { [] },
    decode: { bytes in blackHole(load(bytes)) },
    check: { bytes in
        guard let (file, problems, _) = load(bytes) else { return }
        for p in problems {
            let text = "\(p)"
            require(text.contains(file), "a problem that does not name its file: \(text)")
        }
    })

// libFuzzer's entry points (it supplies main).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { harness.testOneInput(data, size) }

@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutableRawPointer?, _ argv: UnsafeMutableRawPointer?) -> CInt {
    harness.initialize()
    return 0
}
