import ClawpenTOML

/// A seccomp profile (`policies/seccomp/<name>.toml`): an allowlist of syscall names, a list that
/// kills the process (the calls that only an attack makes), and whether namespace-creating clones
/// are refused. Everything not listed fails with EPERM. Pure data: the supervisor compiles it
/// with libseccomp.
public struct SeccompProfile: Sendable, Equatable {
    public var name: String
    public var allow: [String]
    public var kill: [String]
    /// clone with any CLONE_NEW* flag fails with EPERM; clone3 (whose flags a filter cannot see)
    /// fails with ENOSYS so that libc falls back to clone; unshare and setns are not allowed.
    public var restrictNamespaces: Bool
    /// `socket_families`: the only address families socket(2) and socketpair(2) accept, where the
    /// profile allows them at all (an argument rule on the domain, as Docker's default profile
    /// has for AF_VSOCK); every other family fails with EPERM (SocketFamily).
    public var socketFamilies: [SocketFamily]

    public init(
        name: String, allow: [String], kill: [String], restrictNamespaces: Bool,
        socketFamilies: [SocketFamily] = SocketFamily.defaults
    ) {
        self.name = name; self.allow = allow; self.kill = kill; self.restrictNamespaces = restrictNamespaces
        self.socketFamilies = socketFamilies
    }

    /// Parses a profile file's text.
    public static func parse(_ text: String, file: String, name: String) throws(PolicyError) -> SeccompProfile {
        let doc: TOMLDocument
        do { doc = try TOMLDocument.parse(text, file: file) } catch { throw PolicyError(error) }
        var allow: [String]?, kill: [String] = [], restrict = true, families = SocketFamily.defaults
        for e in doc.root.entries {
            func names() throws(PolicyError) -> [String] {
                guard let items = e.value.arrayValue else {
                    throw .wrongType(file: file, line: e.line, key: e.key, expected: "an array of syscall names", found: e.value.shortDescription)
                }
                var out: [String] = []
                for item in items {
                    guard let s = item.stringValue, !s.isEmpty, s.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x5F })
                    else {
                        throw .invalidValue(file: file, line: e.line, key: e.key, reason: "\(item.shortDescription) is not a syscall name")
                    }
                    out.append(s)
                }
                return out
            }
            switch e.key {
            case "description": break
            case "socket_families":
                guard let items = e.value.arrayValue else {
                    throw .wrongType(file: file, line: e.line, key: e.key, expected: "an array of family names", found: e.value.shortDescription)
                }
                families = []
                for item in items {
                    guard let s = item.stringValue, let f = SocketFamily(rawValue: s) else {
                        throw .invalidValue(
                            file: file, line: e.line, key: e.key,
                            reason:
                                "\(item.shortDescription) is not a family a sandbox may use (\(SocketFamily.allCases.map(\.rawValue).joined(separator: ", ")); \(SocketFamily.refusedNote))"
                        )
                    }
                    if !families.contains(f) { families.append(f) }
                }
            case "allow": allow = try names()
            case "kill": kill = try names()
            case "restrict_namespaces":
                guard let b = e.value.boolValue else {
                    throw .wrongType(file: file, line: e.line, key: e.key, expected: "true or false", found: e.value.shortDescription)
                }
                restrict = b
            default: throw .unknownKey(file: file, line: e.line, key: e.key)
            }
        }
        guard let allow else { throw .missingKey(file: file, key: "allow") }
        if let both = Set(allow).intersection(kill).sorted().first {
            throw .invalidValue(file: file, line: doc.root.entry("kill")?.line ?? 0, key: "kill", reason: "\(both) is also in allow")
        }
        if restrict, let bad = allow.first(where: { ["unshare", "setns", "clone3"].contains($0) }) {
            throw .invalidValue(
                file: file, line: doc.root.entry("allow")?.line ?? 0, key: "allow",
                reason: "\(bad) cannot be allowed while restrict_namespaces = true")
        }
        return SeccompProfile(name: name, allow: allow, kill: kill, restrictNamespaces: restrict, socketFamilies: families)
    }
}

/// Loads every `seccomp/<name>.toml` of a policies directory.
public enum SeccompProfiles {
    /// The shipped profiles, compiled in.
    public static var embedded: [String: SeccompProfile] {
        var out: [String: SeccompProfile] = [:]
        for f in EmbeddedSeccomp.files {
            // The embedded texts are the shipped files (a unit test checks it): they parse.
            if let p = try? SeccompProfile.parse(f.text, file: "embedded seccomp/\(f.name).toml", name: f.name) { out[f.name] = p }
        }
        return out
    }

    public static func load(directory: String) throws(PolicyError) -> [String: SeccompProfile] {
        let dir = FileSystem.join(directory, "seccomp")
        guard let names = FileSystem.list(dir) else { throw .missingFile(dir) }
        var out: [String: SeccompProfile] = [:]
        for file in names.sorted() where file.hasSuffix(".toml") && !file.hasPrefix(".") {
            let name = String(file.dropLast(5))
            let path = FileSystem.join(dir, file)
            guard !name.isEmpty, name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F }) else {
                throw .invalidFileName(file: path, reason: "a profile name is lower-case letters, digits, - and _")
            }
            switch FileSystem.read(path) {
            case .text(let text): out[name] = try SeccompProfile.parse(text, file: path, name: name)
            case .missing: throw .missingFile(path)
            case .failed(let reason): throw .unreadable(file: path, reason: reason)
            }
        }
        return out
    }
}
