import Crypto
import Glibc

/// The key hierarchy of tenant data at rest (docs/egress.md, "Keys"):
///
///     master key (32 bytes; a file, the systemd credential, or generated 0600 in the state dir)
///       └─ wraps, with AES-256-GCM, one data key per tenant and key version (`tenant_keys`)
///            └─ seals each value, with AES-256-GCM, bound to what it is (`secrets`, later job records)
///
/// Each sealed value carries the key version that sealed it, so a tenant's key can be rotated
/// (a new version seals, the old ones still open) and destroyed (its wrapped copy erased: every
/// value it sealed becomes unreadable, which offboarding relies on). The associated data binds a
/// ciphertext to its tenant, purpose, name and version: a row copied to another tenant, name or
/// version does not open. Nothing here does I/O but the master key's file.
public enum KeyHierarchy {
    /// Bytes of every key (AES-256).
    public static let keyBytes = 32

    /// The associated data of a wrapped data key.
    static func wrapAAD(tenant: String, version: Int) -> [UInt8] {
        Array("clawpen tenant-key v1\u{0}\(tenant)\u{0}\(version)".utf8)
    }

    /// The associated data of a sealed value: its tenant, what it is (`secret`, `job.stdout`, ...),
    /// its name (a secret's name, a job's id) and version.
    public static func sealAAD(tenant: String, purpose: String, name: String, version: Int) -> [UInt8] {
        Array("clawpen \(purpose) v1\u{0}\(tenant)\u{0}\(name)\u{0}\(version)".utf8)
    }
}

/// A failure of the key hierarchy, with the stage that failed.
public struct KeyError: Error, CustomStringConvertible, Sendable, Equatable {
    public let stage: String
    public let errno: Int32
    public let detail: String
    public init(_ stage: String, errno: Int32 = 0, _ detail: String) { self.stage = stage; self.errno = errno; self.detail = detail }
    public var description: String {
        errno == 0 ? "\(stage): \(detail)" : "\(stage): \(detail) (\(String(cString: strerror(errno))))"
    }
}

/// The host's master key. It never leaves the supervisor's memory: only what it wraps is stored.
public struct MasterKey: Sendable {
    let key: SymmetricKey
    /// A short name of the key (the first 8 bytes of SHA-256 of it, in hex): stored beside every
    /// wrapped data key, so that a daemon started with another master key says so plainly instead
    /// of failing to open rows.
    public let id: String
    /// Where it came from, for the log (a path or "systemd credential ...").
    public let source: String

    public init(bytes: [UInt8], source: String) throws(KeyError) {
        guard bytes.count == KeyHierarchy.keyBytes else {
            throw KeyError("master key", "\(source) holds \(bytes.count) bytes; a master key is exactly 32 bytes (or 64 hex digits)")
        }
        key = SymmetricKey(data: bytes)
        id = SHA256.hash(data: bytes).prefix(8).map { hex2($0) }.joined()
        self.source = source
    }

    /// Where the master key comes from, in this order: `--master-key-file`, the systemd credential
    /// `clawpen-master-key` ($CREDENTIALS_DIRECTORY), else `<state-dir>/master.key`, generated
    /// (mode 0600) at the first start. A key file that other users may read is refused.
    public static func load(explicitFile: String?, credentialsDirectory: String?, stateDir: String) throws(KeyError) -> (MasterKey, generated: Bool) {
        if let explicitFile { return (try fromFile(explicitFile), false) }
        if let dir = credentialsDirectory, !dir.isEmpty {
            let path = dir + "/clawpen-master-key"
            if access(path, F_OK) == 0 {
                // systemd owns the credential's mode (0400 root, in a private ramfs).
                return (try fromFile(path, source: "systemd credential clawpen-master-key"), false)
            }
        }
        let path = stateDir + "/master.key"
        if access(path, F_OK) == 0 { return (try fromFile(path), false) }
        return (try generate(at: path), true)
    }

    /// Reads a key file: 32 raw bytes, or 64 hex digits (a trailing newline allowed). Refused when
    /// it is not a regular file, is a symlink, or is readable or writable by group or others.
    public static func fromFile(_ path: String, source: String? = nil) throws(KeyError) -> MasterKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { throw KeyError("master key", errno: errno, "cannot open \(path)") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw KeyError("master key", errno: errno, "cannot stat \(path)") }
        guard (st.st_mode & S_IFMT) == S_IFREG else { throw KeyError("master key", "\(path) is not a regular file") }
        guard st.st_mode & 0o077 == 0 else {
            throw KeyError(
                "master key",
                "\(path) has mode \(String(st.st_mode & 0o777, radix: 8)): a master key file must be readable by its owner only (chmod 600 \(path))")
        }
        guard st.st_uid == geteuid() else {
            throw KeyError("master key", "\(path) belongs to uid \(st.st_uid), not to the daemon's uid \(geteuid())")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 256)
        while bytes.count <= 256 {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw KeyError("master key", errno: errno, "cannot read \(path)") }
            if n == 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        let name = source ?? path
        if bytes.count == KeyHierarchy.keyBytes { return try MasterKey(bytes: bytes, source: name) }
        var text = bytes
        while let last = text.last, last == 0x0A || last == 0x0D || last == 0x20 { text.removeLast() }
        if text.count == 2 * KeyHierarchy.keyBytes, let decoded = decodeHex(text) { return try MasterKey(bytes: decoded, source: name) }
        throw KeyError("master key", "\(name) holds \(bytes.count) bytes; a master key is exactly 32 bytes or 64 hex digits")
    }

    /// A new random key written to `path` with mode 0600 (O_EXCL: never over an existing file),
    /// fsync'd with its directory before it is used to wrap anything.
    public static func generate(at path: String) throws(KeyError) -> MasterKey {
        let bytes = randomBytes(KeyHierarchy.keyBytes)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw KeyError("master key", errno: errno, "cannot create \(path)") }
        let text = Array(bytes.map { hex2($0) }.joined().utf8) + [0x0A]
        let written = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == text.count, fchmod(fd, 0o600) == 0, fsync(fd) == 0 else {
            let e = errno
            close(fd)
            unlink(path)
            throw KeyError("master key", errno: e, "cannot write \(path)")
        }
        close(fd)
        let dir = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
        let dfd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
        return try MasterKey(bytes: bytes, source: path)
    }

    /// A new random key, in memory only (`write(to:)` stores it).
    public static func random(source: String) throws(KeyError) -> MasterKey {
        var bytes = randomBytes(KeyHierarchy.keyBytes)
        defer { for i in bytes.indices { bytes[i] = 0 } }
        return try MasterKey(bytes: bytes, source: source)
    }

    /// Writes this key to `path` as 64 hex digits, mode 0600, O_EXCL (never over an existing
    /// file), fsync'd with its directory.
    public func write(to path: String) throws(KeyError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw KeyError("master key", errno: errno, "cannot create \(path)") }
        var text = key.withUnsafeBytes { raw in Array(raw.map { hex2($0) }.joined().utf8) } + [0x0A]
        defer { for i in text.indices { text[i] = 0 } }
        let written = text.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        guard written == text.count, fchmod(fd, 0o600) == 0, fsync(fd) == 0 else {
            let e = errno
            close(fd)
            unlink(path)
            throw KeyError("master key", errno: e, "cannot write \(path)")
        }
        close(fd)
        syncDirectory(of: path)
    }

    /// A new data key for `tenant`, and its wrapped form to store.
    public func newDataKey(tenant: String, version: Int) throws(KeyError) -> (DataKey, wrapped: [UInt8]) {
        let raw = randomBytes(KeyHierarchy.keyBytes)
        let key = DataKey(SymmetricKey(data: raw), tenant: tenant, version: version)
        do {
            let box = try AES.GCM.seal(raw, using: self.key, authenticating: KeyHierarchy.wrapAAD(tenant: tenant, version: version))
            guard let combined = box.combined else { throw KeyError("wrap data key", "no combined form") }
            return (key, Array(combined))
        } catch let e as KeyError {
            throw e
        } catch {
            throw KeyError("wrap data key", "\(error)")
        }
    }

    /// An existing data key wrapped by this key (a master key rotation: the data key, and so
    /// everything it sealed, stays as it is).
    public func wrap(_ dataKey: DataKey) throws(KeyError) -> [UInt8] {
        do {
            let raw = dataKey.key.withUnsafeBytes { Array($0) }
            let box = try AES.GCM.seal(
                raw, using: key, authenticating: KeyHierarchy.wrapAAD(tenant: dataKey.tenant, version: dataKey.version))
            guard let combined = box.combined else { throw KeyError("wrap data key", "no combined form") }
            return Array(combined)
        } catch let e as KeyError {
            throw e
        } catch {
            throw KeyError("wrap data key", "\(error)")
        }
    }

    /// The data key of `tenant` at `version` from its wrapped form. Fails when the row was wrapped
    /// by another master key, or belongs to another tenant or version.
    public func unwrap(_ wrapped: [UInt8], tenant: String, version: Int) throws(KeyError) -> DataKey {
        do {
            let box = try AES.GCM.SealedBox(combined: wrapped)
            var raw = Array(try AES.GCM.open(box, using: key, authenticating: KeyHierarchy.wrapAAD(tenant: tenant, version: version)))
            defer { for i in raw.indices { raw[i] = 0 } }
            guard raw.count == KeyHierarchy.keyBytes else { throw KeyError("unwrap data key", "wrong length \(raw.count)") }
            return DataKey(SymmetricKey(data: raw), tenant: tenant, version: version)
        } catch let e as KeyError {
            throw e
        } catch {
            throw KeyError(
                "unwrap data key",
                "tenant '\(tenant)' key version \(version) does not open with master key \(id) (\(source)): the state dir was written with another master key, or the row was altered"
            )
        }
    }
}

/// One tenant's data key at one version: seals and opens that tenant's values.
public struct DataKey: Sendable {
    let key: SymmetricKey
    public let tenant: String
    public let version: Int

    init(_ key: SymmetricKey, tenant: String, version: Int) { self.key = key; self.tenant = tenant; self.version = version }

    /// nonce (12) || ciphertext || tag (16), bound to (tenant, purpose, name, itemVersion).
    public func seal(_ plaintext: [UInt8], purpose: String, name: String, itemVersion: Int) throws(KeyError) -> [UInt8] {
        do {
            let aad = KeyHierarchy.sealAAD(tenant: tenant, purpose: purpose, name: name, version: itemVersion)
            guard let combined = try AES.GCM.seal(plaintext, using: key, authenticating: aad).combined else {
                throw KeyError("seal \(purpose)", "no combined form")
            }
            return Array(combined)
        } catch let e as KeyError {
            throw e
        } catch {
            throw KeyError("seal \(purpose)", "\(error)")
        }
    }

    public func open(_ sealed: [UInt8], purpose: String, name: String, itemVersion: Int) throws(KeyError) -> [UInt8] {
        do {
            let aad = KeyHierarchy.sealAAD(tenant: tenant, purpose: purpose, name: name, version: itemVersion)
            return Array(try AES.GCM.open(try AES.GCM.SealedBox(combined: sealed), using: key, authenticating: aad))
        } catch {
            throw KeyError(
                "open \(purpose)", "\(purpose) '\(name)' version \(itemVersion) of tenant '\(tenant)' does not open with its data key (version \(version))")
        }
    }
}

/// Cryptographically random bytes (the kernel's getrandom through swift-crypto's key generator).
public func randomBytes(_ count: Int) -> [UInt8] {
    SymmetricKey(size: SymmetricKeySize(bitCount: count * 8)).withUnsafeBytes { Array($0) }
}

/// A secret's placeholder: what the job's environment holds instead of the value. Random (not
/// derived from the value, so it tells nothing about it), unique per tenant and secret, and
/// shaped like an API key so that clients that check a key's format pass it on.
public func newPlaceholder() -> String {
    "clawpen-ph-" + randomBytes(20).map { hex2($0) }.joined()
}

func hex2(_ b: UInt8) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[Int(b >> 4)], digits[Int(b & 0xF)]])
}

func decodeHex(_ text: [UInt8]) -> [UInt8]? {
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
    guard text.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(text.count / 2)
    var i = 0
    while i < text.count {
        guard let hi = nibble(text[i]), let lo = nibble(text[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
        i += 2
    }
    return out
}

/// fsync of the directory holding `path` (a created or renamed file's entry is durable).
public func syncDirectory(of path: String) {
    let dir = String(path[..<(path.lastIndex(of: "/") ?? path.startIndex)])
    let dfd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dfd >= 0 { _ = fsync(dfd); close(dfd) }
}
